"""Rate limits shared by every process and pod: the token buckets of `rate_limit.py` on Redis.

Same semantics as the in-process limiter, cluster-wide: per credential (tenant) buckets for
requests and tokens per minute and per day with continuous refill, an estimate reserved before
the call and settled with real usage after it, corrections from upstream `x-ratelimit-*`
headers, and a wait bounded by the caller's deadline and `max_queue_size`.

Each reserve and each settle is one Lua script run with EVALSHA (one round trip; calls issued
in the same event-loop turn share one pipeline). The script reads Redis's own clock (`TIME`),
so the gateways' clocks never matter. A reserve either takes 1 request + the estimate from
every bucket at once or takes nothing and answers how long refill alone needs. Calls that must
wait stand in this process's FIFO line (bounded by `max_queue_size`, never past the caller's
deadline); only its head asks Redis again, when that time is up, when this process gave
capacity back, or at least every 0.1 s (refunds of other replicas). Waiting calls hold
nothing in Redis: a bucket charged with full estimates while calls wait would admit far fewer
tokens than the limit once real usage settles them. Header corrections ride along with the
next script call of that credential instead of costing their own round trip.

Keys are `openai-grpc:rl:{<tenant>}` (a hash of the name when the name is not plain), one hash
per tenant; nothing secret is ever written.

When Redis is slow (each call is bounded by `redis_timeout` and the caller's deadline) or down,
the limiter leaves shared mode: `redis_failure: local` falls back to in-process buckets holding
`limit / replicas_hint`, `closed` rejects calls with UNAVAILABLE / RATE_LIMITER_UNAVAILABLE.
One WARNING per transition; a background probe with backoff (never the calls themselves) finds
Redis back and shared mode resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError

from openai_grpc_server import errors

from .clock import Clock, MonotonicClock, call_hook, fire_hook, notify
from .rate_limit import (
    _TOKEN_KINDS,
    _WINDOW_SECONDS,
    RateLimitConfig,
    RateLimitDecision,
    RateLimiter,
    RateLimitHeaders,
    RateLimitHook,
    RateLimitType,
    Reservation,
    WaitLine,
    decide,
    too_large,
    too_many,
)

if TYPE_CHECKING:
    from .operation import Operation

__all__ = ["SharedRateLimiter", "redis_key"]

log = logging.getLogger("openai_grpc_server.resilience")

KEY_PREFIX = "openai-grpc:rl:"
_PLAIN_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_POLL = 0.1  # seconds between a waiting head's looks at Redis (other replicas' refunds)
_POOL_SIZE = 32  # Redis connections per process
_PROBE_FIRST, _PROBE_MAX = 0.1, 5.0  # health probe backoff while Redis is away (seconds)

# Hash fields and wire names of the four buckets.
_CODE = {
    RateLimitType.REQUESTS_PER_MINUTE: "rpm",
    RateLimitType.TOKENS_PER_MINUTE: "tpm",
    RateLimitType.REQUESTS_PER_DAY: "rpd",
    RateLimitType.TOKENS_PER_DAY: "tpd",
}
_KIND = {code.encode(): kind for kind, code in _CODE.items()}

# ARGV: mode ("reserve" or "settle"), the buckets as
# "code,configured limit or 0,window seconds,amount;..." (amount: the cost to reserve, or what
# to give back), and upstream corrections as "code,configured,limit,remaining,reset;..." ("-"
# for a value not sent). Few, pre-formatted arguments: redis-py's per-argument encoding is most of
# its CPU per call. Fields per bucket: <code> = level, <code>:t = when (Redis TIME),
# <code>:u = the limit learned from x-ratelimit-limit-* (per-minute buckets).
_SCRIPT = """
local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local touched = false

local function load(kind, configured, window)
  local v = redis.call('HMGET', key, kind, kind .. ':t', kind .. ':u')
  local cap = nil
  if configured > 0 then cap = configured end
  local learned = tonumber(v[3])
  if learned and learned > 0 and window == 60 then
    if cap then cap = math.min(cap, learned) else cap = learned end
  end
  if not cap then return nil end
  local rate = cap / window
  local level, ts = tonumber(v[1]), tonumber(v[2])
  if not level then
    level = cap
  elseif not ts then
    -- A level without its time (set by hand): refill counts from now.
    redis.call('HSET', key, kind .. ':t', string.format('%.6f', now))
    touched = true
  elseif now > ts then
    level = level + (now - ts) * rate
  end
  return math.min(level, cap), cap, rate
