"""The error taxonomy: every failure the gateway reports is one of these classes.

Each class carries its row of the error table as class attributes: gRPC code, ErrorInfo reason,
error code, whether it counts as an upstream failure for the circuit breaker, whether it may be
retried, and which google.rpc details its status carries. The tree (class, gRPC code, reason):

    OpenAIError                   INTERNAL             INTERNAL
      ConfigurationError          FAILED_PRECONDITION  INVALID_CONFIGURATION
        MissingApiKey             FAILED_PRECONDITION  MISSING_API_KEY
        InvalidBaseUrl            FAILED_PRECONDITION  INVALID_BASE_URL
        InvalidConfiguration      FAILED_PRECONDITION  INVALID_CONFIGURATION
      AuthenticationError         UNAUTHENTICATED      INVALID_API_KEY
        InvalidApiKey             UNAUTHENTICATED      INVALID_API_KEY
        ExpiredApiKey             UNAUTHENTICATED      EXPIRED_API_KEY
        InsufficientPermissions   PERMISSION_DENIED    INSUFFICIENT_PERMISSIONS
      RequestError                INVALID_ARGUMENT     VALIDATION_FAILED
        ValidationError           INVALID_ARGUMENT     VALIDATION_FAILED
          MissingRequiredField    INVALID_ARGUMENT     VALIDATION_FAILED
          InvalidFieldValue       INVALID_ARGUMENT     VALIDATION_FAILED
          MalformedRequest        INVALID_ARGUMENT     VALIDATION_FAILED
        SerializationError        INVALID_ARGUMENT     SERIALIZATION_FAILED
        TooManyTokens             INVALID_ARGUMENT     CONTEXT_LENGTH_EXCEEDED
      NetworkError                UNAVAILABLE          UPSTREAM_UNREACHABLE
        ConnectionFailed          UNAVAILABLE          UPSTREAM_UNREACHABLE
        DnsResolutionFailed       UNAVAILABLE          UPSTREAM_UNREACHABLE
        Timeout                   DEADLINE_EXCEEDED    UPSTREAM_TIMEOUT
        SslError                  UNAVAILABLE          UPSTREAM_TLS_ERROR
        ProtocolError             UNAVAILABLE          UPSTREAM_PROTOCOL_ERROR
      RateLimitError              RESOURCE_EXHAUSTED   RATE_LIMITED
        TooManyRequests           RESOURCE_EXHAUSTED   RATE_LIMITED
        QuotaExceeded             RESOURCE_EXHAUSTED   QUOTA_EXCEEDED
        GatewayOverloaded         RESOURCE_EXHAUSTED   GATEWAY_OVERLOADED
        TokenLimitExceeded        RESOURCE_EXHAUSTED   RATE_LIMITED
      ServerError                 UNAVAILABLE          UPSTREAM_UNAVAILABLE
        InternalServerError       INTERNAL             UPSTREAM_INTERNAL
        ServiceUnavailable        UNAVAILABLE          UPSTREAM_UNAVAILABLE
        BadGateway                UNAVAILABLE          UPSTREAM_UNAVAILABLE
        Overloaded                UNAVAILABLE          UPSTREAM_UNAVAILABLE
        CircuitOpen               UNAVAILABLE          CIRCUIT_OPEN
        RateLimiterUnavailable    UNAVAILABLE          RATE_LIMITER_UNAVAILABLE
      ResponseError               INTERNAL             UPSTREAM_BAD_RESPONSE
        DeserializationError      INTERNAL             UPSTREAM_BAD_RESPONSE
          CodecFailure            INTERNAL             UPSTREAM_BAD_RESPONSE
        UnexpectedResponse        INTERNAL             UPSTREAM_BAD_RESPONSE
        InvalidContentType        INTERNAL             UPSTREAM_BAD_RESPONSE
        ResponseTooLarge          INTERNAL             UPSTREAM_BAD_RESPONSE
        StreamInterrupted         ABORTED              STREAM_INTERRUPTED
      ResourceError               NOT_FOUND            NOT_FOUND
        NotFound                  NOT_FOUND            NOT_FOUND
        AlreadyExists             ALREADY_EXISTS       ALREADY_EXISTS
        Deleted                   NOT_FOUND            NOT_FOUND
        InvalidState              FAILED_PRECONDITION  INVALID_STATE
      ContentPolicyError          INVALID_ARGUMENT     CONTENT_POLICY_VIOLATION
        ContentFiltered           INVALID_ARGUMENT     CONTENT_POLICY_VIOLATION
        SafetyViolation           INVALID_ARGUMENT     CONTENT_POLICY_VIOLATION
        RefusedByModel            INVALID_ARGUMENT     CONTENT_POLICY_VIOLATION
      CallerError                 INTERNAL             INTERNAL
        CallerUnauthenticated     UNAUTHENTICATED      CALLER_UNAUTHENTICATED
        CallerForbidden           PERMISSION_DENIED    CALLER_FORBIDDEN
      GatewayInternal             INTERNAL             INTERNAL

`upstream/classify.py` is the only place that turns upstream answers and transport failures
into these classes; `status.py` is the only place that turns them into a `google.rpc.Status`.
docs/architecture.md describes the mapping as a whole.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import ClassVar

import grpc

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
    # Which google.rpc detail messages besides ErrorInfo the status carries (see status.py).
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
