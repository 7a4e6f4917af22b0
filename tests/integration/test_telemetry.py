"""What operators see, through a real gateway and the fake upstream: spans (`openai.request` and the
GenAI conventions), metrics (the `openai_*` names and the GenAI conventions), one access-log line per
RPC, and never a key. In-process with OpenTelemetry's in-memory reader and exporter; the
Prometheus scrape and the OTLP export are in test_telemetry_export.py."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from openai_grpc_server import app, routes, semconv
from openai_grpc_server.fake_upstream import FakeUpstream, Step
from openai_grpc_server.resilience import RateLimitConfig
from openai_grpc_server.telemetry import SECONDS_BUCKETS, JsonFormatter, Telemetry
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.support.gateway import API_KEY, Gateway, settings_for, start_gateway, stop_gateway
from tests.support.metrics import metric_points

CHAT = "/openai_grpc.v1.ChatService/CreateChatCompletion"
STREAM = "/openai_grpc.v1.ChatService/StreamChatCompletion"
MADE_UP = "made-up-model-7f3a"  # a model no upstream knows: must never become a label value
ACCESS_FIELDS = {
    "method", "code", "reason", "duration_ms", "tenant", "model", "upstream_request_id",
    "attempts", "trace_id", "span_id",
}  # fmt: skip


@dataclasses.dataclass
class Observed:
    gw: Gateway
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader

    def metrics(self) -> dict[str, list[Any]]:
        """Metric name -> its data points."""
        return metric_points(self.reader)

    def server_spans(self) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.kind is SpanKind.SERVER]

    def request_spans(self) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.name == "openai.request"]


async def observed(base_url: str, max_models: int = 100, **settings: Any) -> Observed:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    telemetry = Telemetry(
        meter_provider=MeterProvider(metric_readers=[reader]),
        tracer_provider=tracer_provider,
        max_models=max_models,
    )
    running = await app.start(
        settings_for(base_url, **settings),
        telemetry=telemetry,
        interceptors=(aio_server_interceptor(tracer_provider=tracer_provider),),  # type: ignore[no-untyped-call]
    )
    gw = Gateway(
        running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}"),
        {r.name: r for r in routes.load_routes()},
    )
    return Observed(gw, spans, reader)


@pytest.fixture
async def access(caplog: pytest.LogCaptureFixture) -> AsyncIterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger="openai_grpc.access"):
        yield caplog


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The access-log lines exactly as the JSON formatter writes them."""
    formatter = JsonFormatter()
    lines = [formatter.format(r) for r in caplog.records if r.name == "openai_grpc.access"]
    assert all(API_KEY not in line for line in lines)
    return [json.loads(line) for line in lines]


def chat(
    gw: Gateway, model: str = "gpt-4o-mini", rpc: str = "CreateChatCompletion", **fields: Any
) -> Message:
    req = gw.request(rpc, model=model, **fields)
    msg = req.messages.add()  # type: ignore[attr-defined]
    msg.role = "user"
    msg.content_text = "hi"
    return req


