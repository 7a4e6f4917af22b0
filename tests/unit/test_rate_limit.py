"""Per-credential token buckets, reserve/settle, header adjustment and the FIFO queue."""

from __future__ import annotations

import asyncio

import pytest
from openai_grpc_server import errors
from openai_grpc_server.config import rate_limit_config
from openai_grpc_server.resilience import (
    FakeClock,
    Operation,
    RateLimitConfig,
    RateLimitDecision,
    RateLimiter,
    RateLimitHeaders,
    RateLimitHook,
    RateLimitType,
)


def op(tokens: int = 0, *, deadline: float | None = None, credential: str = "tenant-a") -> Operation:
    return Operation("POST /chat/completions", credential, token_estimate=tokens, deadline=deadline)


def limiter(clock: FakeClock, hook: RateLimitHook | None = None, **config: object) -> RateLimiter:
    hits: list[tuple[str, str]] = []
    lim = RateLimiter(
        rate_limit_config(config),
        clock=clock,
        hook=hook,
        on_limited=lambda o, kind: hits.append((o.credential, kind)),
    )
    lim.hits = hits  # type: ignore[attr-defined]
    return lim


# --- buckets ---------------------------------------------------------------------------------
async def test_unlimited_by_default() -> None:
    clock = FakeClock()
    lim = RateLimiter(RateLimitConfig(), clock=clock)
    for _ in range(1000):
        res = await lim.acquire(op(10_000))
        res.settle(5)
    assert lim.levels("tenant-a") == {}


async def test_rpm_enforced_over_the_window() -> None:
    clock = FakeClock()
    lim = limiter(clock, requests_per_minute=3, queue_requests=False)
    for _ in range(3):
        await lim.acquire(op())
    with pytest.raises(errors.TooManyRequests) as info:
        await lim.acquire(op())
    err = info.value
    assert err.metadata["limit_type"] == "requests_per_minute"
    assert err.retry_after == pytest.approx(20.0)  # one request refills every 60/3 s
    assert err.upstream_status is None  # local, not OpenAI's
    assert "requests_per_minute" in err.message
    assert lim.hits == [("tenant-a", "requests_per_minute")]  # type: ignore[attr-defined]
    clock.advance(19.9)
    with pytest.raises(errors.TooManyRequests):
        await lim.acquire(op())
    clock.advance(0.1)
    await lim.acquire(op())


async def test_credentials_have_separate_buckets() -> None:
    clock = FakeClock()
    lim = limiter(clock, requests_per_minute=1, queue_requests=False)
    await lim.acquire(op(credential="a"))
    await lim.acquire(op(credential="b"))
    with pytest.raises(errors.TooManyRequests):
        await lim.acquire(op(credential="a"))


async def test_tpm_enforced_over_the_window() -> None:
    clock = FakeClock()
    lim = limiter(clock, tokens_per_minute=1200, queue_requests=False)  # refills 20 tokens/s
    await lim.acquire(op(1000))
    with pytest.raises(errors.TooManyRequests) as info:
        await lim.acquire(op(500))
    assert info.value.metadata["limit_type"] == "tokens_per_minute"
    assert info.value.retry_after == pytest.approx(15.0)  # (500 - 200) / 20
    clock.advance(15.0)
    await lim.acquire(op(500))
    assert lim.levels("tenant-a")["tokens_per_minute"] == pytest.approx(0.0)


async def test_daily_limits_refill_slowly() -> None:
    clock = FakeClock()
    lim = limiter(clock, requests_per_day=2, tokens_per_day=100, queue_requests=False)
    await lim.acquire(op(50))
    await lim.acquire(op(50))
    with pytest.raises(errors.TooManyRequests) as info:
        await lim.acquire(op(1))
    # Both day buckets are empty; the token one needs 1 token at 100/86400 per second.
    assert info.value.metadata["limit_type"] in {"requests_per_day", "tokens_per_day"}
    assert info.value.retry_after == pytest.approx(43_200.0)


async def test_request_larger_than_a_bucket_fails_at_once() -> None:
    clock = FakeClock()
    lim = limiter(clock, tokens_per_minute=1000)
    with pytest.raises(errors.TokenLimitExceeded) as info:
        await lim.acquire(op(1001))
    assert info.value.metadata["limit_type"] == "tokens_per_minute"
    assert lim.queued("tenant-a") == 0


# --- reserve / settle ------------------------------------------------------------------------
async def test_settle_returns_unused_tokens() -> None:
    clock = FakeClock()
    lim = limiter(clock, tokens_per_minute=1000, requests_per_minute=10)
    res = await lim.acquire(op(600))
    assert lim.levels("tenant-a") == {"requests_per_minute": 9, "tokens_per_minute": 400}
    res.settle(100)
    assert lim.levels("tenant-a") == {"requests_per_minute": 9, "tokens_per_minute": 900}
    res.settle(0)  # only the first settle counts
    res.release()
    assert lim.levels("tenant-a") == {"requests_per_minute": 9, "tokens_per_minute": 900}