end

local function save(kind, level)
  redis.call('HSET', key, kind, string.format('%.6f', level), kind .. ':t', string.format('%.6f', now))
  touched = true
end

local function finish(reply)
  if touched then redis.call('EXPIRE', key, 172800) end
  return reply
end

local function fields(text)
  local out = {}
  for part in string.gmatch(text, '[^,]+') do out[#out + 1] = part end
  return out
end

local buckets = {}
for group in string.gmatch(ARGV[2], '[^;]+') do
  local f = fields(group)
  buckets[#buckets + 1] = {f[1], tonumber(f[2]), tonumber(f[3]), tonumber(f[4])}
end

-- Upstream corrections: a bucket is never fuller than the upstream says is left.
local function correct()
  for group in string.gmatch(ARGV[3] or '', '[^;]+') do
    local f = fields(group)
    local kind, limit, remaining, reset = f[1], tonumber(f[3]), tonumber(f[4]), tonumber(f[5])
    if limit and limit > 0 then
      redis.call('HSET', key, kind .. ':u', limit)
      touched = true
    end
    local level, cap, rate = load(kind, tonumber(f[2]), 60)
    if level then
      if remaining then
        level = math.min(level, remaining)
        if remaining == 0 and reset and reset > 0 then level = math.min(level, -reset * rate) end
      end
      save(kind, level)
    end
  end
end

if ARGV[1] == 'settle' then
  -- Give back first, then correct: the upstream's count already holds this call's real usage.
  for _, b in ipairs(buckets) do
    local level, cap = load(b[1], b[2], b[3])
    if level then save(b[1], math.min(cap, level + b[4])) end
  end
  correct()
  return finish({'ok'})
end

correct()
local wait, binding, bcap, take = 0, '', 0, {}
for _, b in ipairs(buckets) do
  local kind, amount = b[1], b[4]
  local level, cap, rate = load(kind, b[2], b[3])
  if level then
    if amount > cap then return finish({'too_large', kind, tostring(cap), tostring(cap)}) end
    local missing = amount - level
    if missing > 1e-9 and missing / rate > wait then wait, binding, bcap = missing / rate, kind, cap end
    take[#take + 1] = {kind, level - amount}
  end
end
if wait > 0 then
  return finish({'wait', binding, string.format('%.6f', wait), tostring(bcap)})
end
local reply = {'ok', binding, string.format('%.6f', wait), tostring(bcap)}
for _, k in ipairs(take) do
  save(k[1], k[2])
  reply[#reply + 1] = k[1]
end
return finish(reply)
"""
_SCRIPT_SHA = hashlib.sha1(_SCRIPT.encode()).hexdigest()


def redis_key(credential: str) -> str:
    """The hash holding one tenant's buckets: its name when plain, else a hash of it."""
    name = (
        credential
        if _PLAIN_NAME.fullmatch(credential)
        else "h-" + hashlib.sha256(credential.encode()).hexdigest()[:32]
    )
    return f"{KEY_PREFIX}{{{name}}}"  # {…}: a Redis Cluster hash tag, one slot per tenant


class StoreDown(Exception):
    """Redis did not answer in time or at all (the limiter falls back)."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _TenantBuckets(WaitLine):
    """One credential's buckets on Redis: builds script arguments, refunds in the background,
    and this process's line of calls waiting for them."""

    def __init__(self, owner: SharedRateLimiter, credential: str, config: RateLimitConfig) -> None:
        super().__init__()
        self.owner = owner
        self.credential = credential
        self.key = redis_key(credential)
        self.config = config
        # Per-minute kinds always travel (a bucket learned from headers applies even when the
        # config leaves it unlimited); per-day kinds only when configured.
        self.kinds = [
            kind
            for kind in _WINDOW_SECONDS
            if config.limit(kind) is not None or (_WINDOW_SECONDS[kind] == 60.0 and config.auto_adjust)
        ]
        self.static = {k: f"{_CODE[k]},{config.limit(k) or 0},{_WINDOW_SECONDS[k]:.0f}" for k in self.kinds}
        self.binding = RateLimitType.REQUESTS_PER_MINUTE  # the limit that last made a call wait

    def groups(self, amounts: Mapping[RateLimitType, float]) -> str:
        return ";".join(f"{self.static[kind]},{amount}" for kind, amount in amounts.items())

    def costs(self, token_estimate: int) -> dict[RateLimitType, float]:
        return {k: float(max(0, token_estimate)) if k in _TOKEN_KINDS else 1.0 for k in self.kinds}

    def give_back(self, amounts: Mapping[RateLimitType, float], now: float) -> None:
        """Reservation refund or settle delta: one script call, off the request path."""
        if any(amounts.values()) or self.credential in self.owner.pending:
            self.owner.background(self.owner.settle(self, amounts))


class SharedRateLimiter:
    """`RateLimiter`'s interface over Redis, with an in-process fallback."""

    def __init__(
        self,
        config: RateLimitConfig,
        *,
        clock: Clock | None = None,
        hook: RateLimitHook | None = None,
        on_limited: Callable[[Operation, str], None] | None = None,
        on_decision: Callable[[Operation, str, str], None] | None = None,
        on_round_trip: Callable[[float], None] | None = None,
        on_store_state: Callable[[str], None] | None = None,
        tenants: Mapping[str, RateLimitConfig] | None = None,
        client: aioredis.Redis | None = None,
    ) -> None:
        assert config.redis_url or client is not None
        self.config = config
        self._clock = clock or MonotonicClock()
        self._hook = hook
        self._on_limited = on_limited
        self._on_decision = on_decision
        self._on_round_trip = on_round_trip
        self._on_store_state = on_store_state
        self._tenants = dict(tenants or {})
        self._buckets: dict[str, _TenantBuckets] = {}
        self.pending: dict[str, RateLimitHeaders] = {}  # header corrections for the next call
        self.redis = client or aioredis.Redis.from_url(
            config.redis_url or "",
            max_connections=_POOL_SIZE,
            # Each batch is bounded as a whole (`redis_timeout`): redis-py's own per-read
            # timeout would only add CPU to every call.
            socket_timeout=None,
            socket_connect_timeout=config.redis_timeout,
            # One immediate retry on a broken pooled connection (Redis restarted); the call's
            # own timeout still bounds it. redis-py's default backs off for seconds.
            retry=Retry(NoBackoff(), 1),
            # No CLIENT SETINFO round trips on every new connection.
            driver_info=None,
        )
        # A few connections carry any load (Redis runs one script at a time anyway): batches
        # queue for one here (redis-py's pool would fail, and its blocking pool costs several
        # times the CPU of the call itself).
        self._slots = asyncio.Semaphore(_POOL_SIZE)
        self._batch: list[tuple[str, list[Any], asyncio.Future[list[Any]]]] = []
        # The fallback: each process holds its share of the limits while Redis is away.
        self.local = RateLimiter(
            config.divided(config.replicas_hint),
            clock=self._clock,
            hook=hook,
            on_limited=on_limited,
            on_decision=on_decision,
            tenants={n: c.divided(config.replicas_hint) for n, c in self._tenants.items()},
        )
        self.shared = True
        self._probe: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._retry_at = 0.0  # when the probe tries Redis next (RetryInfo while `closed`)
        self._last_ok = 0.0  # perf_counter of the last answer from Redis

    async def start(self) -> None:
        """Connect and load the script before the first call (the first connection of a process
        costs redis-py ~0.1 s of set-up). Redis down at start: the fallback applies until it is up."""
        try:
            async with asyncio.timeout(max(2.0, self.config.redis_timeout)):
                await self.redis.script_load(_SCRIPT)
        except (RedisError, OSError, TimeoutError) as exc:
            self._down(exc)
            return
        self._last_ok = time.perf_counter()
        log.info("rate limits shared on Redis", extra={"redis": self._where()})

    def _where(self) -> str:
        """host:port (or socket path) of Redis, never the password the URL may hold."""
        kwargs = self.redis.connection_pool.connection_kwargs
        return str(kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}")

    # --- the request path ---------------------------------------------------------------------
    async def acquire(self, op: Operation) -> Reservation:
        if self.shared:
            buckets = self._buckets_for(op.credential)
            if not buckets.kinds:
                return Reservation(None, {}, self._clock, op.token_estimate)
            try:
                return await self._acquire_shared(op, buckets)
            except StoreDown:
                pass  # Redis failed this call: it takes the fallback below
        if self.config.redis_failure == "closed":
            err = errors.RateLimiterUnavailable(
                "the shared rate limiter (Redis) is unreachable and rate_limit.redis_failure is "
                "'closed': calls are refused until it is back",
                retry_after=max(0.1, self._retry_at - time.monotonic()),
            )
            decide(self._on_decision, op, "rejected", "limiter_unavailable")
            raise err
        return await self.local.acquire(op)

    async def _acquire_shared(self, op: Operation, buckets: _TenantBuckets) -> Reservation:
        costs = buckets.costs(op.token_estimate)
        kind = buckets.binding  # what holds the line up, as its head last heard from Redis
        if not buckets.queue:
            attempt = await self._try(op, buckets, costs)
            if isinstance(attempt, Reservation):
                decide(self._on_decision, op, "admitted", "")
                return attempt
            kind, capacity, wait = attempt
            self._limited(op, kind)
            action = "default"
            if self._hook is not None:
                decision = await call_hook(
                    self._hook.on_rate_limit, op, kind, wait, default=RateLimitDecision.default()
                )
                action = decision.action  # "wait" and "queue" both join the line here
                if action == "reject":
                    raise self._reject(op, kind, capacity, wait, "the rate-limit hook rejected the request")
            if not (self.config.queue_requests or action in ("queue", "wait")):
                raise self._reject(op, kind, capacity, wait, "queueing is disabled")
            if op.deadline is not None and self._clock.now() + wait >= op.deadline:
                raise self._reject(op, kind, capacity, wait, "the call's deadline ends before then")
        elif not self.config.queue_requests:
            raise self._reject(op, kind, None, 0.0, "queueing is disabled")
        if len(buckets.queue) >= self.config.max_queue_size:
            raise self._reject(op, kind, None, 0.0, f"the wait queue is full ({len(buckets.queue)} waiting)")
        decide(self._on_decision, op, "queued", kind.value)
        return await self._wait_in_line(op, buckets, costs, kind)

    async def _try(
        self, op: Operation, buckets: _TenantBuckets, costs: dict[RateLimitType, float]
    ) -> Reservation | tuple[RateLimitType, float, float]:
        """Reserve if it fits now (one script call); else the binding limit, its size and the
        seconds until refill alone would make room."""
        reply = await self._run(op, buckets, "reserve", costs)
        outcome, kind = _text(reply[0]), _KIND.get(reply[1], RateLimitType.REQUESTS_PER_MINUTE)
        if outcome == "too_large":
            decide(self._on_decision, op, "rejected", kind.value)
            raise too_large(kind, costs[kind], float(reply[3]))
        if outcome == "wait":
            buckets.binding = kind
            return kind, float(reply[3]), float(reply[2])
        return Reservation(
            buckets, {_KIND[k]: costs[_KIND[k]] for k in reply[4:]}, self._clock, op.token_estimate
        )

    async def _wait_in_line(
        self, op: Operation, buckets: _TenantBuckets, costs: dict[RateLimitType, float], kind: RateLimitType
    ) -> Reservation:
        """This process's FIFO in front of Redis: only the head asks Redis, when refill (or a
        refund from this process) may have made room; the others wait for the line to move.
        Waiting calls hold nothing in Redis, so refunds serve whoever is next, cluster-wide."""
        waiter = object()
        buckets.queue.append(waiter)
        capacity: float | None = None
        wait = 0.0
        try:
            while True:
                if not self.shared:
                    raise StoreDown  # the fallback takes over this call
                now = self._clock.now()
                timeout: float | None = None
                if buckets.queue[0] is waiter:
                    attempt = await self._try(op, buckets, costs)
                    if isinstance(attempt, Reservation):
                        buckets.queue.popleft()
                        buckets.notify()  # the next in line becomes head
                        decide(self._on_decision, op, "admitted", "")
                        return attempt
                    kind, capacity, wait = attempt
                    now = self._clock.now()
                    if op.deadline is not None and now + wait >= op.deadline:
                        raise self._reject(op, kind, capacity, wait, "the call's deadline ends before then")
                    # Refunds from other replicas are not signalled: look again at least every _POLL.
                    timeout = min(wait, _POLL)
                if op.deadline is not None:
                    if now >= op.deadline:
                        raise self._reject(op, kind, capacity, wait, "the call's deadline ends before then")
                    timeout = min(math.inf if timeout is None else timeout, op.deadline - now)
                await buckets.wait_change(self._clock, timeout)
        finally:
            if waiter in buckets.queue:  # rejected, cancelled or fell back: let the line move
                buckets.queue.remove(waiter)
                buckets.notify()

    def _reject(
        self, op: Operation, kind: RateLimitType, capacity: float | None, wait: float, why: str
    ) -> errors.TooManyRequests:
        decide(self._on_decision, op, "rejected", kind.value)
        return too_many(kind, capacity, wait, why)

    def _limited(self, op: Operation, kind: RateLimitType) -> None:
        if self._on_limited is not None:
            notify(self._on_limited, op, kind.value)

    def observe_headers(self, op: Operation, headers: Mapping[str, str]) -> RateLimitHeaders | None:
        """Upstream `x-ratelimit-*` headers: sent with this credential's next script call."""
        parsed = RateLimitHeaders.from_headers(headers)
        if parsed is None:
            return None
        if self._hook is not None:
            fire_hook(self._hook.on_rate_limit_update, op, parsed)
        if self.config.auto_adjust:
            self.pending[op.credential] = parsed
            self.local.observe_headers(op, headers)  # the fallback learns too
        return parsed

    # --- Redis --------------------------------------------------------------------------------
    def _buckets_for(self, credential: str) -> _TenantBuckets:
        buckets = self._buckets.get(credential)
        if buckets is None:
            config = self._tenants.get(credential, self.config)
            buckets = self._buckets[credential] = _TenantBuckets(self, credential, config)
        return buckets

    def _corrections(self, buckets: _TenantBuckets) -> str:
        parsed = self.pending.pop(buckets.credential, None)
        if parsed is None:
            return ""
        groups = []
        rpm, tpm = RateLimitType.REQUESTS_PER_MINUTE, RateLimitType.TOKENS_PER_MINUTE
        for kind, limit, remaining, reset in (
            (rpm, parsed.limit_requests, parsed.remaining_requests, parsed.reset_requests),
            (tpm, parsed.limit_tokens, parsed.remaining_tokens, parsed.reset_tokens),
        ):
            if limit is not None or remaining is not None:
                values = (limit, remaining, reset)
                groups.append(
                    f"{_CODE[kind]},{buckets.config.limit(kind) or 0},"
                    + ",".join("-" if v is None else str(v) for v in values)
                )
        return ";".join(groups)

    async def _run(
        self,
        op: Operation | None,
        buckets: _TenantBuckets,
        mode: str,
        amounts: Mapping[RateLimitType, float],
    ) -> list[Any]:
        """One script call, bounded by `redis_timeout` and the caller's deadline."""
        args = [mode, buckets.groups(amounts), self._corrections(buckets)]
        limit = self.config.redis_timeout
        if op is not None and op.deadline is not None:
            left = op.deadline - self._clock.now()
            if left <= 0:
                raise errors.Timeout("the call's deadline passed before the shared rate limiter answered")
            limit = min(limit, left)
        started = time.perf_counter()
        fut = self._submit(buckets.key, args)
        try:
            if limit < self.config.redis_timeout:
                async with asyncio.timeout(limit):
                    reply = await asyncio.shield(fut)
            else:
                reply = await fut  # the batch's own timeout bounds it
        except ResponseError:
            log.exception("the shared rate limiter's script failed")
            raise
        except (RedisError, OSError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                # The script may still run: a booking nobody waits for goes back.
                fut.add_done_callback(
                    lambda f: self._abandoned(f, buckets, amounts if mode == "reserve" else {})
                )
                if limit < self.config.redis_timeout:
                    # The caller's deadline cut the call short: not Redis's fault.
                    raise errors.Timeout(
                        "the call's deadline passed while the shared rate limiter answered"
                    ) from exc
                if self._last_ok > started:
                    # Another call got its answer meanwhile: Redis is up, this call was slowed
                    # by a busy event loop. It alone takes the fallback.
                    raise StoreDown from exc
            self._down(exc)
            raise StoreDown from exc
        self._last_ok = time.perf_counter()
        if self._on_round_trip is not None:
            notify(self._on_round_trip, self._last_ok - started)
        return reply

    def _abandoned(
        self, fut: asyncio.Future[list[Any]], buckets: _TenantBuckets, amounts: Mapping[RateLimitType, float]
    ) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        reply = fut.result()
        if amounts and _text(reply[0]) == "ok":
            buckets.give_back({_KIND[k]: amounts[_KIND[k]] for k in reply[4:]}, 0.0)

    # Calls issued in the same event-loop turn share one pipeline: one round trip and a fraction
    # of redis-py's per-command CPU. Each script still runs atomically on its own.
    def _submit(self, key: str, args: list[Any]) -> asyncio.Future[list[Any]]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Any]] = loop.create_future()
        self._batch.append((key, args, fut))
        if len(self._batch) == 1:
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        self.background(self._send(batch))

    async def _send(self, batch: list[tuple[str, list[Any], asyncio.Future[list[Any]]]]) -> None:
        try:
            async with asyncio.timeout(self.config.redis_timeout), self._slots:
                replies = await self._pipeline(batch)
                missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
                if missing:  # first use, or Redis restarted and lost its scripts
                    await self.redis.script_load(_SCRIPT)
                    for i, reply in zip(
                        missing, await self._pipeline([batch[i] for i in missing]), strict=True
                    ):
                        replies[i] = reply
        except (RedisError, OSError, TimeoutError) as exc:
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, _, fut), reply in zip(batch, replies, strict=True):
            if fut.done():
                continue
            if isinstance(reply, Exception):
                fut.set_exception(reply)
            else:
                fut.set_result(list(reply))

    async def _pipeline(self, batch: list[tuple[str, list[Any], asyncio.Future[list[Any]]]]) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for key, args, _ in batch:
            pipe.evalsha(_SCRIPT_SHA, 1, key, *args)
        return list(await pipe.execute(raise_on_error=False))

    async def settle(self, buckets: _TenantBuckets, amounts: Mapping[RateLimitType, float]) -> None:
        if not self.shared:
            return  # Redis is away: this refund is lost (the bucket was charged the estimate)
        with contextlib.suppress(StoreDown):  # marked down; the refund is lost with it
            await self._run(None, buckets, "settle", amounts)
        buckets.notify()  # capacity came back: this process's head of line tries again

    def background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # keep a reference: the loop only holds weak ones
        task.add_done_callback(self._tasks.discard)

    # --- fallback and recovery ------------------------------------------------------------------
    def _down(self, exc: BaseException) -> None:
        if not self.shared:
            return
        self.shared = False
        mode = self.config.redis_failure
        log.warning(
            "shared rate limiter unreachable: %s",
            "using in-process limits" if mode == "local" else "refusing calls (redis_failure: closed)",
            extra={
                "error": type(exc).__name__,
                "redis": self._where(),
                "mode": mode,
                "replicas_hint": self.config.replicas_hint,
            },
        )
        if self._on_store_state is not None:
            notify(self._on_store_state, mode)
        self._retry_at = time.monotonic() + _PROBE_FIRST
        self._probe = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        """Probe Redis with backoff until it answers, then go back to the shared buckets."""
        delay = _PROBE_FIRST
        while True:
            self._retry_at = time.monotonic() + delay
            await self._clock.sleep(delay)
            try:
                async with asyncio.timeout(self.config.redis_timeout):
                    await self.redis.ping()
            except (RedisError, OSError, TimeoutError):
                delay = min(delay * 2, _PROBE_MAX)
                continue
            self.shared = True
            log.warning("shared rate limiter reachable again: limits are shared across replicas")
            if self._on_store_state is not None:
                notify(self._on_store_state, "shared")
            return

    async def aclose(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.config.redis_timeout * 2)
        await self.redis.aclose()
