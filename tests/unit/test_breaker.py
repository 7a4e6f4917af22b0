"""The aiobreaker wrapper: every test runs with a non-UTC local time zone, because
aiobreaker 1.2.0 mixes UTC and local time and is only right when TZ=UTC."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import orjson
import pytest
from openai_grpc_server import errors
from openai_grpc_server.config import breaker_config
from openai_grpc_server.resilience import (
    Attempt,
    BreakerConfig,
    BreakerRegistry,
    CircuitBreaker,
    CircuitBreakerHook,
    CircuitState,
    CircuitStats,
    FakeClock,
    MonotonicClock,
    NullObserver,
    Operation,
    RateLimitConfig,
    RequestOutcome,
    ResiliencePolicy,
    RetryConfig,
)
from openai_grpc_server.upstream import classify

OP = Operation("POST /chat/completions", "tenant-a")


@pytest.fixture(autouse=True, params=["America/New_York", "Asia/Tokyo"])
def non_utc_tz(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run with a local zone behind UTC and one ahead of it, then restore the original."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = request.param
    time.tzset()
    try:
        assert time.timezone != 0
        yield request.param
    finally:
        if before is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = before
        time.tzset()


def http_error(status: int) -> errors.OpenAIError:
    return classify.classify_response(status, {}, orjson.dumps({"error": {"message": f"HTTP {status}"}}))


class StateLog(NullObserver):
    def __init__(self) -> None:
        self.states: list[tuple[str, str]] = []

    def on_breaker_state(self, endpoint: str, state: str) -> None:
        self.states.append((endpoint, state))


@pytest.fixture
async def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def breaker(clock: FakeClock) -> AsyncIterator[CircuitBreaker]:
    cb = CircuitBreaker("all", BreakerConfig(), clock=clock)
    yield cb
    await cb.aclose()


def state(cb: CircuitBreaker) -> CircuitState:
    """Read through a call so mypy does not keep a narrowed property across state changes."""
    return cb.state


def fail(cb: CircuitBreaker, times: int, error: errors.OpenAIError | None = None) -> None:
    for _ in range(times):
        cb.admit().record(error or http_error(503))


# --- opening ---------------------------------------------------------------------------------
async def test_opens_after_the_threshold(breaker: CircuitBreaker) -> None:
    fail(breaker, 4)
    assert state(breaker) is CircuitState.CLOSED
    fail(breaker, 1)
    assert state(breaker) is CircuitState.OPEN


async def test_rejects_with_the_time_left(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail(breaker, 5)
    with pytest.raises(errors.CircuitOpen) as info:
        breaker.admit()
    assert info.value.retry_after == pytest.approx(30.0)
    assert info.value.metadata == {"endpoint": "all", "breaker_state": "open"}
    clock.advance(12.5)
    with pytest.raises(errors.CircuitOpen) as info:
        breaker.admit()
    assert info.value.retry_after == pytest.approx(17.5)


async def test_time_left_is_right_on_the_real_clock(non_utc_tz: str) -> None:
    cb = CircuitBreaker("all", BreakerConfig(recovery_timeout=30.0), clock=MonotonicClock())
    try:
        fail(cb, 5)
        with pytest.raises(errors.CircuitOpen) as info:
            cb.admit()
        assert info.value.retry_after is not None
        assert 29.0 <= info.value.retry_after <= 30.0
        # The defect the wrapper exists for: aiobreaker's own arithmetic is off by the UTC offset
        # (hours late behind UTC; "already elapsed" ahead of it).
        native = cb._cb.opens_at
        assert native is None or abs((native - cb._storage.opened_at).total_seconds() - 30) < 1
        if native is not None:
            assert abs(cb._cb.time_until_open.total_seconds() - 30.0) > 3600
    finally:
        await cb.aclose()


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422, 429])
async def test_4xx_never_opens_it(breaker: CircuitBreaker, status: int) -> None:
    fail(breaker, 50, http_error(status))
    assert state(breaker) is CircuitState.CLOSED
    assert breaker.stats().failure_count == 0


async def test_quota_and_local_errors_never_open_it(breaker: CircuitBreaker) -> None:
    quota = classify.classify_response(
        429, {}, orjson.dumps({"error": {"message": "quota", "code": "insufficient_quota"}})
    )
    for err in (quota, errors.TooManyRequests("local"), errors.ValidationError("bad")):
        fail(breaker, 10, err)
    assert state(breaker) is CircuitState.CLOSED


@pytest.mark.parametrize(
    "error",
    [
        http_error(500),
        http_error(502),
        http_error(504),
        classify.classify_exception(httpx.ConnectError("refused")),
        classify.classify_exception(httpx.ReadTimeout("slow")),
        errors.StreamInterrupted("cut"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_server_and_network_failures_count(breaker: CircuitBreaker, error: errors.OpenAIError) -> None:
    fail(breaker, 5, error)
    assert state(breaker) is CircuitState.OPEN


async def test_failures_outside_the_window_do_not_count(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail(breaker, 4)
    clock.advance(61)
    fail(breaker, 4)
    assert state(breaker) is CircuitState.CLOSED
    fail(breaker, 1)
    assert state(breaker) is CircuitState.OPEN


async def test_a_success_resets_the_consecutive_count(breaker: CircuitBreaker) -> None:
    fail(breaker, 4)
    breaker.admit().record(None)
    fail(breaker, 4)
    assert state(breaker) is CircuitState.CLOSED


# --- half-open -------------------------------------------------------------------------------
async def test_half_open_is_entered_on_time_without_a_call(clock: FakeClock) -> None:
    log = StateLog()
    cb = CircuitBreaker("all", BreakerConfig(), clock=clock, on_state=log.on_breaker_state)
    fail(cb, 5)
    await clock.run_for(29.9)
    assert log.states == [("all", "closed"), ("all", "open")]
    await clock.run_for(0.1)
    assert log.states[-1] == ("all", "half_open")  # the gauge flips by itself
    assert cb._cb.current_state.name == "HALF_OPEN"
    await cb.aclose()


async def test_single_probe_among_50_concurrent_callers(clock: FakeClock) -> None:
    policy = ResiliencePolicy(
        RetryConfig(max_retries=0), RateLimitConfig(), BreakerConfig(), clock=clock, rng=random.Random(1)
    )
    probe_gate = asyncio.Event()
    reached: list[int] = []

    async def boom(attempt: Attempt) -> str:
        raise http_error(503)

    async def probe(attempt: Attempt) -> str:
        reached.append(attempt.number)
        await probe_gate.wait()
        return "ok"

    for _ in range(5):
        with pytest.raises(errors.ServiceUnavailable):
            await policy.execute(OP, boom)
    await clock.run_for(30)
    assert policy.breaker_state(OP.endpoint) is CircuitState.HALF_OPEN

    calls = [asyncio.create_task(policy.execute(OP, probe)) for _ in range(50)]
    await clock.run_for(0)
    assert reached == [1]  # exactly one probe reached the upstream
    rejected = [t for t in calls if t.done()]
    assert len(rejected) == 49
    for task in rejected:
        err = task.exception()
        assert isinstance(err, errors.CircuitOpen)
        assert err.retry_after == 1.0  # short: come back soon, the probe is running
    probe_gate.set()
    (winner,) = [t for t in calls if not t.done()]
    assert (await winner)[0] == "ok"
    await policy.aclose()


async def test_closes_after_the_success_threshold(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail(breaker, 5)
    await clock.run_for(30)
    for _ in range(2):
        breaker.admit().record(None)
        assert state(breaker) is CircuitState.HALF_OPEN
    breaker.admit().record(None)
    assert state(breaker) is CircuitState.CLOSED
    fail(breaker, 4)  # a closed breaker starts counting from zero
    assert state(breaker) is CircuitState.CLOSED


async def test_a_4xx_probe_counts_as_alive(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail(breaker, 5)
    await clock.run_for(30)
    for _ in range(3):
        breaker.admit().record(http_error(404))
    assert state(breaker) is CircuitState.CLOSED


async def test_a_failed_probe_reopens(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail(breaker, 5)
    await clock.run_for(30)
    breaker.admit().record(None)
    breaker.admit().record(http_error(502))
    assert state(breaker) is CircuitState.OPEN
    with pytest.raises(errors.CircuitOpen) as info:
        breaker.admit()
    assert info.value.retry_after == pytest.approx(30.0)  # a full recovery time again
    await clock.run_for(30)
    assert state(breaker) is CircuitState.HALF_OPEN
    assert breaker.stats().success_count == 0  # earlier probe successes do not carry over


async def test_a_cancelled_probe_frees_the_slot(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail(breaker, 5)
    await clock.run_for(30)
    permit = breaker.admit()
    with pytest.raises(errors.CircuitOpen):
        breaker.admit()
    permit.cancel()
    breaker.admit().record(None)
    assert breaker.stats().success_count == 1


async def test_a_lost_probe_does_not_block_half_open_forever(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    fail(breaker, 5)
    await clock.run_for(30)
    lost = breaker.admit()  # a permit that is not reported for a long time
    clock.advance(29)
    with pytest.raises(errors.CircuitOpen):
        breaker.admit()
    clock.advance(1)
    current = breaker.admit()
    lost.cancel()  # reporting late does not free the current probe's slot
    with pytest.raises(errors.CircuitOpen):
        breaker.admit()
    current.record(None)
    assert breaker.stats().success_count == 1


async def test_observer_reading_the_state_sees_the_new_one(clock: FakeClock) -> None:
    seen: list[tuple[str, CircuitState]] = []
    holder: list[CircuitBreaker] = []

    def on_state(endpoint: str, new: str) -> None:
        if holder:
            seen.append((new, holder[0].state))

    cb = CircuitBreaker("all", BreakerConfig(), clock=clock, on_state=on_state)
    holder.append(cb)
    fail(cb, 5)
    clock.advance(30)
    assert state(cb) is CircuitState.HALF_OPEN
    for _ in range(3):
        cb.admit().record(None)
    assert seen == [
        ("open", CircuitState.OPEN),
        ("half_open", CircuitState.HALF_OPEN),
        ("closed", CircuitState.CLOSED),
    ]
    await cb.aclose()


async def test_late_failure_after_the_call_returned_counts(clock: FakeClock) -> None:
    policy = ResiliencePolicy(RetryConfig(), RateLimitConfig(), BreakerConfig(), clock=clock)

    async def ok(attempt: Attempt) -> str:
        return "stream started"

    # Five streams start fine, then the upstream dies and cuts all of them.
    for _ in range(5):
        await policy.execute(OP, ok)
    for _ in range(5):
        policy.record_outcome(OP, errors.StreamInterrupted("cut after 3 messages"))
    assert policy.breaker_state(OP.endpoint) is CircuitState.OPEN
    await policy.aclose()


# --- scope and hooks -------------------------------------------------------------------------
async def test_per_endpoint_breakers(clock: FakeClock) -> None:
    log = StateLog()
    reg = BreakerRegistry(BreakerConfig(per_endpoint=True), clock=clock, on_state=log.on_breaker_state)
    fail(reg.get("POST /chat/completions"), 5)
    reg.get("GET /models").admit().record(None)
    assert reg.states() == {"POST /chat/completions": CircuitState.OPEN, "GET /models": CircuitState.CLOSED}
    assert ("POST /chat/completions", "open") in log.states
    shared = BreakerRegistry(BreakerConfig(), clock=clock)
    assert shared.get("a") is shared.get("b")
    await reg.aclose()


async def test_hooks_hear_everything(clock: FakeClock) -> None:
    class Hook(CircuitBreakerHook):
        def __init__(self) -> None:
            self.changes: list[tuple[str, CircuitState, CircuitState, CircuitStats]] = []
            self.rejected: list[tuple[str, str]] = []
            self.outcomes: list[RequestOutcome] = []

        async def on_state_change(
            self, endpoint: str, from_state: CircuitState, to_state: CircuitState, stats: CircuitStats
        ) -> None:
            self.changes.append((endpoint, from_state, to_state, stats))

        def on_rejected(self, op: Operation, endpoint: str) -> None:
            self.rejected.append((op.credential, endpoint))

        def on_outcome(self, outcome: RequestOutcome, endpoint: str) -> None:
            self.outcomes.append(outcome)

    hook = Hook()
    cb = CircuitBreaker("all", BreakerConfig(failure_threshold=2), clock=clock, hook=hook)
    cb.admit().record(http_error(400))
    fail(cb, 2)
    with pytest.raises(errors.CircuitOpen):
        cb.admit(OP)
    await clock.run_for(30)
    assert hook.outcomes == [RequestOutcome.SUCCESS, RequestOutcome.FAILURE, RequestOutcome.FAILURE]
    assert hook.rejected == [("tenant-a", "all")]
    assert [(c[1], c[2]) for c in hook.changes] == [
        (CircuitState.CLOSED, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.HALF_OPEN),
    ]
    assert hook.changes[0][3].failure_count == 2
    assert hook.changes[0][3].total_requests == 3
    await cb.aclose()


async def test_works_without_a_running_loop_timer(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail(breaker, 5)
    clock.advance(30)  # the timer task has not run yet: the state is still computed correctly
    assert state(breaker) is CircuitState.HALF_OPEN


def test_config_defaults_and_parsing() -> None:
    assert BreakerConfig() == BreakerConfig(5, 3, 60.0, 30.0, False)
    assert breaker_config(
        {
            "failure_threshold": "10",
            "success_threshold": 1,
            "failure_window": "2m",
            "recovery_timeout": "45",
            "per_endpoint": "true",
        }
    ) == BreakerConfig(10, 1, 120.0, 45.0, True)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"failure_threshold": "0"}, "breaker.failure_threshold"),
        ({"success_threshold": "x"}, "breaker.success_threshold"),
        ({"failure_window": "0s"}, "breaker.failure_window"),
        ({"recovery_timeout": "-1"}, "breaker.recovery_timeout"),
        ({"per_endpoint": "sometimes"}, "breaker.per_endpoint"),
        ({"timeout": "1"}, "breaker.timeout"),
    ],
)
def test_config_errors_name_the_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(ValueError, match=f"^{key}: "):
        breaker_config(data)
