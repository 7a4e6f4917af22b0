"""Upstream answers and transport failures, turned into the error taxonomy.

The only place that reads a non-2xx answer, an in-stream error event or an httpx / aiohttp /
ssl / OS exception and says which `errors.OpenAIError` it is; `errors.py` holds the taxonomy
itself and `status.py` turns it into a `google.rpc.Status`.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
from openai_grpc_server import jsonlib
from openai_grpc_server.errors import (
    AlreadyExists,
    BadGateway,
    ConnectionFailed,
    ContentFiltered,
    ContentPolicyError,
    Deleted,
    DnsResolutionFailed,
    ExpiredApiKey,
    FieldViolation,
    GatewayInternal,
    InsufficientPermissions,
    InternalServerError,
    InvalidApiKey,
    InvalidConfiguration,
    InvalidState,
    NotFound,
    OpenAIError,
    Overloaded,
    ProtocolError,
    QuotaExceeded,
    RequestError,
    ServerError,
    ServiceUnavailable,
    SslError,
    Timeout,
    TooManyRequests,
    TooManyTokens,
    ValidationError,
    redact,
)

__all__ = [
    "MAX_RETRY_AFTER",
    "classify_exception",
    "classify_response",
    "classify_stream_error",
    "retry_after_seconds",
]

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
    path: str = "",
    state_change: bool = False,
) -> OpenAIError:
    """Turn a non-2xx upstream answer into the taxonomy. `state_change`: the call changes a
    resource's state (endpoints.py), where a 400 means the resource is in the wrong state."""
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
    elif status == 400 and state_change:
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
        # An aiohttp error no transport mapped (a response it could not parse).
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
