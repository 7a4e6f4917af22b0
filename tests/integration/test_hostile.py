"""Hostile callers and broken upstreams (issue 9), through a real gateway on both transports.

The upstream is the tests' own fault injector (tests/support/faulty_upstream.py), not the demo
fake. Every case asserts the status code, the ErrorInfo reason and details, what the upstream
received (or that it received nothing), and that no configured secret appears anywhere a
caller or an operator can see: status message, details, trailers, logs, span attributes and
metric labels.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import resource
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from openai_grpc_server import routes
from openai_grpc_server.auth import Secret
from openai_grpc_server.resilience import RetryConfig
from openai_grpc_server.routes import Kind, Route
from openai_grpc_server.telemetry import JsonFormatter, Telemetry
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support import faulty_upstream as F
from tests.support.gateway import Gateway, settings_for, start_gateway, stop_gateway
from tests.support.rich_status import details_of, trailing_pairs

TRANSPORTS = ["aiohttp", "httpx"]
# Neither looks like `sk-...` nor `Bearer ...`: only redaction by value can catch them.
UPSTREAM_KEY = "tenantkey-7f3a9c2e5b1d4f6a"
CALLER_TOKEN = "callertoken-4e8b2a6c9d1f3e5a"
SECRETS = (UPSTREAM_KEY, CALLER_TOKEN)
MAX_EVENT = 256 * 1024
MAX_RESPONSE = 512 * 1024
RETRIES = 2
TIMEOUT = 15.0


# --- what the caller and the operator can see ------------------------------------------------


@dataclasses.dataclass
class Outcome:
    code: grpc.StatusCode
    message: str
    details: dict[str, Any]
    trailing: list[tuple[str, Any]]
    messages: list[Any] = dataclasses.field(default_factory=list)

    @property
    def info(self) -> error_details_pb2.ErrorInfo:
        info = self.details["ErrorInfo"]
        assert isinstance(info, error_details_pb2.ErrorInfo)
        return info

    def visible_text(self) -> str:
        return repr((self.message, [str(d) for d in self.details.values()], self.trailing))


def outcome_of(err: grpc.aio.AioRpcError, messages: list[Any] | None = None) -> Outcome:
    details: dict[str, Any] = dict(details_of(err))
    return Outcome(err.code(), err.details() or "", details, trailing_pairs(err), messages or [])


class Observed:
    """Logs (formatted as the operator reads them), finished spans and metric points."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        tracer = TracerProvider()
        tracer.add_span_processor(SimpleSpanProcessor(self.spans))
        self.metrics = InMemoryMetricReader()
        self.telemetry = Telemetry(MeterProvider(metric_readers=[self.metrics]), tracer)
        self.records: list[str] = []
        formatter = JsonFormatter()
        outer = self

        class Capture(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                outer.records.append(formatter.format(record))

        self.handler = Capture()

    def text(self) -> str:
        spans = [
            repr((s.name, dict(s.attributes or {}), s.status.description, s.events))
            for s in self.spans.get_finished_spans()
        ]
        data = self.metrics.get_metrics_data()
        labels: list[str] = []
        for rm in data.resource_metrics if data is not None else ():
            for sm in rm.scope_metrics:
                labels.extend(repr(dict(p.attributes or {})) for m in sm.metrics for p in m.data.data_points)
        return "\n".join([*self.records, *spans, *labels])


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"a secret leaked: {text[:500]}"


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[F.FaultyUpstream]:
    up = F.FaultyUpstream()
    await up.start()
    yield up
    await up.stop()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return F.self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
async def tls_upstream(certs: tuple[Path, Path]) -> AsyncIterator[F.FaultyUpstream]:
    up = F.FaultyUpstream(tls=certs)
    await up.start()
    yield up
    await up.stop()


@pytest.fixture(scope="module")
def tenants_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tenants") / "tenants.json"
    path.write_text(
        json.dumps({"tenants": [{"name": "acme", "token": CALLER_TOKEN, "api_key": UPSTREAM_KEY}]})
    )
    return path


@dataclasses.dataclass
class Env:
    gw: Gateway
    up: F.FaultyUpstream
    observed: Observed
    transport: str

    @property
    def auth(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {CALLER_TOKEN}")]

    def fresh(self, behaviour: F.Behaviour | None = None) -> Env:
        self.up.reset(behaviour)
        return self


@pytest.fixture(scope="module", params=TRANSPORTS)
async def env(
    request: pytest.FixtureRequest, upstream: F.FaultyUpstream, tenants_file: Path
) -> AsyncIterator[Env]:
    observed = Observed()
    logging.getLogger().addHandler(observed.handler)
    settings = settings_for(
        upstream.base_url,
        api_key=Secret(UPSTREAM_KEY),
        auth_mode="tokens",
        tenants_file=str(tenants_file),
        upstream_transport=request.param,
        retry=RetryConfig(max_retries=RETRIES, initial_backoff=0.01, max_backoff=0.02, jitter=0.0),
        max_event_bytes=MAX_EVENT,
        max_response_bytes=MAX_RESPONSE,
    )
    gw = await start_gateway(settings, telemetry=observed.telemetry)
    yield Env(gw, upstream, observed, request.param)
    await stop_gateway(gw)
    logging.getLogger().removeHandler(observed.handler)


def chat_request(gw: Gateway, name: str = "CreateChatCompletion", **fields: Any) -> Message:
    req = gw.request(name, **{"model": "gpt-4o-mini", **fields})
    msg = req.messages.add()  # type: ignore[attr-defined]
    msg.role = "user"
    msg.content_text = "hi"
    return req


async def unary(
    e: Env, name: str, request: Message, metadata: list[tuple[str, str]] | None = None
) -> Outcome | Any:
    try:
        return await e.gw.unary(name)(
            request, timeout=TIMEOUT, metadata=e.auth if metadata is None else metadata
        )
    except grpc.aio.AioRpcError as err:
        return outcome_of(err)


async def server_stream(e: Env, name: str, request: Message, deadline: float = TIMEOUT) -> Outcome:
    messages: list[Any] = []
    call = e.gw.server_stream(name)(request, timeout=deadline, metadata=e.auth)
    try:
        async for m in call:
            messages.append(m)
    except grpc.aio.AioRpcError as err:
        return outcome_of(err, messages)
    return Outcome(grpc.StatusCode.OK, "", {}, [], messages)


def failed(result: Any) -> Outcome:
    assert isinstance(result, Outcome), f"the call succeeded: {result}"
    return result


def events(messages: list[Any]) -> list[Any]:
    return [ev for m in messages for ev in m.events]


# --- 1. sizes: one huge event, one huge answer -----------------------------------------------


async def test_event_over_the_limit_ends_the_stream_with_the_setting_named(env: Env) -> None:
    before = F.sse_events(F.chat_chunk("early"), done=False)
    e = env.fresh(F.huge_event(4 * MAX_EVENT, before=before))
    out = await server_stream(e, "StreamChatCompletion", chat_request(e.gw, "StreamChatCompletion"))
    assert out.code == grpc.StatusCode.INTERNAL, out
    assert out.info.reason == "UPSTREAM_BAD_RESPONSE"
    assert "max_event_bytes" in out.message and "OPENAI_GRPC_MAX_EVENT_BYTES" in out.message
    assert out.info.metadata["limitBytes"] == str(MAX_EVENT)
    assert out.info.metadata["messagesDelivered"] == "1"
    assert [c.delta.content for ev in events(out.messages) for c in ev.choices] == ["early"]
    assert len(e.up.received) == 1, "a stream that reached the caller must not be retried"
    assert_no_secret(out.visible_text())


async def test_event_over_the_limit_before_anything_was_sent_is_not_retried(env: Env) -> None:
    e = env.fresh(F.huge_event(2 * MAX_EVENT))
    out = await server_stream(e, "StreamChatCompletion", chat_request(e.gw, "StreamChatCompletion"))
    assert out.code == grpc.StatusCode.INTERNAL, out
    assert out.info.reason == "UPSTREAM_BAD_RESPONSE"
    assert out.info.metadata["setting"] == "max_event_bytes"
    assert len(e.up.received) == 1


async def test_event_under_the_limit_is_relayed_whole(env: Env) -> None:
    e = env.fresh(F.stream([F.sse_events({**F.chat_chunk("x" * (MAX_EVENT // 2))})]))
    out = await server_stream(e, "StreamChatCompletion", chat_request(e.gw, "StreamChatCompletion"))
    assert out.code == grpc.StatusCode.OK, out
    assert len(events(out.messages)[0].choices[0].delta.content) == MAX_EVENT // 2


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "no-length"])
async def test_answer_over_the_limit_fails_without_being_held(env: Env, declared: bool) -> None:
    # Declared: 100 MiB announced, refused before a byte of it is read. Undeclared: a body that
    # never ends, refused once the count passes the limit (it could not be held whole anyway).
    e = env.fresh(F.endless_body(declared=100 * 1024 * 1024 if declared else None))
    out = failed(await unary(e, "ListModels", e.gw.request("ListModels")))
    assert out.code == grpc.StatusCode.INTERNAL, out
    assert out.info.reason == "UPSTREAM_BAD_RESPONSE"
    assert "max_response_bytes" in out.message and "OPENAI_GRPC_MAX_RESPONSE_BYTES" in out.message
    assert out.info.metadata["limitBytes"] == str(MAX_RESPONSE)
    assert len(e.up.received) == 1, "a too-large answer is not retried"


# --- 2. path parameters: every hostile value on every RPC that has one -----------------------

REJECTED = [".", "..", ""]
ONE_SEGMENT = ["a/b", "%2e%2e", "?x", "#", "é/ü", "..%2f", "a b"]
PARAM_ROUTES = [r for r in routes.load_routes() if r.path_params]


def _with_params(route: Route, target: str, value: str) -> Message:
    values = {p: (value if p == target else f"ok_{i}") for i, p in enumerate(route.path_params)}
    if route.kind is Kind.UPLOAD:
        msg = route.input_cls()
        meta = msg.metadata  # type: ignore[attr-defined]
        for p, v in values.items():
            setattr(meta, p, v)
        return msg
    return route.input_cls(**values)


async def _call_route(e: Env, route: Route, request: Message) -> Outcome | Any:
    method = route.full_method
    ser, des = route.input_cls.SerializeToString, route.output_cls.FromString
    try:
        if route.kind is Kind.UNARY:
            return await e.gw.channel.unary_unary(method, ser, des)(request, timeout=TIMEOUT, metadata=e.auth)
        if route.kind is Kind.UPLOAD:
            return await e.gw.channel.stream_unary(method, ser, des)(
                iter([request]), timeout=TIMEOUT, metadata=e.auth
            )
        return [
            m
            async for m in e.gw.channel.unary_stream(method, ser, des)(
                request, timeout=TIMEOUT, metadata=e.auth
            )
        ]
    except grpc.aio.AioRpcError as err:
        return outcome_of(err)


def _cases() -> Iterator[Any]:
    for r in PARAM_ROUTES:
        for p in r.path_params:
            yield pytest.param(r, p, id=f"{r.name}.{p}")


@pytest.mark.parametrize(("route", "param"), list(_cases()))
async def test_hostile_path_values(env: Env, route: Route, param: str) -> None:
    field = f"metadata.{param}" if route.kind is Kind.UPLOAD else param
    for value in REJECTED:
        e = env.fresh()
        out = failed(await _call_route(e, route, _with_params(route, param, value)))
        assert out.code == grpc.StatusCode.INVALID_ARGUMENT, (value, out)
        assert out.info.reason == "VALIDATION_FAILED"
        assert field in [v.field for v in out.details["BadRequest"].field_violations], (value, out)
        assert e.up.received == [], f"{value!r} reached the upstream: {[r.target for r in e.up.received]}"
    for value in ONE_SEGMENT:
        e = env.fresh()
        await _call_route(e, route, _with_params(route, param, value))
        assert len(e.up.received) >= 1, (value, "nothing reached the upstream")
        values = {p: (value if p == param else f"ok_{i}") for i, p in enumerate(route.path_params)}
        expected = "/v1" + route.build_path(values)
        got = e.up.received[0].path
        assert got == expected, (value, got)
        # Exactly the template's segments: the value stayed one segment.
        assert got.count("/") == ("/v1" + route.path_template).count("/")
        assert quote(value, safe="") in got.split("/")


# --- 3. `extra` cannot override typed fields, path parameters or `stream` ---------------------


@pytest.mark.parametrize(
    ("rpc", "fields", "key"),
    [
        ("CreateChatCompletion", {}, "model"),
        ("CreateChatCompletion", {}, "stream"),
        ("CreateChatCompletion", {}, "messages"),
        ("DeleteVectorStoreFile", {"vector_store_id": "vs_1", "file_id": "file_1"}, "file_id"),
        ("DeleteMessage", {"thread_id": "thread_1", "message_id": "msg_1"}, "thread_id"),
    ],
)
async def test_extra_naming_a_known_key_is_rejected(
    env: Env, rpc: str, fields: dict[str, str], key: str
) -> None:
    e = env.fresh()
    request = chat_request(e.gw) if rpc == "CreateChatCompletion" else e.gw.request(rpc, **fields)
    request.extra.update({key: ".." if key.endswith("_id") else True})  # type: ignore[attr-defined]
    out = failed(await unary(e, rpc, request))
    assert out.code == grpc.StatusCode.INVALID_ARGUMENT, out
    assert [v.field for v in out.details["BadRequest"].field_violations] == [f"extra.{key}"]
    assert e.up.received == []


async def test_extra_with_a_new_key_still_reaches_the_upstream(env: Env) -> None:
    e = env.fresh(F.reply(200, {"id": "chatcmpl-1", "object": "chat.completion", "choices": []}))
    request = chat_request(e.gw)
    request.extra.update({"brand_new_knob": 3})  # type: ignore[attr-defined]
    await unary(e, "CreateChatCompletion", request)
    assert json.loads(e.up.received[0].body)["brand_new_knob"] == 3


# --- 4. secrets: redaction by value everywhere ------------------------------------------------


async def test_upstream_echoing_the_key_and_token_leaks_nothing(env: Env) -> None:
    echo = f"Incorrect API key provided: {UPSTREAM_KEY} (caller {CALLER_TOKEN})"
    body = {
        "error": {
            "message": echo,
            "type": "invalid_request_error",
            "param": UPSTREAM_KEY,
            "code": CALLER_TOKEN,
        }
    }
    e = env.fresh(F.reply(401, body, headers={"x-request-id": f"req_{UPSTREAM_KEY}"}))
    # A caller pasting its token into a field that labels metrics and spans.
    out = failed(await unary(e, "CreateChatCompletion", chat_request(e.gw, model=CALLER_TOKEN)))
    assert out.code == grpc.StatusCode.UNAUTHENTICATED, out
    assert out.info.reason == "INVALID_API_KEY"
    assert "Incorrect API key provided: [REDACTED]" in out.message
    assert e.up.received[0].headers["authorization"] == f"Bearer {UPSTREAM_KEY}"  # it was used, not shown
    assert_no_secret(out.visible_text(), e.observed.text())


async def test_a_stream_echoing_the_key_leaks_nothing(env: Env) -> None:
    err = {"error": {"message": f"key {UPSTREAM_KEY} revoked", "type": "authentication_error", "code": None}}
    e = env.fresh(F.stream([F.sse_events(F.chat_chunk("a"), err, done=False)]))
    out = await server_stream(e, "StreamChatCompletion", chat_request(e.gw, "StreamChatCompletion"))
    assert out.code == grpc.StatusCode.UNAUTHENTICATED, out
    assert_no_secret(out.visible_text(), e.observed.text())


# --- 5. classification -----------------------------------------------------------------------


async def test_self_signed_certificate_is_a_tls_error_not_retried(
    env: Env, tls_upstream: F.FaultyUpstream, tenants_file: Path
) -> None:
    tls_upstream.reset()
    gw = await start_gateway(
        settings_for(
            tls_upstream.base_url,
            upstream_transport=env.transport,
            retry=RetryConfig(max_retries=RETRIES, initial_backoff=0.01, jitter=0.0),
        )
    )
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gw.unary("ListModels")(gw.request("ListModels"), timeout=TIMEOUT)
    finally:
        await stop_gateway(gw)
    out = outcome_of(caught.value)
    assert out.code == grpc.StatusCode.UNAVAILABLE, out
    assert out.info.reason == "UPSTREAM_TLS_ERROR"
    assert "RetryInfo" not in out.details
    assert tls_upstream.connections == 1, "a TLS failure was retried"
    assert tls_upstream.received == []


async def test_https_to_a_plaintext_port_is_a_tls_error_not_retried(env: Env) -> None:
    env.fresh()
    gw = await start_gateway(
        settings_for(
            env.up.base_url.replace("http://", "https://"),
            upstream_transport=env.transport,
            retry=RetryConfig(max_retries=RETRIES, initial_backoff=0.01, jitter=0.0),
        )
    )
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gw.unary("ListModels")(gw.request("ListModels"), timeout=TIMEOUT)
    finally:
        await stop_gateway(gw)
    out = outcome_of(caught.value)
    assert out.code == grpc.StatusCode.UNAVAILABLE, out
    assert out.info.reason == "UPSTREAM_TLS_ERROR"
    assert env.up.connections == 1
    assert env.up.received == []


async def test_an_upstream_that_does_not_speak_http(env: Env) -> None:
    e = env.fresh(F.raw(b"SSH-2.0-OpenSSH_9.6\r\nProtocol mismatch.\r\n\r\n"))
    out = failed(await unary(e, "ListModels", e.gw.request("ListModels")))
    assert out.code == grpc.StatusCode.UNAVAILABLE, out
    assert out.info.reason == "UPSTREAM_PROTOCOL_ERROR"
    assert "internal error" not in out.message
    assert len(e.up.received) == 1, "the same address answers the same way: not retried"


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b"<html><body>502 Bad Gateway</body></html>", "text/html"),
        (
            json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "choices": []}).encode(),
            "application/json",
        ),
    ],
    ids=["html", "whole-json"],
)
async def test_a_stream_answered_without_an_event_stream_is_not_retried(
    env: Env, body: bytes, ctype: str
) -> None:
    e = env.fresh(F.reply(200, body, content_type=ctype))
    out = await server_stream(e, "StreamChatCompletion", chat_request(e.gw, "StreamChatCompletion"))
    assert out.code == grpc.StatusCode.INTERNAL, out
    assert out.info.reason == "UPSTREAM_BAD_RESPONSE"
    assert len(e.up.received) == 1, "a billable answer was thrown away and asked for again"


async def test_a_stream_of_non_sse_bytes_without_content_type_is_a_bad_response(env: Env) -> None:
    e = env.fresh(F.stream([b"<html>oops</html>\n"], content_type=""))
    out = await server_stream(e, "StreamChatCompletion", chat_request(e.gw, "StreamChatCompletion"))
    assert out.code == grpc.StatusCode.INTERNAL, out
    assert out.info.reason == "UPSTREAM_BAD_RESPONSE"
    assert len(e.up.received) == 1


@pytest.mark.parametrize(
    ("behaviour", "needle"),
    [
        (F.reply(200, b""), "empty body"),
        (F.reply(200, {"id": "chatcmpl-1", "object": "chat.completion", "choices": "x"}), "choices"),
        (F.reply(200, b'{"id": "chatcmpl-1", "obj'), "not JSON"),
        (F.reply(200, b"<html>hello</html>", content_type="text/html"), "not JSON"),
    ],
    ids=["empty", "wrong-type", "truncated-json", "html"],
)
async def test_a_200_that_is_not_the_answer(env: Env, behaviour: F.Behaviour, needle: str) -> None:
    e = env.fresh(behaviour)
    out = failed(await unary(e, "CreateChatCompletion", chat_request(e.gw)))
    assert out.code == grpc.StatusCode.INTERNAL, out
    assert out.info.reason == "UPSTREAM_BAD_RESPONSE"
    assert needle in out.message
    assert out.info.metadata["upstreamStatus"] == "200"
    assert len(e.up.received) == 1


async def test_unknown_fields_still_go_to_extra(env: Env) -> None:
    answer = {"id": "chatcmpl-1", "object": "chat.completion", "choices": [], "brand_new": {"a": 1}}
    e = env.fresh(F.reply(200, answer))
    result = await unary(e, "CreateChatCompletion", chat_request(e.gw))
    assert not isinstance(result, Outcome), result
    assert dict(result.chat_completion.extra)["brand_new"]["a"] == 1


async def test_events_before_a_malformed_one_in_the_same_read_reach_the_caller(env: Env) -> None:
    one_read = F.sse_events(F.chat_chunk("a"), F.chat_chunk("b"), done=False) + b"data: {not json\n\n"
    e = env.fresh(F.stream([one_read]))
    out = await server_stream(e, "StreamChatCompletion", chat_request(e.gw, "StreamChatCompletion"))
    assert [c.delta.content for ev in events(out.messages) for c in ev.choices] == ["a", "b"]
    assert out.code == grpc.StatusCode.INTERNAL, out
    assert out.info.reason == "UPSTREAM_BAD_RESPONSE"
    assert out.info.metadata["messagesDelivered"] == str(len(out.messages))
    assert len(e.up.received) == 1


async def test_sse_byte_by_byte_with_crlf(env: Env) -> None:
    body = F.sse_events(F.chat_chunk("Hel"), F.chat_chunk("lo"), eol=b"\r\n")
    e = env.fresh(F.stream([body[i : i + 1] for i in range(len(body))]))
    out = await server_stream(e, "StreamChatCompletion", chat_request(e.gw, "StreamChatCompletion"))
    assert out.code == grpc.StatusCode.OK, out
    assert "".join(c.delta.content for ev in events(out.messages) for c in ev.choices) == "Hello"


async def test_reset_mid_stream_after_events(env: Env) -> None:
    e = env.fresh(F.stream([F.sse_events(F.chat_chunk("a"), done=False)], delay=0.05, reset_at_end=True))
    out = await server_stream(e, "StreamChatCompletion", chat_request(e.gw, "StreamChatCompletion"))
    assert out.code == grpc.StatusCode.ABORTED, out
    assert out.info.reason == "STREAM_INTERRUPTED"
    assert out.info.metadata["messagesDelivered"] == "1"
    assert len(e.up.received) == 1


@pytest.mark.parametrize(
    "behaviour", [F.reset_mid_body(), F.reply(200, b'{"id": "x"', content_length=500)], ids=["reset", "short"]
)
async def test_a_body_cut_short_is_a_retried_connection_failure(env: Env, behaviour: F.Behaviour) -> None:
    e = env.fresh(behaviour)
    out = failed(await unary(e, "CreateChatCompletion", chat_request(e.gw)))
    assert out.code == grpc.StatusCode.UNAVAILABLE, out
    assert out.info.reason == "UPSTREAM_UNREACHABLE"
    assert "RetryInfo" in out.details
    assert len(e.up.received) == RETRIES + 1


async def test_a_stalled_upstream_ends_at_the_deadline(env: Env) -> None:
    e = env.fresh(F.stall())
    out = await server_stream(
        e, "StreamChatCompletion", chat_request(e.gw, "StreamChatCompletion"), deadline=0.5
    )
    assert out.code == grpc.StatusCode.DEADLINE_EXCEEDED, out


# --- 7. bytes that are not the request message ------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [b"\xff\xff\xff\xff", b"\x0a\x02\xff\xfe"],  # not protobuf; field 1 (a string) not UTF-8
    ids=["undecodable", "invalid-utf8"],
)
@pytest.mark.parametrize("rpc", ["CreateChatCompletion", "StreamChatCompletion"])
async def test_undecodable_request_bytes(env: Env, payload: bytes, rpc: str) -> None:
    e = env.fresh()
    route = e.gw.routes[rpc]
    ident = lambda b: b  # noqa: E731 - the raw bytes go on the wire as they are
    try:
        if route.kind is Kind.UNARY:
            await e.gw.channel.unary_unary(route.full_method, ident, ident)(
                payload, timeout=TIMEOUT, metadata=e.auth
            )
        else:
            [
                m
                async for m in e.gw.channel.unary_stream(route.full_method, ident, ident)(
                    payload, timeout=TIMEOUT, metadata=e.auth
                )
            ]
        pytest.fail("undecodable bytes were accepted")
    except grpc.aio.AioRpcError as err:
        out = outcome_of(err)
    assert out.code == grpc.StatusCode.INVALID_ARGUMENT, out
    assert out.info.reason == "VALIDATION_FAILED"
    assert out.info.metadata["requestMessage"] == route.input_desc.full_name
    assert e.up.received == []


# --- 8. authentication comes first ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["invalid", "undecodable", "stream"])
async def test_an_unauthenticated_caller_learns_nothing_about_its_request(env: Env, kind: str) -> None:
    e = env.fresh()
    ident = lambda b: b  # noqa: E731
    try:
        if kind == "invalid":
            await e.gw.unary("DeleteFile")(e.gw.request("DeleteFile", file_id=".."), timeout=TIMEOUT)
        elif kind == "undecodable":
            await e.gw.channel.unary_unary(e.gw.routes["DeleteFile"].full_method, ident, ident)(
                b"\xff\xff", timeout=TIMEOUT
            )
        else:
            [
                m
                async for m in e.gw.server_stream("StreamChatCompletion")(
                    e.gw.request("StreamChatCompletion"), timeout=TIMEOUT
                )
            ]
        pytest.fail("an unauthenticated call went through")
    except grpc.aio.AioRpcError as err:
        out = outcome_of(err)
    assert out.code == grpc.StatusCode.UNAUTHENTICATED, out
    assert out.info.reason == "CALLER_UNAUTHENTICATED"
    assert "authorization: Bearer <token>" in out.message, "the hint was mangled"
    assert "BadRequest" not in out.details
    assert e.up.received == []


# --- 6. overload: shed with RetryInfo, never CANCELLED ---------------------------------------


async def test_a_burst_beyond_capacity_is_shed_with_retry_info(upstream: F.FaultyUpstream) -> None:
    upstream.reset(F.reply(200, {"object": "list", "data": []}, delay=0.2))
    gw = await start_gateway(
        settings_for(upstream.base_url, max_concurrent_rpcs=64, max_queued_rpcs=128, queue_wait_seconds=0.5)
    )
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    channels = [grpc.aio.insecure_channel(gw.address) for _ in range(4)]
    try:
        stubs = [
            ch.unary_unary(
                gw.routes["ListModels"].full_method,
                gw.routes["ListModels"].input_cls.SerializeToString,
                gw.routes["ListModels"].output_cls.FromString,
            )
            for ch in channels
        ]

        async def one(i: int) -> Outcome | None:
            try:
                await stubs[i % len(stubs)](gw.request("ListModels"), timeout=30)
                return None
            except grpc.aio.AioRpcError as err:
                return outcome_of(err)

        results = await asyncio.gather(*(one(i) for i in range(1500)))
        health = await gw.unary("ListModels")(gw.request("ListModels"), timeout=10)
    finally:
        for ch in channels:
            await ch.close(None)
        await stop_gateway(gw)
    failures = [r for r in results if r is not None]
    codes = {r.code for r in failures}
    assert grpc.StatusCode.CANCELLED not in codes, codes
    assert codes <= {grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    assert failures, "1,500 calls at once fit in 64 slots and 128 waiting places?"
    for r in failures:
        assert r.info.reason == "GATEWAY_OVERLOADED"
        assert r.details["RetryInfo"].retry_delay.ToNanoseconds() > 0
    assert len(results) - len(failures) >= 64
    assert health is not None  # the process is up and serving
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mib < 300, f"RSS peak grew by {grown_mib:.0f} MiB for 1,500 calls"


async def test_undecodable_bytes_in_an_upload(env: Env) -> None:
    e = env.fresh(F.reply(200, {"id": "file-1", "object": "file"}))
    route = e.gw.routes["UploadFile"]
    head = route.input_cls()
    head.metadata.purpose = "batch"  # type: ignore[attr-defined]
    frames = [head.SerializeToString(), b"\xff\xff\xff\xff"]
    ident = lambda b: b  # noqa: E731
    call = e.gw.channel.stream_unary(route.full_method, ident, ident)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(iter(frames), timeout=TIMEOUT, metadata=e.auth)
    out = outcome_of(caught.value)
    assert out.code == grpc.StatusCode.INVALID_ARGUMENT, out
    assert out.info.metadata["requestMessage"] == route.input_desc.full_name


async def test_extra_in_upload_metadata_cannot_name_a_field(env: Env) -> None:
    e = env.fresh()
    route = e.gw.routes["AddUploadPart"]
    head = route.input_cls()
    head.metadata.upload_id = "upload_1"  # type: ignore[attr-defined]
    head.metadata.extra.update({"upload_id": ".."})  # type: ignore[attr-defined]
    call = e.gw.channel.stream_unary(
        route.full_method, route.input_cls.SerializeToString, route.output_cls.FromString
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(iter([head]), timeout=TIMEOUT, metadata=e.auth)
    out = outcome_of(caught.value)
    assert out.code == grpc.StatusCode.INVALID_ARGUMENT, out
    assert [v.field for v in out.details["BadRequest"].field_violations] == ["metadata.extra.upload_id"]
    assert e.up.received == []
