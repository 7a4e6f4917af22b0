"""Response bodies: example JSON with path ids and `model` filled in, and SSE event streams.

Everything without per-request extras is cached as bytes, so the hot path of a benchmark
is a dict lookup plus a write.
"""

from __future__ import annotations

import array
import base64
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from .routes import Endpoint

StreamKind = Literal["chat", "completion", "responses", "assistants"]

# Routes that answer `"stream": true` with SSE, and the event dialect they speak.
STREAM_KINDS: dict[str, StreamKind] = {
    "POST /chat/completions": "chat",
    "POST /completions": "completion",
    "POST /responses": "responses",
    "POST /threads/runs": "assistants",
    "POST /threads/{thread_id}/runs": "assistants",
    "POST /threads/{thread_id}/runs/{run_id}/submit_tool_outputs": "assistants",
}

STREAM_WORDS = (
    "Hello",
    "!",
    " This",
    " is",
    " a",
    " streamed",
    " reply",
    " from",
    " the",
    " fake",
    " OpenAI",
    " upstream",
    ".",
)

_DUMPS_OPTS = orjson.OPT_NON_STR_KEYS


def stream_pieces(n: int) -> list[str]:
    """The text of each of the n content chunks of a stream."""
    return [STREAM_WORDS[i % len(STREAM_WORDS)] for i in range(n)]


def stream_text(n: int) -> str:
    """The full text a client reassembles from an n-chunk stream."""
    return "".join(stream_pieces(n))


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=_DUMPS_OPTS)


def build_body(
    endpoint: Endpoint,
    params: Mapping[str, str],
    model: str | None,
    extra: Mapping[str, Any] | None = None,
) -> Any:
    """The example body with path ids and `model` applied (a shallow copy; the example is shared)."""
    body = endpoint.body
    if not isinstance(body, dict):
        return body
    out = dict(body)
    for name, value in params.items():
        if name in out and name != "model":
            out[name] = value
    if endpoint.id_param is not None and "id" in out and endpoint.id_param in params:
        out["id"] = params[endpoint.id_param]
    if model is not None and "model" in out:
        out["model"] = model
    if extra:
        out.update(extra)
    return out


@functools.lru_cache(maxsize=4096)
def _cached_json(endpoint: Endpoint, params: tuple[tuple[str, str], ...], model: str | None) -> bytes:
    return dumps(build_body(endpoint, dict(params), model))


