"""The error taxonomy (errors.py) and its `google.rpc.Status` form (status.py).

Upstream answers are classified by HTTP status, refined by OpenAI's `error.code` / `error.type`
and by the operation; transport exceptions by their type. Every status carries an ErrorInfo
and exactly the detail messages its class lists; none carries an API key.
"""

from __future__ import annotations

import email.utils
import ssl
import time
from collections.abc import Mapping
from typing import Any

import grpc
import httpx
import orjson
import pytest
from google.rpc import status_pb2
from openai_grpc_server import endpoints, errors, status
from openai_grpc_server.upstream import classify as classifier

from tests.support.rich_status import DETAIL_TYPES

Code = grpc.StatusCode
API_KEY = "sk-test-0123456789abcdefABCDEF"


def openai_body(
    message: str | None = "upstream says no",
    type: str | None = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type, "code": code, "param": param}})


def classify(
    status_code: int,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    method: str = "POST",
    path: str = "/chat/completions",
) -> errors.OpenAIError:
    return classifier.classify_response(
        status_code,
        headers or {},
        openai_body() if body is None else body,
        path=path,
        state_change=endpoints.behaviour_for(f"{method} {path}").state_change,
    )


def unpack_details(st: status_pb2.Status) -> dict[str, Any]:
    """Detail name -> unpacked message; fails on an unknown or repeated detail type."""
    found: dict[str, Any] = {}
    for any_msg in st.details:
        matches = [
            name for name, cls in DETAIL_TYPES.items() if any_msg.TypeName() == cls.DESCRIPTOR.full_name
        ]
        assert len(matches) == 1, any_msg.type_url
        name = matches[0]
        assert name not in found, f"{name} twice"
        detail = DETAIL_TYPES[name]()
        any_msg.Unpack(detail)
        found[name] = detail
    return found


def all_error_classes() -> list[type[errors.OpenAIError]]:
    seen: list[type[errors.OpenAIError]] = []
    todo: list[type[errors.OpenAIError]] = [errors.OpenAIError]
    while todo:
        cls = todo.pop()
        seen.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(seen, key=lambda c: c.__name__)


# --- classify_response: the HTTP status table ------------------------------------------------

