"""The stream event converter's fast path (protobuf's constructor where `_Shape.fits`) against
its reference, the codec: for every event the fake upstream streams, and for mutations of them
(wrong types, nulls, unknown keys, `extra`), both give the same message or both fail."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from openai_grpc.v1 import chat_pb2
from openai_grpc_server import codec, routes
from openai_grpc_server.fake_upstream import bodies
from openai_grpc_server.services.streams import EventConverter, shape_for
from openai_grpc_server.upstream.sse import SSEDecoder, SSEEvent

_ROUTES = {r.full_method.rsplit("/", 1)[1]: r for r in routes.load_routes() if r.kind is routes.Kind.EVENTS}
_PLANS = {
    "StreamChatCompletion": bodies.build_stream("chat", {}, 3, include_usage=True),
    "StreamCompletion": bodies.build_stream("completion", {}, 3, include_usage=True),
    "StreamResponse": bodies.build_stream("responses", {"id": "resp_1", "model": "gpt-4o"}, 3),
    "StreamRun": bodies.build_stream("assistants", {"id": "run_1"}, 3, thread={"id": "thread_1"}),
}
# Values that each field meets in turn: every JSON type, and the ones protobuf and the codec
# could read differently (true for 1, 1 for true, 1.0 for 1, a string for a list, null items).
_ODD = [None, True, False, 0, 1, 1.0, 1.5, -1, 2**70, "", "x", "stop", [], ["x"], [None], [1], {}, {"a": 1}]


def _events(method: str) -> list[tuple[SSEEvent, Any]]:
    plan = _PLANS[method]
    decoder = SSEDecoder()
    out = []
    for sse in decoder.feed(b"".join(plan.events)):
        out.append((sse, orjson.loads(sse.data)))
    assert out
    return out


def _outcome(route: routes.Route, fast: bool, sse: SSEEvent, payload: Any) -> Any:
    converter = EventConverter(route)
    msg = route.output_cls()
    try:
        if fast:
            converter.add(msg.events, sse, payload)  # type: ignore[attr-defined]
        else:
            msg.events.append(converter.convert(sse, payload))  # type: ignore[attr-defined]
    except codec.CodecError:
        return "CodecError"
    except Exception as exc:
        return type(exc).__name__
    return msg.SerializeToString(deterministic=True)


def _mutations(value: Any, rng: random.Random, n: int) -> list[Any]:
    """`n` copies of `value`, each with one value somewhere replaced (or a key added)."""
    paths: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                paths.append((node, k))
                walk(v)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                paths.append((node, i))
                walk(v)

    out = []
    for _ in range(n):
        copy = orjson.loads(orjson.dumps(value))
        paths.clear()
        walk(copy)
        if not paths:
            continue
        node, key = rng.choice(paths)
        if isinstance(node, dict) and rng.random() < 0.2:
            node[rng.choice(["extra", "unknown_key", "type"])] = rng.choice(_ODD)
        else:
            node[key] = rng.choice(_ODD)
        out.append(copy)
    return out


@pytest.mark.parametrize("method", sorted(_PLANS))
def test_fast_path_matches_the_codec_on_real_events(method: str) -> None:
    route = _ROUTES[method]
    for sse, payload in _events(method):
        fast = _outcome(route, True, sse, payload)
        assert fast == _outcome(route, False, sse, payload), (sse, payload)
        assert isinstance(fast, bytes)


@pytest.mark.parametrize("method", sorted(_PLANS))
def test_fast_path_matches_the_codec_on_mutated_events(method: str) -> None:
    route = _ROUTES[method]
    shape = EventConverter(route).shape
    rng = random.Random(method)
    for sse, payload in _events(method):
        for mutated in _mutations(payload, rng, 150):
            assert shape.fits(mutated) == shape.fits_any(mutated), mutated  # compiled == generic
            fast = _outcome(route, True, sse, mutated)
            assert fast == _outcome(route, False, sse, mutated), (sse.event, mutated)


def test_chat_chunks_take_the_fast_path() -> None:
    """The common events really fit (else the fast path would only cost a check)."""
    route = _ROUTES["StreamChatCompletion"]
    converter = EventConverter(route)
    for _, payload in _events("StreamChatCompletion"):
        assert converter.shape.fits(payload), payload


def test_unknown_keys_take_the_codec_into_extra() -> None:
    route = _ROUTES["StreamChatCompletion"]
    converter = EventConverter(route)
    sse, payload = _events("StreamChatCompletion")[1]
    payload = {**payload, "brand_new": {"a": 1}, "extra": 5}
    assert not converter.shape.fits(payload)
    msg = route.output_cls()
    converter.add(msg.events, sse, payload)  # type: ignore[attr-defined]
    assert codec.encode(msg.events[0])["brand_new"] == {"a": 1}  # type: ignore[attr-defined]


def test_shapes_refuse_what_protobuf_would_read_differently() -> None:
    """protobuf's constructor takes 1 for true and true for 1.0; the codec refuses both."""
    shape = shape_for(chat_pb2.CreateChatCompletionRequest.DESCRIPTOR)
    assert shape.fits({"store": True, "frequency_penalty": 1})
    assert not shape.fits({"store": 1})
    assert not shape.fits({"frequency_penalty": True})
    assert not shape.fits({"stop": "x"})  # a string where the codec wants a list
    assert not shape.fits({"metadata": {"a": "b"}})  # maps take the codec
    assert not shape.fits({"messages": [None]})
    for value in ({"store": 1}, {"frequency_penalty": True}):
        msg = chat_pb2.CreateChatCompletionRequest()
        codec.decode_into(value, msg)
        assert msg.HasField("extra")  # the codec keeps the misfit value in `extra`
