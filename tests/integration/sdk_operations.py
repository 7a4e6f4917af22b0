"""One operation per endpoint of spec/endpoints.tsv, written twice: through the official `openai`
Python SDK, and as the equivalent gRPC request (tests/integration/test_sdk_parity.py sends both
to one recording upstream and compares the two HTTP requests).

`args` is OpenAI's JSON for the operation (path parameters, query and body fields together): the
gateway's request message is decoded from it, and the SDK call gets it as keyword arguments
(the SDK names its parameters as the spec does). `files` are multipart file fields; `stream`
asks the SDK for the streamed variant (the gateway's `Stream...` RPC is named in `rpc`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from openai import AsyncOpenAI
from openai_grpc_server.fake_upstream import Step

from tests.support.sse_examples import IMAGE_SSE

SdkCall = Callable[[AsyncOpenAI, dict[str, Any]], Any]

JSONL = b'{"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'
# Small but real media: what each endpoint's multipart file field carries.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082"
)
MP3 = b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(range(64))

# Endpoints of spec/endpoints.tsv that the pinned SDK has no method for (none today).
SDK_LACKS: dict[str, str] = {}

MESSAGES = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]
ITEMS = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}]
STEP_INCLUDE = ["step_details.tool_calls[*].file_search.results[*].content"]
RESPONSE_INCLUDE = ["message.output_text.logprobs", "reasoning.encrypted_content"]


@dataclasses.dataclass(frozen=True)
class Op:
    endpoint: str  # "METHOD /path", as in spec/endpoints.tsv
    rpc: str  # the gateway's RPC for the same operation
    sdk: SdkCall
    args: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Multipart file fields: field -> (filename, bytes, content type).
    files: dict[str, tuple[str, bytes, str]] = dataclasses.field(default_factory=dict)
    stream: bool = False
    # What the fake upstream answers both clients, when its default answer does not fit.
    answer: Step | None = None

    @property
    def id(self) -> str:
        return f"{self.endpoint} ({self.rpc})"


def _op(endpoint: str, rpc: str, sdk: SdkCall, **kw: Any) -> Op:
    return Op(endpoint, rpc, sdk, **kw)


OPERATIONS: list[Op] = [
    # --- models
    _op("GET /models", "ListModels", lambda c, a: c.models.list(**a)),
    _op(
        "GET /models/{model}", "GetModel", lambda c, a: c.models.retrieve(**a), args={"model": "gpt-4o-mini"}
    ),
    _op(
        "DELETE /models/{model}",
        "DeleteModel",
        lambda c, a: c.models.delete(**a),
        args={"model": "ft:gpt-4o-mini:acme::abc123"},
    ),
    # --- chat
    _op(
        "POST /chat/completions",
        "CreateChatCompletion",
        lambda c, a: c.chat.completions.create(**a),
        args={
            "model": "gpt-4o-mini",
            "messages": MESSAGES,
            "temperature": 0.2,
            "max_completion_tokens": 50,
            "n": 1,
            "tool_choice": "none",
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "response_format": {"type": "json_object"},
            "metadata": {"k": "v"},
            "store": True,
        },
    ),
    _op(
        "POST /chat/completions",
        "StreamChatCompletion",
        lambda c, a: c.chat.completions.create(**a, stream=True),
        args={"model": "gpt-4o-mini", "messages": MESSAGES},
        stream=True,
    ),
    _op(
        "GET /chat/completions",
        "ListChatCompletions",
        lambda c, a: c.chat.completions.list(**a),
        args={"model": "gpt-4o-mini", "limit": 2, "order": "asc", "metadata": {"k": "v"}},
    ),
    _op(
        "GET /chat/completions/{completion_id}",
        "GetChatCompletion",
        lambda c, a: c.chat.completions.retrieve(**a),
        args={"completion_id": "chatcmpl-abc"},
    ),
    _op(
        "POST /chat/completions/{completion_id}",
        "UpdateChatCompletion",
        lambda c, a: c.chat.completions.update(**a),
        args={"completion_id": "chatcmpl-abc", "metadata": {"k": "v"}},
    ),
    _op(
        "DELETE /chat/completions/{completion_id}",
        "DeleteChatCompletion",
        lambda c, a: c.chat.completions.delete(**a),
        args={"completion_id": "chatcmpl-abc"},
    ),
    _op(
        "GET /chat/completions/{completion_id}/messages",
        "ListChatCompletionMessages",
        lambda c, a: c.chat.completions.messages.list(**a),
        args={"completion_id": "chatcmpl-abc", "limit": 5, "after": "msg_1"},
    ),
    # --- completions
    _op(
        "POST /completions",
        "CreateCompletion",
        lambda c, a: c.completions.create(**a),
        args={"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi", "max_tokens": 7, "stop": ["\n"]},
    ),
    _op(
        "POST /completions",
        "StreamCompletion",
        lambda c, a: c.completions.create(**a, stream=True),
        args={"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi"},
        stream=True,
    ),
    # --- embeddings, moderations
    _op(
        "POST /embeddings",
        "CreateEmbedding",
        lambda c, a: c.embeddings.create(**a),
        args={"model": "text-embedding-3-small", "input": ["a", "b"], "dimensions": 8},
    ),
    _op(
        "POST /moderations",
        "CreateModeration",
        lambda c, a: c.moderations.create(**a),
        args={"model": "omni-moderation-latest", "input": "hello"},
    ),
    # --- files
    _op(
        "POST /files",
        "UploadFile",
        lambda c, a: c.files.create(**a),
        args={"purpose": "batch"},
        files={"file": ("batch.jsonl", JSONL, "application/jsonl")},
    ),
    _op("GET /files", "ListFiles", lambda c, a: c.files.list(**a), args={"purpose": "batch", "limit": 3}),
    _op("GET /files/{file_id}", "GetFile", lambda c, a: c.files.retrieve(**a), args={"file_id": "file-abc"}),
    _op(
        "DELETE /files/{file_id}",
        "DeleteFile",
        lambda c, a: c.files.delete(**a),
        args={"file_id": "file-abc"},
    ),
    _op(
        "GET /files/{file_id}/content",
        "DownloadFileContent",
        lambda c, a: c.files.content(**a),
        args={"file_id": "file-abc"},
    ),
    # --- batches
    _op(
        "POST /batches",
        "CreateBatch",
        lambda c, a: c.batches.create(**a),
        args={"input_file_id": "file-abc", "endpoint": "/v1/chat/completions", "completion_window": "24h"},
    ),
    _op(
        "GET /batches", "ListBatches", lambda c, a: c.batches.list(**a), args={"limit": 2, "after": "batch_0"}
    ),
    _op(
        "GET /batches/{batch_id}",
        "GetBatch",
        lambda c, a: c.batches.retrieve(**a),
        args={"batch_id": "batch_1"},
    ),
    _op(
        "POST /batches/{batch_id}/cancel",
        "CancelBatch",
        lambda c, a: c.batches.cancel(**a),
        args={"batch_id": "batch_1"},
    ),
    # --- images
    _op(
        "POST /images/generations",
        "CreateImage",
        lambda c, a: c.images.generate(**a),
        args={"model": "gpt-image-1", "prompt": "a cat", "n": 1, "size": "1024x1024"},
    ),
    _op(
        "POST /images/generations",
        "StreamImage",
        lambda c, a: c.images.generate(**a, stream=True),
        args={"model": "gpt-image-1", "prompt": "a cat", "partial_images": 1},
        stream=True,
        answer=Step(raw_body=IMAGE_SSE, content_type="text/event-stream; charset=utf-8"),
    ),
    _op(
        "POST /images/edits",
        "CreateImageEdit",
        lambda c, a: c.images.edit(**a),
        args={"model": "gpt-image-1", "prompt": "add a hat", "n": 1},
        files={"image": ("cat.png", PNG, "image/png"), "mask": ("mask.png", PNG, "image/png")},
    ),
    _op(
        "POST /images/variations",
        "CreateImageVariation",
        lambda c, a: c.images.create_variation(**a),
        args={"model": "dall-e-2", "n": 1, "size": "256x256"},
        files={"image": ("cat.png", PNG, "image/png")},
    ),
    # --- audio
    _op(
        "POST /audio/speech",
        "CreateSpeech",
        lambda c, a: c.audio.speech.create(**a),
        args={"model": "gpt-4o-mini-tts", "voice": "alloy", "input": "Hello", "response_format": "mp3"},
    ),
    _op(
        "POST /audio/transcriptions",
        "CreateTranscription",
        lambda c, a: c.audio.transcriptions.create(**a),
        args={"model": "gpt-4o-transcribe", "language": "en", "temperature": 0, "include": ["logprobs"]},
        files={"file": ("speech.mp3", MP3, "audio/mpeg")},
    ),
    _op(
        "POST /audio/translations",
        "CreateTranslation",
        lambda c, a: c.audio.translations.create(**a),
        args={"model": "whisper-1", "prompt": "Hi"},
        files={"file": ("speech.mp3", MP3, "audio/mpeg")},
    ),
    # --- assistants
    _op(
        "POST /assistants",
        "CreateAssistant",
        lambda c, a: c.beta.assistants.create(**a),
        args={"model": "gpt-4o", "name": "Helper", "tools": [{"type": "code_interpreter"}], "top_p": 1},
    ),
    _op("GET /assistants", "ListAssistants", lambda c, a: c.beta.assistants.list(**a), args={"limit": 2}),
    _op(
        "GET /assistants/{assistant_id}",
        "GetAssistant",
        lambda c, a: c.beta.assistants.retrieve(**a),
        args={"assistant_id": "asst_1"},
    ),
    _op(
        "POST /assistants/{assistant_id}",
        "ModifyAssistant",
        lambda c, a: c.beta.assistants.update(**a),
        args={"assistant_id": "asst_1", "name": "Renamed", "metadata": {"k": "v"}},
    ),
    _op(
        "DELETE /assistants/{assistant_id}",
        "DeleteAssistant",
        lambda c, a: c.beta.assistants.delete(**a),
        args={"assistant_id": "asst_1"},
    ),
    # --- threads and messages
    _op(
        "POST /threads",
        "CreateThread",
        lambda c, a: c.beta.threads.create(**a),
        args={"messages": [{"role": "user", "content": "Hi"}], "metadata": {"k": "v"}},
    ),
    _op(
        "GET /threads/{thread_id}",
        "GetThread",
        lambda c, a: c.beta.threads.retrieve(**a),
        args={"thread_id": "thread_1"},
    ),
    _op(
        "POST /threads/{thread_id}",
        "ModifyThread",
        lambda c, a: c.beta.threads.update(**a),
        args={"thread_id": "thread_1", "metadata": {"k": "v"}},
    ),
    _op(
        "DELETE /threads/{thread_id}",
        "DeleteThread",
        lambda c, a: c.beta.threads.delete(**a),
        args={"thread_id": "thread_1"},
    ),
    _op(
        "POST /threads/{thread_id}/messages",
        "CreateMessage",
        lambda c, a: c.beta.threads.messages.create(**a),
        args={"thread_id": "thread_1", "role": "user", "content": "Hello"},
    ),
    _op(
        "GET /threads/{thread_id}/messages",
        "ListMessages",
        lambda c, a: c.beta.threads.messages.list(**a),
        args={"thread_id": "thread_1", "limit": 2, "order": "desc", "run_id": "run_1"},
    ),
    _op(
        "GET /threads/{thread_id}/messages/{message_id}",
        "GetMessage",
        lambda c, a: c.beta.threads.messages.retrieve(**a),
        args={"thread_id": "thread_1", "message_id": "msg_1"},
    ),
    _op(
        "POST /threads/{thread_id}/messages/{message_id}",
        "ModifyMessage",
        lambda c, a: c.beta.threads.messages.update(**a),
        args={"thread_id": "thread_1", "message_id": "msg_1", "metadata": {"k": "v"}},
    ),
    _op(
        "DELETE /threads/{thread_id}/messages/{message_id}",
        "DeleteMessage",
        lambda c, a: c.beta.threads.messages.delete(**a),
        args={"thread_id": "thread_1", "message_id": "msg_1"},
    ),
    # --- runs
    _op(
        "POST /threads/runs",
        "CreateThreadAndRun",
        lambda c, a: c.beta.threads.create_and_run(**a),
        args={"assistant_id": "asst_1", "thread": {"messages": [{"role": "user", "content": "Hi"}]}},
    ),
    _op(
        "POST /threads/runs",
        "StreamThreadAndRun",
        lambda c, a: c.beta.threads.create_and_run(**a, stream=True),
        args={"assistant_id": "asst_1"},
        stream=True,
    ),
    _op(
        "POST /threads/{thread_id}/runs",
        "CreateRun",
        lambda c, a: c.beta.threads.runs.create(**a),
        args={"thread_id": "thread_1", "assistant_id": "asst_1", "include": STEP_INCLUDE, "temperature": 0.5},
    ),
    _op(
        "POST /threads/{thread_id}/runs",
        "StreamRun",
        lambda c, a: c.beta.threads.runs.create(**a, stream=True),
        args={"thread_id": "thread_1", "assistant_id": "asst_1", "include": STEP_INCLUDE},
        stream=True,
    ),
    _op(
        "GET /threads/{thread_id}/runs",
        "ListRuns",
        lambda c, a: c.beta.threads.runs.list(**a),
        args={"thread_id": "thread_1", "limit": 2, "before": "run_9"},
    ),
    _op(
        "GET /threads/{thread_id}/runs/{run_id}",
        "GetRun",
        lambda c, a: c.beta.threads.runs.retrieve(**a),
        args={"thread_id": "thread_1", "run_id": "run_1"},
    ),
    _op(
        "POST /threads/{thread_id}/runs/{run_id}",
        "ModifyRun",
        lambda c, a: c.beta.threads.runs.update(**a),
        args={"thread_id": "thread_1", "run_id": "run_1", "metadata": {"k": "v"}},
    ),
    _op(
        "POST /threads/{thread_id}/runs/{run_id}/cancel",
        "CancelRun",
        lambda c, a: c.beta.threads.runs.cancel(**a),
        args={"thread_id": "thread_1", "run_id": "run_1"},
    ),
    _op(
        "POST /threads/{thread_id}/runs/{run_id}/submit_tool_outputs",
        "SubmitToolOutputs",
        lambda c, a: c.beta.threads.runs.submit_tool_outputs(**a),
        args={
            "thread_id": "thread_1",
            "run_id": "run_1",
            "tool_outputs": [{"tool_call_id": "call_1", "output": "42"}],
        },
    ),
    _op(
        "POST /threads/{thread_id}/runs/{run_id}/submit_tool_outputs",
        "StreamSubmitToolOutputs",
        lambda c, a: c.beta.threads.runs.submit_tool_outputs(**a, stream=True),
        args={
            "thread_id": "thread_1",
            "run_id": "run_1",
            "tool_outputs": [{"tool_call_id": "call_1", "output": "42"}],
        },
        stream=True,
    ),
    _op(
        "GET /threads/{thread_id}/runs/{run_id}/steps",
        "ListRunSteps",
        lambda c, a: c.beta.threads.runs.steps.list(**a),
        args={"thread_id": "thread_1", "run_id": "run_1", "include": STEP_INCLUDE, "limit": 2},
    ),
    _op(
        "GET /threads/{thread_id}/runs/{run_id}/steps/{step_id}",
        "GetRunStep",
        lambda c, a: c.beta.threads.runs.steps.retrieve(**a),
        args={"thread_id": "thread_1", "run_id": "run_1", "step_id": "step_1", "include": STEP_INCLUDE},
    ),
    # --- vector stores
    _op(
        "POST /vector_stores",
        "CreateVectorStore",
        lambda c, a: c.vector_stores.create(**a),
        args={
            "name": "docs",
            "file_ids": ["file-1"],
            "expires_after": {"anchor": "last_active_at", "days": 7},
        },
    ),
    _op("GET /vector_stores", "ListVectorStores", lambda c, a: c.vector_stores.list(**a), args={"limit": 2}),
    _op(
        "GET /vector_stores/{vector_store_id}",
        "GetVectorStore",
        lambda c, a: c.vector_stores.retrieve(**a),
        args={"vector_store_id": "vs_1"},
    ),
    _op(
        "POST /vector_stores/{vector_store_id}",
        "ModifyVectorStore",
        lambda c, a: c.vector_stores.update(**a),
        args={"vector_store_id": "vs_1", "name": "renamed"},
    ),
    _op(
        "DELETE /vector_stores/{vector_store_id}",
        "DeleteVectorStore",
        lambda c, a: c.vector_stores.delete(**a),
        args={"vector_store_id": "vs_1"},
    ),
    _op(
        "POST /vector_stores/{vector_store_id}/search",
        "SearchVectorStore",
        lambda c, a: c.vector_stores.search(**a),
        args={
            "vector_store_id": "vs_1",
            "query": "return policy",
            "max_num_results": 3,
            "rewrite_query": True,
        },
    ),
    _op(
        "POST /vector_stores/{vector_store_id}/files",
        "CreateVectorStoreFile",
        lambda c, a: c.vector_stores.files.create(**a),
        args={"vector_store_id": "vs_1", "file_id": "file-1", "attributes": {"a": "b", "n": 2}},
    ),
    _op(
        "GET /vector_stores/{vector_store_id}/files",
        "ListVectorStoreFiles",
        lambda c, a: c.vector_stores.files.list(**a),
        args={"vector_store_id": "vs_1", "filter": "completed", "limit": 2},
    ),
    _op(
        "GET /vector_stores/{vector_store_id}/files/{file_id}",
        "GetVectorStoreFile",
        lambda c, a: c.vector_stores.files.retrieve(**a),
        args={"vector_store_id": "vs_1", "file_id": "file-1"},
    ),
    _op(
        "POST /vector_stores/{vector_store_id}/files/{file_id}",
        "UpdateVectorStoreFileAttributes",
        lambda c, a: c.vector_stores.files.update(**a),
        args={"vector_store_id": "vs_1", "file_id": "file-1", "attributes": {"a": "c"}},
    ),
    _op(
        "DELETE /vector_stores/{vector_store_id}/files/{file_id}",
        "DeleteVectorStoreFile",
        lambda c, a: c.vector_stores.files.delete(**a),
        args={"vector_store_id": "vs_1", "file_id": "file-1"},
    ),
    _op(
        "GET /vector_stores/{vector_store_id}/files/{file_id}/content",
        "GetVectorStoreFileContent",
        lambda c, a: c.vector_stores.files.content(**a),
        args={"vector_store_id": "vs_1", "file_id": "file-1"},
    ),
    _op(
        "POST /vector_stores/{vector_store_id}/file_batches",
        "CreateVectorStoreFileBatch",
        lambda c, a: c.vector_stores.file_batches.create(**a),
        args={"vector_store_id": "vs_1", "file_ids": ["file-1", "file-2"]},
    ),
    _op(
        "GET /vector_stores/{vector_store_id}/file_batches/{batch_id}",
        "GetVectorStoreFileBatch",
        lambda c, a: c.vector_stores.file_batches.retrieve(**a),
        args={"vector_store_id": "vs_1", "batch_id": "vsfb_1"},
    ),
    _op(
        "POST /vector_stores/{vector_store_id}/file_batches/{batch_id}/cancel",
        "CancelVectorStoreFileBatch",
        lambda c, a: c.vector_stores.file_batches.cancel(**a),
        args={"vector_store_id": "vs_1", "batch_id": "vsfb_1"},
    ),
    _op(
        "GET /vector_stores/{vector_store_id}/file_batches/{batch_id}/files",
        "ListVectorStoreFileBatchFiles",
        lambda c, a: c.vector_stores.file_batches.list_files(**a),
        args={"vector_store_id": "vs_1", "batch_id": "vsfb_1", "limit": 2},
    ),
    # --- fine-tuning
    _op(
        "POST /fine_tuning/jobs",
        "CreateFineTuningJob",
        lambda c, a: c.fine_tuning.jobs.create(**a),
        args={"model": "gpt-4o-mini", "training_file": "file-abc", "suffix": "demo", "seed": 7},
    ),
    _op(
        "GET /fine_tuning/jobs",
        "ListFineTuningJobs",
        lambda c, a: c.fine_tuning.jobs.list(**a),
        args={"limit": 2, "metadata": {"k": "v"}},
    ),
    _op(
        "GET /fine_tuning/jobs/{fine_tuning_job_id}",
        "GetFineTuningJob",
        lambda c, a: c.fine_tuning.jobs.retrieve(**a),
        args={"fine_tuning_job_id": "ftjob-1"},
    ),
    _op(
        "POST /fine_tuning/jobs/{fine_tuning_job_id}/cancel",
        "CancelFineTuningJob",
        lambda c, a: c.fine_tuning.jobs.cancel(**a),
        args={"fine_tuning_job_id": "ftjob-1"},
    ),
    _op(
        "POST /fine_tuning/jobs/{fine_tuning_job_id}/pause",
        "PauseFineTuningJob",
        lambda c, a: c.fine_tuning.jobs.pause(**a),
        args={"fine_tuning_job_id": "ftjob-1"},
    ),
    _op(
        "POST /fine_tuning/jobs/{fine_tuning_job_id}/resume",
        "ResumeFineTuningJob",
        lambda c, a: c.fine_tuning.jobs.resume(**a),
        args={"fine_tuning_job_id": "ftjob-1"},
    ),
    _op(
        "GET /fine_tuning/jobs/{fine_tuning_job_id}/events",
        "ListFineTuningEvents",
        lambda c, a: c.fine_tuning.jobs.list_events(**a),
        args={"fine_tuning_job_id": "ftjob-1", "limit": 2},
    ),
    _op(
        "GET /fine_tuning/jobs/{fine_tuning_job_id}/checkpoints",
        "ListFineTuningCheckpoints",
        lambda c, a: c.fine_tuning.jobs.checkpoints.list(**a),
        args={"fine_tuning_job_id": "ftjob-1", "limit": 2},
    ),
    # --- responses
    _op(
        "POST /responses",
        "CreateResponse",
        lambda c, a: c.responses.create(**a),
        args={
            "model": "gpt-4o-mini",
            "input": "Say hi",
            "instructions": "Be brief.",
            "max_output_tokens": 64,
            "include": ["reasoning.encrypted_content"],
            "text": {"format": {"type": "text"}},
            "store": False,
        },
    ),
    _op(
        "POST /responses",
        "StreamResponse",
        lambda c, a: c.responses.create(**a, stream=True),
        args={"model": "gpt-4o-mini", "input": "Say hi"},
        stream=True,
    ),
    _op(
        "POST /responses/input_tokens",
        "CountInputTokens",
        lambda c, a: c.responses.input_tokens.count(**a),
        args={"model": "gpt-4o-mini", "input": "Say hi"},
    ),
    _op(
        "GET /responses/{response_id}",
        "GetResponse",
        lambda c, a: c.responses.retrieve(**a),
        args={"response_id": "resp_1", "include": RESPONSE_INCLUDE},
    ),
    _op(
        "DELETE /responses/{response_id}",
        "DeleteResponse",
        lambda c, a: c.responses.delete(**a),
        args={"response_id": "resp_1"},
    ),
    _op(
        "POST /responses/{response_id}/cancel",
        "CancelResponse",
        lambda c, a: c.responses.cancel(**a),
        args={"response_id": "resp_1"},
    ),
    _op(
        "GET /responses/{response_id}/input_items",
        "ListInputItems",
        lambda c, a: c.responses.input_items.list(**a),
        args={"response_id": "resp_1", "include": RESPONSE_INCLUDE, "limit": 2, "order": "asc"},
    ),
    # --- conversations
    _op(
        "POST /conversations",
        "CreateConversation",
        lambda c, a: c.conversations.create(**a),
        args={"items": ITEMS, "metadata": {"topic": "demo"}},
    ),
    _op(
        "GET /conversations/{conversation_id}",
        "GetConversation",
        lambda c, a: c.conversations.retrieve(**a),
        args={"conversation_id": "conv_1"},
    ),
    _op(
        "POST /conversations/{conversation_id}",
        "UpdateConversation",
        lambda c, a: c.conversations.update(**a),
        args={"conversation_id": "conv_1", "metadata": {"topic": "other"}},
    ),
    _op(
        "DELETE /conversations/{conversation_id}",
        "DeleteConversation",
        lambda c, a: c.conversations.delete(**a),
        args={"conversation_id": "conv_1"},
    ),
    _op(
        "POST /conversations/{conversation_id}/items",
        "CreateConversationItems",
        lambda c, a: c.conversations.items.create(**a),
        args={"conversation_id": "conv_1", "items": ITEMS, "include": ["message.output_text.logprobs"]},
    ),
    _op(
        "GET /conversations/{conversation_id}/items",
        "ListConversationItems",
        lambda c, a: c.conversations.items.list(**a),
        args={"conversation_id": "conv_1", "include": RESPONSE_INCLUDE, "limit": 2},
    ),
    _op(
        "GET /conversations/{conversation_id}/items/{item_id}",
        "GetConversationItem",
        lambda c, a: c.conversations.items.retrieve(**a),
        args={"conversation_id": "conv_1", "item_id": "msg_1", "include": RESPONSE_INCLUDE},
    ),
    _op(
        "DELETE /conversations/{conversation_id}/items/{item_id}",
        "DeleteConversationItem",
        lambda c, a: c.conversations.items.delete(**a),
        args={"conversation_id": "conv_1", "item_id": "msg_1"},
    ),
    # --- uploads
    _op(
        "POST /uploads",
        "CreateUpload",
        lambda c, a: c.uploads.create(**a),
        args={"bytes": 1024, "filename": "train.jsonl", "mime_type": "text/jsonl", "purpose": "fine-tune"},
    ),
    _op(
        "POST /uploads/{upload_id}/parts",
        "AddUploadPart",
        lambda c, a: c.uploads.parts.create(**a),
        args={"upload_id": "upload_1"},
        files={"data": ("part", JSONL, "application/octet-stream")},
    ),
    _op(
        "POST /uploads/{upload_id}/complete",
        "CompleteUpload",
        lambda c, a: c.uploads.complete(**a),
        args={"upload_id": "upload_1", "part_ids": ["part_1", "part_2"]},
    ),
    _op(
        "POST /uploads/{upload_id}/cancel",
        "CancelUpload",
        lambda c, a: c.uploads.cancel(**a),
        args={"upload_id": "upload_1"},
    ),
]