# status -> (class, gRPC code, ErrorInfo reason, errorCode)
STATUS_TABLE: list[tuple[int, type[errors.OpenAIError], grpc.StatusCode, str, str]] = [
    (400, errors.ValidationError, Code.INVALID_ARGUMENT, "VALIDATION_FAILED", "OPENAI_REQUEST"),
    (401, errors.InvalidApiKey, Code.UNAUTHENTICATED, "INVALID_API_KEY", "OPENAI_AUTH"),
    (403, errors.InsufficientPermissions, Code.PERMISSION_DENIED, "INSUFFICIENT_PERMISSIONS", "OPENAI_AUTH"),
    (404, errors.NotFound, Code.NOT_FOUND, "NOT_FOUND", "OPENAI_RESOURCE"),
    (408, errors.Timeout, Code.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT", "OPENAI_NETWORK"),
    (409, errors.AlreadyExists, Code.ALREADY_EXISTS, "ALREADY_EXISTS", "OPENAI_RESOURCE"),
    (410, errors.Deleted, Code.NOT_FOUND, "NOT_FOUND", "OPENAI_RESOURCE"),
    (413, errors.ValidationError, Code.INVALID_ARGUMENT, "VALIDATION_FAILED", "OPENAI_REQUEST"),
    (415, errors.ValidationError, Code.INVALID_ARGUMENT, "VALIDATION_FAILED", "OPENAI_REQUEST"),
    (422, errors.ValidationError, Code.INVALID_ARGUMENT, "VALIDATION_FAILED", "OPENAI_REQUEST"),
    (429, errors.TooManyRequests, Code.RESOURCE_EXHAUSTED, "RATE_LIMITED", "OPENAI_RATE_LIMIT"),
    (500, errors.InternalServerError, Code.INTERNAL, "UPSTREAM_INTERNAL", "OPENAI_SERVER"),
    (502, errors.BadGateway, Code.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", "OPENAI_SERVER"),
    (503, errors.ServiceUnavailable, Code.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", "OPENAI_SERVER"),
    (504, errors.Timeout, Code.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT", "OPENAI_NETWORK"),
    (529, errors.Overloaded, Code.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", "OPENAI_SERVER"),
    # not in the table: 4xx is the caller's problem, 5xx the server's
    (418, errors.ValidationError, Code.INVALID_ARGUMENT, "VALIDATION_FAILED", "OPENAI_REQUEST"),
    (501, errors.ServerError, Code.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", "OPENAI_SERVER"),
    (599, errors.ServerError, Code.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", "OPENAI_SERVER"),
]


@pytest.mark.parametrize(
    ("status_code", "cls", "code", "reason", "error_code"),
    STATUS_TABLE,
    ids=[str(r[0]) for r in STATUS_TABLE],
)
def test_status_table(
    status_code: int, cls: type[errors.OpenAIError], code: grpc.StatusCode, reason: str, error_code: str
) -> None:
    err = classify(status_code, openai_body("nope"), {"x-request-id": "req_123"})
    assert type(err) is cls
    assert (err.code, err.reason, err.error_code) == (code, reason, error_code)
    assert err.message == "nope"
    assert err.upstream_status == status_code
    assert err.request_id == "req_123"
    assert err.openai_type == "invalid_request_error"
    st = status.to_rpc_status(err)
    assert st.code == code.value[0]
    assert st.message == "nope"


def test_status_table_covers_every_mapped_status() -> None:
    """The table above is the whole of classifier._STATUS_TABLE (a new row needs a test row)."""
    assert set(classifier._STATUS_TABLE) <= {row[0] for row in STATUS_TABLE}
    for status_code, cls in classifier._STATUS_TABLE.items():
        assert type(classify(status_code)) is cls


@pytest.mark.parametrize(
    ("status_code", "breaker_failure"),
    [
        (400, False),
        (401, False),
        (404, False),
        (429, False),
        (500, True),
        (502, True),
        (503, True),
        (504, True),
    ],
)
def test_only_server_side_failures_count_for_the_breaker(status_code: int, breaker_failure: bool) -> None:
    assert classify(status_code).breaker_failure is breaker_failure


# --- classify_response: refinement by OpenAI's code and the operation ------------------------

# (id, status, type, code, expected class, reason)
CODE_REFINEMENTS: list[tuple[str, int, str | None, str | None, type[errors.OpenAIError], str]] = [
    ("quota-429", 429, "insufficient_quota", "insufficient_quota", errors.QuotaExceeded, "QUOTA_EXCEEDED"),
    ("quota-by-type-only", 429, "insufficient_quota", None, errors.QuotaExceeded, "QUOTA_EXCEEDED"),
    ("quota-by-code-only", 429, "requests", "insufficient_quota", errors.QuotaExceeded, "QUOTA_EXCEEDED"),
    ("billing-limit", 429, "requests", "billing_hard_limit_reached", errors.QuotaExceeded, "QUOTA_EXCEEDED"),
    ("rate-limit-stays", 429, "requests", "rate_limit_exceeded", errors.TooManyRequests, "RATE_LIMITED"),
    (
        "context-length",
        400,
        "invalid_request_error",
        "context_length_exceeded",
        errors.TooManyTokens,
        "CONTEXT_LENGTH_EXCEEDED",
    ),
    (
        "string-too-long",
        400,
        "invalid_request_error",
        "string_above_max_length",
        errors.TooManyTokens,
        "CONTEXT_LENGTH_EXCEEDED",
    ),
    (
        "content-policy",
        400,
        "invalid_request_error",
        "content_policy_violation",
        errors.ContentFiltered,
        "CONTENT_POLICY_VIOLATION",
    ),
    (
        "content-filter",
        400,
        "invalid_request_error",
        "content_filter",
        errors.ContentFiltered,
        "CONTENT_POLICY_VIOLATION",
    ),
    ("invalid-key", 401, "invalid_request_error", "invalid_api_key", errors.InvalidApiKey, "INVALID_API_KEY"),
    ("expired-key", 401, "invalid_request_error", "expired_api_key", errors.ExpiredApiKey, "EXPIRED_API_KEY"),
    (
        "unknown-code",
        400,
        "invalid_request_error",
        "some_new_code",
        errors.ValidationError,
        "VALIDATION_FAILED",
    ),
    # a 5xx keeps its status class, whatever the code says (quota excepted)
    (
        "5xx-not-refined",
        500,
        "server_error",
        "context_length_exceeded",
        errors.InternalServerError,
        "UPSTREAM_INTERNAL",
    ),
]


@pytest.mark.parametrize(
    ("status_code", "type_", "code", "cls", "reason"),
    [c[1:] for c in CODE_REFINEMENTS],
    ids=[c[0] for c in CODE_REFINEMENTS],
)
def test_code_refinements(
    status_code: int, type_: str | None, code: str | None, cls: type[errors.OpenAIError], reason: str
) -> None:
    err = classify(status_code, openai_body("refined", type_, code, "messages"))
    assert type(err) is cls
    assert err.reason == reason
    assert err.openai_code == code
    assert err.openai_type == type_
    assert err.param == "messages"


def test_context_length_carries_a_bad_request_on_the_param() -> None:
    err = classify(400, openai_body("too many tokens", code="context_length_exceeded", param="messages"))
    details = unpack_details(status.to_rpc_status(err))
    assert set(details) == {"ErrorInfo", "BadRequest"}
    [violation] = details["BadRequest"].field_violations
    assert (violation.field, violation.description) == ("messages", "too many tokens")


def test_quota_exceeded_is_not_retryable_and_has_no_retry_info() -> None:
    err = classify(
        429, openai_body("quota", "insufficient_quota", "insufficient_quota"), {"retry-after": "20"}
    )
    assert err.retryable is False
    details = unpack_details(status.to_rpc_status(err))
    assert set(details) == {"ErrorInfo", "QuotaFailure"}
    [violation] = details["QuotaFailure"].violations
    assert (violation.subject, violation.description) == ("insufficient_quota", "quota")


def test_content_policy_has_no_extra_details() -> None:
    err = classify(400, openai_body("refused", code="content_policy_violation", param="prompt"))
    assert err.code == Code.INVALID_ARGUMENT
    assert set(unpack_details(status.to_rpc_status(err))) == {"ErrorInfo"}


STATE_CHANGES = [
    "/batches/batch_1/cancel",
    "/threads/thread_1/runs/run_1/cancel",
    "/responses/resp_1/cancel",
    "/vector_stores/vs_1/file_batches/vsfb_1/cancel",
    "/fine_tuning/jobs/ftjob_1/pause",
    "/fine_tuning/jobs/ftjob_1/resume",
    "/uploads/upload_1/complete",
    "/threads/thread_1/runs/run_1/submit_tool_outputs",
]


@pytest.mark.parametrize("path", STATE_CHANGES)
def test_400_on_a_state_change_is_invalid_state(path: str) -> None:
    msg = "Cannot cancel a batch with status 'completed'."
    err = classify(400, openai_body(msg), method="POST", path=path)
    assert type(err) is errors.InvalidState
    assert (err.code, err.reason, err.error_code) == (
        Code.FAILED_PRECONDITION,
        "INVALID_STATE",
        "OPENAI_RESOURCE",
    )
    details = unpack_details(status.to_rpc_status(err))
    assert set(details) == {"ErrorInfo", "PreconditionFailure"}
    [violation] = details["PreconditionFailure"].violations
    assert violation.type == "STATE"
    assert violation.description == msg


@pytest.mark.parametrize(
    ("status_code", "method", "path", "body", "cls"),
    [
        (400, "POST", "/batches", openai_body(), errors.ValidationError),
        (400, "POST", "/batches/batch_1/cancelled_things", openai_body(), errors.ValidationError),
        (400, "GET", "/batches/batch_1/cancel", openai_body(), errors.ValidationError),
        (404, "POST", "/batches/batch_1/cancel", openai_body(), errors.NotFound),
        (409, "POST", "/batches/batch_1/cancel", openai_body(), errors.AlreadyExists),
        # OpenAI's own code wins over the operation
        (400, "POST", "/batches/b/cancel", openai_body(code="context_length_exceeded"), errors.TooManyTokens),
    ],
)
def test_not_invalid_state(
    status_code: int, method: str, path: str, body: bytes, cls: type[errors.OpenAIError]
) -> None:
    assert type(classify(status_code, body, method=method, path=path)) is cls


def test_not_found_names_the_resource() -> None:
    err = classify(404, openai_body("The model `gpt-x` does not exist"), method="GET", path="/models/gpt-x")
    details = unpack_details(status.to_rpc_status(err))
    assert set(details) == {"ErrorInfo", "ResourceInfo"}
    info = details["ResourceInfo"]
    assert (info.resource_type, info.resource_name) == ("models", "/models/gpt-x")
    assert info.description == "The model `gpt-x` does not exist"


# --- classify_response: bodies that are not OpenAI JSON --------------------------------------

NON_JSON_BODIES = [
    ("html", b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"),
    ("empty", b""),
    ("text", b"upstream connect error or disconnect/reset before headers"),
    ("json-without-error", b'{"detail": "Not Found"}'),
    ("json-list", b"[1, 2]"),
    ("json-error-string", b'{"error": "Bad Gateway"}'),
    ("error-without-message", b'{"error": {"type": "server_error"}}'),
    ("invalid-utf8", b"\xff\xfe\x00garbage"),
]


@pytest.mark.parametrize("status_code", [400, 401, 404, 429, 500, 502, 503, 504, 529])
@pytest.mark.parametrize("body", [b for _, b in NON_JSON_BODIES], ids=[n for n, _ in NON_JSON_BODIES])
def test_non_json_body_maps_by_status_with_an_actionable_message(status_code: int, body: bytes) -> None:
    err = classify(status_code, body)
    assert type(err) is classifier._STATUS_TABLE[status_code]
    assert str(status_code) in err.message
    assert "OpenAI" in err.message
    assert "<html" not in err.message
    assert err.upstream_status == status_code
    st = status.to_rpc_status(err)
    assert st.message == err.message
    assert str(status_code) in st.message


def test_html_502_message() -> None:
    err = classify(502, b"<html><body>Bad Gateway</body></html>", {"content-type": "text/html"})
    assert (
        err.message == "OpenAI answered HTTP 502 (Bad Gateway) without an error body the gateway could read"
    )
    assert err.openai_code is None
    assert err.openai_type is None


def test_top_level_error_object_without_envelope() -> None:
    """Some proxies answer `{"message": ..., "type": ...}` without the `error` wrapper."""
    err = classify(
        429, orjson.dumps({"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"})
    )
    assert type(err) is errors.TooManyRequests
    assert err.message == "slow down"
    assert err.openai_code == "rate_limit_exceeded"


# --- retry-after headers ---------------------------------------------------------------------


def http_date(offset: float) -> str:
    return email.utils.formatdate(time.time() + offset, usegmt=True)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "0"}, 0.0),
        ({"retry-after-ms": "250.5"}, 0.2505),
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after-ms": "-3"}, 0.0),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),  # the precise header wins
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),  # an unreadable one is skipped
        ({"retry-after-ms": "", "retry-after": "9"}, 9.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": ""}, None),
        ({"retry-after": http_date(-3600)}, 0.0),  # a date in the past: now
    ],
)
def test_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert classifier.retry_after_seconds(headers) == expected
    assert classify(429, headers=headers).retry_after == expected


def test_retry_after_http_date() -> None:
    delay = classifier.retry_after_seconds({"retry-after": http_date(30)})
    assert delay is not None
    assert 28.0 <= delay <= 31.0  # HTTP dates have whole seconds


def test_retry_after_header_names_are_case_insensitive_with_httpx_headers() -> None:
    headers = httpx.Headers({"Retry-After-Ms": "2500", "X-Request-Id": "req_9"})
    err = classify(503, headers=headers)
    assert err.retry_after == 2.5
    assert err.request_id == "req_9"


@pytest.mark.parametrize(
    ("headers", "seconds", "nanos"),
    [
        ({"retry-after": "7"}, 7, 0),
        ({"retry-after-ms": "1500"}, 1, 500_000_000),
        ({}, int(status.DEFAULT_RETRY_DELAY), 0),  # no hint from upstream: the default
    ],
)
def test_retry_info_carries_the_upstream_delay(headers: dict[str, str], seconds: int, nanos: int) -> None:
    details = unpack_details(status.to_rpc_status(classify(503, headers=headers)))
    delay = details["RetryInfo"].retry_delay
    assert (delay.seconds, delay.nanos) == (seconds, nanos)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("retry-after", "inf"),
        ("retry-after-ms", "Infinity"),
        ("retry-after", "1e300"),
        ("retry-after", "1e12"),
    ],
)
def test_absurd_retry_after_still_builds_a_status(header: str, value: str) -> None:
    """An upstream (or proxy) header must never break the error path itself.

    `retry-after: inf` once reached status._duration as `int(inf * 1e9)` (OverflowError, no
    status at all); a finite but huge delay must still fit google.protobuf.Duration.
    """
    err = classify(503, headers={header: value})
    st = status.to_rpc_status(err)
    delay = unpack_details(st)["RetryInfo"].retry_delay
    # google.protobuf.Duration's documented range ends at 315,576,000,000 seconds
    assert 0 <= delay.seconds <= 315_576_000_000


def test_retry_after_nan_is_ignored_or_zero() -> None:
    assert classifier.retry_after_seconds({"retry-after": "nan"}) in (None, 0.0)
    status.to_rpc_status(classify(503, headers={"retry-after": "nan"}))


# --- classify_exception ----------------------------------------------------------------------

REQUEST = httpx.Request("POST", "https://api.openai.com/v1/chat/completions")


def chained_ssl_connect_error() -> BaseException:
    try:
        try:
            raise ssl.SSLCertVerificationError(
                1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"
            )
        except ssl.SSLError as inner:
            raise httpx.ConnectError("handshake failed", request=REQUEST) from inner
    except httpx.ConnectError as outer:
        return outer


EXCEPTIONS: list[tuple[str, BaseException, type[errors.OpenAIError], grpc.StatusCode, str, bool]] = [
    (
        "connect-refused",
        httpx.ConnectError("[Errno 111] Connection refused", request=REQUEST),
        errors.ConnectionFailed,
        Code.UNAVAILABLE,
        "UPSTREAM_UNREACHABLE",
        True,
    ),
    (
        "dns",
        httpx.ConnectError("[Errno -2] Name or service not known", request=REQUEST),
        errors.DnsResolutionFailed,
        Code.UNAVAILABLE,
        "UPSTREAM_UNREACHABLE",
        True,
    ),
    (
        "dns-macos",
        httpx.ConnectError("[Errno 8] nodename nor servname provided, or not known", request=REQUEST),
        errors.DnsResolutionFailed,
        Code.UNAVAILABLE,
        "UPSTREAM_UNREACHABLE",
        True,
    ),
    (
        "connect-error-tls-text",
        httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed", request=REQUEST),
        errors.SslError,
        Code.UNAVAILABLE,
        "UPSTREAM_TLS_ERROR",
        False,
    ),
    (
        "connect-timeout",
        httpx.ConnectTimeout("timed out", request=REQUEST),
        errors.Timeout,
        Code.DEADLINE_EXCEEDED,
        "UPSTREAM_TIMEOUT",
        True,
    ),
    (
        "read-timeout",
        httpx.ReadTimeout("timed out", request=REQUEST),
        errors.Timeout,
        Code.DEADLINE_EXCEEDED,
        "UPSTREAM_TIMEOUT",
        True,
    ),
    (
        "write-timeout",
        httpx.WriteTimeout("timed out", request=REQUEST),
        errors.Timeout,
        Code.DEADLINE_EXCEEDED,
        "UPSTREAM_TIMEOUT",
        True,
    ),
    (
        "pool-timeout",
        httpx.PoolTimeout("timed out", request=REQUEST),
        errors.Timeout,
        Code.DEADLINE_EXCEEDED,
        "UPSTREAM_TIMEOUT",
        True,
    ),
    (
        "remote-protocol",
        httpx.RemoteProtocolError("Server disconnected without sending a response.", request=REQUEST),
        errors.ConnectionFailed,
        Code.UNAVAILABLE,
        "UPSTREAM_UNREACHABLE",
        True,
    ),
    (
        "read-error",
        httpx.ReadError("[Errno 104] Connection reset by peer", request=REQUEST),
        errors.ConnectionFailed,
        Code.UNAVAILABLE,
        "UPSTREAM_UNREACHABLE",
        True,
    ),
    (
        "ssl-error",
        ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"),
        errors.SslError,
        Code.UNAVAILABLE,
        "UPSTREAM_TLS_ERROR",
        False,
    ),
    (
        "ssl-cert-verification",
        ssl.SSLCertVerificationError(1, "certificate verify failed"),
        errors.SslError,
        Code.UNAVAILABLE,
        "UPSTREAM_TLS_ERROR",
        False,
    ),
    (
        "connect-error-caused-by-ssl",
        chained_ssl_connect_error(),
        errors.SslError,
        Code.UNAVAILABLE,
        "UPSTREAM_TLS_ERROR",
        False,
    ),
    (
        "os-error",
        ConnectionResetError(104, "Connection reset by peer"),
        errors.ConnectionFailed,
        Code.UNAVAILABLE,
        "UPSTREAM_UNREACHABLE",
        True,
    ),
]


@pytest.mark.parametrize(
    ("exc", "cls", "code", "reason", "retryable"),
    [c[1:] for c in EXCEPTIONS],
    ids=[c[0] for c in EXCEPTIONS],
)
def test_classify_exception(
    exc: BaseException, cls: type[errors.OpenAIError], code: grpc.StatusCode, reason: str, retryable: bool
) -> None:
    err = classifier.classify_exception(exc, base_url="https://api.openai.com/v1")
    assert type(err) is cls
    assert (err.code, err.reason, err.error_code) == (code, reason, "OPENAI_NETWORK")
    assert err.retryable is retryable
    assert err.breaker_failure is True
    assert err.upstream_status is None
    assert "https://api.openai.com/v1" in err.message  # says where it tried to go
    st = status.to_rpc_status(err)
    assert st.code == code.value[0]
    info = unpack_details(st)["ErrorInfo"]
    assert "upstreamStatus" not in info.metadata


def test_classify_exception_passes_taxonomy_errors_through() -> None:
    err = errors.TooManyRequests("local limiter full")
    assert classifier.classify_exception(err) is err


def test_unexpected_exception_becomes_a_generic_internal_error() -> None:
    err = classifier.classify_exception(KeyError("choices"), base_url="https://api.openai.com/v1")
    assert type(err) is errors.GatewayInternal
    assert err.code == Code.INTERNAL
    assert err.message == "internal error in the gateway"
    assert "choices" not in err.message


def test_timeout_without_base_url() -> None:
    err = classifier.classify_exception(httpx.ReadTimeout("timed out"))
    assert type(err) is errors.Timeout
    assert "ReadTimeout" in err.message


# --- classify_stream_error -------------------------------------------------------------------

STREAM_ERRORS: list[tuple[str, Any, type[errors.OpenAIError], str]] = [
    (
        "server-error",
        {"error": {"message": "boom", "type": "server_error"}},
        errors.InternalServerError,
        "boom",
    ),
    ("api-error", {"error": {"message": "boom", "type": "api_error"}}, errors.InternalServerError, "boom"),
    (
        "rate-limit-type",
        {"error": {"message": "slow", "type": "rate_limit_error"}},
        errors.TooManyRequests,
        "slow",
    ),
    (
        "quota",
        {"error": {"message": "pay", "type": "insufficient_quota", "code": "insufficient_quota"}},
        errors.QuotaExceeded,
        "pay",
    ),
    (
        "context",
        {
            "error": {
                "message": "long",
                "type": "invalid_request_error",
                "code": "context_length_exceeded",
                "param": "messages",
            }
        },
        errors.TooManyTokens,
        "long",
    ),
    (
        "invalid-request",
        {"error": {"message": "bad", "type": "invalid_request_error"}},
        errors.ValidationError,
        "bad",
    ),
    ("auth", {"error": {"message": "who", "type": "authentication_error"}}, errors.InvalidApiKey, "who"),
    (
        "permission",
        {"error": {"message": "no", "type": "permission_error"}},
        errors.InsufficientPermissions,
        "no",
    ),
    ("not-found", {"error": {"message": "gone", "type": "not_found_error"}}, errors.NotFound, "gone"),
    ("overloaded", {"error": {"message": "busy", "type": "overloaded_error"}}, errors.Overloaded, "busy"),
    # the Responses API: `{"type": "error", "code": ..., "message": ...}` at the top level
    (
        "responses-rate-limit",
        {"type": "error", "code": "rate_limit_exceeded", "message": "slow", "param": None},
        errors.TooManyRequests,
        "slow",
    ),
    (
        "responses-quota",
        {"type": "error", "code": "insufficient_quota", "message": "pay"},
        errors.QuotaExceeded,
        "pay",
    ),
    (
        "wrapped-with-type",
        {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}},
        errors.ValidationError,
        "bad",
    ),
    (
        "unknown-type",
        {"error": {"message": "odd", "type": "brand_new_error"}},
        errors.InternalServerError,
        "odd",
    ),
    ("error-string", {"error": "plain text"}, errors.InternalServerError, "plain text"),
]


@pytest.mark.parametrize(
    ("payload", "cls", "message"), [c[1:] for c in STREAM_ERRORS], ids=[c[0] for c in STREAM_ERRORS]
)
def test_classify_stream_error(payload: Any, cls: type[errors.OpenAIError], message: str) -> None:
    err = classifier.classify_stream_error(payload)
    assert type(err) is cls
    assert err.message == message
    assert err.upstream_status is None  # the HTTP exchange itself succeeded
    info = unpack_details(status.to_rpc_status(err))["ErrorInfo"]
    assert "upstreamStatus" not in info.metadata


def test_classify_stream_error_keeps_openai_fields() -> None:
    err = classifier.classify_stream_error(
        {"error": {"message": "m", "type": "invalid_request_error", "code": "bad_value", "param": "top_p"}}
    )
    assert (err.openai_type, err.openai_code, err.param) == ("invalid_request_error", "bad_value", "top_p")


@pytest.mark.parametrize("payload", [None, "garbage", 42, [1, 2], {}])
def test_classify_stream_error_on_odd_payloads(payload: Any) -> None:
    err = classifier.classify_stream_error(payload)
    assert isinstance(err, errors.OpenAIError)
    assert err.message
    status.to_rpc_status(err)


# --- to_rpc_status ---------------------------------------------------------------------------


def test_error_info_metadata_when_everything_is_known() -> None:
    err = classify(
        400,
        openai_body("bad temperature", "invalid_request_error", "invalid_value", "temperature"),
        {"x-request-id": "req_abc"},
    )
    st = status.to_rpc_status(err)
    info = unpack_details(st)["ErrorInfo"]
    assert info.domain == "openai-grpc" == status.DOMAIN
    assert info.reason == "VALIDATION_FAILED"
    assert dict(info.metadata) == {
        "errorCode": "OPENAI_REQUEST",
        "upstreamStatus": "400",
        "requestId": "req_abc",
        "openaiType": "invalid_request_error",
        "openaiCode": "invalid_value",
        "param": "temperature",
    }


def test_error_info_metadata_when_nothing_is_known() -> None:
    info = unpack_details(status.to_rpc_status(errors.MissingApiKey("no key configured")))["ErrorInfo"]
    assert info.domain == "openai-grpc"
    assert info.reason == "MISSING_API_KEY"
    assert dict(info.metadata) == {"errorCode": "OPENAI_CONFIG"}


def test_error_info_carries_extra_metadata() -> None:
    err = errors.StreamInterrupted("the stream broke after 3 messages", metadata={"messagesDelivered": "3"})
    info = unpack_details(status.to_rpc_status(err))["ErrorInfo"]
    assert info.metadata["messagesDelivered"] == "3"
    assert info.reason == "STREAM_INTERRUPTED"


def make_error(cls: type[errors.OpenAIError]) -> errors.OpenAIError:
    return cls(
        f"{cls.__name__} happened",
        upstream_status=418,
        request_id="req_1",
        openai_type="some_type",
        openai_code="some_code",
        param="some_param",
        retry_after=2.0,
        violations=(errors.FieldViolation("some_param", "is wrong"),),
        resource=("files", "/files/file_1"),
    )


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda c: c.__name__)
def test_every_class_carries_error_info_and_exactly_its_details(cls: type[errors.OpenAIError]) -> None:
    err = make_error(cls)
    st = status.to_rpc_status(err)
    assert st.code == cls.code.value[0]
    assert st.message == f"{cls.__name__} happened"
    details = unpack_details(st)
    assert set(details) == {"ErrorInfo"} | set(cls.details)
    assert st.details[0].TypeName() == "google.rpc.ErrorInfo"  # ErrorInfo first
    info = details["ErrorInfo"]
    assert (info.reason, info.domain) == (cls.reason, "openai-grpc")
    assert info.metadata["errorCode"] == cls.error_code
    assert info.metadata["upstreamStatus"] == "418"
    assert info.metadata["requestId"] == "req_1"
    assert info.metadata["openaiType"] == "some_type"
    assert info.metadata["openaiCode"] == "some_code"
    assert info.metadata["param"] == "some_param"
    if "RetryInfo" in details:
        assert details["RetryInfo"].retry_delay.seconds == 2
    if "BadRequest" in details:
        [v] = details["BadRequest"].field_violations
        assert (v.field, v.description) == ("some_param", "is wrong")
    if "RequestInfo" in details:
        assert details["RequestInfo"].request_id == "req_1"
    if "ResourceInfo" in details:
        assert details["ResourceInfo"].resource_name == "/files/file_1"
    if "PreconditionFailure" in details:
        assert details["PreconditionFailure"].violations[0].subject == "/files/file_1"


