"""Telemetry the way operators collect it from a running gateway process: a real scrape of
`--metrics-port`, and `opentelemetry-instrument` exporting OTLP to a collector of the test's
own on loopback (exactly as the README shows it). The access log is the process's stderr."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from openai_grpc_server import routes, semconv
from openai_grpc_server.telemetry import SECONDS_BUCKETS
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.support.process import clean_env, free_port

BIN = Path(sys.executable).parent
CHAT = "/openai_grpc.v1.ChatService/CreateChatCompletion"
STREAM = "/openai_grpc.v1.ChatService/StreamChatCompletion"
ROUTES = {r.name: r for r in routes.load_routes()}


def otel_free_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in clean_env().items() if not k.startswith("OTEL_")}
    env.update(extra)
    return env


def start(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """Start a gateway process and wait for its banner (it prints one when it listens)."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line or "grpcurl" in line:
            break
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    return proc


def stop(proc: subprocess.Popen[str]) -> list[dict[str, Any]]:
    """SIGTERM, a clean exit, and the access-log lines of its stderr."""
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    return [x for x in lines if x["logger"] == "openai_grpc.access"]


def chat(rpc: str, **fields: Any) -> Message:
    req = ROUTES[rpc].input_cls(model="gpt-4o-mini", **fields)
    msg = req.messages.add()  # type: ignore[attr-defined]
    msg.role = "user"
    msg.content_text = "hi"
    return req


async def call_unary_stream_and_invalid(port: int) -> None:
    """One successful unary call, one successful stream, one call that fails validation."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:

        def method(kind: str, name: str) -> Any:
            r = ROUTES[name]
            return getattr(channel, kind)(
                r.full_method,
                request_serializer=r.input_cls.SerializeToString,
                response_deserializer=r.output_cls.FromString,
            )

        await method("unary_unary", "CreateChatCompletion")(chat("CreateChatCompletion"), timeout=10)
        stream = method("unary_stream", "StreamChatCompletion")(chat("StreamChatCompletion"), timeout=10)
        assert [m async for m in stream]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await method("unary_unary", "CreateChatCompletion")(ROUTES["CreateChatCompletion"].input_cls())
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def check_access_log(lines: list[dict[str, Any]], *, traced: bool) -> None:
    assert [(x["method"], x["code"], x["reason"]) for x in lines] == [
        (CHAT, "OK", ""),
        (STREAM, "OK", ""),
        (CHAT, "INVALID_ARGUMENT", "VALIDATION_FAILED"),
    ]
    for x in lines[:2]:
        assert x["tenant"] == "default" and x["model"] == "gpt-4o-mini" and x["attempts"] == 1
        assert x["upstream_request_id"].startswith("req_") and x["duration_ms"] > 0
        assert (len(x["trace_id"]) == 32 and len(x["span_id"]) == 16) is traced
    assert "sk-" not in json.dumps(lines)


# --- Prometheus -----------------------------------------------------------------------------
def scrape(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text: str = answer.read().decode()
    return text.splitlines()


def bounds(lines: list[str], family: str, **labels: str) -> list[float]:
    """The `le` values of one histogram series, in order."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    out = []
    for line in lines:
        if line.startswith(family + "_bucket{") and all(w in line for w in want):
            out.append(float(line.split('le="', 1)[1].split('"', 1)[0]))
    return out


def expected_le(buckets: tuple[float, ...]) -> list[float]:
    return [*map(float, buckets), float("inf")]