async def test_settle_charges_extra_usage_as_debt() -> None:
    clock = FakeClock()
    lim = limiter(clock, tokens_per_minute=600, queue_requests=False)  # 10 tokens/s
    res = await lim.acquire(op(100))
    res.settle(700)  # the model wrote more than estimated
    assert lim.levels("tenant-a")["tokens_per_minute"] == pytest.approx(-100)
    with pytest.raises(errors.TooManyRequests) as info:
        await lim.acquire(op(0))  # even an estimate of 0 waits out the debt
    assert info.value.retry_after == pytest.approx(10.0)


async def test_release_gives_everything_back() -> None:
    clock = FakeClock()
    lim = limiter(clock, tokens_per_minute=1000, requests_per_minute=10)
    res = await lim.acquire(op(600))
    res.release()
    assert lim.levels("tenant-a") == {"requests_per_minute": 10, "tokens_per_minute": 1000}


async def test_release_wakes_the_queue() -> None:
    clock = FakeClock()
    lim = limiter(clock, tokens_per_minute=600)
    first = await lim.acquire(op(600))
    waiter = asyncio.create_task(lim.acquire(op(300)))
    await clock.run_for(0)
    assert not waiter.done()
    first.settle(200)  # 400 come back at once
    await clock.run_for(0)
    assert waiter.done()
    waiter.result().release()


# --- headers ---------------------------------------------------------------------------------
def test_headers_parse() -> None:
    parsed = RateLimitHeaders.from_headers(
        {
            "x-ratelimit-limit-requests": "60",
            "x-ratelimit-limit-tokens": "150000",
            "x-ratelimit-remaining-requests": "59",
            "X-RateLimit-Remaining-Tokens": "149984",
            "x-ratelimit-reset-requests": "1s",
            "x-ratelimit-reset-tokens": "6m0s",
        }
    )
    assert parsed == RateLimitHeaders(60, 150000, 59, 149984, 1.0, 360.0)
    assert RateLimitHeaders.from_headers({"content-type": "application/json"}) is None
    assert RateLimitHeaders.from_headers({"x-ratelimit-reset-tokens": "1h2m3.5s"}) == RateLimitHeaders(
        reset_tokens=3723.5
    )
    assert RateLimitHeaders.from_headers({"x-ratelimit-remaining-tokens": "lots"}) is None


async def test_headers_lower_the_buckets() -> None:
    clock = FakeClock()
    lim = limiter(clock, requests_per_minute=100, tokens_per_minute=10_000)
    lim.observe_headers(
        op(),
        {
            "x-ratelimit-remaining-requests": "5",
            "x-ratelimit-remaining-tokens": "20000",  # higher than ours: never raises the level
        },
    )
    assert lim.levels("tenant-a") == {"requests_per_minute": 5, "tokens_per_minute": 10_000}


async def test_headers_shrink_a_bucket_to_the_upstream_limit() -> None:
    clock = FakeClock()
    lim = limiter(clock, requests_per_minute=100, queue_requests=False)
    lim.observe_headers(op(), {"x-ratelimit-limit-requests": "30", "x-ratelimit-remaining-requests": "1"})
    await lim.acquire(op())
    with pytest.raises(errors.TooManyRequests) as info:
        await lim.acquire(op())
    assert info.value.retry_after == pytest.approx(2.0)  # 30 per minute


async def test_headers_teach_limits_that_were_not_configured() -> None:
    clock = FakeClock()
    lim = limiter(clock, queue_requests=False)
    await lim.acquire(op(10_000))  # unlimited so far
    lim.observe_headers(
        op(),
        {
            "x-ratelimit-limit-tokens": "6000",
            "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-reset-tokens": "6s",
        },
    )
    with pytest.raises(errors.TooManyRequests) as info:
        await lim.acquire(op(100))
    assert info.value.metadata["limit_type"] == "tokens_per_minute"
    # Empty until the upstream's reset (6 s), then 100 tokens at 100/s.
    assert info.value.retry_after == pytest.approx(7.0)