@pytest.mark.parametrize(
    ("cls", "has_retry_info"),
    [
        (errors.TooManyRequests, True),
        (errors.ServiceUnavailable, True),
        (errors.ConnectionFailed, True),
        (errors.QuotaExceeded, False),
        (errors.Timeout, False),
        (errors.SslError, False),
        # Local and not retryable: RetryInfo only when the breaker knows its half-open time.
        (errors.CircuitOpen, False),
    ],
)
def test_retry_info_without_an_upstream_delay(cls: type[errors.OpenAIError], has_retry_info: bool) -> None:
    details = unpack_details(status.to_rpc_status(cls("x")))
    assert ("RetryInfo" in details) is has_retry_info
    if has_retry_info:
        assert details["RetryInfo"].retry_delay.seconds == int(status.DEFAULT_RETRY_DELAY)


def test_circuit_open_reports_the_time_to_half_open() -> None:
    details = unpack_details(status.to_rpc_status(errors.CircuitOpen("circuit open", retry_after=12.5)))
    delay = details["RetryInfo"].retry_delay
    assert (delay.seconds, delay.nanos) == (12, 500_000_000)


def test_bad_request_without_violations_uses_param_and_message() -> None:
    details = unpack_details(
        status.to_rpc_status(errors.MissingRequiredField("model is required", param="model"))
    )
    [v] = details["BadRequest"].field_violations
    assert (v.field, v.description) == ("model", "model is required")


