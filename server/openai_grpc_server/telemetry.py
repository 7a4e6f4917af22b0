"""Metrics (seed section 11.1 names), structured JSON logs with redaction, tracing hooks.

Metrics go through the OpenTelemetry API; `--metrics-port` adds a Prometheus scrape endpoint.
Logs are one JSON object per line and never carry a credential: `Secret` redacts itself, and
the formatter masks anything that looks like a key or a bearer token.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider

from openai_grpc_server.errors import OpenAIError, redact

log = logging.getLogger("openai_grpc")

_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _STANDARD_ATTRS and not k.startswith("_"):
                entry[k] = v
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str))


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx and httpcore log every request at INFO: one line per call is noise (and CPU).
    for name in ("httpx", "httpcore", "aiohttp.access", "grpc"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def setup_metrics(port: int | None) -> None:
    """Prometheus metrics on `port`. Without a reader nothing would read the numbers, so the
    OpenTelemetry API's no-op meters stay in place (recording costs CPU on every call)."""
    if not port:
        return
    from opentelemetry.exporter.prometheus import PrometheusMetricReader  # noqa: PLC0415
    from prometheus_client import start_http_server  # noqa: PLC0415

    start_http_server(port)
    metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))


class RateLimitTelemetry:
    """The rate limiter's instruments (in-process and shared on Redis), in one place."""

    _STORE_STATES = {"shared": 0, "local": 1, "closed": 2}

    def _init_rate_limit_metrics(self, meter: metrics.Meter) -> None:
        self._rl_decisions = meter.create_counter(
            "openai_rate_limit_decisions_total",
            description="Rate limiter decisions: admitted, queued, rejected (by limit_type)",
        )
        self._rl_redis = meter.create_histogram(
            "openai_rate_limit_redis_duration_seconds", unit="s", description="Shared limiter round trip"
        )
        self._rl_store = meter.create_up_down_counter(
            "openai_rate_limit_fallback",
            description="0 limits shared on Redis, 1 Redis away: in-process fallback, 2 Redis away: closed",
        )
        self._rl_store_value = 0

    def on_rate_limit_decision(self, op: Any, outcome: str, limit_type: str) -> None:
        self._rl_decisions.add(1, {"decision": outcome, "limit_type": limit_type})

    def on_limiter_round_trip(self, seconds: float) -> None:
        self._rl_redis.record(seconds)

    def on_limiter_store(self, state: str) -> None:
        value = self._STORE_STATES.get(state, 0)
        self._rl_store.add(value - self._rl_store_value)
        self._rl_store_value = value


