"""ResiliencePolicy.execute: order per attempt, reservations, cancellation (see docs/architecture.md)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import orjson
import pytest
from openai_grpc_server import errors
from openai_grpc_server.resilience import (
    Attempt,
    BreakerConfig,
    CircuitState,
    FakeClock,
    NullObserver,
    Operation,
    RateLimitConfig,
    RateLimiter,
    Reservation,
    ResiliencePolicy,
    RetryConfig,
)
from openai_grpc_server.upstream import classify

OP = Operation("POST /chat/completions", "tenant-a", token_estimate=100)


def http_error(status: int, headers: dict[str, str] | None = None) -> errors.OpenAIError:
    return classify.classify_response(
        status, headers or {}, orjson.dumps({"error": {"message": f"HTTP {status}"}})
    )


class Log(NullObserver):
    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def on_attempt(
        self, op: Operation, attempt_number: int, delay_seconds: float, cause: errors.OpenAIError
    ) -> None:
        self.events.append(("attempt", str(attempt_number)))

    def on_rate_limited(self, op: Operation, limit_type: str) -> None:
        self.events.append(("rate_limited", limit_type))

    def on_breaker_state(self, endpoint: str, state: str) -> None:
        self.events.append(("breaker", state))


@pytest.fixture
async def clock() -> FakeClock:
    return FakeClock(auto_advance=True)


def make(
    clock: FakeClock,
    *,
    retry: RetryConfig | None = None,
    limits: RateLimitConfig | None = None,
    breaker: BreakerConfig | None = None,
    observer: Log | None = None,
) -> ResiliencePolicy:
    return ResiliencePolicy(
        retry or RetryConfig(jitter=0.0),
        limits or RateLimitConfig(requests_per_minute=60, tokens_per_minute=6000),
        breaker or BreakerConfig(),
        clock=clock,
        observer=observer,
        rng=random.Random(3),
    )


@pytest.fixture
async def policy(clock: FakeClock) -> AsyncIterator[ResiliencePolicy]:
    p = make(clock)
    yield p
    await p.aclose()


def local_limiter(policy: ResiliencePolicy) -> RateLimiter:
    assert isinstance(policy.limiter, RateLimiter)
    return policy.limiter


def full(policy: ResiliencePolicy) -> dict[str, float]:
    return {k: round(v, 6) for k, v in local_limiter(policy).levels("tenant-a").items()}


# --- order -----------------------------------------------------------------------------------
async def test_order_is_breaker_then_limiter_then_fn(
    policy: ResiliencePolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace: list[str] = []
    breaker = policy.breakers.get(OP.endpoint)
    real_admit, real_record, real_acquire = breaker.admit, breaker.record, policy.limiter.acquire

    def admit(op: Operation | None = None) -> object:
        trace.append("breaker")
        return real_admit(op)

    def record(error: errors.OpenAIError | None, *, probe: int | None = None) -> None:
        trace.append(f"record:{type(error).__name__}")
        real_record(error, probe=probe)

    async def acquire(op: Operation) -> Reservation:
        trace.append("limiter")
        return await real_acquire(op)

    monkeypatch.setattr(breaker, "admit", admit)
    monkeypatch.setattr(breaker, "record", record)
    monkeypatch.setattr(policy.limiter, "acquire", acquire)

    calls = 0

    async def fn(attempt: Attempt) -> str:
        nonlocal calls
        calls += 1
        trace.append(f"fn:{attempt.number}")
        if calls == 1:
            raise http_error(503)
        return "ok"

    assert (await policy.execute(OP, fn))[0] == "ok"
    assert trace == [
        "breaker",
        "limiter",
        "fn:1",
        "record:ServiceUnavailable",
        "breaker",
        "limiter",
        "fn:2",
        "record:NoneType",
    ]


async def test_open_circuit_consumes_no_rate_limit(clock: FakeClock) -> None:
    policy = make(clock, retry=RetryConfig(max_retries=0), breaker=BreakerConfig(failure_threshold=1))

    async def boom(attempt: Attempt) -> str:
        raise http_error(500)

    with pytest.raises(errors.InternalServerError):
        await policy.execute(OP, boom)
    before = full(policy)
    with pytest.raises(errors.CircuitOpen) as info:
        await policy.execute(OP, boom)
    assert info.value.retry_after == pytest.approx(30.0)
    assert full(policy) == before
    await policy.aclose()


async def test_rate_limit_rejection_frees_the_probe(clock: FakeClock) -> None:
    policy = make(
        clock,
        retry=RetryConfig(max_retries=0),
        limits=RateLimitConfig(requests_per_minute=1, queue_requests=False),
        breaker=BreakerConfig(failure_threshold=1, success_threshold=1),
    )

    async def boom(attempt: Attempt) -> str:
        raise http_error(500)

    async def ok(attempt: Attempt) -> str:
        return "ok"

    with pytest.raises(errors.InternalServerError):
        await policy.execute(OP, boom)  # opens the circuit, uses the only request
    clock.advance(30)  # half-open, and the request bucket has refilled half way
    with pytest.raises(errors.TooManyRequests):
        await policy.execute(OP, ok)  # the probe slot was taken, then rate limited
    clock.advance(30)
    assert (await policy.execute(OP, ok))[0] == "ok"  # the slot was freed: this is the probe
    assert policy.breaker_state(OP.endpoint) is CircuitState.CLOSED
    await policy.aclose()


# --- reservations ----------------------------------------------------------------------------
async def test_success_returns_the_reservation_to_settle(policy: ResiliencePolicy) -> None:
    async def fn(attempt: Attempt) -> str:
        return "answer"

    value, reservation = await policy.execute(OP, fn)
    assert value == "answer"
    assert full(policy) == {"requests_per_minute": 59, "tokens_per_minute": 5900}
    reservation.settle(40)
    assert full(policy) == {"requests_per_minute": 59, "tokens_per_minute": 5960}


async def test_non_retryable_error_gives_the_tokens_back(policy: ResiliencePolicy) -> None:
    async def fn(attempt: Attempt) -> str:
        raise http_error(400)

    with pytest.raises(errors.ValidationError):
        await policy.execute(OP, fn)
    # The upstream saw (and counted) the request, but no tokens were used.
    assert full(policy) == {"requests_per_minute": 59, "tokens_per_minute": 6000}


async def test_error_before_the_upstream_gives_everything_back(policy: ResiliencePolicy) -> None:
    async def fn(attempt: Attempt) -> str:
        raise errors.SslError("certificate verify failed")

    with pytest.raises(errors.SslError):
        await policy.execute(OP, fn)
    assert full(policy) == {"requests_per_minute": 60, "tokens_per_minute": 6000}


async def test_each_attempt_reserves_and_failed_ones_return_tokens(policy: ResiliencePolicy) -> None:
    outcomes: list[errors.OpenAIError | str] = [http_error(503), http_error(502), "ok"]

    async def fn(attempt: Attempt) -> str:
        outcome = outcomes[attempt.number - 1]
        if isinstance(outcome, errors.OpenAIError):
            raise outcome
        return outcome

    _, reservation = await policy.execute(OP, fn)
    reservation.settle(100)
    levels = full(policy)
    assert levels["tokens_per_minute"] == pytest.approx(5900, abs=1)  # only the success's usage
    # Three requests were sent; the 1.5 s of backoff refilled 1.5 (60 per minute).
    assert levels["requests_per_minute"] == pytest.approx(57 + 1.5)


async def test_unclassified_exception_propagates_and_releases(policy: ResiliencePolicy) -> None:
    async def fn(attempt: Attempt) -> str:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await policy.execute(OP, fn)
    assert full(policy) == {"requests_per_minute": 60, "tokens_per_minute": 6000}
    assert policy.breakers.get(OP.endpoint).stats().failure_count == 0


# --- cancellation ----------------------------------------------------------------------------
async def test_cancellation_propagates_releases_and_is_not_a_failure(clock: FakeClock) -> None:
    policy = make(clock, breaker=BreakerConfig(failure_threshold=1))
    started = asyncio.Event()

    async def hang(attempt: Attempt) -> str:
        started.set()
        await asyncio.Event().wait()
        return "never"

    for _ in range(3):
        started.clear()
        task = asyncio.create_task(policy.execute(OP, hang))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
    assert full(policy) == {"requests_per_minute": 60, "tokens_per_minute": 6000}
    assert policy.breaker_state(OP.endpoint) is CircuitState.CLOSED
    assert policy.breakers.get(OP.endpoint).stats().failure_count == 0
    await policy.aclose()


async def test_cancellation_while_queued_or_sleeping_propagates() -> None:
    clock = FakeClock()  # manual: waits really wait
    policy = make(clock, limits=RateLimitConfig(requests_per_minute=1))
    calls = 0

    async def flaky(attempt: Attempt) -> str:
        nonlocal calls
        calls += 1
        raise http_error(503)

    sleeping = asyncio.create_task(policy.execute(OP, flaky))
    await clock.run_for(0)
    assert calls == 1  # now in the backoff sleep
    queued = asyncio.create_task(policy.execute(OP, flaky))
    await clock.run_for(0)
    assert local_limiter(policy).queued("tenant-a") == 1
    for task in (sleeping, queued):
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert local_limiter(policy).queued("tenant-a") == 0
    assert clock.pending == 0
    await policy.aclose()


async def test_timeout_at_the_callers_deadline_is_not_an_upstream_failure() -> None:
    clock = FakeClock()
    policy = make(clock, breaker=BreakerConfig(failure_threshold=1))

    async def slow(attempt: Attempt) -> str:
        assert attempt.timeout is not None
        await clock.sleep(attempt.timeout)  # the HTTP timeout was the remaining deadline
        raise errors.Timeout("OpenAI did not answer in time (ReadTimeout)")

    task = asyncio.create_task(
        policy.execute(Operation(OP.endpoint, OP.credential, deadline=clock.now() + 5), slow)
    )
    await clock.run_for(5)
    with pytest.raises(errors.Timeout) as info:
        await task
    assert info.value.retry_after is None  # nothing to come back for: the caller's time is up
    assert policy.breaker_state(OP.endpoint) is CircuitState.CLOSED

    async def upstream_timeout(attempt: Attempt) -> str:
        raise errors.Timeout("OpenAI did not answer in time (ReadTimeout)")

    task = asyncio.create_task(
        policy.execute(Operation(OP.endpoint, OP.credential, deadline=clock.now() + 5), upstream_timeout)
    )
    await clock.run_for(0)
    assert policy.breaker_state(OP.endpoint) is CircuitState.OPEN  # a timeout well before the deadline counts
    await clock.run_for(1)  # the backoff sleep, then the retry meets the open circuit
    with pytest.raises(errors.CircuitOpen):
        await task
    await policy.aclose()


async def test_cancelled_probe_lets_the_next_caller_probe(clock: FakeClock) -> None:
    policy = make(clock, retry=RetryConfig(max_retries=0), breaker=BreakerConfig(failure_threshold=1))
    started = asyncio.Event()

    async def boom(attempt: Attempt) -> str:
        raise http_error(500)

    async def hang(attempt: Attempt) -> str:
        started.set()
        await asyncio.Event().wait()
        return "never"

    async def ok(attempt: Attempt) -> str:
        return "ok"

    with pytest.raises(errors.InternalServerError):
        await policy.execute(OP, boom)
    clock.advance(30)
    probe = asyncio.create_task(policy.execute(OP, hang))
    await started.wait()
    with pytest.raises(errors.CircuitOpen):
        await policy.execute(OP, ok)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert (await policy.execute(OP, ok))[0] == "ok"
    await policy.aclose()


# --- headers, deadline, observer -------------------------------------------------------------
async def test_upstream_429_adjusts_buckets_and_is_reported(clock: FakeClock) -> None:
    log = Log()
    policy = make(clock, retry=RetryConfig(max_retries=0), observer=log)

    async def fn(attempt: Attempt) -> str:
        raise http_error(
            429,
            {
                "retry-after": "1",
                "x-ratelimit-remaining-requests": "3",
                "x-ratelimit-remaining-tokens": "250",
            },
        )

    with pytest.raises(errors.TooManyRequests):
        await policy.execute(OP, fn)
    assert full(policy) == {"requests_per_minute": 3, "tokens_per_minute": 250}
    assert ("rate_limited", "server_enforced") in log.events
    await policy.aclose()


async def test_observe_headers_after_success(policy: ResiliencePolicy) -> None:
    policy.observe_headers(OP, {"x-ratelimit-remaining-tokens": "1000"})
    assert full(policy)["tokens_per_minute"] == 1000


async def test_attempt_timeout_counts_the_queue_wait() -> None:
    clock = FakeClock()
    policy = make(clock, limits=RateLimitConfig(requests_per_minute=6))  # one every 10 s
    seen: list[Attempt] = []

    async def fn(attempt: Attempt) -> str:
        seen.append(attempt)
        return "ok"

    for _ in range(6):
        await policy.execute(OP, fn)
    op = Operation(OP.endpoint, OP.credential, deadline=clock.now() + 25.0)
    task = asyncio.create_task(policy.execute(op, fn))
    await clock.run_for(10)
    await task
    assert seen[-1].timeout == pytest.approx(15.0)
    await policy.aclose()


async def test_observer_sees_limits_retries_and_breaker(clock: FakeClock) -> None:
    log = Log()
    policy = make(
        clock,
        retry=RetryConfig(max_retries=1, jitter=0.0),
        limits=RateLimitConfig(requests_per_minute=1, queue_requests=False),
        breaker=BreakerConfig(failure_threshold=1),
        observer=log,
    )

    async def boom(attempt: Attempt) -> str:
        raise http_error(503)

    # Attempt 1 fails and opens the breaker; the retry is refused by the breaker, which is
    # checked before the limiter (whose only request is used up).
    with pytest.raises(errors.CircuitOpen) as info:
        await policy.execute(OP, boom)
    assert info.value.retry_after == pytest.approx(29.5)
    with pytest.raises(errors.CircuitOpen):
        await policy.execute(OP, boom)
    assert log.events == [("breaker", "closed"), ("breaker", "open"), ("attempt", "2")]
    await clock.run_for(30)
    with pytest.raises(errors.TooManyRequests):
        await policy.execute(OP, boom)  # the probe slot, then the limiter refuses
    assert log.events[-2:] == [("breaker", "half_open"), ("rate_limited", "requests_per_minute")]
    await policy.aclose()


def test_deadline_in(clock: FakeClock) -> None:
    policy = make(clock)
    assert policy.deadline_in(None) is None
    assert policy.deadline_in(2.5) == clock.now() + 2.5