def test_trailing_metadata_carries_the_status() -> None:
    err = classify(429, openai_body("slow"), {"retry-after": "3"})
    md = dict(status.trailing_metadata(err, (("x-request-id", "req_7"),)))
    raw = md["grpc-status-details-bin"]
    assert isinstance(raw, bytes)
    st = status_pb2.Status.FromString(raw)
    assert st == status.to_rpc_status(err)
    assert md["x-request-id"] == "req_7"


# --- no API key, ever ------------------------------------------------------------------------


def assert_no_key(err: errors.OpenAIError, key: str = API_KEY) -> None:
    st = status.to_rpc_status(err)
    blob = st.SerializeToString()
    assert key.encode() not in blob
    assert key not in err.message
    assert key not in str(err)
    assert key not in repr(err)
    for _, value in status.trailing_metadata(err):
        assert key.encode() not in (value if isinstance(value, bytes) else value.encode())


def test_no_key_in_an_ordinary_401() -> None:
    err = classify(
        401,
        openai_body("Incorrect API key provided: sk-test-****CDEF.", code="invalid_api_key"),
        {"x-request-id": "req_1", "www-authenticate": "Bearer"},
    )
    assert_no_key(err)


def test_no_key_in_a_transport_error() -> None:
    exc = httpx.ConnectError("[Errno 111] Connection refused", request=REQUEST)
    assert_no_key(classifier.classify_exception(exc, base_url="https://api.openai.com/v1"))