async def test_exhausted_upstream_bucket_waits_for_its_reset() -> None:
    clock = FakeClock()
    lim = limiter(clock, requests_per_minute=600, queue_requests=False)
    lim.observe_headers(op(), {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20ms"})
    with pytest.raises(errors.TooManyRequests) as info:
        await lim.acquire(op())
    assert info.value.retry_after == pytest.approx(0.12)  # 20 ms, then 1 request at 10/s


async def test_auto_adjust_off_ignores_headers_but_hook_still_hears() -> None:
    class Hook(RateLimitHook):
        def __init__(self) -> None:
            self.updates: list[RateLimitHeaders] = []

        def on_rate_limit_update(self, op: Operation, headers: RateLimitHeaders) -> None:
            self.updates.append(headers)

    clock = FakeClock()
    hook = Hook()
    lim = limiter(clock, hook, requests_per_minute=100, auto_adjust="false")
    lim.observe_headers(op(), {"x-ratelimit-remaining-requests": "0"})
    assert lim.levels("tenant-a") == {"requests_per_minute": 100}
    assert hook.updates == [RateLimitHeaders(remaining_requests=0)]


# --- queue -----------------------------------------------------------------------------------
async def test_queue_is_strict_fifo() -> None:
    clock = FakeClock()
    lim = limiter(clock, tokens_per_minute=600)  # 10 tokens/s
    await lim.acquire(op(600))
    order: list[str] = []

    async def go(name: str, tokens: int) -> None:
        res = await lim.acquire(op(tokens))
        order.append(f"{name}@{clock.now() - 1000:.0f}")
        res.settle(tokens)

    big = asyncio.create_task(go("big", 500))
    await clock.run_for(0)
    small = asyncio.create_task(go("small", 10))
    await clock.run_for(0)
    assert lim.queued("tenant-a") == 2
    await clock.run_for(49)
    assert order == []  # the small request did not overtake the big one
    await clock.run_for(1)
    assert order == ["big@50"]
    await clock.run_for(1)
    assert order == ["big@50", "small@51"]
    await asyncio.gather(big, small)


async def test_queue_overflow_gives_too_many_requests() -> None:
    clock = FakeClock()
    lim = limiter(clock, requests_per_minute=1, max_queue_size=1)
    await lim.acquire(op())
    queued = asyncio.create_task(lim.acquire(op()))
    await clock.run_for(0)
    with pytest.raises(errors.TooManyRequests) as info:
        await lim.acquire(op())
    assert "queue is full" in info.value.message
    assert info.value.metadata["limit_type"] == "requests_per_minute"
    assert info.value.retry_after == pytest.approx(120.0)  # after the one already waiting
    await clock.run_for(60)
    assert queued.done()


async def test_wait_beyond_the_deadline_fails_now() -> None:
    clock = FakeClock()
    lim = limiter(clock, tokens_per_minute=600)
    await lim.acquire(op(600))
    with pytest.raises(errors.TooManyRequests) as info:
        await lim.acquire(op(100, deadline=clock.now() + 5.0))
    assert info.value.retry_after == pytest.approx(10.0)
    assert "deadline" in info.value.message
    assert lim.queued("tenant-a") == 0
    assert clock.pending == 0  # it never slept


async def test_queued_request_leaves_when_its_deadline_becomes_unreachable() -> None:
    clock = FakeClock()
    lim = limiter(clock, tokens_per_minute=600)
    await lim.acquire(op(600))
    head = asyncio.create_task(lim.acquire(op(300)))  # ready at t+30
    await clock.run_for(0)
    late = asyncio.create_task(lim.acquire(op(100, deadline=clock.now() + 45.0)))  # ready at t+40
    await clock.run_for(0)
    assert lim.queued("tenant-a") == 2
    # The upstream says the key is exhausted for a while: the second request can no longer make it.
    lim.observe_headers(op(), {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "30s"})
    await clock.run_for(0)
    assert late.done()
    with pytest.raises(errors.TooManyRequests) as info:
        late.result()
    assert info.value.metadata["limit_type"] == "tokens_per_minute"
    assert lim.queued("tenant-a") == 1
    await clock.run_for(60)
    assert head.done()


async def test_queueing_off_rejects() -> None:
    clock = FakeClock()
    lim = limiter(clock, requests_per_minute=1, queue_requests=False)
    await lim.acquire(op())
    with pytest.raises(errors.TooManyRequests, match="queueing is disabled"):
        await lim.acquire(op())


async def test_cancelled_waiter_leaves_the_line() -> None:
    clock = FakeClock()
    lim = limiter(clock, tokens_per_minute=600)
    await lim.acquire(op(600))
    first = asyncio.create_task(lim.acquire(op(600)))
    await clock.run_for(0)
    second = asyncio.create_task(lim.acquire(op(10)))
    await clock.run_for(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert lim.queued("tenant-a") == 1
    await clock.run_for(1)
    assert second.done()  # no longer stuck behind the cancelled big request
    assert clock.pending == 0


# --- hook ------------------------------------------------------------------------------------
class Scripted(RateLimitHook):
    def __init__(self, *decisions: RateLimitDecision) -> None:
        self.decisions = list(decisions)
        self.calls: list[tuple[RateLimitType, float | None]] = []

    async def on_rate_limit(
        self, op: Operation, limit_type: RateLimitType, retry_after: float | None
    ) -> RateLimitDecision:
        self.calls.append((limit_type, retry_after))
        return self.decisions.pop(0) if self.decisions else RateLimitDecision.default()


async def test_hook_reject() -> None:
    clock = FakeClock()
    hook = Scripted(RateLimitDecision.reject())
    lim = limiter(clock, hook, requests_per_minute=1)
    await lim.acquire(op())
    with pytest.raises(errors.TooManyRequests, match="hook rejected"):
        await lim.acquire(op())
    ((kind, retry_after),) = hook.calls
    assert kind is RateLimitType.REQUESTS_PER_MINUTE
    assert retry_after == pytest.approx(60.0)


async def test_hook_queue_overrides_queueing_off() -> None:
    clock = FakeClock()
    lim = limiter(clock, Scripted(RateLimitDecision.queue()), requests_per_minute=1, queue_requests=False)
    await lim.acquire(op())
    task = asyncio.create_task(lim.acquire(op()))
    await clock.run_for(60)
    assert task.done() and task.exception() is None


async def test_hook_wait_sleeps_then_tries_again() -> None:
    clock = FakeClock()
    hook = Scripted(RateLimitDecision.wait(10.0), RateLimitDecision.reject())
    lim = limiter(clock, hook, requests_per_minute=6)  # one request every 10 s
    for _ in range(6):
        await lim.acquire(op())
    task = asyncio.create_task(lim.acquire(op()))
    await clock.run_for(10)
    assert task.done() and task.exception() is None
    assert len(hook.calls) == 1


# --- config ----------------------------------------------------------------------------------
def test_config_defaults_and_parsing() -> None:
    assert RateLimitConfig() == RateLimitConfig(
        None, None, None, None, True, True, 100, None, "local", 0.25, 1
    )
    cfg = rate_limit_config(
        {
            "requests_per_minute": "500",
            "tokens_per_minute": 30_000,
            "requests_per_day": "",
            "tokens_per_day": "unlimited",
            "auto_adjust": "no",
            "queue_requests": "1",
            "max_queue_size": "0",
        }
    )
    assert cfg == RateLimitConfig(500, 30_000, None, None, False, True, 0)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"requests_per_minute": "0"}, "rate_limit.requests_per_minute"),
        ({"tokens_per_minute": "-5"}, "rate_limit.tokens_per_minute"),
        ({"tokens_per_day": "1.5"}, "rate_limit.tokens_per_day"),
        ({"auto_adjust": "maybe"}, "rate_limit.auto_adjust"),
        ({"max_queue_size": "-1"}, "rate_limit.max_queue_size"),
        ({"rpm": "10"}, "rate_limit.rpm"),
        ({"redis_failure": "open"}, "rate_limit.redis_failure"),
        ({"redis_timeout": "0"}, "rate_limit.redis_timeout"),
        ({"replicas_hint": "0"}, "rate_limit.replicas_hint"),
        ({"redis_url": "http://redis:6379"}, "rate_limit.redis_url"),
    ],
)
def test_config_errors_name_the_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(ValueError, match=f"^{key}: "):
        rate_limit_config(data)


