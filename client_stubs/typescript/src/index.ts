// Entry point of the TypeScript stubs: every service and message of the contract, the gRPC
// service config and a Connect interceptor that applies it. The google.rpc error detail
// messages are under "@openai-grpc/client/google/rpc".
export * from "./gen/openai_grpc/v1/assistants_pb.js";
export * from "./gen/openai_grpc/v1/audio_pb.js";
export * from "./gen/openai_grpc/v1/batches_pb.js";
export * from "./gen/openai_grpc/v1/chat_pb.js";
export * from "./gen/openai_grpc/v1/common_pb.js";
export * from "./gen/openai_grpc/v1/completions_pb.js";
export * from "./gen/openai_grpc/v1/conversations_pb.js";
export * from "./gen/openai_grpc/v1/embeddings_pb.js";
export * from "./gen/openai_grpc/v1/files_pb.js";
export * from "./gen/openai_grpc/v1/fine_tuning_pb.js";
export * from "./gen/openai_grpc/v1/images_pb.js";
export * from "./gen/openai_grpc/v1/models_pb.js";
export * from "./gen/openai_grpc/v1/moderations_pb.js";
export * from "./gen/openai_grpc/v1/responses_pb.js";
export * from "./gen/openai_grpc/v1/threads_pb.js";
export * from "./gen/openai_grpc/v1/uploads_pb.js";
export * from "./gen/openai_grpc/v1/vector_stores_pb.js";
export * from "./interceptor.js";