def test_no_key_from_an_unexpected_exception() -> None:
    assert_no_key(classifier.classify_exception(RuntimeError(f"Bearer {API_KEY}")))


def test_no_key_when_the_upstream_echoes_it() -> None:
    """A proxy (or a misconfigured upstream) that echoes the full key in its error message.

    The tenant's upstream key is a secret callers must never learn, even when the upstream
    message quotes it.
    """
    err = classify(401, openai_body(f"Incorrect API key provided: {API_KEY}.", code="invalid_api_key"))
    assert type(err) is errors.InvalidApiKey
    assert_no_key(err)


def test_no_key_when_the_key_has_a_stray_newline() -> None:
    """h11 rejects a header value with a newline and quotes it: `OPENAI_API_KEY="sk-...\\n"`.

    This is the exact exception httpx raises for `authorization: Bearer <key>\\n`, and
    classify_exception quotes `str(exc)` in its message.
    """
    exc = httpx.LocalProtocolError(f"Illegal header value b'Bearer {API_KEY}\\n'")
    err = classifier.classify_exception(exc, base_url="https://api.openai.com/v1")
    assert_no_key(err)


# --- redaction by value (issue 9) -------------------------------------------------------------


def test_registered_values_are_redacted_whatever_they_look_like() -> None:
    key, token = "plainkey-for-redaction-unit-1", "plaintoken-for-redaction-unit-2"
    errors.register_secrets([key, token, "short"])
    text = errors.redact(f"key {key} token {token} word short")
    assert key not in text and token not in text
    assert "short" in text, "values shorter than MIN_SECRET_LENGTH would redact ordinary words"
    body = f'{{"error": {{"message": "{key}"}}}}'.encode()
    err = classifier.classify_response(401, {"x-request-id": f"req-{key}"}, body)
    assert key not in err.message


