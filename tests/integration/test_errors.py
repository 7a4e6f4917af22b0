"""Every row of the error table (docs/architecture.md, Error mapping) a unary call can produce.

Each case scripts the fake upstream (or the gateway's own configuration), calls a real RPC, and
decodes the rich status with `grpc_status.rpc_status`: code, ErrorInfo reason and metadata,
and each detail the table lists (and no RetryInfo where it must not be).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from openai_grpc_server.auth import Secret
from openai_grpc_server.fake_upstream import FakeUpstream, Step
from openai_grpc_server.resilience import BreakerConfig

from tests.support.calls import call_failing, chat
from tests.support.gateway import Gateway, settings_for, start_gateway, stop_gateway

# (id, step, expected code, reason, details that must be present, details that must be absent)
UPSTREAM_CASES = [
    (
        "401",
        Step(
            status=401,
            error_type="invalid_request_error",
            error_code="invalid_api_key",
            message="Incorrect API key provided",
        ),
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_API_KEY",
        set(),
        {"RetryInfo"},
    ),
    (
        "403",
        Step(status=403, error_type="invalid_request_error", message="not allowed"),
        grpc.StatusCode.PERMISSION_DENIED,
        "INSUFFICIENT_PERMISSIONS",
        set(),
        {"RetryInfo"},
    ),
    (
        "400",
        Step(status=400, error_type="invalid_request_error", param="temperature", message="bad temperature"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "VALIDATION_FAILED",
        {"BadRequest"},
        {"RetryInfo"},
    ),
    (
        "422",
        Step(status=422, error_type="invalid_request_error", message="unprocessable"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "VALIDATION_FAILED",
        {"BadRequest"},
        {"RetryInfo"},
    ),
    (
        "context",
        Step(
            status=400,
            error_type="invalid_request_error",
            error_code="context_length_exceeded",
            param="messages",
            message="too long",
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "CONTEXT_LENGTH_EXCEEDED",
        {"BadRequest"},
        {"RetryInfo"},
    ),
    (
        "content-policy",
        Step(
            status=400,
            error_type="invalid_request_error",
            error_code="content_policy_violation",
            message="refused",
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "CONTENT_POLICY_VIOLATION",
        set(),
        {"RetryInfo"},
    ),
    (
        "404",
        Step(status=404, error_type="invalid_request_error", message="no such model"),
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
        {"ResourceInfo"},
        {"RetryInfo"},
    ),
    (
        "409",
        Step(status=409, error_type="invalid_request_error", message="exists"),
        grpc.StatusCode.ALREADY_EXISTS,
        "ALREADY_EXISTS",
        set(),
        set(),
    ),
    (
        "429",
        Step(
            status=429,
            error_type="requests",
            error_code="rate_limit_exceeded",
            message="slow down",
            headers={"retry-after-ms": "1500"},
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
        {"RetryInfo", "QuotaFailure"},
        set(),
    ),
    (
        "quota",
        Step(
            status=429, error_type="insufficient_quota", error_code="insufficient_quota", message="no credit"
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "QUOTA_EXCEEDED",
        {"QuotaFailure"},
        {"RetryInfo"},
    ),
    (
        "500",
        Step(status=500, error_type="server_error", message="boom"),
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_INTERNAL",
        {"RequestInfo"},
        set(),
    ),
    (
        "502-html",
        Step(status=502, raw_body="<html><body>502 Bad Gateway</body></html>", content_type="text/html"),
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_UNAVAILABLE",
        {"RetryInfo"},
        set(),
    ),
    (
        "503",
        Step(status=503, error_type="server_error", message="unavailable", headers={"retry-after": "2"}),
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_UNAVAILABLE",
        {"RetryInfo"},
        set(),
    ),
    (
        "529",
        Step(status=529, error_type="server_error", message="overloaded"),
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_UNAVAILABLE",
        {"RetryInfo"},
        set(),
    ),
    (
        "504",
        Step(status=504, raw_body="gateway timeout", content_type="text/plain"),
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "UPSTREAM_TIMEOUT",
        set(),
        set(),
    ),
    (
        "not-json",
        Step(status=200, raw_body="<html>oops</html>", content_type="text/html"),
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_BAD_RESPONSE",
        set(),
        {"RetryInfo"},
    ),
    (
        "truncated-json",
        Step(status=200, raw_body='{"id": "chatcmpl-1", "choi', content_type="application/json"),
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_BAD_RESPONSE",
        set(),
        {"RetryInfo"},
    ),
]


@pytest.mark.parametrize(
    ("step", "code", "reason", "present", "absent"),
    [c[1:] for c in UPSTREAM_CASES],
    ids=[c[0] for c in UPSTREAM_CASES],
)
async def test_upstream_error_rows(
    gateway: Gateway,
    clean_fake: FakeUpstream,
    step: Step,
    code: grpc.StatusCode,
    reason: str,
    present: set[str],
    absent: set[str],
) -> None:
    clean_fake.script("POST /chat/completions", step)
    failure = await call_failing(gateway, "CreateChatCompletion", chat(gateway))
    assert failure.code == code, failure
    info = failure.info
    assert info.reason == reason and info.domain == "openai-grpc"
    assert info.metadata["errorCode"].startswith("OPENAI_")
    assert info.metadata["upstreamStatus"] == str(step.status)
    assert info.metadata["requestId"] == clean_fake.requests[-1].request_id
    assert failure.trailing.get("x-request-id") == clean_fake.requests[-1].request_id
    for name in present:
        assert name in failure.details, f"{name} missing from {sorted(failure.details)}"
    for name in absent:
        assert name not in failure.details, f"{name} must not be in {sorted(failure.details)}"
    if step.message:
        assert failure.message == step.message
    if step.error_type and step.status < 500:
        assert info.metadata["openaiType"] == step.error_type
    if step.param:
        assert info.metadata["param"] == step.param
        assert failure.details["BadRequest"].field_violations[0].field == step.param
    assert len(clean_fake.requests) == 1, "max_retries=0: exactly one upstream call"


async def test_retry_info_carries_the_upstream_delay(gateway: Gateway, clean_fake: FakeUpstream) -> None:
    clean_fake.script(
        "POST /chat/completions",
        Step(status=429, error_type="requests", message="slow", headers={"retry-after-ms": "1500"}),
    )
    failure = await call_failing(gateway, "CreateChatCompletion", chat(gateway))
    retry = failure.details["RetryInfo"]
    assert retry.retry_delay.seconds == 1 and retry.retry_delay.nanos == 500_000_000
    assert failure.trailing.get("retry-after-ms") == "1500"


async def test_html_502_message_is_actionable(gateway: Gateway, clean_fake: FakeUpstream) -> None:
    clean_fake.script(
        "POST /chat/completions",
        Step(status=502, raw_body="<html>bad gateway</html>", content_type="text/html"),
    )
    failure = await call_failing(gateway, "CreateChatCompletion", chat(gateway))
    assert "502" in failure.message and "<html>" not in failure.message


async def test_state_change_on_finished_resource(gateway: Gateway, clean_fake: FakeUpstream) -> None:
    clean_fake.script(
        "POST /batches/{batch_id}/cancel",
        Step(status=400, error_type="invalid_request_error", message="Cannot cancel a completed batch"),
    )
    failure = await call_failing(gateway, "CancelBatch", gateway.request("CancelBatch", batch_id="batch_1"))
    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.info.reason == "INVALID_STATE"
    assert "PreconditionFailure" in failure.details


async def test_local_validation_lists_every_violation_and_sends_nothing(
    gateway: Gateway, clean_fake: FakeUpstream
) -> None:
    req = gateway.request(
        "CreateChatCompletion", model="", temperature=3.0, n=0, max_tokens=5, max_completion_tokens=5
    )
    failure = await call_failing(gateway, "CreateChatCompletion", req)
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.info.reason == "VALIDATION_FAILED"
    fields = {v.field for v in failure.details["BadRequest"].field_violations}
    assert fields == {"model", "messages", "temperature", "n", "max_tokens"}
    assert clean_fake.requests == []


async def test_missing_path_parameter_is_rejected_locally(gateway: Gateway, clean_fake: FakeUpstream) -> None:
    failure = await call_failing(gateway, "GetModel", gateway.request("GetModel"))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in failure.details["BadRequest"].field_violations] == ["model"]
    assert clean_fake.requests == []


@pytest.fixture
async def unreachable_gateway() -> AsyncIterator[Gateway]:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    gw = await start_gateway(settings_for(f"http://127.0.0.1:{port}/v1"))
    yield gw
    await stop_gateway(gw)


async def test_connection_refused(unreachable_gateway: Gateway) -> None:
    failure = await call_failing(unreachable_gateway, "ListModels", unreachable_gateway.request("ListModels"))
    assert failure.code == grpc.StatusCode.UNAVAILABLE
    assert failure.info.reason == "UPSTREAM_UNREACHABLE"
    assert "RetryInfo" in failure.details
    assert "upstreamStatus" not in failure.info.metadata


async def test_upstream_slower_than_the_timeout(fake: FakeUpstream) -> None:
    fake.reset()
    gw = await start_gateway(settings_for(fake.base_url, request_timeout=0.3))
    try:
        fake.script("GET /models", Step(delay_ms=1500))
        failure = await call_failing(gw, "ListModels", gw.request("ListModels"))
        assert failure.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert failure.info.reason == "UPSTREAM_TIMEOUT"
    finally:
        await stop_gateway(gw)


async def test_missing_api_key(fake: FakeUpstream) -> None:
    gw = await start_gateway(settings_for(fake.base_url, api_key=Secret("")))
    try:
        failure = await call_failing(gw, "ListModels", gw.request("ListModels"))
        assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
        assert failure.info.reason == "MISSING_API_KEY"
    finally:
        await stop_gateway(gw)


async def test_circuit_open(fake: FakeUpstream) -> None:
    fake.reset()
    gw = await start_gateway(
        settings_for(fake.base_url, breaker=BreakerConfig(failure_threshold=2, recovery_timeout=30.0))
    )
    try:
        fake.script("GET /models", Step(status=503, message="down", repeat=5))
        for _ in range(2):
            first = await call_failing(gw, "ListModels", gw.request("ListModels"))
            assert first.info.reason == "UPSTREAM_UNAVAILABLE"
        failure = await call_failing(gw, "ListModels", gw.request("ListModels"))
        assert failure.code == grpc.StatusCode.UNAVAILABLE
        assert failure.info.reason == "CIRCUIT_OPEN"
        delay = failure.details["RetryInfo"].retry_delay
        assert 25 <= delay.seconds <= 30
        assert len(fake.requests) == 2, "an open circuit sends nothing upstream"
    finally:
        await stop_gateway(gw)


async def test_unknown_caller_token(fake: FakeUpstream, tmp_path: Any) -> None:
    tenants = tmp_path / "tenants.json"
    tenants.write_text('{"tenants": [{"name": "team-a", "token": "tok-a", "api_key": "sk-team-a-key"}]}')
    gw = await start_gateway(settings_for(fake.base_url, auth_mode="tokens", tenants_file=str(tenants)))
    try:
        failure = await call_failing(gw, "ListModels", gw.request("ListModels"))
        assert failure.code == grpc.StatusCode.UNAUTHENTICATED
        assert failure.info.reason == "CALLER_UNAUTHENTICATED"
        call = gw.unary("ListModels")(gw.request("ListModels"), metadata=(("authorization", "Bearer nope"),))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        fake.reset()
        ok = gw.unary("ListModels")(gw.request("ListModels"), metadata=(("authorization", "Bearer tok-a"),))
        await ok
        assert fake.requests[-1].headers["authorization"] == "Bearer sk-team-a-key"
    finally:
        await stop_gateway(gw)