async def test_prometheus_scrape_of_a_running_gateway() -> None:
    port, metrics_port = free_port(), free_port()
    proc = start(
        [str(BIN / "openai-grpc-server"), "--demo", "--port", str(port), "--metrics-port", str(metrics_port)],
        otel_free_env(),
    )
    try:
        await call_unary_stream_and_invalid(port)
        lines = await asyncio.to_thread(scrape, metrics_port)
    finally:
        access = await asyncio.to_thread(stop, proc)
    check_access_log(access, traced=False)

    chat_ok = {"gen_ai_operation_name": "chat", "gen_ai_request_model": "gpt-4o-mini"}
    assert bounds(lines, "gen_ai_client_operation_duration_seconds", **chat_ok, error_type="") == (
        expected_le(semconv.DURATION_BUCKETS)
    )
    assert bounds(
        lines, "gen_ai_client_operation_duration_seconds", error_type="VALIDATION_FAILED"
    ) == expected_le(semconv.DURATION_BUCKETS)
    for kind in ("input", "output"):
        assert bounds(lines, "gen_ai_client_token_usage", **chat_ok, gen_ai_token_type=kind) == (
            expected_le(semconv.TOKEN_BUCKETS)
        )
    assert bounds(lines, "gen_ai_client_operation_time_to_first_chunk_seconds", **chat_ok) == (
        expected_le(semconv.TIME_TO_FIRST_CHUNK_BUCKETS)
    )
    assert bounds(
        lines, "openai_request_duration_seconds", endpoint="POST /chat/completions", model="gpt-4o-mini"
    ) == expected_le(SECONDS_BUCKETS)
    provider = [x for x in lines if x.startswith("gen_ai_") and "_count{" in x]
    assert provider and all('gen_ai_provider_name="openai"' in x for x in provider)

    def value(prefix: str, *needles: str) -> float:
        (line,) = [x for x in lines if x.startswith(prefix + "{") and all(n in x for n in needles)]
        return float(line.rsplit(" ", 1)[1])

    assert value("openai_requests_total", 'status="ok"', 'model="gpt-4o-mini"') == 2
    assert value("openai_requests_total", 'status="VALIDATION_FAILED"') == 1  # local failures count
    assert value("openai_errors_total", 'error_type="ValidationError"') == 1
    assert value("openai_tokens_used_total", 'type="prompt"') > 0
    assert value("openai_streaming_chunks_total", 'model="gpt-4o-mini"') > 0
    assert not [x for x in lines if "sk-" in x]


