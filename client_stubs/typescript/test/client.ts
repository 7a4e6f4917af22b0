// A real Node client of the gateway, built on the generated stubs and Connect's gRPC transport.
// Usage: node dist/test/client.js <host:port>. Prints one JSON line with what it received.
import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  ChatService,
  CreateChatCompletionRequestSchema,
  StreamChatCompletionRequestSchema,
  ChatCompletionRequestMessageSchema,
} from "../src/gen/openai_grpc/v1/chat_pb.js";
import { ModelsService } from "../src/gen/openai_grpc/v1/models_pb.js";
import { ConnectError } from "@connectrpc/connect";

async function main(): Promise<void> {
  const address = process.argv[2];
  const transport = createGrpcTransport({ baseUrl: `http://${address}` });
  const chat = createClient(ChatService, transport);
  const models = createClient(ModelsService, transport);

  const message = create(ChatCompletionRequestMessageSchema, {
    role: "user",
    content: { case: "contentText", value: "hi" },
  });
  const unary = await chat.createChatCompletion(
    create(CreateChatCompletionRequestSchema, { model: "gpt-4o-mini", messages: [message] }),
  );
  const streamed: string[] = [];
  let frames = 0;
  for await (const frame of chat.streamChatCompletion(
    create(StreamChatCompletionRequestSchema, { model: "gpt-4o-mini", messages: [message] }),
  )) {
    frames += 1;
    for (const event of frame.events) {
      for (const choice of event.choices) {
        streamed.push(choice.delta?.content ?? "");
      }
    }
  }
  const list = await models.listModels({});
  let errorCode = "";
  try {
    await chat.createChatCompletion(create(CreateChatCompletionRequestSchema, { model: "" }));
  } catch (err) {
    errorCode = ConnectError.from(err).code.toString();
  }
  console.log(
    JSON.stringify({
      id: unary.chatCompletion?.id ?? "",
      content: unary.chatCompletion?.choices[0]?.message?.content ?? "",
      frames,
      streamed: streamed.join(""),
      models: list.data.length,
      errorCode,
    }),
  );
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
