// Quickstart: calls the openai-grpc gateway with the published package — a unary call, a server
// stream, and a failure read as google.rpc details. Usage: node quickstart.js [host:port]
// (default localhost:50051, where `scripts/run.sh --demo` listens). Prints one JSON line.
import { create } from "@bufbuild/protobuf";
import { ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  ChatCompletionRequestMessageSchema,
  ChatService,
  CreateChatCompletionRequestSchema,
  StreamChatCompletionRequestSchema,
  serviceConfigInterceptor,
} from "@openai-grpc/client";
import { BadRequestSchema, ErrorInfoSchema } from "@openai-grpc/client/google/rpc";

const address = process.argv[2] ?? "localhost:50051";
const transport = createGrpcTransport({
  baseUrl: `http://${address}`,
  // The stubs' service config: per-method deadlines, retries of idempotent reads on UNAVAILABLE.
  interceptors: [serviceConfigInterceptor()],
});
const chat = createClient(ChatService, transport);
const messages = [
  create(ChatCompletionRequestMessageSchema, { role: "user", content: { case: "contentText", value: "hi" } }),
];

// Unary.
const reply = await chat.createChatCompletion(
  create(CreateChatCompletionRequestSchema, { model: "gpt-4o-mini", messages }),
);

// Server stream: each message carries the events one upstream read delivered.
let frames = 0;
let streamed = "";
for await (const frame of chat.streamChatCompletion(
  create(StreamChatCompletionRequestSchema, { model: "gpt-4o-mini", messages }),
)) {
  frames += 1;
  for (const event of frame.events) {
    for (const choice of event.choices) streamed += choice.delta?.content ?? "";
  }
}

// A failure: one google.rpc.Status whose details say what went wrong and where.
let code = "";
let reason = "";
let badFields: string[] = [];
try {
  await chat.createChatCompletion(
    create(CreateChatCompletionRequestSchema, { model: "gpt-4o-mini", messages, temperature: 3 }),
  );
} catch (err) {
  const error = ConnectError.from(err);
  code = String(error.code);
  reason = error.findDetails(ErrorInfoSchema)[0]?.reason ?? "";
  badFields = error.findDetails(BadRequestSchema).flatMap((b) => b.fieldViolations.map((v) => v.field));
}

console.log(
  JSON.stringify({
    id: reply.chatCompletion?.id ?? "",
    content: reply.chatCompletion?.choices[0]?.message?.content ?? "",
    frames,
    streamed,
    code,
    reason,
    badFields,
  }),
);
