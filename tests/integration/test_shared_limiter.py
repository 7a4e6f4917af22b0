"""The shared limiter against a real Redis (Debian's redis-server on a free port): several
limiter instances stand for several gateway processes sharing one Redis."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import redis.asyncio as aioredis
from openai_grpc_server import errors
from openai_grpc_server.config import rate_limit_config
from openai_grpc_server.fake_upstream import FakeUpstream
from openai_grpc_server.resilience import Operation, RateLimitConfig
from openai_grpc_server.resilience.shared_limit import _KIND, KEY_PREFIX, SharedRateLimiter, redis_key
from openai_grpc_server.telemetry import Telemetry
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from tests.support.calls import call_failing
from tests.support.gateway import settings_for, start_gateway, stop_gateway
from tests.support.metrics import points_of
from tests.support.redis_server import RedisServer, needs_redis

pytestmark = needs_redis


class Events:
    def __init__(self) -> None:
        self.decisions: list[tuple[str, str]] = []
        self.states: list[str] = []
        self.round_trips = 0

    def kwargs(self) -> dict[str, Any]:
        return {
            "on_decision": lambda op, outcome, kind: self.decisions.append((outcome, kind)),
            "on_store_state": self.states.append,
            "on_round_trip": lambda s: setattr(self, "round_trips", self.round_trips + 1),
        }


def limiter(url: str, events: Events | None = None, tenants: dict[str, Any] | None = None, **config: Any):  # type: ignore[no-untyped-def]
    cfg = rate_limit_config({"redis_url": url, **config})
    return SharedRateLimiter(
        cfg,
        tenants={k: cfg.for_tenant(v) for k, v in (tenants or {}).items()},
        **(events.kwargs() if events else {}),
    )


def op(tokens: int = 0, credential: str = "team-a", deadline: float | None = None) -> Operation:
    return Operation("POST /chat/completions", credential, token_estimate=tokens, deadline=deadline)


async def levels(client: aioredis.Redis, credential: str) -> dict[str, float]:
    raw = await client.hgetall(redis_key(credential))
    return {_KIND[k].value: float(v) for k, v in raw.items() if isinstance(k, bytes) and b":" not in k}


async def settled(lim: SharedRateLimiter) -> None:
    """Wait for the background settle calls (they are fire-and-forget on the request path)."""
    while lim._tasks:
        await asyncio.wait(set(lim._tasks))


async def test_two_processes_share_the_request_bucket(
    redis_server: RedisServer, store: aioredis.Redis
) -> None:
    a, b = (
        limiter(redis_server.url, requests_per_minute=3, queue_requests=False),
        limiter(redis_server.url, requests_per_minute=3, queue_requests=False),
    )
    await a.acquire(op())
    await b.acquire(op())
    await a.acquire(op())
    with pytest.raises(errors.TooManyRequests) as info:
        await b.acquire(op())
    assert info.value.metadata == {"limit_type": "requests_per_minute", "limit": "3"}
    assert 19 < (info.value.retry_after or 0) <= 20  # one request refills every 20 s
    await a.aclose()
    await b.aclose()


async def test_estimate_reserved_then_settled_with_usage(
    redis_server: RedisServer, store: aioredis.Redis
) -> None:
    lim = limiter(redis_server.url, tokens_per_minute=10_000)
    reservation = await lim.acquire(op(tokens=4_000))
    assert (await levels(store, "team-a"))["tokens_per_minute"] == pytest.approx(6_000, abs=5)
    reservation.settle(1_000)
    await settled(lim)
    assert (await levels(store, "team-a"))["tokens_per_minute"] == pytest.approx(9_000, abs=5)
    released = await lim.acquire(op(tokens=2_000))
    released.release()  # cancelled before the upstream saw it: everything comes back
    await settled(lim)
    assert (await levels(store, "team-a"))["tokens_per_minute"] == pytest.approx(9_000, abs=5)
    await lim.aclose()


async def test_waiters_go_in_arrival_order_within_their_deadline(
    redis_server: RedisServer, store: aioredis.Redis
) -> None:
    # 600/min = one every 0.1 s once the bucket is empty.
    events = Events()
    lim = limiter(redis_server.url, events, requests_per_minute=600)
    await store.hset(redis_key("team-a"), mapping={"rpm": "0"})
    order: list[int] = []

    async def one(n: int) -> None:
        await lim.acquire(op())
        order.append(n)

    tasks = []
    for n in range(5):
        tasks.append(asyncio.ensure_future(one(n)))
        for _ in range(1000):  # n joins the line before n + 1 arrives
            if len(lim._buckets_for("team-a").queue) > n or order:
                break
            await asyncio.sleep(0.001)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    assert events.decisions.count(("queued", "requests_per_minute")) == 5
    assert events.decisions.count(("admitted", "")) == 5
    # Waiting holds nothing in Redis; a wait that would outlive the caller's deadline fails now.
    await store.hset(redis_key("team-a"), mapping={"rpm": "0"})
    with pytest.raises(errors.TooManyRequests, match="deadline"):
        await lim.acquire(op(deadline=lim._clock.now() + 0.05))
    assert (await levels(store, "team-a"))["requests_per_minute"] >= 0
    await lim.aclose()


async def test_cancelled_waiter_leaves_the_line(redis_server: RedisServer, store: aioredis.Redis) -> None:
    lim = limiter(redis_server.url, requests_per_minute=60)  # one a second
    await store.hset(redis_key("team-a"), mapping={"rpm": "0"})
    first = asyncio.ensure_future(lim.acquire(op()))
    second = asyncio.ensure_future(lim.acquire(op()))
    await asyncio.sleep(0.1)
    assert len(lim._buckets_for("team-a").queue) == 2
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert len(lim._buckets_for("team-a").queue) == 1
    await second  # the line moved: the second call goes when its capacity is there
    assert not lim._buckets_for("team-a").queue
    assert (await levels(store, "team-a"))["requests_per_minute"] == pytest.approx(0, abs=0.2)
    await lim.aclose()


async def test_too_large_and_queue_bound(redis_server: RedisServer, store: aioredis.Redis) -> None:
    lim = limiter(redis_server.url, tokens_per_minute=1_000, max_queue_size=1)
    with pytest.raises(errors.TokenLimitExceeded):
        await lim.acquire(op(tokens=1_001))
    await lim.acquire(op(tokens=1_000))
    waiting = asyncio.ensure_future(lim.acquire(op(tokens=100)))  # waits ~6 s for refill
    await asyncio.sleep(0.05)
    with pytest.raises(errors.TooManyRequests, match="queue is full"):
        await lim.acquire(op(tokens=100))
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await lim.aclose()


async def test_upstream_headers_correct_the_shared_bucket(
    redis_server: RedisServer, store: aioredis.Redis
) -> None:
    a = limiter(redis_server.url, requests_per_minute=1_000, queue_requests=False)
    b = limiter(redis_server.url, requests_per_minute=1_000, queue_requests=False)
    first = await a.acquire(op())
    a.observe_headers(op(), {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "30s"})
    first.settle(10)
    await settled(a)
    # Another process sees the upstream's word: nothing left until the reset.
    with pytest.raises(errors.TooManyRequests) as info:
        await b.acquire(op())
    assert (info.value.retry_after or 0) > 29
    # A learned limit below the configured one shrinks the bucket for everyone.
    c = limiter(redis_server.url, tokens_per_minute=None)
    got = await c.acquire(op(credential="team-b"))
    c.observe_headers(op(credential="team-b"), {"x-ratelimit-limit-tokens": "500"})
    got.settle(0)
    await settled(c)
    with pytest.raises(errors.TokenLimitExceeded):
        await c.acquire(op(tokens=501, credential="team-b"))
    for lim in (a, b, c):
        await lim.aclose()


async def test_tenants_never_share_a_bucket(redis_server: RedisServer, store: aioredis.Redis) -> None:
    lim = limiter(
        redis_server.url,
        requests_per_minute=100,
        queue_requests=False,
        tenants={"team-a": {"requests_per_minute": 2}, "team b/ünïcode": {"tokens_per_minute": 50}},
    )
    await lim.acquire(op())
    await lim.acquire(op())
    with pytest.raises(errors.TooManyRequests):
        await lim.acquire(op())  # team-a's own 2/min
    for _ in range(3):
        await lim.acquire(op(tokens=10, credential="team b/ünïcode"))  # its own bucket, 100/min
    keys = sorted([k async for k in store.scan_iter(match="*")])
    assert keys == sorted([redis_key("team-a").encode(), redis_key("team b/ünïcode").encode()])
    assert all(k.startswith(KEY_PREFIX.encode()) for k in keys)
    assert b"team b" not in keys[0] + keys[1]  # an unusual name is hashed
    fields = {k.decode(): await store.hgetall(k) for k in keys}
    assert set(fields[redis_key("team-a")]) == {b"rpm", b"rpm:t"}
    assert set(fields[redis_key("team b/ünïcode")]) == {b"rpm", b"rpm:t", b"tpm", b"tpm:t"}
    assert (await levels(store, "team b/ünïcode"))["tokens_per_minute"] == pytest.approx(20, abs=1)
    await lim.aclose()


async def test_redis_down_local_fallback_then_back_to_shared(
    redis_server: RedisServer, store: aioredis.Redis
) -> None:
    events = Events()
    lim = limiter(redis_server.url, events, requests_per_minute=4, replicas_hint=2, queue_requests=False)
    await lim.acquire(op())
    redis_server.stop()
    # Redis gone: in-process buckets holding 4 / 2 = 2, and no call fails because of Redis.
    await lim.acquire(op())
    await lim.acquire(op())
    with pytest.raises(errors.TooManyRequests):
        await lim.acquire(op())
    assert not lim.shared
    assert events.states == ["local"]
    redis_server.start()
    for _ in range(100):
        if lim.shared:
            break
        await asyncio.sleep(0.05)
    assert lim.shared and events.states == ["local", "shared"]
    await store.connection_pool.disconnect()  # the test's own client: connections from before the restart
    await lim.acquire(op())  # shared again (a fresh Redis: a full bucket)
    assert (await levels(store, "team-a"))["requests_per_minute"] == pytest.approx(3, abs=0.1)
    await lim.aclose()


async def test_redis_down_closed_rejects_unavailable_then_recovers(
    redis_server: RedisServer, store: aioredis.Redis
) -> None:
    lim = limiter(redis_server.url, requests_per_minute=100, redis_failure="closed")
    await lim.acquire(op())
    redis_server.stop()
    for _ in range(2):
        with pytest.raises(errors.RateLimiterUnavailable) as info:
            await lim.acquire(op())
        assert info.value.reason == "RATE_LIMITER_UNAVAILABLE"
        assert info.value.retry_after is not None
    redis_server.start()
    for _ in range(100):
        if lim.shared:
            break
        await asyncio.sleep(0.05)
    await lim.acquire(op())
    await lim.aclose()


async def test_gateway_reports_decisions_round_trips_and_fallback(
    redis_server: RedisServer, store: aioredis.Redis, fake: FakeUpstream
) -> None:
    fake.reset()
    reader = InMemoryMetricReader()
    telemetry = Telemetry(meter_provider=MeterProvider(metric_readers=[reader]))
    limits = RateLimitConfig(requests_per_minute=2, queue_requests=False, redis_url=redis_server.url)
    gw = await start_gateway(settings_for(fake.base_url, rate_limit=limits), telemetry)
    try:
        for _ in range(2):
            await gw.unary("ListModels")(gw.request("ListModels"), timeout=5)
        failure = await call_failing(gw, "ListModels", gw.request("ListModels"))
        assert failure.info.reason == "RATE_LIMITED"
        decisions = {
            (p.attributes["decision"], p.attributes["limit_type"]): p.value
            for p in points_of(reader, "openai_rate_limit_decisions_total")
        }
        assert decisions == {("admitted", ""): 2, ("rejected", "requests_per_minute"): 1}
        [trips] = points_of(reader, "openai_rate_limit_redis_duration_seconds")
        assert trips.count >= 3
        redis_server.stop()
        await gw.unary("ListModels")(gw.request("ListModels"), timeout=5)  # local fallback
        [state] = points_of(reader, "openai_rate_limit_fallback")
        assert state.value == 1
    finally:
        redis_server.start()
        await stop_gateway(gw)


async def test_redis_down_at_start_and_its_password_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="openai_grpc_server.resilience")
    lim = limiter("redis://:s3cret-pass@127.0.0.1:1/0", requests_per_minute=10)  # nothing listens
    assert "s3cret" not in repr(lim.config)
    await lim.start()  # the gateway still starts: the fallback applies until Redis answers
    assert not lim.shared
    await lim.acquire(op())
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.__dict__["redis"] == "127.0.0.1:1"
    for record in caplog.records:
        assert "s3cret" not in record.getMessage() + repr(record.__dict__)
    await lim.aclose()
