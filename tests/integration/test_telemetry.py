"""What operators see: spans (seed 11.2), metrics (seed 11.1) and logs, never a key."""

from __future__ import annotations

import logging

import grpc
import pytest
from openai_grpc_server import app, routes
from openai_grpc_server.fake_upstream import FakeUpstream, Step
from openai_grpc_server.telemetry import JsonFormatter, Telemetry
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.integration.conftest import API_KEY, Gateway, settings_for, start_gateway, stop_gateway
from tests.integration.test_errors import chat


async def test_spans_metrics_and_logs(fake: FakeUpstream, caplog: pytest.LogCaptureFixture) -> None:
    fake.reset()
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    telemetry = Telemetry(
        meter_provider=MeterProvider(metric_readers=[reader]), tracer_provider=tracer_provider
    )
    running = await app.start(
        settings_for(fake.base_url),
        telemetry=telemetry,
        interceptors=(aio_server_interceptor(tracer_provider=tracer_provider),),  # type: ignore[no-untyped-call]
    )
    gw = Gateway(
        running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}"),
        {r.name: r for r in routes.load_routes()},
    )
    try:
        await gw.unary("CreateChatCompletion")(chat(gw), timeout=10)
        fake.script(
            "POST /chat/completions",
            Step(
                status=401,
                error_type="invalid_request_error",
                message=f"Incorrect API key provided: {API_KEY}",
            ),
        )
        with caplog.at_level(logging.INFO), pytest.raises(grpc.aio.AioRpcError) as caught:
            await gw.unary("CreateChatCompletion")(chat(gw), timeout=10)
        assert API_KEY not in (caught.value.details() or "")
    finally:
        await stop_gateway(gw)

    spans = exporter.get_finished_spans()
    names = [s.name for s in spans]
    assert "openai.request" in names
    assert any(n.endswith("ChatService/CreateChatCompletion") for n in names), names
    req = next(s for s in spans if s.name == "openai.request")
    attrs = dict(req.attributes or {})
    assert attrs["openai.endpoint"] == "/chat/completions"
    assert attrs["openai.model"] == "gpt-4o-mini"
    assert attrs["http.method"] == "POST" and attrs["http.status_code"] == 200
    assert attrs["openai.request_id"].startswith("req_")
    assert isinstance(attrs["openai.tokens.prompt"], int)
    assert attrs["openai.organization_id"] == "org-test"
    for span in spans:
        assert API_KEY not in str(dict(span.attributes or {}))

    data = reader.get_metrics_data()
    assert data is not None
    found = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert {
        "openai_requests_total",
        "openai_request_duration_seconds",
        "openai_tokens_used_total",
        "openai_errors_total",
    } <= found

    formatter = JsonFormatter()
    lines = [formatter.format(r) for r in caplog.records]
    assert any('"reason": "INVALID_API_KEY"' in line for line in lines)
    assert all(API_KEY not in line for line in lines)


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
        if point.attributes and point.attributes.get("model") == "gpt-4o-mini"
    }
    assert counted == want