def test_shared_mode_settings_and_tenant_limits() -> None:
    cfg = rate_limit_config(
        {
            "requests_per_minute": "900",
            "tokens_per_day": "1000",
            "redis_url": "redis://:hunter2@redis:6379/1",
            "redis_failure": "Closed",
            "redis_timeout": "50ms",
            "replicas_hint": "4",
        }
    )
    assert (cfg.redis_failure, cfg.redis_timeout, cfg.replicas_hint) == ("closed", 0.05, 4)
    assert "hunter2" not in repr(cfg)  # the URL may hold Redis's password
    # The `local` fallback: each of 4 processes holds a quarter, never less than 1.
    share = cfg.divided(4)
    assert (share.requests_per_minute, share.tokens_per_day) == (225, 250)
    assert cfg.divided(5000).tokens_per_day == 1
    # A tenant's own limits replace the global ones key by key.
    mine = cfg.for_tenant({"requests_per_minute": 10, "tokens_per_minute": "unlimited"})
    assert (mine.requests_per_minute, mine.tokens_per_minute, mine.tokens_per_day) == (10, None, 1000)
    with pytest.raises(ValueError, match="unknown limit"):
        cfg.for_tenant({"rpm": 10})


async def test_tenants_get_their_own_limits_in_process() -> None:
    clock = FakeClock()
    base = RateLimitConfig(requests_per_minute=100, queue_requests=False)
    lim = RateLimiter(base, clock=clock, tenants={"small": base.for_tenant({"requests_per_minute": 1})})
    await lim.acquire(op(credential="small"))
    with pytest.raises(errors.TooManyRequests):
        await lim.acquire(op(credential="small"))
    for _ in range(5):
        await lim.acquire(op(credential="other"))
