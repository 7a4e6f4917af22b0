"""Retry decisions and the retry loop of ResiliencePolicy."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Mapping

import httpx
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai_grpc_server import errors
from openai_grpc_server.config import retry_config
from openai_grpc_server.resilience import (
    Attempt,
    BreakerConfig,
    FakeClock,
    NullObserver,
    Operation,
    RateLimitConfig,
    ResiliencePolicy,
    RetryConfig,
    RetryDecision,
    RetryHook,
    RetryPolicy,
    Verdict,
    parse_duration,
)
from openai_grpc_server.upstream import classify

OP = Operation(endpoint="POST /chat/completions", credential="tenant-a")


def upstream(
    status: int,
    headers: Mapping[str, str] | None = None,
    code: str | None = None,
    message: str = "upstream says no",
) -> errors.OpenAIError:
    body = orjson.dumps({"error": {"message": message, "type": code, "code": code}})
    return classify.classify_response(status, headers or {}, body)


class Recorder(NullObserver):
    def __init__(self) -> None:
        self.attempts: list[tuple[int, float, str]] = []
        self.exhausted: list[tuple[int, str]] = []

    def on_attempt(
        self, op: Operation, attempt_number: int, delay_seconds: float, cause: errors.OpenAIError
    ) -> None:
        self.attempts.append((attempt_number, delay_seconds, type(cause).__name__))

    def on_retry_exhausted(self, op: Operation, attempts: int, error: errors.OpenAIError) -> None:
        self.exhausted.append((attempts, type(error).__name__))


def make_policy(
    retry: RetryConfig | None = None,
    *,
    clock: FakeClock | None = None,
    hook: RetryHook | None = None,
    observer: Recorder | None = None,
) -> ResiliencePolicy:
    return ResiliencePolicy(
        retry or RetryConfig(jitter=0.0),
        RateLimitConfig(),
        BreakerConfig(failure_threshold=1000),
        clock=clock or FakeClock(auto_advance=True),
        retry_hook=hook,
        observer=observer,
        rng=random.Random(7),
    )


def failing(
    *outcomes: errors.OpenAIError | str,
) -> tuple[Callable[[Attempt], Awaitable[str]], list[Attempt]]:
    """fn that raises (or returns) the given outcomes in turn; the last one repeats."""
    seen: list[Attempt] = []

    async def fn(attempt: Attempt) -> str:
        seen.append(attempt)
        outcome = outcomes[min(len(seen), len(outcomes)) - 1]
        if isinstance(outcome, errors.OpenAIError):
            raise outcome
        return outcome

    return fn, seen


# --- backoff ---------------------------------------------------------------------------------
def test_backoff_sequence_without_jitter() -> None:
    policy = RetryPolicy(RetryConfig(jitter=0.0, max_backoff=5.0))
    assert [policy.backoff(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


@given(
    retry=st.integers(min_value=1, max_value=40),
    seed=st.integers(min_value=0, max_value=2**32),
    jitter=st.floats(min_value=0.0, max_value=1.0),
)
def test_jitter_stays_within_bounds(retry: int, seed: int, jitter: float) -> None:
    cfg = RetryConfig(jitter=jitter)
    delay = RetryPolicy(cfg, rng=random.Random(seed)).backoff(retry)
    base = min(cfg.initial_backoff * cfg.backoff_multiplier ** (retry - 1), cfg.max_backoff)
    assert base * (1 - jitter) - 1e-9 <= delay <= min(cfg.max_backoff, base * (1 + jitter)) + 1e-9


def test_jitter_actually_spreads_delays() -> None:
    policy = RetryPolicy(RetryConfig(), rng=random.Random(1))
    delays = {round(policy.backoff(3), 6) for _ in range(50)}
    assert len(delays) > 10
    assert all(1.8 <= d <= 2.2 for d in delays)


async def test_loop_sleeps_the_backoff_sequence() -> None:
    clock = FakeClock(auto_advance=True)
    observer = Recorder()
    policy = make_policy(RetryConfig(jitter=0.0), clock=clock, observer=observer)
    fn, seen = failing(upstream(503), upstream(502), upstream(500), "ok")
    value, _ = await policy.execute(OP, fn)
    assert value == "ok"
    assert [a.number for a in seen] == [1, 2, 3, 4]
    assert clock.sleeps == [0.5, 1.0, 2.0]
    assert observer.attempts == [
        (2, 0.5, "ServiceUnavailable"),
        (3, 1.0, "BadGateway"),
        (4, 2.0, "InternalServerError"),
    ]


# --- Retry-After -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after": "2"}, 2.0),
        ({"Retry-After": "3.5"}, 3.5),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # the precise header wins
    ],
)
async def test_retry_after_forms(headers: dict[str, str], expected: float) -> None:
    clock = FakeClock(auto_advance=True)
    policy = make_policy(clock=clock)
    fn, seen = failing(upstream(429, httpx.Headers(headers)), "ok")
    assert (await policy.execute(OP, fn))[0] == "ok"
    assert len(seen) == 2
    assert clock.sleeps == [pytest.approx(expected)]


async def test_retry_after_http_date() -> None:
    clock = FakeClock(auto_advance=True)
    policy = make_policy(clock=clock)
    when = email.utils.formatdate(time.time() + 10, usegmt=True)
    fn, seen = failing(upstream(503, {"retry-after": when}), "ok")
    assert (await policy.execute(OP, fn))[0] == "ok"
    assert len(seen) == 2
    assert 8.5 <= clock.sleeps[0] <= 10.5  # HTTP dates have 1 s resolution


async def test_retry_after_longer_than_max_backoff_is_not_waited_for() -> None:
    clock = FakeClock(auto_advance=True)
    policy = make_policy(RetryConfig(max_backoff=60.0), clock=clock)
    fn, seen = failing(upstream(429, {"retry-after": "600"}))
    with pytest.raises(errors.TooManyRequests) as info:
        await policy.execute(OP, fn)
    assert len(seen) == 1 and clock.sleeps == []
    assert info.value.retry_after == 600.0


# --- what is retried -------------------------------------------------------------------------
async def test_x_should_retry_false_stops_a_retryable_status() -> None:
    policy = make_policy()
    fn, seen = failing(upstream(503, {"x-should-retry": "false"}), "ok")
    with pytest.raises(errors.ServiceUnavailable):
        await policy.execute(OP, fn)
    assert len(seen) == 1


async def test_x_should_retry_true_forces_a_status_outside_the_list() -> None:
    policy = make_policy()
    fn, seen = failing(upstream(501, {"X-Should-Retry": "true"}), "ok")
    assert (await policy.execute(OP, fn))[0] == "ok"
    assert len(seen) == 2
    # Without the header 501 is not in retryable_status_codes.
    fn, seen = failing(upstream(501), "ok")
    with pytest.raises(errors.ServerError):
        await policy.execute(OP, fn)
    assert len(seen) == 1


@pytest.mark.parametrize(
    "error",
    [
        upstream(429, {"retry-after": "1"}, code="insufficient_quota"),
        upstream(429, {"x-should-retry": "true"}, code="insufficient_quota"),
        upstream(400, {"x-should-retry": "true"}),
        upstream(422),
        upstream(401),
        upstream(403),
        upstream(400, code="context_length_exceeded"),
        errors.SslError("bad certificate"),
    ],
    ids=lambda e: f"{type(e).__name__}-{e.upstream_status}",
)
async def test_never_retried(error: errors.OpenAIError) -> None:
    policy = make_policy()
    fn, seen = failing(error, "ok")
    with pytest.raises(type(error)):
        await policy.execute(OP, fn)
    assert len(seen) == 1


def test_quota_exhaustion_is_classified_and_refused() -> None:
    err = upstream(429, code="insufficient_quota")
    assert isinstance(err, errors.QuotaExceeded)
    assert RetryPolicy().plan(err, 0).verdict is Verdict.NOT_RETRYABLE


@pytest.mark.parametrize(
    "error",
    [
        classify.classify_exception(httpx.ConnectError("connection refused")),
        classify.classify_exception(httpx.ReadTimeout("slow")),
        classify.classify_exception(httpx.RemoteProtocolError("peer closed connection")),
        errors.StreamInterrupted("stream ended before [DONE]"),
        upstream(408),
        upstream(409),
        upstream(429),
        upstream(500),
        upstream(502),
        upstream(503),
        upstream(504),
    ],
    ids=lambda e: f"{type(e).__name__}-{e.upstream_status}",
)
async def test_retried(error: errors.OpenAIError) -> None:
    policy = make_policy()
    fn, seen = failing(error, "ok")
    assert (await policy.execute(OP, fn))[0] == "ok"
    assert len(seen) == 2


async def test_retries_stop_at_max_retries() -> None:
    observer = Recorder()
    policy = make_policy(RetryConfig(max_retries=2, jitter=0.0), observer=observer)
    fn, seen = failing(upstream(500))
    with pytest.raises(errors.InternalServerError):
        await policy.execute(OP, fn)
    assert len(seen) == 3
    assert observer.exhausted == [(3, "InternalServerError")]


async def test_zero_retries_means_one_attempt() -> None:
    policy = make_policy(RetryConfig(max_retries=0))
    fn, seen = failing(upstream(503), "ok")
    with pytest.raises(errors.ServiceUnavailable):
        await policy.execute(OP, fn)
    assert len(seen) == 1


# --- deadline --------------------------------------------------------------------------------
async def test_deadline_shorter_than_retry_after_fails_at_once() -> None:
    clock = FakeClock(auto_advance=True)
    observer = Recorder()
    policy = make_policy(clock=clock, observer=observer)
    op = Operation("POST /chat/completions", "tenant-a", deadline=clock.now() + 5.0)
    fn, seen = failing(upstream(429, {"retry-after": "20"}), "ok")
    started = clock.now()
    with pytest.raises(errors.TooManyRequests) as info:
        await policy.execute(op, fn)
    assert len(seen) == 1
    assert clock.sleeps == [] and clock.now() == started  # never slept
    assert info.value.retry_after == 20.0  # -> RetryInfo
    assert observer.exhausted == [(1, "TooManyRequests")]


async def test_deadline_shorter_than_backoff_reports_the_backoff() -> None:
    clock = FakeClock(auto_advance=True)
    policy = make_policy(RetryConfig(initial_backoff=4.0, jitter=0.0), clock=clock)
    op = Operation("POST /chat/completions", "tenant-a", deadline=clock.now() + 3.0)
    fn, _ = failing(upstream(503))
    with pytest.raises(errors.ServiceUnavailable) as info:
        await policy.execute(op, fn)
    assert info.value.retry_after == 4.0
    assert clock.sleeps == []


async def test_deadline_bounds_the_whole_budget_and_timeouts_shrink() -> None:
    clock = FakeClock(auto_advance=True)
    policy = make_policy(RetryConfig(max_retries=10, jitter=0.0), clock=clock)
    op = Operation("POST /chat/completions", "tenant-a", deadline=clock.now() + 4.0)
    fn, seen = failing(upstream(503))
    with pytest.raises(errors.ServiceUnavailable):
        await policy.execute(op, fn)
    # 0.5 + 1.0 + 2.0 = 3.5 s of sleep fit; the next 4 s wait would outlive the deadline.
    assert clock.sleeps == [0.5, 1.0, 2.0]
    assert [a.timeout for a in seen] == [4.0, 3.5, 2.5, 0.5]
    assert clock.now() <= op.deadline  # type: ignore[operator]


async def test_no_deadline_gives_no_attempt_timeout() -> None:
    policy = make_policy()
    fn, seen = failing("ok")
    await policy.execute(OP, fn)
    assert seen == [Attempt(1, None)]


async def test_expired_deadline_fails_before_calling() -> None:
    clock = FakeClock()
    policy = make_policy(clock=clock)
    fn, seen = failing("ok")
    with pytest.raises(errors.Timeout):
        await policy.execute(Operation("e", "c", deadline=clock.now()), fn)
    assert seen == []


# --- hook ------------------------------------------------------------------------------------
class ScriptedHook(RetryHook):
    def __init__(self, decision: RetryDecision) -> None:
        self.decision = decision
        self.calls: list[tuple[int, str, float]] = []
        self.exhausted: list[tuple[str, int]] = []

    async def on_retry(self, attempt: int, error: errors.OpenAIError, next_delay: float) -> RetryDecision:
        self.calls.append((attempt, type(error).__name__, next_delay))
        return self.decision

    def on_exhausted(self, error: errors.OpenAIError, attempts: int) -> None:
        self.exhausted.append((type(error).__name__, attempts))


async def test_hook_retry_overrides_the_delay() -> None:
    clock = FakeClock(auto_advance=True)
    hook = ScriptedHook(RetryDecision.retry(7.0))
    policy = make_policy(clock=clock, hook=hook)
    fn, seen = failing(upstream(503), "ok")
    assert (await policy.execute(OP, fn))[0] == "ok"
    assert hook.calls == [(2, "ServiceUnavailable", 0.5)]
    assert clock.sleeps == [7.0]
    assert len(seen) == 2


async def test_hook_abort_stops_retrying() -> None:
    hook = ScriptedHook(RetryDecision.abort())
    policy = make_policy(hook=hook)
    fn, seen = failing(upstream(503), "ok")
    with pytest.raises(errors.ServiceUnavailable):
        await policy.execute(OP, fn)
    assert len(seen) == 1 and len(hook.calls) == 1


async def test_hook_default_keeps_policy_and_hears_exhaustion() -> None:
    clock = FakeClock(auto_advance=True)
    hook = ScriptedHook(RetryDecision.default())
    policy = make_policy(RetryConfig(max_retries=1, jitter=0.0), clock=clock, hook=hook)
    fn, _ = failing(upstream(502))
    with pytest.raises(errors.BadGateway):
        await policy.execute(OP, fn)
    assert clock.sleeps == [0.5]
    assert hook.exhausted == [("BadGateway", 2)]


async def test_hook_delay_never_sleeps_past_the_deadline() -> None:
    clock = FakeClock(auto_advance=True)
    policy = make_policy(clock=clock, hook=ScriptedHook(RetryDecision.retry(30.0)))
    op = Operation("e", "c", deadline=clock.now() + 10.0)
    fn, seen = failing(upstream(503), "ok")
    with pytest.raises(errors.ServiceUnavailable) as info:
        await policy.execute(op, fn)
    assert clock.sleeps == [] and len(seen) == 1
    assert info.value.retry_after == 30.0


async def test_a_failing_hook_falls_back_to_the_default() -> None:
    class Broken(RetryHook):
        def on_retry(self, attempt: int, error: errors.OpenAIError, next_delay: float) -> RetryDecision:
            raise RuntimeError("hook bug")

    clock = FakeClock(auto_advance=True)
    policy = make_policy(clock=clock, hook=Broken())
    fn, _ = failing(upstream(503), "ok")
    assert (await policy.execute(OP, fn))[0] == "ok"
    assert clock.sleeps == [0.5]


def test_decision_rejects_bad_delay() -> None:
    with pytest.raises(ValueError):
        RetryDecision.retry(-1.0)


# --- config ----------------------------------------------------------------------------------
def test_config_defaults_match_the_seed() -> None:
    cfg = RetryConfig()
    assert (cfg.max_retries, cfg.initial_backoff, cfg.max_backoff, cfg.backoff_multiplier, cfg.jitter) == (
        3,
        0.5,
        60.0,
        2.0,
        0.1,
    )
    assert cfg.retryable_status_codes == (408, 409, 429, 500, 502, 503, 504, 529)


def test_config_from_strings() -> None:
    cfg = retry_config(
        {
            "max_retries": "5",
            "initial_backoff": "250ms",
            "max_backoff": "1m",
            "backoff_multiplier": "1.5",
            "jitter": 0.2,
            "retryable_status_codes": "503, 429,500",
        }
    )
    assert cfg == RetryConfig(5, 0.25, 60.0, 1.5, 0.2, (429, 500, 503))
    assert retry_config({"retryable_status_codes": [502, "504"]}).retryable_status_codes == (
        502,
        504,
    )


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"max_retries": "-1"}, "retry.max_retries"),
        ({"max_retries": "three"}, "retry.max_retries"),
        ({"jitter": "1.5"}, "retry.jitter"),
        ({"backoff_multiplier": 0.5}, "retry.backoff_multiplier"),
        ({"initial_backoff": "2", "max_backoff": "1"}, "retry.max_backoff"),
        ({"initial_backoff": "soon"}, "retry.initial_backoff"),
        ({"retryable_status_codes": "429,999"}, "retry.retryable_status_codes"),
        ({"max_retry": 3}, "retry.max_retry"),
    ],
)
def test_config_errors_name_the_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(ValueError, match=f"^{key}: "):
        retry_config(data)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5", 0.5), ("250us", 0.00025)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "1x", "s", "1s2", "inf"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)