async def fails(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def attrs(point: Any) -> dict[str, Any]:
    return dict(point.attributes or {})


async def test_unary_stream_and_failures(fake: FakeUpstream, access: pytest.LogCaptureFixture) -> None:
    fake.reset()
    obs = await observed(fake.base_url)
    gw = obs.gw
    try:
        await gw.unary("CreateChatCompletion")(chat(gw), timeout=10)
        stream = gw.server_stream("StreamChatCompletion")(chat(gw, rpc="StreamChatCompletion"), timeout=10)
        assert [m async for m in stream]
        fake.script(
            "POST /chat/completions",
            Step(status=401, error_type="invalid_request_error", message=f"Incorrect API key: {API_KEY}"),
            Step(status=404, error_type="invalid_request_error", error_code="model_not_found"),
        )
        failure = await fails(gw.unary("CreateChatCompletion")(chat(gw), timeout=10))
        assert failure.code() == grpc.StatusCode.UNAUTHENTICATED
        assert API_KEY not in (failure.details() or "")
        failure = await fails(gw.unary("CreateChatCompletion")(chat(gw, model=MADE_UP), timeout=10))
        assert failure.code() == grpc.StatusCode.NOT_FOUND
        # A local failure: validation, before any upstream call.
        failure = await fails(gw.unary("CreateChatCompletion")(chat(gw, model=MADE_UP, temperature=3.0)))
        assert failure.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await stop_gateway(gw)

    # --- spans: one server span per RPC, the openai.request span its child, gen_ai.* on it ---
    servers = obs.server_spans()
    assert sorted(s.name for s in servers) == sorted([CHAT, STREAM, CHAT, CHAT, CHAT])
    requests = obs.request_spans()
    assert len(requests) == 4  # the validation failure never reached the upstream step
    by_span = {s.context.span_id: s for s in servers}
    for span in requests:
        assert span.kind is SpanKind.CLIENT
        assert span.parent is not None and span.parent.span_id in by_span
        assert span.context.trace_id == by_span[span.parent.span_id].context.trace_id
        a = dict(span.attributes or {})
        assert a[semconv.OPERATION_NAME] == "chat"
        assert a[semconv.PROVIDER_NAME] == "openai"
        assert a["openai.endpoint"] == "/chat/completions"
        assert a["openai.organization_id"] == "org-test"
    unary, stream, unauthorized, not_found = requests
    for ok, streaming in ((unary, False), (stream, True)):
        a = dict(ok.attributes or {})
        assert a["openai.streaming"] is streaming
        assert a[semconv.REQUEST_MODEL] == "gpt-4o-mini" == a["openai.model"]
        assert a[semconv.RESPONSE_MODEL] == "gpt-4o-mini"
        assert str(a[semconv.RESPONSE_ID]).startswith("chatcmpl-")
        for key in (semconv.USAGE_INPUT_TOKENS, semconv.USAGE_OUTPUT_TOKENS):
            used = a[key]
            assert isinstance(used, int) and used > 0, key
        assert semconv.ERROR_TYPE not in a
    u = dict(unary.attributes or {})
    assert u["http.method"] == "POST" and u["http.status_code"] == 200
    assert str(u["openai.request_id"]).startswith("req_")
    assert dict(unauthorized.attributes or {})[semconv.ERROR_TYPE] == "INVALID_API_KEY"
    assert not unauthorized.status.is_ok
    assert dict(not_found.attributes or {})[semconv.ERROR_TYPE] == "NOT_FOUND"
    for span in obs.spans.get_finished_spans():
        assert API_KEY not in str(dict(span.attributes or {})) + str(span.status.description)

    # --- metrics: names, units, buckets, attributes; a made-up model is never a label ------
    m = obs.metrics()
    assert {
        "openai_requests_total",
        "openai_request_duration_seconds",
        "openai_tokens_used_total",
        "openai_errors_total",
        "openai_streaming_chunks_total",
        semconv.OPERATION_DURATION,
        semconv.TOKEN_USAGE,
        semconv.TIME_TO_FIRST_CHUNK,
    } <= set(m)
    for point in m["openai_request_duration_seconds"]:
        assert tuple(point.explicit_bounds) == SECONDS_BUCKETS
    for point in m[semconv.OPERATION_DURATION]:
        assert tuple(point.explicit_bounds) == semconv.DURATION_BUCKETS
    for point in m[semconv.TOKEN_USAGE]:
        assert tuple(point.explicit_bounds) == semconv.TOKEN_BUCKETS
    for point in m[semconv.TIME_TO_FIRST_CHUNK]:
        assert tuple(point.explicit_bounds) == semconv.TIME_TO_FIRST_CHUNK_BUCKETS

    # A failure before the gateway has described the call (validation runs first today) has
    # no request model: the conventions require it only "if available".
    durations = {
        (a.get(semconv.REQUEST_MODEL, "other"), a.get(semconv.ERROR_TYPE)): p.count
        for p in m[semconv.OPERATION_DURATION]
        for a in [attrs(p)]
    }
    assert durations == {
        ("gpt-4o-mini", None): 2,
        ("gpt-4o-mini", "INVALID_API_KEY"): 1,
        ("other", "NOT_FOUND"): 1,
        ("other", "VALIDATION_FAILED"): 1,
    }
    for p in m[semconv.OPERATION_DURATION]:
        a = attrs(p)
        assert a[semconv.OPERATION_NAME] == "chat" and a[semconv.PROVIDER_NAME] == "openai"
        if semconv.ERROR_TYPE not in a:
            assert a[semconv.RESPONSE_MODEL] == "gpt-4o-mini"
    tokens = {attrs(p)[semconv.TOKEN_TYPE]: p for p in m[semconv.TOKEN_USAGE]}
    assert set(tokens) == {"input", "output"}
    assert tokens["input"].count == 2 and tokens["input"].sum > 0
    (ttfc,) = m[semconv.TIME_TO_FIRST_CHUNK]  # the stream only
    assert ttfc.count == 1 and attrs(ttfc)[semconv.OPERATION_NAME] == "chat"

    statuses = {
        (attrs(p)["status"], attrs(p)["model"] or "other"): p.value for p in m["openai_requests_total"]
    }
    assert statuses == {
        ("ok", "gpt-4o-mini"): 2,
        ("INVALID_API_KEY", "gpt-4o-mini"): 1,
        ("NOT_FOUND", "other"): 1,
        ("VALIDATION_FAILED", "other"): 1,  # local failures are counted too
    }
    errors = {attrs(p)["error_type"]: p.value for p in m["openai_errors_total"]}
    assert errors == {"InvalidApiKey": 1, "NotFound": 1, "ValidationError": 1}
    everything = str([attrs(p) for points in m.values() for p in points])
    assert MADE_UP not in everything and API_KEY not in everything

    # --- the access log: one line per RPC, failures included --------------------------------
    lines = access_lines(access)
    assert [(x["method"], x["code"], x["reason"]) for x in lines] == [
        (CHAT, "OK", ""),
        (STREAM, "OK", ""),
        (CHAT, "UNAUTHENTICATED", "INVALID_API_KEY"),
        (CHAT, "NOT_FOUND", "NOT_FOUND"),
        (CHAT, "INVALID_ARGUMENT", "VALIDATION_FAILED"),
    ]
    traces = {format(s.context.trace_id, "032x") for s in servers}
    for line in lines:
        assert set(line) >= ACCESS_FIELDS
        assert line["tenant"] == "default" or line["code"] == "INVALID_ARGUMENT"
        assert line["trace_id"] in traces and len(line["span_id"]) == 16
        assert line["duration_ms"] > 0
    assert [x["model"] for x in lines[:4]] == ["gpt-4o-mini"] * 3 + [MADE_UP]
    assert lines[4]["model"] in ("", MADE_UP)  # the log (not a metric) may name what the caller sent
    assert [x["attempts"] for x in lines[:4]] == [1, 1, 1, 1]
    assert lines[0]["upstream_request_id"].startswith("req_")
    assert lines[1]["upstream_request_id"].startswith("req_")
    assert lines[2]["upstream_status"] == 401 and lines[2]["level"] == "WARNING"


async def test_caller_auth_and_local_limits_are_logged_and_counted(
    fake: FakeUpstream, access: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    fake.reset()
    tenants = tmp_path / "tenants.json"
    tenants.write_text('{"tenants": [{"name": "team-a", "token": "tok-a", "api_key": "sk-team-a-key"}]}')
    obs = await observed(
        fake.base_url,
        auth_mode="tokens",
        tenants_file=str(tenants),
        rate_limit=RateLimitConfig(requests_per_minute=1, queue_requests=False),
    )
    gw = obs.gw
    token = (("authorization", "Bearer tok-a"),)
    try:
        failure = await fails(gw.unary("CreateChatCompletion")(chat(gw), timeout=10))
        assert failure.code() == grpc.StatusCode.UNAUTHENTICATED
        await gw.unary("CreateChatCompletion")(chat(gw), metadata=token, timeout=10)
        failure = await fails(gw.unary("CreateChatCompletion")(chat(gw), metadata=token, timeout=10))
        assert failure.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await stop_gateway(gw)

    lines = access_lines(access)
    assert [(x["code"], x["tenant"]) for x in lines] == [
        ("UNAUTHENTICATED", ""),
        ("OK", "team-a"),
        ("RESOURCE_EXHAUSTED", "team-a"),
    ]
    assert lines[0]["reason"] == "CALLER_UNAUTHENTICATED"
    limited = lines[2]["reason"]
    assert limited and lines[2]["upstream_request_id"] == ""
    assert len(fake.requests) == 1, "neither failure reached the upstream"
    statuses = {attrs(p)["status"]: p.value for p in obs.metrics()["openai_requests_total"]}
    assert statuses == {"CALLER_UNAUTHENTICATED": 1, "ok": 1, limited: 1}
    errors = {attrs(p)["error_type"] for p in obs.metrics()["openai_errors_total"]}
    assert len(errors) == 2
    for line in lines:
        assert "sk-team-a-key" not in json.dumps(line) and "tok-a" not in json.dumps(line)


async def test_model_label_values_are_bounded(fake: FakeUpstream) -> None:
    fake.reset()
    obs = await observed(fake.base_url, max_models=2)
    gw = obs.gw
    try:
        for model in ("gpt-4o-mini", "gpt-4o", "gpt-4.1", "gpt-4o-mini"):
            await gw.unary("CreateChatCompletion")(chat(gw, model=model), timeout=10)
    finally:
        await stop_gateway(gw)
    counts = {attrs(p)["model"]: p.value for p in obs.metrics()["openai_requests_total"]}
    assert counts == {"gpt-4o-mini": 2, "gpt-4o": 1, "other": 1}
    models = {attrs(p)[semconv.REQUEST_MODEL] for p in obs.metrics()[semconv.OPERATION_DURATION]}
    assert models == {"gpt-4o-mini", "gpt-4o", "other"}


async def test_retries_show_in_the_access_log(fake: FakeUpstream, access: pytest.LogCaptureFixture) -> None:
    from openai_grpc_server.resilience import RetryConfig  # noqa: PLC0415

    fake.reset()
    obs = await observed(fake.base_url, retry=RetryConfig(max_retries=2, initial_backoff=0.01, jitter=0.0))
    gw = obs.gw
    try:
        fake.script("POST /chat/completions", Step(status=503), Step(status=503), Step())
        await gw.unary("CreateChatCompletion")(chat(gw), timeout=10)
        await gw.unary("CreateChatCompletion")(chat(gw), timeout=10)
    finally:
        await stop_gateway(gw)
    assert [(x["code"], x["attempts"]) for x in access_lines(access)] == [("OK", 3), ("OK", 1)]
    retries = {attrs(p)["attempt_number"]: p.value for p in obs.metrics()["openai_retry_attempts_total"]}
    assert retries == {"2": 1, "3": 1}


async def test_a_cancelled_call_is_logged_and_counted(
    fake: FakeUpstream, access: pytest.LogCaptureFixture
) -> None:
    fake.reset()
    obs = await observed(fake.base_url)
    gw = obs.gw
    try:
        fake.script("POST /chat/completions", Step(delay_ms=5000))
        call = gw.unary("CreateChatCompletion")(chat(gw), timeout=10)
        for _ in range(1000):  # until the upstream holds the request
            if fake.requests:
                break
            await asyncio.sleep(0.01)
        call.cancel()
        for _ in range(1000):  # until the gateway noticed
            if access_lines(access):
                break
            await asyncio.sleep(0.01)
    finally:
        await stop_gateway(gw)
    (line,) = access_lines(access)
    assert (line["method"], line["code"], line["tenant"]) == (CHAT, "CANCELLED", "default")
    statuses = {attrs(p)["status"]: p.value for p in obs.metrics()["openai_requests_total"]}
    assert statuses == {"CANCELLED": 1}
    (duration,) = obs.metrics()[semconv.OPERATION_DURATION]
    assert attrs(duration)[semconv.ERROR_TYPE] == "CANCELLED"
    (span,) = obs.request_spans()
    assert dict(span.attributes or {})[semconv.ERROR_TYPE] == "CANCELLED" and not span.status.is_ok


async def test_stream_cut_and_stream_cancel(fake: FakeUpstream, access: pytest.LogCaptureFixture) -> None:
    fake.reset()
    obs = await observed(fake.base_url)
    gw = obs.gw
    try:
        fake.script("POST /chat/completions", Step(chunks=6, cut_after=2))
        stream = gw.server_stream("StreamChatCompletion")(chat(gw, rpc="StreamChatCompletion"), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stream:
                pass
        assert caught.value.code() == grpc.StatusCode.ABORTED
        fake.script("POST /chat/completions", Step(chunks=50, gap_ms=200))
        stream = gw.server_stream("StreamChatCompletion")(chat(gw, rpc="StreamChatCompletion"), timeout=10)
        await anext(aiter(stream))  # the first message arrived: the stream is under way
        stream.cancel()
        for _ in range(1000):  # until the gateway noticed
            if len(access_lines(access)) == 2:
                break
            await asyncio.sleep(0.01)
    finally:
        await stop_gateway(gw)
    cut, cancelled = access_lines(access)
    assert (cut["method"], cut["code"], cut["reason"]) == (STREAM, "ABORTED", "STREAM_INTERRUPTED")
    assert cut["upstream_request_id"].startswith("req_")
    assert (cancelled["method"], cancelled["code"]) == (STREAM, "CANCELLED")
    statuses = {attrs(p)["status"]: p.value for p in obs.metrics()["openai_requests_total"]}
    assert statuses == {"STREAM_INTERRUPTED": 1, "CANCELLED": 1}
    assert len(obs.metrics()[semconv.TIME_TO_FIRST_CHUNK]) == 1  # both streams got a first chunk
    assert obs.metrics()[semconv.TIME_TO_FIRST_CHUNK][0].count == 2


async def test_a_responses_stream_counts_the_usage_of_its_completed_event(fake: FakeUpstream) -> None:
    """Responses streams have no `stream_options.include_usage` (only Chat and Completions do):
    the gateway adds nothing, and still counts the tokens the `response.completed` event reports."""
    fake.reset()
    reader = InMemoryMetricReader()
    gw = await start_gateway(
        settings_for(fake.base_url),
        telemetry=Telemetry(meter_provider=MeterProvider(metric_readers=[reader])),
    )
    try:
        request = gw.request("StreamResponse", model="gpt-4o-mini", input_text="Say hi")
        events = [
            e async for frame in gw.server_stream("StreamResponse")(request, timeout=10) for e in frame.events
        ]
    finally:
        await stop_gateway(gw)
    [sent] = fake.requests
    assert "stream_options" not in sent.json and sent.json["stream"] is True
    completed = next(e for e in events if e.type == "response.completed")
    want = {
        "prompt": completed.response.usage.input_tokens,
        "completion": completed.response.usage.output_tokens,
    }
    assert want["completion"] > 0
    data = reader.get_metrics_data()
    assert data is not None
    counted = {
        point.attributes["type"]: point.value
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "openai_tokens_used_total"
        for point in m.data.data_points
        if isinstance(point, NumberDataPoint)
        if point.attributes and point.attributes.get("model") == "gpt-4o-mini"
    }
    assert counted == want
