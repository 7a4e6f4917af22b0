"""Metrics, spans and the access log: what operators see of every RPC.

- Metrics: the `openai_*` names (docs/architecture.md) and the OpenTelemetry GenAI conventions
  (names in `semconv`), through the OpenTelemetry API. `--metrics-port` adds a Prometheus
  scrape endpoint; under `opentelemetry-instrument` the SDK it configures (OTLP) gets them.
- Model labels are bounded: a name becomes a label value only once the upstream accepted it
  (a successful call asked for it or answered with it), and only up to `max_models` names;
  anything else is `other`. A caller cannot create a series by sending a made-up model.
- Spans: `openai.request` (kind CLIENT) with the `gen_ai.*` attributes, a child of
  the gRPC server span when one is there.
- Logs: one JSON object per line, never a credential (`Secret` redacts itself and the
  formatter masks anything that looks like a key or a bearer token); one access-log line per
  RPC on the `openai_grpc.access` logger, failures included.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import orjson
from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.trace import SpanKind, Status, StatusCode

from openai_grpc_server import semconv
from openai_grpc_server.errors import OpenAIError, redact
from openai_grpc_server.routes import Route

if TYPE_CHECKING:
    from openai_grpc_server.call import Call

log = logging.getLogger("openai_grpc")
access_log = logging.getLogger("openai_grpc.access")

_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}

# Seconds, for the `openai_*` latency histogram: sub-second resolution for short calls, up to
# the minutes a long generation takes (the SDK's default buckets are for milliseconds).
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
OTHER_MODEL = "other"
CANCELLED = "CANCELLED"  # status of an RPC the caller cancelled (no error reason applies)
_MAX_MODEL_CHARS = 128  # a longer "model" in a log line or span is cut here
# Upstream attempts of the RPC running in this task: the resilience observer runs inline in
# the RPC's own task, so a context variable carries the count to the access log.
_attempts: contextvars.ContextVar[int] = contextvars.ContextVar("openai_grpc_attempts", default=1)


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
        # orjson: one access line per RPC, a third of the standard library's cost; the standard
        # library still writes what orjson refuses (an integer beyond 64 bits).
        try:
            text = orjson.dumps(entry, default=str).decode()
        except TypeError:
            text = json.dumps(entry, default=str)
        return redact(text)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx and httpcore log every request at INFO: one line per call is noise (and CPU).
    for name in ("httpx", "httpcore", "aiohttp.access", "grpc"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


_prometheus_provider: MeterProvider | None = None


def setup_metrics(port: int | None) -> None:
    """Prometheus metrics on `port`. Without a reader nothing would read the numbers, so the
    OpenTelemetry API's no-op meters stay in place (recording costs CPU on every call), unless
    an SDK was configured from outside (`opentelemetry-instrument`)."""
    global _prometheus_provider  # noqa: PLW0603 - one process, one scrape endpoint
    if not port:
        return
    from opentelemetry.exporter.prometheus import PrometheusMetricReader  # noqa: PLC0415
    from prometheus_client import start_http_server  # noqa: PLC0415

    start_http_server(port)
    _prometheus_provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
    if not isinstance(metrics.get_meter_provider(), MeterProvider):
        metrics.set_meter_provider(_prometheus_provider)


def server_auto_instrumented() -> bool:
    """Whether `opentelemetry-instrument` already put its interceptor on every grpc.aio server."""
    try:
        from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorServer  # noqa: PLC0415
    except ImportError:  # pragma: no cover - the server extra installs it
        return False
    # Instrumentors are singletons: this is the instance the auto-instrumentation ran.
    return bool(GrpcAioInstrumentorServer().is_instrumented_by_opentelemetry)  # type: ignore[no-untyped-call]


class ModelLabels:
    """Model names that may be metric label values: bounded, and never straight from a caller."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._known: set[str] = set()

    def label(self, name: str) -> str:
        return name if not name or name in self._known else OTHER_MODEL

    def learn(self, name: str) -> None:
        """`name` was accepted or returned by the upstream."""
        if name and name not in self._known and len(self._known) < self.limit and len(name) <= 128:
            self._known.add(name)