def render_json(
    endpoint: Endpoint,
    params: Mapping[str, str],
    model: str | None,
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    if extra:
        return dumps(build_body(endpoint, params, model, extra))
    return _cached_json(endpoint, tuple(params.items()), model)


def sse(data: Any, event: str | None = None) -> bytes:
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + dumps(data) + b"\n\n"


DONE = b"data: [DONE]\n\n"
ASSISTANTS_DONE = b"event: done\ndata: [DONE]\n\n"


@dataclass(frozen=True)
class StreamPlan:
    kind: StreamKind
    events: tuple[bytes, ...]  # every event before the terminator
    done: bytes | None  # the terminator ([DONE]) or None (Responses API)

    @functools.cached_property
    def joined(self) -> bytes:
        """The whole stream as one write (FakeConfig.coalesce_streams)."""
        return b"".join(self.events) + (self.done or b"")


def error_event(kind: StreamKind, error: Mapping[str, Any], sequence_number: int) -> bytes:
    """The in-stream error event each dialect uses."""
    if kind == "responses":
        return sse(
            {
                "type": "error",
                "code": error.get("code"),
                "message": error.get("message"),
                "param": error.get("param"),
                "sequence_number": sequence_number,
            },
            "error",
        )
    if kind == "assistants":
        return sse(dict(error), "error")
    return sse({"error": dict(error)})


def _with(obj: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(obj)
    out.update(extra)
    return out


def _chat(base: Mapping[str, Any], n: int, include_usage: bool, extra: Mapping[str, Any]) -> StreamPlan:
    head = {
        "id": base.get("id", "chatcmpl-fake"),
        "object": "chat.completion.chunk",
        "created": base.get("created", 0),
        "model": base.get("model", "gpt-4o"),
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }
    if include_usage:
        # The real API sends "usage": null on every chunk but the last when usage is asked for.
        head["usage"] = None

    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse(_with({**head, "choices": [choice]}, extra))

    events = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
    events += [chunk({"content": piece}, None) for piece in stream_pieces(n)]
    events.append(chunk({}, "stop"))
    if include_usage:
        usage = {"prompt_tokens": 19, "completion_tokens": n, "total_tokens": 19 + n}
        events.append(sse(_with({**head, "choices": [], "usage": usage}, extra)))
    return StreamPlan("chat", tuple(events), DONE)


def _completion(base: Mapping[str, Any], n: int, include_usage: bool, extra: Mapping[str, Any]) -> StreamPlan:
    head = {
        "id": base.get("id", "cmpl-fake"),
        "object": "text_completion",
        "created": base.get("created", 0),
        "model": base.get("model", "gpt-3.5-turbo-instruct"),
        "system_fingerprint": "fp_fake",
    }

    def chunk(text: str, finish: str | None) -> bytes:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
        return sse(_with({**head, "choices": [choice]}, extra))

    events = [chunk(piece, None) for piece in stream_pieces(n)]
    events.append(chunk("", "stop"))
    if include_usage:
        usage = {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n}
        events.append(sse(_with({**head, "choices": [], "usage": usage}, extra)))
    return StreamPlan("completion", tuple(events), DONE)


def _responses(base: Mapping[str, Any], n: int, extra: Mapping[str, Any]) -> StreamPlan:
    text = stream_text(n)
    item_id = "msg_fake0001"
    running = {**base, "status": "in_progress", "output": [], "usage": None, "completed_at": None}
    part_done = {"type": "output_text", "text": text, "annotations": []}
    item_done = {
        "id": item_id,
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [part_done],
    }
    usage = {
        "input_tokens": 36,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": n,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 36 + n,
    }
    done_response = {**base, "status": "completed", "output": [item_done], "usage": usage}
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    items: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": running}),
        ("response.in_progress", {"response": running}),
        (
            "response.output_item.added",
            {"output_index": 0, "item": {**item_done, "status": "in_progress", "content": []}},
        ),
        ("response.content_part.added", {**where, "part": {**part_done, "text": ""}}),
    ]
    items += [("response.output_text.delta", {**where, "delta": p, "logprobs": []}) for p in stream_pieces(n)]
    items += [
        ("response.output_text.done", {**where, "text": text, "logprobs": []}),
        ("response.content_part.done", {**where, "part": part_done}),
        ("response.output_item.done", {"output_index": 0, "item": item_done}),
        ("response.completed", {"response": done_response}),
    ]
    events = tuple(
        sse(_with({"type": name, "sequence_number": seq, **data}, extra), name)
        for seq, (name, data) in enumerate(items)
    )
    return StreamPlan("responses", events, None)


def _assistants(
    run: Mapping[str, Any], thread: Mapping[str, Any] | None, n: int, extra: Mapping[str, Any]
) -> StreamPlan:
    msg_id = "msg_fake0001"
    message = {
        "id": msg_id,
        "object": "thread.message",
        "created_at": run.get("created_at", 0),
        "assistant_id": run.get("assistant_id"),
        "thread_id": run.get("thread_id"),
        "run_id": run.get("id"),
        "status": "in_progress",
        "incomplete_details": None,
        "incomplete_at": None,
        "completed_at": None,
        "role": "assistant",
        "content": [],
        "attachments": [],
        "metadata": {},
    }
    items: list[tuple[str, dict[str, Any]]] = []
    if thread is not None:
        items.append(("thread.created", dict(thread)))
    items += [
        ("thread.run.created", {**run, "status": "queued"}),
        ("thread.run.queued", {**run, "status": "queued"}),
        ("thread.run.in_progress", {**run, "status": "in_progress"}),
        ("thread.message.created", message),
        ("thread.message.in_progress", message),
    ]
    for piece in stream_pieces(n):
        delta = {"content": [{"index": 0, "type": "text", "text": {"value": piece, "annotations": []}}]}
        items.append(
            ("thread.message.delta", {"id": msg_id, "object": "thread.message.delta", "delta": delta})
        )
    text = {"type": "text", "text": {"value": stream_text(n), "annotations": []}}
    items += [
        ("thread.message.completed", {**message, "status": "completed", "content": [text]}),
        (
            "thread.run.completed",
            {
                **run,
                "status": "completed",
                "usage": {"prompt_tokens": 19, "completion_tokens": n, "total_tokens": 19 + n},
            },
        ),
    ]
    events = tuple(sse(_with(data, extra), name) for name, data in items)
    return StreamPlan("assistants", events, ASSISTANTS_DONE)


def build_stream(
    kind: StreamKind,
    base: Mapping[str, Any],
    n: int,
    *,
    include_usage: bool = False,
    thread: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> StreamPlan:
    """The SSE events for a stream of n content chunks, `base` being the non-streamed body."""
    extra = extra or {}
    if kind == "chat":
        return _chat(base, n, include_usage, extra)
    if kind == "completion":
        return _completion(base, n, include_usage, extra)
    if kind == "responses":
        return _responses(base, n, extra)
    return _assistants(base, thread, n, extra)


@functools.lru_cache(maxsize=1024)
def cached_stream(
    kind: StreamKind,
    endpoint: Endpoint,
    *,
    params: tuple[tuple[str, str], ...],
    model: str | None,
    n: int,
    include_usage: bool,
    thread_endpoint: Endpoint | None,
) -> StreamPlan:
    base = build_body(endpoint, dict(params), model)
    thread = build_body(thread_endpoint, {}, None) if thread_endpoint is not None else None
    return build_stream(kind, base, n, include_usage=include_usage, thread=thread)


# text-embedding-3-small answers 1536 dimensions unless `dimensions` asks for fewer.
_DEFAULT_DIMENSIONS = 1536


def embeddings_body(data: Mapping[str, Any], model: str | None) -> bytes | None:
    """A real-sized embeddings answer: one vector per input, `dimensions` floats each, as JSON
    numbers or (with `encoding_format: base64`) little-endian float32 in base64, as OpenAI does."""
    raw = data.get("input")
    if isinstance(raw, str):
        count = 1
    elif isinstance(raw, list) and raw:
        count = 1 if all(isinstance(x, int) for x in raw) else len(raw)
    else:
        return None
    dims = data.get("dimensions")
    dims = dims if isinstance(dims, int) and 0 < dims <= 8192 else _DEFAULT_DIMENSIONS
    b64 = data.get("encoding_format") == "base64"
    return _embeddings(count, dims, b64, model or "text-embedding-3-small")


@functools.lru_cache(maxsize=64)
def _embeddings(count: int, dims: int, b64: bool, model: str) -> bytes:
    vectors = []
    for i in range(count):
        values = array.array(
            "f", (((i * 7919 + j * 104729) % 2001 - 1000) / 1000.0 * 0.05 for j in range(dims))
        )
        embedding: Any = (
            base64.b64encode(values.tobytes()).decode("ascii") if b64 else [float(v) for v in values]
        )
        vectors.append({"object": "embedding", "index": i, "embedding": embedding})
    usage = {"prompt_tokens": 8 * count, "total_tokens": 8 * count}
    return dumps({"object": "list", "data": vectors, "model": model, "usage": usage})
