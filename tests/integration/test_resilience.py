"""Retries, rate limits and the circuit breaker through a real gateway and the fake upstream
(docs/architecture.md, Resilience), plus what telemetry sees of them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from openai_grpc_server.fake_upstream import FakeUpstream, Step
from openai_grpc_server.resilience import BreakerConfig, RateLimitConfig, RetryConfig
from openai_grpc_server.telemetry import Telemetry
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from tests.support.calls import call_failing, chat
from tests.support.gateway import Gateway, settings_for, start_gateway, stop_gateway
from tests.support.metrics import points_of
from tests.support.rich_status import status_of

FAST_RETRY = RetryConfig(max_retries=3, initial_backoff=0.02, max_backoff=5.0, jitter=0.0)


@pytest.fixture
async def retrying(fake: FakeUpstream) -> AsyncIterator[tuple[Gateway, InMemoryMetricReader]]:
    fake.reset()
    reader = InMemoryMetricReader()
    telemetry = Telemetry(meter_provider=MeterProvider(metric_readers=[reader]))
    gw = await start_gateway(settings_for(fake.base_url, retry=FAST_RETRY), telemetry)
    yield gw, reader
    await stop_gateway(gw)


async def test_retry_after_ms_then_503_then_success(
    retrying: tuple[Gateway, InMemoryMetricReader], fake: FakeUpstream
) -> None:
    gw, reader = retrying
    fake.script(
        "POST /chat/completions",
        Step(status=429, error_type="requests", message="slow", headers={"retry-after-ms": "200"}),
        Step(status=503, message="busy"),
        Step(),
    )
    started = time.monotonic()
    answer = await gw.unary("CreateChatCompletion")(chat(gw), timeout=10)
    elapsed = time.monotonic() - started
    assert answer.chat_completion.choices
    assert len(fake.requests) == 3
    assert elapsed >= 0.2, "the upstream's retry-after-ms was honoured"
    retries = points_of(reader, "openai_retry_attempts_total")
    assert {p.attributes["attempt_number"] for p in retries} == {"2", "3"}


async def test_insufficient_quota_is_never_retried(
    retrying: tuple[Gateway, InMemoryMetricReader], fake: FakeUpstream
) -> None:
    gw, _ = retrying
    fake.script(
        "POST /chat/completions",
        Step(
            status=429,
            error_type="insufficient_quota",
            error_code="insufficient_quota",
            message="no credit",
            repeat=5,
        ),
    )
    failure = await call_failing(gw, "CreateChatCompletion", chat(gw))
    assert failure.info.reason == "QUOTA_EXCEEDED" and "RetryInfo" not in failure.details
    assert len(fake.requests) == 1


async def test_x_should_retry_false_stops(
    retrying: tuple[Gateway, InMemoryMetricReader], fake: FakeUpstream
) -> None:
    gw, _ = retrying
    fake.script(
        "POST /chat/completions",
        Step(status=503, message="down", headers={"x-should-retry": "false"}, repeat=5),
    )
    failure = await call_failing(gw, "CreateChatCompletion", chat(gw))
    assert failure.code == grpc.StatusCode.UNAVAILABLE
    assert len(fake.requests) == 1


async def test_deadline_shorter_than_retry_after_fails_at_once(
    retrying: tuple[Gateway, InMemoryMetricReader], fake: FakeUpstream
) -> None:
    gw, _ = retrying
    fake.script(
        "POST /chat/completions",
        Step(status=429, error_type="requests", message="slow", headers={"retry-after": "5"}, repeat=3),
    )
    started = time.monotonic()
    call = gw.unary("CreateChatCompletion")(chat(gw), timeout=2)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert time.monotonic() - started < 1.0, "no sleep towards a retry the deadline cannot reach"
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = status_of(caught.value)
    assert status is not None
    from google.rpc import error_details_pb2  # noqa: PLC0415

    delays = []
    for d in status.details:
        if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR):  # type: ignore[arg-type]  # types-protobuf: upb's Descriptor
            info = error_details_pb2.RetryInfo()
            d.Unpack(info)
            delays.append(info.retry_delay.seconds)
    assert delays == [5]
    assert len(fake.requests) == 1


async def test_retries_stop_at_the_maximum(
    retrying: tuple[Gateway, InMemoryMetricReader], fake: FakeUpstream
) -> None:
    gw, _ = retrying
    fake.script("POST /chat/completions", Step(status=500, message="boom", repeat=10))
    failure = await call_failing(gw, "CreateChatCompletion", chat(gw))
    assert failure.info.reason == "UPSTREAM_INTERNAL"
    assert len(fake.requests) == 4  # first attempt + max_retries


async def test_slow_response_is_abandoned_and_retried(fake: FakeUpstream) -> None:
    fake.reset()
    gw = await start_gateway(settings_for(fake.base_url, retry=FAST_RETRY, request_timeout=0.3))
    try:
        fake.script("GET /models", Step(delay_ms=1500), Step())
        answer = await gw.unary("ListModels")(gw.request("ListModels"), timeout=10)
        assert len(answer.data) > 0
        assert len(fake.requests) == 2
    finally:
        await stop_gateway(gw)


async def test_wrong_content_type_is_parsed_anyway(gateway: Gateway, clean_fake: FakeUpstream) -> None:
    body = '{"object": "list", "data": [{"id": "m1", "object": "model", "created": 1, "owned_by": "me"}]}'
    clean_fake.script("GET /models", Step(raw_body=body, content_type="text/html"))
    answer = await gateway.unary("ListModels")(gateway.request("ListModels"), timeout=10)
    assert [m.id for m in answer.data] == ["m1"]


async def test_local_rate_limit_rejects_with_details(fake: FakeUpstream) -> None:
    fake.reset()
    limits = RateLimitConfig(requests_per_minute=2, queue_requests=False)
    gw = await start_gateway(settings_for(fake.base_url, rate_limit=limits))
    try:
        for _ in range(2):
            await gw.unary("ListModels")(gw.request("ListModels"), timeout=5)
        failure = await call_failing(gw, "ListModels", gw.request("ListModels"))
        assert failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert failure.info.reason == "RATE_LIMITED"
        assert {"RetryInfo", "QuotaFailure"} <= set(failure.details)
        assert failure.details["QuotaFailure"].violations[0].subject == "requests_per_minute"
        assert len(fake.requests) == 2, "a locally limited call never reaches OpenAI"
    finally:
        await stop_gateway(gw)


async def test_queued_call_waits_within_its_deadline(fake: FakeUpstream) -> None:
    fake.reset()
    limits = RateLimitConfig(requests_per_minute=60, queue_requests=True, max_queue_size=10)
    gw = await start_gateway(settings_for(fake.base_url, rate_limit=limits))
    try:
        # The bucket starts full (60) and refills one per second: drain it, then one more waits.
        calls = [gw.unary("ListModels")(gw.request("ListModels"), timeout=5) for _ in range(61)]
        started = time.monotonic()
        await asyncio.gather(*calls)
        assert time.monotonic() - started >= 0.5
        short = gw.unary("ListModels")(gw.request("ListModels"), timeout=0.2)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await short
        assert caught.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        await stop_gateway(gw)


async def test_upstream_ratelimit_headers_adjust_the_limiter(fake: FakeUpstream) -> None:
    fake.reset()
    gw = await start_gateway(settings_for(fake.base_url, rate_limit=RateLimitConfig(queue_requests=False)))
    try:
        fake.script(
            "GET /models",
            Step(
                headers={
                    "x-ratelimit-limit-requests": "100",
                    "x-ratelimit-remaining-requests": "0",
                    "x-ratelimit-reset-requests": "20s",
                }
            ),
        )
        await gw.unary("ListModels")(gw.request("ListModels"), timeout=5)
        failure = await call_failing(gw, "ListModels", gw.request("ListModels"))
        assert failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert failure.details["RetryInfo"].retry_delay.seconds >= 15
        assert len(fake.requests) == 1
    finally:
        await stop_gateway(gw)


async def test_breaker_trips_mid_batch_and_fails_the_rest_fast(fake: FakeUpstream) -> None:
    fake.reset()
    gw = await start_gateway(settings_for(fake.base_url, breaker=BreakerConfig(failure_threshold=3)))
    try:
        fake.script("GET /models", Step(status=500, message="boom", repeat=100))
        reasons = []
        for _ in range(10):
            failure = await call_failing(gw, "ListModels", gw.request("ListModels"))
            reasons.append(failure.info.reason)
        assert reasons[:3] == ["UPSTREAM_INTERNAL"] * 3
        assert set(reasons[3:]) == {"CIRCUIT_OPEN"}
        assert len(fake.requests) == 3
        # 4xx never opens it: a fresh gateway sees 404s and keeps calling.
        fake.reset()
    finally:
        await stop_gateway(gw)
    gw = await start_gateway(settings_for(fake.base_url, breaker=BreakerConfig(failure_threshold=3)))
    try:
        fake.script("GET /models/{model}", Step(status=404, message="nope", repeat=10))
        for _ in range(6):
            failure = await call_failing(gw, "GetModel", gw.request("GetModel", model="x"))
            assert failure.info.reason == "NOT_FOUND"
        assert len(fake.requests) == 6
    finally:
        await stop_gateway(gw)


async def test_burst_of_200_during_a_429_second(fake: FakeUpstream) -> None:
    """Done-when of the resilience issue: every call succeeds or is RESOURCE_EXHAUSTED with RetryInfo."""
    fake.reset()
    retry = RetryConfig(max_retries=3, initial_backoff=0.25, max_backoff=2.0, jitter=0.1)
    gw = await start_gateway(settings_for(fake.base_url, retry=retry))
    try:
        fake.script(
            "POST /chat/completions",
            Step(
                status=429,
                error_type="requests",
                error_code="rate_limit_exceeded",
                message="Rate limit reached",
                headers={"retry-after-ms": "300"},
                for_seconds=1.0,
            ),
        )

        async def one() -> str:
            try:
                await gw.unary("CreateChatCompletion")(chat(gw), timeout=3)
                return "ok"
            except grpc.aio.AioRpcError as err:
                status = status_of(err)
                assert status is not None
                kinds = {d.type_url.rsplit(".", 1)[-1] for d in status.details}
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
                assert "RetryInfo" in kinds, kinds
                return "exhausted"

        outcomes = await asyncio.gather(*(one() for _ in range(200)))
        assert set(outcomes) <= {"ok", "exhausted"}
        assert outcomes.count("ok") > 0
    finally:
        await stop_gateway(gw)
