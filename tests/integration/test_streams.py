"""Server-streaming RPCs end to end: a real grpc.aio gateway relaying the fake upstream's SSE
streams and binary downloads.

Covers every streaming RPC of the contract (taken from the route table), usage chunks, cut
streams and in-stream errors, split writes, retries before the first message, cancellation
and deadlines (the upstream must be closed at once), a thousand cancelled streams leaving
nothing behind, the generated Python stubs, and byte-exact speech and file downloads.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from openai_grpc.v1 import chat_pb2, chat_pb2_grpc
from openai_grpc_server import routes
from openai_grpc_server.fake_upstream import FakeUpstream, Step, pattern_sha256, stream_text
from openai_grpc_server.resilience import RetryConfig

from tests.support.gateway import Gateway, settings_for, start_gateway, stop_gateway
from tests.support.rich_status import error_info
from tests.support.sse_examples import IMAGE_SSE

STREAMING = [r for r in routes.load_routes() if r.kind in (routes.Kind.EVENTS, routes.Kind.BINARY)]
CHAT_ROUTE = "POST /chat/completions"
TIMEOUT = 10.0
DEFAULT_CHUNKS = 8  # FakeConfig.chunks

CHAT_REQUEST: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content_text": "hi"}]}

# A minimal valid request for each streaming RPC, and what its last event must look like.
MINIMAL: dict[str, dict[str, Any]] = {
    "StreamChatCompletion": CHAT_REQUEST,
    "StreamCompletion": {"model": "gpt-3.5-turbo-instruct", "prompt_text": "Say hi"},
    "StreamResponse": {"model": "gpt-4o-mini", "input_text": "hi"},
    "StreamRun": {"thread_id": "thread_abc123", "assistant_id": "asst_abc123"},
    "StreamThreadAndRun": {"assistant_id": "asst_abc123", "thread": {"messages": []}},
    "StreamSubmitToolOutputs": {
        "thread_id": "thread_abc123",
        "run_id": "run_abc123",
        "tool_outputs": [{"tool_call_id": "call_abc123", "output": "42"}],
    },
    "StreamImage": {"prompt": "a sea otter", "model": "gpt-image-1", "partial_images": 1},
    "CreateSpeech": {"model": "gpt-4o-mini-tts", "input": "Hello there", "preset": "alloy"},
    "DownloadFileContent": {"file_id": "file-size-300001"},
}


def _last_event_ok(name: str, event: Any) -> bool:
    if name == "StreamChatCompletion":
        return bool(event.choices) and event.choices[0].finish_reason == "stop"
    if name == "StreamCompletion":
        return bool(event.choices) and event.choices[0].finish_reason == "stop"
    if name == "StreamResponse":
        return bool(event.type == "response.completed" and event.response.status == "completed")
    if name in ("StreamRun", "StreamThreadAndRun", "StreamSubmitToolOutputs"):
        return bool(event.event == "thread.run.completed" and event.run.status == "completed")
    if name == "StreamImage":
        return bool(event.type == "image_generation.completed" and event.usage.total_tokens == 100)
    raise AssertionError(f"no last-event rule for {name}")


# --- helpers ---------------------------------------------------------------------------------


async def drain(call: Any) -> tuple[list[Any], grpc.aio.AioRpcError | None]:
    """Every message of a server stream, and the error that ended it (None on OK)."""
    got: list[Any] = []
    try:
        async for msg in call:
            got.append(msg)
    except grpc.aio.AioRpcError as exc:
        return got, exc
    return got, None


def events_of(messages: list[Any]) -> list[Any]:
    return [e for m in messages for e in m.events]


def chat_text(messages: list[Any]) -> str:
    return "".join(c.delta.content for e in events_of(messages) for c in e.choices)


def chat_call(gateway: Gateway, timeout: float = TIMEOUT, **fields: Any) -> Any:
    request = gateway.request("StreamChatCompletion", **{**CHAT_REQUEST, **fields})
    return gateway.server_stream("StreamChatCompletion")(request, timeout=timeout)


async def wait_until(cond: Callable[[], bool], within: float, step: float = 0.005) -> bool:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(step)
    return True


def assert_interrupted(err: grpc.aio.AioRpcError | None, delivered: int) -> None:
    assert err is not None, "the stream ended OK although the upstream stream was cut"
    assert err.code() == grpc.StatusCode.ABORTED, (err.code(), err.details())
    info = error_info(err)
    assert info.reason == "STREAM_INTERRUPTED"
    assert info.metadata["messagesDelivered"] == str(delivered)


# --- every streaming RPC ---------------------------------------------------------------------


def test_every_streaming_rpc_has_a_minimal_request() -> None:
    assert {r.name for r in STREAMING} == set(MINIMAL)


@pytest.mark.parametrize("route", STREAMING, ids=[r.name for r in STREAMING])
async def test_streaming_rpc(route: routes.Route, gateway: Gateway, clean_fake: FakeUpstream) -> None:
    if route.name == "StreamImage":
        clean_fake.script(
            "POST /images/generations",
            Step(raw_body=IMAGE_SSE, content_type="text/event-stream; charset=utf-8"),
        )
    request = gateway.request(route.name, **MINIMAL[route.name])
    call = gateway.server_stream(route.name)(request, timeout=TIMEOUT)
    messages, err = await drain(call)
    assert err is None, (err.code(), err.details())
    assert messages

    sent = clean_fake.requests
    assert len(sent) == 1, [r.path for r in sent]
    upstream = sent[0]
    assert upstream.method == route.http_method
    trailing = dict(await call.trailing_metadata())
    assert trailing.get("x-request-id") == upstream.request_id

    if route.kind is routes.Kind.EVENTS:
        assert upstream.json["stream"] is True
        events = events_of(messages)
        assert all(m.events for m in messages), "a message without events"
        assert _last_event_ok(route.name, events[-1]), events[-1]
        if route.name == "StreamChatCompletion":
            assert chat_text(messages) == stream_text(DEFAULT_CHUNKS)
        return

    data = b"".join(m.chunk.data for m in messages)
    assert messages[0].chunk.HasField("content_type")
    assert not any(m.chunk.HasField("content_type") for m in messages[1:])
    if route.name == "CreateSpeech":
        assert "stream" not in upstream.json
        assert upstream.json["voice"] == "alloy"
        assert messages[0].chunk.content_type == "audio/mpeg"
        assert hashlib.sha256(data).hexdigest() == pattern_sha256("speech", clean_fake.config.speech_bytes)
    else:
        assert upstream.path == "/v1/files/file-size-300001/content"
        assert len(data) == 300_001
        assert hashlib.sha256(data).hexdigest() == pattern_sha256("file-size-300001", 300_001)


async def test_image_stream_events_decode(gateway: Gateway, clean_fake: FakeUpstream) -> None:
    # The same image events followed by [DONE]: isolates decoding from how the stream ends.
    clean_fake.script(
        "POST /images/generations",
        Step(raw_body=IMAGE_SSE + "data: [DONE]\n\n", content_type="text/event-stream"),
    )
    request = gateway.request("StreamImage", **MINIMAL["StreamImage"])
    messages, err = await drain(gateway.server_stream("StreamImage")(request, timeout=TIMEOUT))
    assert err is None, (err.code(), err.details())
    partial, completed = events_of(messages)
    assert partial.type == "image_generation.partial_image"
    assert partial.partial_image_index == 0
    assert partial.b64_json == "aGVsbG8="
    assert completed.type == "image_generation.completed"
    assert not completed.HasField("partial_image_index")
    assert completed.usage.input_tokens_details.image_tokens == 40
    assert clean_fake.requests[0].json["partial_images"] == 1


# --- usage chunks ----------------------------------------------------------------------------


async def test_include_usage_delivers_the_usage_only_chunk(
    gateway: Gateway, clean_fake: FakeUpstream
) -> None:
    messages, err = await drain(chat_call(gateway, stream_options={"include_usage": True}))
    assert err is None, (err.code(), err.details())
    assert clean_fake.requests[0].json["stream_options"] == {"include_usage": True}
    events = events_of(messages)
    last = events[-1]
    assert len(last.choices) == 0
    assert last.HasField("usage")
    assert last.usage.total_tokens == 19 + DEFAULT_CHUNKS
    assert last.usage.completion_tokens == DEFAULT_CHUNKS
    # The API sends "usage": null on the other chunks: they must not grow an empty usage.
    assert not any(e.HasField("usage") for e in events[:-1])
    assert events[-2].choices[0].finish_reason == "stop"


async def test_without_include_usage_there_is_no_usage_chunk(
    gateway: Gateway, clean_fake: FakeUpstream
) -> None:
    """The gateway asks upstream for usage anyway (metrics, token limiter) and hides the chunk."""
    messages, err = await drain(chat_call(gateway))
    assert err is None, (err.code(), err.details())
    assert clean_fake.requests[0].json["stream_options"] == {"include_usage": True}
    events = events_of(messages)
    assert all(e.choices for e in events)
    assert not any(e.HasField("usage") for e in events)
    assert events[-1].choices[0].finish_reason == "stop"


# --- cut streams and in-stream errors --------------------------------------------------------


@pytest.mark.parametrize("clean_close", [False, True], ids=["connection-cut", "clean-close-without-done"])
async def test_cut_stream_is_aborted_with_messages_delivered(
    clean_close: bool, gateway: Gateway, clean_fake: FakeUpstream
) -> None:
    clean_fake.script(CHAT_ROUTE, Step(cut_after=3, cut_clean=clean_close))
    messages, err = await drain(chat_call(gateway))
    assert_interrupted(err, len(messages))
    assert messages, "the events sent before the cut were lost"
    assert len(events_of(messages)) == 3
    assert chat_text(messages) == stream_text(2)


async def test_in_stream_error_event_maps_to_its_status(gateway: Gateway, clean_fake: FakeUpstream) -> None:
    clean_fake.script(
        CHAT_ROUTE, Step(error_event_after=2, error_type="server_error", message="boom upstream")
    )
    messages, err = await drain(chat_call(gateway))
    assert err is not None, "the stream ended OK despite an error event"
    assert err.code() == grpc.StatusCode.INTERNAL, (err.code(), err.details())
    assert "boom upstream" in (err.details() or "")
    info = error_info(err)
    assert info.reason == "UPSTREAM_INTERNAL"
    assert info.metadata["openaiType"] == "server_error"
    if messages:
        assert info.metadata["messagesDelivered"] == str(len(messages))


def _chat_sse(*events: dict[str, Any]) -> str:
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events)


def _chat_chunk(content: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-raw",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }


@pytest.mark.parametrize("one_write", [False, True], ids=["separate-writes", "one-write"])
async def test_events_before_an_error_event_reach_the_caller(
    one_write: bool, gateway: Gateway, clean_fake: FakeUpstream
) -> None:
    # Two content events, then an error event. Written separately they arrive in separate
    # reads; in one write (as a busy upstream often does) the gateway reads all three at once:
    # either way the two events came before the error and must reach the caller.
    if one_write:
        body = _chat_sse(
            _chat_chunk("Hello"),
            _chat_chunk(" world"),
            {"error": {"message": "boom", "type": "server_error", "param": None, "code": None}},
        )
        clean_fake.script(CHAT_ROUTE, Step(raw_body=body, content_type="text/event-stream"))
    else:
        clean_fake.script(CHAT_ROUTE, Step(error_event_after=2, error_type="server_error"))
    messages, err = await drain(chat_call(gateway))
    assert err is not None
    assert err.code() == grpc.StatusCode.INTERNAL, (err.code(), err.details())
    assert len(events_of(messages)) == 2, "events that preceded the error event were dropped"
    assert error_info(err).metadata.get("messagesDelivered") == str(len(messages))


@pytest.mark.parametrize(
    ("error_type", "code"),
    [
        ("invalid_request_error", grpc.StatusCode.INVALID_ARGUMENT),
        ("rate_limit_exceeded", grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("overloaded_error", grpc.StatusCode.UNAVAILABLE),
    ],
)
async def test_in_stream_error_types(
    error_type: str, code: grpc.StatusCode, gateway: Gateway, clean_fake: FakeUpstream
) -> None:
    clean_fake.script(CHAT_ROUTE, Step(error_event_after=1, error_type=error_type, gap_ms=5))
    _, err = await drain(chat_call(gateway))
    assert err is not None
    assert err.code() == code, (err.code(), err.details())


async def test_responses_error_event_maps_to_its_status(gateway: Gateway, clean_fake: FakeUpstream) -> None:
    clean_fake.script("POST /responses", Step(error_event_after=3, error_code="server_error", gap_ms=5))
    request = gateway.request("StreamResponse", **MINIMAL["StreamResponse"])
    _, err = await drain(gateway.server_stream("StreamResponse")(request, timeout=TIMEOUT))
    assert err is not None
    assert err.code() == grpc.StatusCode.INTERNAL, (err.code(), err.details())


async def test_cut_download_is_aborted_with_messages_delivered(
    gateway: Gateway, clean_fake: FakeUpstream
) -> None:
    file_id = "file-size-1048576"
    clean_fake.script(f"GET /files/{file_id}/content", Step(cut_after_bytes=300_000, gap_ms=2))
    request = gateway.request("DownloadFileContent", file_id=file_id)
    messages, err = await drain(gateway.server_stream("DownloadFileContent")(request, timeout=TIMEOUT))
    assert_interrupted(err, len(messages))
    data = b"".join(m.chunk.data for m in messages)
    assert 0 < len(data) <= 300_000
    assert hashlib.sha256(data).hexdigest() == pattern_sha256(file_id, len(data))


# --- split writes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "step",
    [Step(split=1), Step(split_seed=7), Step(split=5, split_seed=12345)],
    ids=["one-byte-writes", "random-seed-7", "random-1-5"],
)
async def test_split_writes_decode_to_the_same_events(
    step: Step, gateway: Gateway, clean_fake: FakeUpstream
) -> None:
    reference, err = await drain(chat_call(gateway))
    assert err is None
    clean_fake.script(CHAT_ROUTE, step)
    split, err = await drain(chat_call(gateway))
    assert err is None, (err.code(), err.details())
    assert events_of(split) == events_of(reference)
    assert chat_text(split) == stream_text(DEFAULT_CHUNKS)


# --- retries ---------------------------------------------------------------------------------


@pytest.fixture
async def retrying_gateway(fake: FakeUpstream) -> AsyncIterator[Gateway]:
    gw = await start_gateway(
        settings_for(fake.base_url, retry=RetryConfig(max_retries=2, initial_backoff=0.01))
    )
    try:
        yield gw
    finally:
        await stop_gateway(gw)


@pytest.mark.parametrize(
    "failure",
    [Step(status=503), Step(drop=True), Step(cut_after=0)],
    ids=["http-503", "connection-dropped", "closed-before-first-event"],
)
async def test_failure_before_first_message_is_retried(
    failure: Step, retrying_gateway: Gateway, clean_fake: FakeUpstream
) -> None:
    clean_fake.script(CHAT_ROUTE, failure, Step())
    messages, err = await drain(chat_call(retrying_gateway))
    assert err is None, (err.code(), err.details())
    assert chat_text(messages) == stream_text(DEFAULT_CHUNKS)
    assert len(clean_fake.requests_for(CHAT_ROUTE)) == 2


async def test_failure_after_first_message_is_not_retried(
    retrying_gateway: Gateway, clean_fake: FakeUpstream
) -> None:
    clean_fake.script(CHAT_ROUTE, Step(cut_after=4, gap_ms=5), Step())
    messages, err = await drain(chat_call(retrying_gateway))
    assert_interrupted(err, len(messages))
    assert len(clean_fake.requests_for(CHAT_ROUTE)) == 1


# --- cancellation and deadlines --------------------------------------------------------------

SLOW = Step(chunks=200, gap_ms=20)


@pytest.mark.parametrize("after", [1, 3])
async def test_cancel_closes_the_upstream_within_100ms(
    after: int, gateway: Gateway, clean_fake: FakeUpstream
) -> None:
    clean_fake.script(CHAT_ROUTE, SLOW)
    call = chat_call(gateway)
    received = 0
    async for _ in call:
        received += 1
        if received == after:
            break
    assert clean_fake.stats.open_streams == 1
    started = time.monotonic()
    call.cancel()
    assert await clean_fake.wait_for_disconnects(1, within=0.1), (
        f"upstream still open {time.monotonic() - started:.3f}s after the caller cancelled"
    )
    assert await clean_fake.wait_until_idle(within=0.5)
    assert clean_fake.stats.streams_completed == 0


async def test_deadline_exceeded_closes_the_upstream(gateway: Gateway, clean_fake: FakeUpstream) -> None:
    clean_fake.script(CHAT_ROUTE, SLOW)
    messages, err = await drain(chat_call(gateway, timeout=0.3))
    assert err is not None
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (err.code(), err.details())
    assert messages, "nothing arrived before the deadline"
    assert await clean_fake.wait_for_disconnects(1, within=0.5)
    assert await clean_fake.wait_until_idle(within=0.5)
    assert clean_fake.stats.streams_completed == 0


@pytest.mark.slow
async def test_a_thousand_cancelled_streams_leave_nothing_behind(fake: FakeUpstream) -> None:
    fake.reset()
    gw = await start_gateway(settings_for(fake.base_url))
    try:
        warm, err = await drain(chat_call(gw))  # connect the channel and the upstream pool
        assert err is None and warm
        await asyncio.sleep(0.05)
        tasks_before = len(asyncio.all_tasks())
        connections_before = fake.open_connections

        total, concurrency = 1000, 50
        fake.script(CHAT_ROUTE, Step(chunks=200, gap_ms=20, repeat=total))
        gate = asyncio.Semaphore(concurrency)
        received: list[int] = []

        async def one(i: int) -> None:
            async with gate:
                call = chat_call(gw, timeout=5)
                wanted = i % 4  # 0: cancel before anything arrives
                n = 0
                if wanted:
                    async for _ in call:
                        n += 1
                        if n == wanted:
                            break
                call.cancel()
                received.append(n)

        started = time.monotonic()
        async with asyncio.timeout(20):
            await asyncio.gather(*(one(i) for i in range(total)))
        elapsed = time.monotonic() - started
        assert len(received) == total
        assert sum(1 for n in received if n) == 750

        assert await fake.wait_until_idle(within=5.0), (
            f"{fake.stats.open_streams} upstream streams still open"
        )
        assert fake.stats.streams_completed == 1  # the warm-up only
        assert await wait_until(lambda: fake.open_connections <= connections_before, within=5.0), (
            f"{fake.open_connections} upstream connections open, {connections_before} before"
        )
        settled = await wait_until(lambda: len(asyncio.all_tasks()) <= tasks_before + 5, within=5.0)
        assert settled, f"{len(asyncio.all_tasks())} asyncio tasks pending, {tasks_before} before the streams"
        assert elapsed < 20
    finally:
        fake.clear_script()
        await stop_gateway(gw)


# --- generated stubs, speech, downloads ------------------------------------------------------


async def test_python_stub_consumes_a_chat_stream(gateway: Gateway, clean_fake: FakeUpstream) -> None:
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        request = chat_pb2.StreamChatCompletionRequest(
            model="gpt-4o-mini",
            messages=[chat_pb2.ChatCompletionRequestMessage(role="user", content_text="Say hello")],
        )
        call = stub.StreamChatCompletion(request, timeout=TIMEOUT)
        chunks: list[chat_pb2.ChatCompletionChunk] = []
        async for response in call:
            assert isinstance(response, chat_pb2.StreamChatCompletionResponse)
            chunks.extend(response.events)
        assert await call.code() == grpc.StatusCode.OK
    text = "".join(c.delta.content for chunk in chunks for c in chunk.choices)
    assert text == stream_text(DEFAULT_CHUNKS)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert {c.model for c in chunks} == {"gpt-4o-mini"}
    assert clean_fake.requests[0].json["messages"] == [{"role": "user", "content": "Say hello"}]


@pytest.mark.parametrize(
    ("fmt", "ctype"), [("mp3", "audio/mpeg"), ("wav", "audio/wav"), ("pcm", "audio/pcm")]
)
async def test_speech_bytes_match(fmt: str, ctype: str, gateway: Gateway, clean_fake: FakeUpstream) -> None:
    request = gateway.request("CreateSpeech", **MINIMAL["CreateSpeech"], response_format=fmt)
    messages, err = await drain(gateway.server_stream("CreateSpeech")(request, timeout=TIMEOUT))
    assert err is None, (err.code(), err.details())
    assert messages[0].chunk.content_type == ctype
    digest = hashlib.sha256()
    for m in messages:
        digest.update(m.chunk.data)
    assert digest.hexdigest() == pattern_sha256("speech", clean_fake.config.speech_bytes)
    assert clean_fake.requests[0].json["response_format"] == fmt


@pytest.mark.parametrize("size", [0, 1, 65_536, 65_537, 5_000_003])
async def test_download_matches_pattern(size: int, gateway: Gateway, clean_fake: FakeUpstream) -> None:
    file_id = f"file-size-{size}"
    request = gateway.request("DownloadFileContent", file_id=file_id)
    call = gateway.server_stream("DownloadFileContent")(request, timeout=TIMEOUT)
    digest = hashlib.sha256()
    total = 0
    async for message in call:
        digest.update(message.chunk.data)
        total += len(message.chunk.data)
    assert await call.code() == grpc.StatusCode.OK
    assert total == size
    assert digest.hexdigest() == pattern_sha256(file_id, size)
