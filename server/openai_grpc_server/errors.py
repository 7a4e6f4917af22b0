"""The error taxonomy (seed section 8) and the one classifier that produces it.

Every failure the gateway reports is an `OpenAIError`. Each class carries, as class attributes,
its row of the table in DESIGN.md section 5: gRPC code, ErrorInfo reason, the seed's error
code, and whether it counts as an upstream failure for the circuit breaker. `classify_response`
and `classify_exception` are the only places that turn upstream answers into these classes;
`status.py` is the only place that turns them into a `google.rpc.Status`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import ssl
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

import grpc
import httpx

from openai_grpc_server import jsonlib

Code = grpc.StatusCode


# Anything that looks like an OpenAI key or a bearer credential, wherever it shows up (an
# upstream or proxy that echoes the key, an exception quoting a header). `Bearer <token>` (a
# placeholder in our own hints) is not a credential.
_SECRET = re.compile(r"(sk-[A-Za-z0-9_\-]{6,}|Bearer\s+(?!<)[^\s'\"]{6,})")
# Shorter values would redact ordinary words; no real key or token is this short.
MIN_SECRET_LENGTH = 8
_secret_values: set[str] = set()
_by_value: re.Pattern[str] | None = None


def register_secrets(values: Iterable[str]) -> None:
    """Redact these exact values (configured keys, caller tokens) whatever they look like.

    Values are only added: after a reload, calls still in flight may carry an old key."""
    global _by_value  # noqa: PLW0603 - one process-wide redactor, read on every error and log line
    new = {v for v in values if len(v) >= MIN_SECRET_LENGTH} - _secret_values
    if not new:
        return
    _secret_values.update(new)
    # Longest first, so a key that contains another is removed whole.
    ordered = sorted(_secret_values, key=len, reverse=True)
    _by_value = re.compile("|".join(re.escape(v) for v in ordered))


def redact(text: str) -> str:
    if _by_value is not None:
        text = _by_value.sub("[REDACTED]", text)
    return _SECRET.sub("[REDACTED]", text)


@dataclasses.dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class OpenAIError(Exception):
    """Root of the taxonomy."""

    code: ClassVar[grpc.StatusCode] = Code.INTERNAL
    reason: ClassVar[str] = "INTERNAL"
    error_code: ClassVar[str] = "OPENAI_INTERNAL"
    # Counts as an upstream failure for the circuit breaker (5xx, timeouts, connect errors).
    breaker_failure: ClassVar[bool] = False
    # Retryable by default (the retry policy may still refine by status and headers).
    retryable: ClassVar[bool] = False
    # Which google.rpc detail messages besides ErrorInfo the status carries (DESIGN.md section 5).
    details: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int | None = None,
        request_id: str | None = None,
        openai_type: str | None = None,
        openai_code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
        violations: tuple[FieldViolation, ...] = (),
        resource: tuple[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        message = redact(message)
        super().__init__(message)
        self.message = message
        self.upstream_status = upstream_status
        self.request_id = request_id
        self.openai_type = openai_type
        self.openai_code = openai_code
        self.param = param
        self.retry_after = retry_after
        self.headers: Mapping[str, str] = headers or {}
        self.violations = violations
        self.resource = resource
        self.metadata: dict[str, str] = dict(metadata or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, upstream_status={self.upstream_status})"


# --- Configuration ---------------------------------------------------------------------------
class ConfigurationError(OpenAIError):
    code = Code.FAILED_PRECONDITION
    reason = "INVALID_CONFIGURATION"
    error_code = "OPENAI_CONFIG"


class MissingApiKey(ConfigurationError):
    reason = "MISSING_API_KEY"


class InvalidBaseUrl(ConfigurationError):
    reason = "INVALID_BASE_URL"


class InvalidConfiguration(ConfigurationError):
    pass


# --- Authentication --------------------------------------------------------------------------
class AuthenticationError(OpenAIError):
    code = Code.UNAUTHENTICATED
    reason = "INVALID_API_KEY"
    error_code = "OPENAI_AUTH"


class InvalidApiKey(AuthenticationError):
    pass


class ExpiredApiKey(AuthenticationError):
    reason = "EXPIRED_API_KEY"


class InsufficientPermissions(AuthenticationError):
    code = Code.PERMISSION_DENIED
    reason = "INSUFFICIENT_PERMISSIONS"


# --- Request ---------------------------------------------------------------------------------
class RequestError(OpenAIError):
    details = frozenset({"BadRequest"})
    code = Code.INVALID_ARGUMENT
    reason = "VALIDATION_FAILED"
    error_code = "OPENAI_REQUEST"


class ValidationError(RequestError):
    pass


class MissingRequiredField(ValidationError):
    pass


class InvalidFieldValue(ValidationError):
    pass


class MalformedRequest(ValidationError):
    pass


class SerializationError(RequestError):
    reason = "SERIALIZATION_FAILED"


class TooManyTokens(RequestError):
    reason = "CONTEXT_LENGTH_EXCEEDED"


# --- Network ---------------------------------------------------------------------------------
class NetworkError(OpenAIError):
    details = frozenset({"RetryInfo"})
    code = Code.UNAVAILABLE
    reason = "UPSTREAM_UNREACHABLE"
    error_code = "OPENAI_NETWORK"
    breaker_failure = True
    retryable = True


class ConnectionFailed(NetworkError):
    pass


class DnsResolutionFailed(NetworkError):
    pass


class Timeout(NetworkError):
    details: ClassVar[frozenset[str]] = frozenset()
    code = Code.DEADLINE_EXCEEDED
    reason = "UPSTREAM_TIMEOUT"


class SslError(NetworkError):
    details: ClassVar[frozenset[str]] = frozenset()
    reason = "UPSTREAM_TLS_ERROR"
    # A TLS failure is a configuration problem: retrying the same handshake will not help.
    retryable = False


class ProtocolError(NetworkError):
    """The upstream answered, but not in HTTP (a wrong port, a non-HTTP service)."""

    details: ClassVar[frozenset[str]] = frozenset()
    reason = "UPSTREAM_PROTOCOL_ERROR"
    # The same address will answer the same way: a configuration problem, not a blip.
    retryable = False


# --- Rate limits -----------------------------------------------------------------------------
class RateLimitError(OpenAIError):
    details = frozenset({"RetryInfo", "QuotaFailure"})
    code = Code.RESOURCE_EXHAUSTED
    reason = "RATE_LIMITED"
    error_code = "OPENAI_RATE_LIMIT"
    retryable = True


class TooManyRequests(RateLimitError):
    pass


class QuotaExceeded(RateLimitError):
    details = frozenset({"QuotaFailure"})
    reason = "QUOTA_EXCEEDED"
    retryable = False


class GatewayOverloaded(RateLimitError):
    """Local: every slot is busy and the wait queue is full (or the wait ran out)."""

    details = frozenset({"RetryInfo"})
    reason = "GATEWAY_OVERLOADED"
    error_code = "GATEWAY_OVERLOADED"
    retryable = False  # nothing upstream failed: the caller retries after RetryInfo


class TokenLimitExceeded(RateLimitError):
    # One request larger than a whole bucket: waiting will never make room for it.
    retryable = False


# --- Server ----------------------------------------------------------------------------------
class ServerError(OpenAIError):
    details = frozenset({"RetryInfo"})
    code = Code.UNAVAILABLE
    reason = "UPSTREAM_UNAVAILABLE"
    error_code = "OPENAI_SERVER"
    breaker_failure = True
    retryable = True


class InternalServerError(ServerError):
    details = frozenset({"RequestInfo"})
    code = Code.INTERNAL
    reason = "UPSTREAM_INTERNAL"


class ServiceUnavailable(ServerError):
    pass


class BadGateway(ServerError):
    pass


class Overloaded(ServerError):
    pass


class CircuitOpen(ServerError):
    """Local: the breaker rejects calls until its recovery time has passed."""

    reason = "CIRCUIT_OPEN"
    breaker_failure = False
    retryable = False


class RateLimiterUnavailable(ServerError):
    """Local: the shared rate limiter (Redis) is down and `rate_limit.redis_failure` is `closed`."""

    reason = "RATE_LIMITER_UNAVAILABLE"
    error_code = "GATEWAY_RATE_LIMITER"
    breaker_failure = False


# --- Response --------------------------------------------------------------------------------
class ResponseError(OpenAIError):
    code = Code.INTERNAL
    reason = "UPSTREAM_BAD_RESPONSE"
    error_code = "OPENAI_RESPONSE"


class DeserializationError(ResponseError):
    pass


class UnexpectedResponse(ResponseError):
    pass


class InvalidContentType(ResponseError):
    pass


class CodecFailure(DeserializationError):
    """A 2xx body parsed as JSON but does not fit the response message."""


class ResponseTooLarge(ResponseError):
    """A unary answer or one stream event beyond the configured maximum."""

    @classmethod
    def of(cls, size: int, limit: int, headers: Mapping[str, str]) -> ResponseTooLarge:
        return cls(
            f"OpenAI's answer is larger than the gateway accepts ({size} bytes so far, limit {limit}; "
            "raise max_response_bytes / OPENAI_GRPC_MAX_RESPONSE_BYTES if this is expected)",
            request_id=headers.get("x-request-id"),
            headers=headers,
            metadata={"limitBytes": str(limit), "setting": "max_response_bytes"},
        )


class StreamInterrupted(ResponseError):
    code = Code.ABORTED
    reason = "STREAM_INTERRUPTED"
    breaker_failure = True
    retryable = True


# --- Resources -------------------------------------------------------------------------------
class ResourceError(OpenAIError):
    code = Code.NOT_FOUND
    reason = "NOT_FOUND"
    error_code = "OPENAI_RESOURCE"


class NotFound(ResourceError):
    details = frozenset({"ResourceInfo"})


class AlreadyExists(ResourceError):
    code = Code.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class Deleted(ResourceError):
    pass


class InvalidState(ResourceError):
    details = frozenset({"PreconditionFailure"})
    code = Code.FAILED_PRECONDITION
    reason = "INVALID_STATE"


# --- Content policy --------------------------------------------------------------------------
class ContentPolicyError(OpenAIError):
    details: ClassVar[frozenset[str]] = frozenset()
    code = Code.INVALID_ARGUMENT
    reason = "CONTENT_POLICY_VIOLATION"
    error_code = "OPENAI_CONTENT_POLICY"


class ContentFiltered(ContentPolicyError):
    pass


class SafetyViolation(ContentPolicyError):
    pass


class RefusedByModel(ContentPolicyError):
    pass


# --- Local: inbound callers and the gateway itself -------------------------------------------
class CallerError(OpenAIError):
    error_code = "GATEWAY_CALLER"


class CallerUnauthenticated(CallerError):
    code = Code.UNAUTHENTICATED
    reason = "CALLER_UNAUTHENTICATED"


class CallerForbidden(CallerError):
    code = Code.PERMISSION_DENIED
    reason = "CALLER_FORBIDDEN"


class GatewayInternal(OpenAIError):
    """An unexpected exception inside the gateway; details go to the log, never the caller."""


# --- Classification --------------------------------------------------------------------------
# HTTP status -> taxonomy class. 400 is refined below by OpenAI's error code and the operation.
_STATUS_TABLE: dict[int, type[OpenAIError]] = {
    400: ValidationError,
    401: InvalidApiKey,
    403: InsufficientPermissions,
    404: NotFound,
    408: Timeout,
    409: AlreadyExists,
    410: Deleted,
    413: ValidationError,
    415: ValidationError,
    422: ValidationError,
    429: TooManyRequests,
    500: InternalServerError,
    502: BadGateway,
    503: ServiceUnavailable,
    504: Timeout,
    529: Overloaded,
}

# OpenAI `error.code` / `error.type` -> class, wherever the status alone is ambiguous.
_CODE_TABLE: dict[str, type[OpenAIError]] = {
    "insufficient_quota": QuotaExceeded,
    "billing_hard_limit_reached": QuotaExceeded,
    "context_length_exceeded": TooManyTokens,
    "string_above_max_length": TooManyTokens,
    "content_policy_violation": ContentFiltered,
    "content_filter": ContentFiltered,
    "invalid_api_key": InvalidApiKey,
    "expired_api_key": ExpiredApiKey,
}

# A 400 on these operations means the resource is in the wrong state (cancel a finished batch).
_STATE_CHANGE_SUFFIXES = ("/cancel", "/pause", "/resume", "/complete", "/submit_tool_outputs")


# No upstream delay is taken at face value beyond a day (`retry-after: inf` or 1e300).
MAX_RETRY_AFTER = 86_400.0


def _header_seconds(headers: Mapping[str, str]) -> float | None:
    value = _parse_header_seconds(headers)
    if value is None or math.isnan(value):
        return None
    return min(value, MAX_RETRY_AFTER)


def _parse_header_seconds(headers: Mapping[str, str]) -> float | None:
    """Delay the upstream asked for: `retry-after-ms`, then `retry-after` (seconds or HTTP date)."""
    import time  # noqa: PLC0415
    from email.utils import parsedate_to_datetime  # noqa: PLC0415 - rare path

    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    return _header_seconds(headers)


def _error_body(body: bytes) -> dict[str, Any] | None:
    try:
        parsed = jsonlib.loads(body)
    except jsonlib.JSONDecodeError:
        return None
    if isinstance(parsed, dict):
        err = parsed.get("error", parsed)
        if isinstance(err, dict):
            return err
    return None


def _plain_message(status: int, body: bytes) -> str:
    """An actionable sentence for an error whose body is not OpenAI JSON (an HTML 502 page)."""
    phrase = httpx.codes.get_reason_phrase(status) or "error"
    return f"OpenAI answered HTTP {status} ({phrase}) without an error body the gateway could read"


def classify_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    method: str = "",
    path: str = "",
) -> OpenAIError:
    """Turn a non-2xx upstream answer into the taxonomy."""
    err = _error_body(body)
    openai_code = str(err.get("code")) if err and err.get("code") is not None else None
    openai_type = str(err.get("type")) if err and err.get("type") is not None else None
    param = str(err.get("param")) if err and err.get("param") is not None else None
    message = str(err.get("message")) if err and err.get("message") else _plain_message(status, body)

    cls = _STATUS_TABLE.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else ValidationError
    refined = _CODE_TABLE.get(openai_code or "") or _CODE_TABLE.get(openai_type or "")
    if refined is not None and (status < 500 or refined is QuotaExceeded):
        cls = refined
    elif status == 400 and method == "POST" and path.endswith(_STATE_CHANGE_SUFFIXES):
        cls = InvalidState

    violations: tuple[FieldViolation, ...] = ()
    if issubclass(cls, RequestError | ContentPolicyError):
        violations = (FieldViolation(param or "", redact(message)),)
    resource = None
    if cls in (NotFound, InvalidState) and path:
        resource = (path.strip("/").split("/")[0], path)
    return cls(
        message,
        upstream_status=status,
        request_id=headers.get("x-request-id"),
        openai_type=openai_type,
        openai_code=openai_code,
        param=param,
        retry_after=_header_seconds(headers),
        headers=headers,
        violations=violations,
        resource=resource,
    )


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and everything it was raised from, nearest first (bounded: chains can loop)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_tls(exc: BaseException) -> bool:
    for e in _chain(exc):
        if isinstance(e, ssl.SSLError | ssl.CertificateError):
            return True
        if type(e).__module__.startswith("aiohttp") and "SSL" in type(e).__name__:
            return True  # aiohttp's ClientConnectorSSLError / ClientConnectorCertificateError
    text = str(exc).lower()
    return "certificate verify" in text or "[ssl" in text


# What aiohttp and h11 say when the bytes that came back are not an HTTP response.
_NOT_HTTP = ("illegal status line", "bad status line", "invalid status line", "expected http/")


def _is_not_http(exc: BaseException) -> bool:
    for e in _chain(exc):
        name = type(e).__name__
        if name in ("BadStatusLine", "BadHttpMessage"):
            return True
        text = str(e).lower()
        if any(m in text for m in _NOT_HTTP):
            return True
    return False


def classify_exception(exc: BaseException, *, base_url: str = "") -> OpenAIError:
    """Turn a transport exception (httpx, aiohttp, ssl, OS) into the taxonomy."""
    if isinstance(exc, OpenAIError):
        return exc
    for inner in _chain(exc):
        if isinstance(inner, OpenAIError):
            return inner  # raised by our own request body (an upload) while it was being sent
    where = f" to {base_url}" if base_url else ""
    detail = redact(str(exc)) or type(exc).__name__
    if isinstance(exc, httpx.LocalProtocolError):
        # Nothing reached the network: the request itself is malformed (a key with a newline).
        return InvalidConfiguration(f"the gateway could not build the upstream request: {detail}")
    if _is_tls(exc):
        return SslError(f"TLS with the upstream{where} failed (certificate or protocol): {detail}")
    if _is_not_http(exc):
        return ProtocolError(f"the upstream{where} did not answer in HTTP: {detail}")
    cause = exc.__cause__
    if cause is not None and type(cause).__module__.startswith("aiohttp"):
        # httpx-aiohttp maps every aiohttp connection error to ConnectTimeout: look underneath.
        name = type(cause).__name__
        if "Timeout" not in name:
            return ConnectionFailed(f"the upstream connection failed{where}: {redact(str(cause)) or name}")
    if isinstance(exc, httpx.TimeoutException):
        return Timeout(f"OpenAI did not answer in time{where} ({type(exc).__name__})")
    if isinstance(exc, httpx.ConnectError):
        text = str(exc).lower()
        if "name or service not known" in text or "nodename" in text or "getaddrinfo" in text:
            return DnsResolutionFailed(f"could not resolve the upstream host{where}: {detail}")
        return ConnectionFailed(f"could not connect{where}: {detail}")
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return ConnectionFailed(f"the upstream connection broke{where}: {detail}")
    if isinstance(exc, httpx.TransportError | OSError):
        return ConnectionFailed(f"network error{where}: {detail}")
    if type(exc).__module__.startswith("aiohttp"):
        # An aiohttp error httpx-aiohttp does not map (a response it could not parse).
        return ConnectionFailed(f"the upstream connection failed{where}: {detail}")
    return GatewayInternal("internal error in the gateway")


# In-stream error events carry no HTTP status: infer one from OpenAI's error type.
_STREAM_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "rate_limit_exceeded": 429,
    "rate_limit_error": 429,
    "insufficient_quota": 429,
    "server_error": 500,
    "api_error": 500,
    "overloaded_error": 529,
}


def classify_stream_error(payload: Any) -> OpenAIError:
    """An `{"error": {...}}` (or `{"type": "error", ...}`) event inside an SSE stream."""
    err = payload.get("error", payload) if isinstance(payload, dict) else {}
    if not isinstance(err, dict):
        err = {"message": str(err)}
    kind = str(err.get("type") or err.get("code") or "server_error")
    status = _STREAM_ERROR_STATUS.get(kind, _STREAM_ERROR_STATUS.get(str(err.get("code")), 500))
    fields = {k: err.get(k) for k in ("message", "type", "code", "param")}
    fields["message"] = fields["message"] or f"OpenAI reported a {kind} error inside the stream"
    body = jsonlib.dumps({"error": fields})
    found = classify_response(status, {}, body)
    found.upstream_status = None  # the HTTP exchange itself succeeded
    return found