# --- opentelemetry-instrument and OTLP --------------------------------------------------------
class Collector(
    trace_service_pb2_grpc.TraceServiceServicer,
    metrics_service_pb2_grpc.MetricsServiceServicer,
    logs_service_pb2_grpc.LogsServiceServicer,
):
    """A tiny OTLP/gRPC collector: keeps what it receives."""

    def __init__(self) -> None:
        self.traces: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = []

    async def Export(self, request: Any, context: Any) -> Any:
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            self.traces.append(request)
            return trace_service_pb2.ExportTraceServiceResponse()
        if isinstance(request, metrics_service_pb2.ExportMetricsServiceRequest):
            self.metrics.append(request)
            return metrics_service_pb2.ExportMetricsServiceResponse()
        return logs_service_pb2.ExportLogsServiceResponse()

    def spans(self) -> list[Span]:
        return [s for r in self.traces for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]

    def metric_points(self, name: str) -> list[Any]:
        return [
            p
            for r in self.metrics
            for rm in r.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            if m.name == name
            for p in m.histogram.data_points
        ]


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, int]]:
    sink = Collector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)  # type: ignore[no-untyped-call]
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(sink, server)  # type: ignore[no-untyped-call]
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(sink, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield sink, port
    await server.stop(0)


def value_of(v: AnyValue) -> Any:
    return getattr(v, v.WhichOneof("value") or "string_value")


def attributes(span_or_point: Any) -> dict[str, Any]:
    return {kv.key: value_of(kv.value) for kv in span_or_point.attributes}


@pytest.fixture
def instrumented_env() -> Iterator[dict[str, str]]:
    yield {
        "OTEL_SERVICE_NAME": "openai-grpc",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # export quickly; the exit flushes the rest anyway
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
    }


@pytest.mark.parametrize("tracing", ["false", "true"])
async def test_opentelemetry_instrument_exports_one_server_span_per_rpc_over_otlp(
    collector: tuple[Collector, int], instrumented_env: dict[str, str], tracing: str
) -> None:
    sink, collector_port = collector
    port = free_port()
    env = otel_free_env(
        **instrumented_env,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector_port}",
        OPENAI_GRPC_TRACING=tracing,  # the gateway's own opt-in must not add a second server span
    )
    # As the README shows it: the gateway's own command behind `opentelemetry-instrument`.
    argv = [str(BIN / "opentelemetry-instrument"), str(BIN / "openai-grpc-server"), "--demo"]
    proc = start([*argv, "--port", str(port)], env)
    try:
        await call_unary_stream_and_invalid(port)
    finally:
        # Stopping blocks: in a thread, so the collector on this loop receives the final flush.
        access = await asyncio.to_thread(stop, proc)
    check_access_log(access, traced=True)

    spans = sink.spans()
    servers = [s for s in spans if s.kind == Span.SPAN_KIND_SERVER]
    assert sorted(s.name for s in servers) == sorted([CHAT, STREAM, CHAT]), [s.name for s in spans]
    requests = [s for s in spans if s.name == "openai.request"]
    assert len(requests) == 2  # the invalid call never reached the upstream step
    assert {s.name for s in spans} == {CHAT, STREAM, "openai.request"}, "no other span (exporter, client)"
    server_by_id = {s.span_id: s for s in servers}
    for span in requests:
        assert span.kind == Span.SPAN_KIND_CLIENT
        parent = server_by_id[span.parent_span_id]  # a child of its RPC's server span...
        assert parent.trace_id == span.trace_id  # ...in the same trace
        a = attributes(span)
        assert a[semconv.OPERATION_NAME] == "chat" and a[semconv.PROVIDER_NAME] == "openai"
        assert a[semconv.REQUEST_MODEL] == a[semconv.RESPONSE_MODEL] == "gpt-4o-mini"
        assert a[semconv.RESPONSE_ID].startswith("chatcmpl-")
        assert a[semconv.USAGE_INPUT_TOKENS] > 0 and a[semconv.USAGE_OUTPUT_TOKENS] > 0
    traces = {s.trace_id.hex() for s in servers}
    assert {x["trace_id"] for x in access} == traces  # the access log points at the traces

    durations = sink.metric_points(semconv.OPERATION_DURATION)
    assert durations
    for point in durations:
        assert tuple(point.explicit_bounds) == semconv.DURATION_BUCKETS
        assert attributes(point)[semconv.PROVIDER_NAME] == "openai"
    tokens = sink.metric_points(semconv.TOKEN_USAGE)
    assert {attributes(p)[semconv.TOKEN_TYPE] for p in tokens} == {"input", "output"}
    assert all(tuple(p.explicit_bounds) == semconv.TOKEN_BUCKETS for p in tokens)
    assert sink.metric_points(semconv.TIME_TO_FIRST_CHUNK)


async def test_opentelemetry_instrument_with_metrics_port(
    collector: tuple[Collector, int], instrumented_env: dict[str, str]
) -> None:
    """Traces still go over OTLP; the gateway's metrics go to the scrape endpoint instead."""
    sink, collector_port = collector
    port, metrics_port = free_port(), free_port()
    env = otel_free_env(**instrumented_env, OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector_port}")
    argv = [str(BIN / "opentelemetry-instrument"), str(BIN / "openai-grpc-server"), "--demo"]
    proc = start([*argv, "--port", str(port), "--metrics-port", str(metrics_port)], env)
    try:
        await call_unary_stream_and_invalid(port)
        lines = await asyncio.to_thread(scrape, metrics_port)
    finally:
        access = await asyncio.to_thread(stop, proc)
    check_access_log(access, traced=True)
    servers = sorted(s.name for s in sink.spans() if s.kind == Span.SPAN_KIND_SERVER)
    assert servers == sorted([CHAT, STREAM, CHAT])
    assert bounds(lines, "gen_ai_client_operation_duration_seconds", error_type="") == (
        expected_le(semconv.DURATION_BUCKETS)
    )
    assert not sink.metric_points(semconv.OPERATION_DURATION)