class _Series:
    """The attribute sets of one (route, model, response model, outcome): built once, reused."""

    __slots__ = ("chunks", "duration", "gen_ai", "requests", "tokens_in", "tokens_out")

    def __init__(self, endpoint: str, operation: str, model: str, response_model: str, status: str) -> None:
        self.requests = {"endpoint": endpoint, "status": status, "model": model}
        self.duration = {"endpoint": endpoint, "model": model}
        self.chunks = {"endpoint": endpoint, "model": model}
        gen_ai: dict[str, str] = {
            semconv.OPERATION_NAME: operation,
            semconv.PROVIDER_NAME: semconv.PROVIDER_OPENAI,
        }
        if model:
            gen_ai[semconv.REQUEST_MODEL] = model
        if response_model:
            gen_ai[semconv.RESPONSE_MODEL] = response_model
        self.tokens_in = {**gen_ai, semconv.TOKEN_TYPE: semconv.TOKEN_INPUT}
        self.tokens_out = {**gen_ai, semconv.TOKEN_TYPE: semconv.TOKEN_OUTPUT}
        if status != "ok":
            gen_ai[semconv.ERROR_TYPE] = status
        self.gen_ai = gen_ai


class _RouteInfo:
    """What telemetry needs of a route, computed on its first call."""

    def __init__(self, route: Route) -> None:
        self.route = route
        self.endpoint = route.endpoint
        self.operation = semconv.operation_name(route)
        self.span_attributes: dict[str, Any] = {
            "openai.endpoint": route.path_template,
            "http.method": route.http_method,
            semconv.OPERATION_NAME: self.operation,
            semconv.PROVIDER_NAME: semconv.PROVIDER_OPENAI,
            "openai.streaming": False,
        }
        self.stream_span_attributes = {**self.span_attributes, "openai.streaming": True}
        self.series: dict[tuple[str, str, str], _Series] = {}

    def labels(self, model: str, response_model: str, status: str) -> _Series:
        key = (model, response_model, status)
        found = self.series.get(key)
        if found is None:
            found = self.series[key] = _Series(self.endpoint, self.operation, model, response_model, status)
        return found


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
        *,
        max_models: int = 100,
    ) -> None:
        meter = metrics.get_meter(
            "openai_grpc_server",
            meter_provider=meter_provider or _prometheus_provider,
            schema_url=semconv.SCHEMA_URL,
        )
        self.tracer = trace.get_tracer(
            "openai_grpc_server", tracer_provider=tracer_provider, schema_url=semconv.SCHEMA_URL
        )
        self.requests = meter.create_counter("openai_requests_total", description="Requests by outcome")
        self.duration = meter.create_histogram(
            "openai_request_duration_seconds",
            unit="s",
            description="Request latency",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
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
        self.operation_duration = meter.create_histogram(
            semconv.OPERATION_DURATION,
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=semconv.DURATION_BUCKETS,
        )
        self.token_usage = meter.create_histogram(
            semconv.TOKEN_USAGE,
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=semconv.TOKEN_BUCKETS,
        )
        self.time_to_first_chunk = meter.create_histogram(
            semconv.TIME_TO_FIRST_CHUNK,
            unit="s",
            description="Time to receive the first chunk of a streamed response.",
            explicit_bucket_boundaries_advisory=semconv.TIME_TO_FIRST_CHUNK_BUCKETS,
        )
        self.models = ModelLabels(max_models)
        self._routes: dict[int, _RouteInfo] = {}
        self._breaker_values: dict[str, int] = {}
        self._init_rate_limit_metrics(meter)

    def _route(self, route: Route) -> _RouteInfo:
        # Keyed by identity: hashing the frozen Route dataclass hashes all its fields every call.
        info = self._routes.get(id(route))
        if info is None or info.route is not route:
            info = self._routes[id(route)] = _RouteInfo(route)
        return info

    # --- spans -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def request_span(self, call: Call, *, streaming: bool) -> Iterator[trace.Span]:
        """The current `openai.request` span around one RPC's upstream work."""
        span = self.stream_span(call, streaming=streaming)
        if not span.get_span_context().is_valid:
            # No tracer behind the API (tracing off): nothing reads the span, skip the context.
            yield span
            return
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield span
        except OpenAIError as exc:
            _span_failed(span, exc.reason)
            raise
        except BaseException as exc:
            _span_failed(span, CANCELLED if isinstance(exc, asyncio.CancelledError) else type(exc).__name__)
            raise
        finally:
            otel_context.detach(token)
            span.end()

    def stream_span(self, call: Call, *, streaming: bool = True) -> trace.Span:
        """The same span for a server stream; not made current, as it lives across yields."""
        info = self._route(call.route)
        span = self.tracer.start_span(
            "openai.request",
            kind=SpanKind.CLIENT,
            attributes=info.stream_span_attributes if streaming else info.span_attributes,
        )
        call.span = span
        if span.is_recording():  # per-call attributes only when someone records them
            if call.model:
                model = call.model[:_MAX_MODEL_CHARS]
                span.set_attribute("openai.model", model)
                span.set_attribute(semconv.REQUEST_MODEL, model)
            if call.credential.organization:
                span.set_attribute("openai.organization_id", call.credential.organization)
        return span

    def http_response(self, status: int, upstream: Any, path: str, headers: Any) -> None:
        span = trace.get_current_span()
        if not span.is_recording():
            return  # tracing is off: skip building attributes nobody reads
        span.set_attribute("http.status_code", status)
        span.set_attribute("http.url", upstream.url(path))
        request_id = headers.get("x-request-id")
        if request_id:
            span.set_attribute("openai.request_id", request_id)

    # --- what the upstream answered ----------------------------------------------------------
    def response(self, call: Call, payload: Any, usage: Mapping[str, Any] | None) -> None:
        """A response body (or the stream event carrying usage): response model and id, tokens."""
        body = payload.get("response") if isinstance(payload, dict) and "response" in payload else payload
        response_id = None
        if isinstance(body, dict):
            model, response_id = body.get("model"), body.get("id")
            if isinstance(model, str):
                call.response_model = model[:_MAX_MODEL_CHARS]
        self.models.learn(call.model)  # the upstream accepted these
        self.models.learn(call.response_model)
        span = call.span
        recording = span is not None and span.is_recording()
        if recording:
            assert span is not None
            if call.response_model:
                span.set_attribute(semconv.RESPONSE_MODEL, call.response_model)
            if isinstance(response_id, str):
                span.set_attribute(semconv.RESPONSE_ID, response_id[:_MAX_MODEL_CHARS])
        if usage is None:
            return
        prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
        completion = usage.get("completion_tokens", usage.get("output_tokens"))
        model = self.models.label(call.model)
        series = self._route(call.route).labels(model, self.models.label(call.response_model), "ok")
        if isinstance(prompt, int):
            self.tokens.add(prompt, {"model": model, "type": "prompt"})
            self.token_usage.record(prompt, series.tokens_in)
            if recording:
                span.set_attribute("openai.tokens.prompt", prompt)  # type: ignore[union-attr]
                span.set_attribute(semconv.USAGE_INPUT_TOKENS, prompt)  # type: ignore[union-attr]
        if isinstance(completion, int):
            self.tokens.add(completion, {"model": model, "type": "completion"})
            self.token_usage.record(completion, series.tokens_out)
            if recording:
                span.set_attribute("openai.tokens.completion", completion)  # type: ignore[union-attr]
                span.set_attribute(semconv.USAGE_OUTPUT_TOKENS, completion)  # type: ignore[union-attr]

    def first_chunk(self, call: Call) -> None:
        """The first chunk of a streamed response arrived."""
        self.models.learn(call.model)  # the upstream accepted it
        series = self._route(call.route).labels(self.models.label(call.model), "", "ok")
        self.time_to_first_chunk.record(time.perf_counter() - call.started, series.gen_ai)

    def stream_counter(self, call: Call) -> Callable[[int], None]:
        """Counts one stream's relayed events; its labels are looked up once, not per message
        (after `first_chunk`, which has taught the model name)."""
        series = self._route(call.route).labels(self.models.label(call.model), "", "ok")
        return functools.partial(self.chunks.add, attributes=series.chunks)

    # --- the end of an RPC -------------------------------------------------------------------
    def request_done(
        self, route: Route, call: Call | None, error: OpenAIError | None = None, started: float | None = None
    ) -> None:
        """Metrics and the access-log line of one finished RPC (`call` is None when it failed
        before the gateway had described it)."""
        now = time.perf_counter()
        if started is None:
            started = call.started if call is not None else now  # unknown: reported as 0
        elapsed = now - started
        if error is None and call is not None:
            self.models.learn(call.model)  # the upstream accepted these
            self.models.learn(call.response_model)
        self._count(route, call, "ok" if error is None else error.reason, elapsed)
        if error is not None:
            self.errors.add(1, {"endpoint": route.endpoint, "error_type": type(error).__name__})
            if call is not None and call.span is not None:
                _span_failed(call.span, error.reason)
        level = (
            logging.INFO
            if error is None
            else logging.ERROR
            if error.code.name == "INTERNAL"
            else logging.WARNING
        )
        if access_log.isEnabledFor(level):
            self._access(level, route, call, elapsed, error)

    def cancelled(self, route: Route, call: Call | None, started: float) -> None:
        """The caller cancelled (or its deadline passed): no status goes back, but it is logged
        and counted as CANCELLED."""
        elapsed = time.perf_counter() - started
        self._count(route, call, CANCELLED, elapsed)
        if call is not None and call.span is not None:
            _span_failed(call.span, CANCELLED)
        if access_log.isEnabledFor(logging.INFO):
            self._access(logging.INFO, route, call, elapsed, None, code=CANCELLED)

    def _count(self, route: Route, call: Call | None, status: str, elapsed: float) -> None:
        model = response_model = ""
        if call is not None:
            model, response_model = self.models.label(call.model), self.models.label(call.response_model)
        series = self._route(route).labels(model, response_model, status)
        self.requests.add(1, series.requests)
        self.duration.record(elapsed, series.duration)
        self.operation_duration.record(elapsed, series.gen_ai)

    def _access(
        self,
        level: int,
        route: Route,
        call: Call | None,
        elapsed: float,
        error: OpenAIError | None,
        code: str = "OK",
    ) -> None:
        span = call.span if call is not None and call.span is not None else trace.get_current_span()
        ctx = span.get_span_context()
        if not ctx.is_valid:  # the call's own span is off: the server span may still be there
            ctx = trace.get_current_span().get_span_context()
        fields: dict[str, Any] = {
            "method": route.full_method,
            "code": code if error is None else error.code.name,
            "reason": "" if error is None else error.reason,
            "duration_ms": round(elapsed * 1000, 3),
            "tenant": call.credential.name if call is not None else "",
            "model": call.model[:_MAX_MODEL_CHARS] if call is not None else "",
            "upstream_request_id": (error.request_id if error is not None else None)
            or (call.request_id if call is not None else "")
            or "",
            "attempts": _attempts.get() if call is not None else 0,
            "trace_id": format(ctx.trace_id, "032x") if ctx.is_valid else "",
            "span_id": format(ctx.span_id, "016x") if ctx.is_valid else "",
        }
        if error is not None:
            fields["error_code"] = error.error_code
            fields["upstream_status"] = error.upstream_status
        # A record made here, not by `Logger.log`: that would also walk the stack for the
        # caller's file and line, which an access line does not need (a third of its cost).
        record = logging.LogRecord(access_log.name, level, "", 0, "rpc", None, None)
        record.__dict__.update(fields)
        access_log.handle(record)

    # --- ResilienceObserver ---
    def on_attempt(self, op: Any, attempt_number: int, delay_seconds: float, cause: OpenAIError) -> None:
        _attempts.set(attempt_number)
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


def _span_failed(span: trace.Span, error_type: str) -> None:
    if span.is_recording():
        span.set_attribute(semconv.ERROR_TYPE, error_type)
        span.set_status(Status(StatusCode.ERROR, error_type))