def test_the_bearer_placeholder_in_our_own_hint_survives() -> None:
    hint = "send `authorization: Bearer <token>` metadata with a token of this gateway"
    assert errors.redact(hint) == hint
    assert "abcdef123456" not in errors.redact("authorization: Bearer abcdef123456")


def test_rate_limiter_unavailable_row() -> None:
    err = errors.RateLimiterUnavailable("the shared rate limiter is unreachable", retry_after=0.4)
    rpc = status.to_rpc_status(err)
    details = unpack_details(rpc)
    assert rpc.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert details["ErrorInfo"].reason == "RATE_LIMITER_UNAVAILABLE"
    assert details["ErrorInfo"].domain == "openai-grpc"
    assert details["RetryInfo"].retry_delay.nanos == 400_000_000
    assert not err.breaker_failure  # Redis being down says nothing about OpenAI


def test_the_module_docstring_draws_the_whole_taxonomy() -> None:
    """The tree in errors.py's docstring is the class hierarchy, with each class's code and reason."""
    drawn = [
        line.split()
        for line in (errors.__doc__ or "").splitlines()
        if line.strip() and line.strip().split()[0] in vars(errors)
    ]
    actual: list[list[str]] = []

    def walk(cls: type[errors.OpenAIError]) -> None:
        actual.append([cls.__name__, cls.code.name, cls.reason])
        for sub in sorted(cls.__subclasses__(), key=lambda k: list(vars(errors)).index(k.__name__)):
            walk(sub)

    walk(errors.OpenAIError)
    assert drawn == actual