class Telemetry(RateLimitTelemetry):
    """One object the request path reports to; also the resilience observer."""

    def __init__(
        self,
        meter_provider: metrics.MeterProvider | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        meter = metrics.get_meter("openai_grpc_server", meter_provider=meter_provider)
        self.tracer = trace.get_tracer("openai_grpc_server", tracer_provider=tracer_provider)
        self.requests = meter.create_counter("openai_requests_total", description="Upstream requests")
        self.duration = meter.create_histogram(
            "openai_request_duration_seconds", unit="s", description="Request latency"
        )
        self.tokens = meter.create_counter("openai_tokens_used_total", description="Token usage")
        self.errors = meter.create_counter("openai_errors_total", description="Errors by type")
        self.rate_limit_hits = meter.create_counter(
            "openai_rate_limit_hits_total", description="Rate limit events"
        )
        self.breaker_state = meter.create_up_down_counter(
            "openai_circuit_breaker_state", description="0 closed, 1 open, 2 half-open"
        )
        self.retries = meter.create_counter("openai_retry_attempts_total", description="Retry attempts")
        self.chunks = meter.create_counter("openai_streaming_chunks_total", description="Streamed chunks")
        self._breaker_values: dict[str, int] = {}
        self._init_rate_limit_metrics(meter)

    def request_done(self, endpoint: str, model: str, started: float, error: OpenAIError | None) -> None:
        status = "ok" if error is None else error.reason
        self.requests.add(1, {"endpoint": endpoint, "status": status, "model": model})
        self.duration.record(time.perf_counter() - started, {"endpoint": endpoint, "model": model})
        if error is not None:
            self.errors.add(1, {"endpoint": endpoint, "error_type": type(error).__name__})
            level = logging.WARNING if error.code.name != "INTERNAL" else logging.ERROR
            log.log(
                level,
                "request failed",
                extra={
                    "endpoint": endpoint,
                    "model": model,
                    "error_code": error.error_code,
                    "reason": error.reason,
                    "status_code": error.upstream_status,
                    "request_id": error.request_id,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                },
            )

    def usage(self, model: str, usage: dict[str, Any]) -> None:
        prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
        completion = usage.get("completion_tokens", usage.get("output_tokens"))
        span = trace.get_current_span()
        if isinstance(prompt, int):
            self.tokens.add(prompt, {"model": model, "type": "prompt"})
            span.set_attribute("openai.tokens.prompt", prompt)
        if isinstance(completion, int):
            self.tokens.add(completion, {"model": model, "type": "completion"})
            span.set_attribute("openai.tokens.completion", completion)

    def request_span(self, call: Any, *, streaming: bool) -> Any:
        """The `openai.request` span (seed 11.2) around one RPC's upstream work."""
        return self.tracer.start_as_current_span(
            "openai.request", attributes=self._attributes(call, streaming)
        )

    def stream_span(self, call: Any) -> trace.Span:
        """The same span for a server stream; not made current, as it lives across yields."""
        return self.tracer.start_span("openai.request", attributes=self._attributes(call, True))

    @staticmethod
    def _attributes(call: Any, streaming: bool) -> dict[str, Any]:
        method, _, path = call.route.endpoint.partition(" ")
        attributes: dict[str, Any] = {
            "openai.endpoint": path,
            "openai.streaming": streaming,
            "http.method": method,
        }
        if call.model:
            attributes["openai.model"] = call.model
        if call.credential.organization:
            attributes["openai.organization_id"] = call.credential.organization
        return attributes

    def http_response(self, status: int, upstream: Any, path: str, headers: Any) -> None:
        span = trace.get_current_span()
        if not span.is_recording():
            return  # tracing is off: skip building attributes nobody reads
        span.set_attribute("http.status_code", status)
        span.set_attribute("http.url", upstream.url(path))
        request_id = headers.get("x-request-id")
        if request_id:
            span.set_attribute("openai.request_id", request_id)

    def streamed(self, endpoint: str, model: str, n: int) -> None:
        self.chunks.add(n, {"endpoint": endpoint, "model": model})

    # --- ResilienceObserver ---
    def on_attempt(self, op: Any, attempt_number: int, delay_seconds: float, cause: OpenAIError) -> None:
        self.retries.add(1, {"endpoint": op.endpoint, "attempt_number": str(attempt_number)})
        log.info(
            "retrying upstream call",
            extra={
                "endpoint": op.endpoint,
                "attempt": attempt_number,
                "delay_ms": round(delay_seconds * 1000, 1),
                "cause": cause.reason,
                "status_code": cause.upstream_status,
            },
        )

    def on_retry_exhausted(self, op: Any, attempts: int, error: OpenAIError) -> None:
        log.warning(
            "retries exhausted", extra={"endpoint": op.endpoint, "attempts": attempts, "reason": error.reason}
        )

    def on_rate_limited(self, op: Any, limit_type: str) -> None:
        self.rate_limit_hits.add(1, {"endpoint": op.endpoint, "limit_type": limit_type})

    def on_breaker_state(self, endpoint: str, state: str) -> None:
        value = {"closed": 0, "open": 1, "half_open": 2}.get(state, 0)
        previous = self._breaker_values.get(endpoint, 0)
        self._breaker_values[endpoint] = value
        self.breaker_state.add(value - previous, {"endpoint": endpoint})
        log.warning("circuit breaker state changed", extra={"endpoint": endpoint, "state": state})
