"""Local rate limiting: token buckets per credential, a reserve/settle cycle, and a
bounded FIFO wait queue limited by the caller's deadline.

Each credential (tenant) has up to four buckets: requests and tokens per minute and per day.
A bucket holds at most its limit and refills continuously (limit/60 or limit/86400 per second).
Before a request is sent it reserves 1 request plus its token estimate from every bucket; when
the real usage is known `Reservation.settle` charges the difference, or `release` gives the
reservation back if nothing was used. Levels may go negative: a request that used more than it
reserved leaves a debt that later requests wait out.

With `auto_adjust`, the upstream's `x-ratelimit-*` headers correct the per-minute buckets: a
bucket is never fuller than the upstream says is left (other replicas share the key), its size
follows `x-ratelimit-limit-*`, and an exhausted upstream bucket stays empty until its reset.
Headers also create per-minute buckets the config left unlimited, so the gateway learns the
key's real limits instead of hammering it into 429s.

A request that cannot go at once waits in a strict FIFO queue: a later small request never
overtakes an earlier large one, or large requests would starve. It is rejected with
`errors.TooManyRequests` (retry_after = when its capacity returns, metadata `limit_type`) when
the queue is full, when queueing is off, or when its wait would outlive the call's deadline:
failing fast leaves the caller its remaining time to act.

A tenant may have its own limits (tenants file `limits:`, `RateLimitConfig.for_tenant`). These
buckets live in this process; with `rate_limit.redis_url` the same semantics hold cluster-wide
(`shared_limit.SharedRateLimiter`), and this limiter becomes its fallback while Redis is away.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol

from openai_grpc_server import errors
from openai_grpc_server.coerce import check, coerce_optional_int, parse_duration

from .clock import Clock, MonotonicClock, call_hook, fire_hook, notify
from .retry import header

if TYPE_CHECKING:
    from .operation import Operation

__all__ = [
    "RateLimitConfig",
    "RateLimitDecision",
    "RateLimitHeaders",
    "RateLimitHook",
    "RateLimitType",
    "RateLimiter",
    "Reservation",
]

_EPSILON = 1e-9  # float slack so a bucket refilled "exactly enough" counts as enough


class RateLimitType(enum.StrEnum):
    REQUESTS_PER_MINUTE = "requests_per_minute"
    TOKENS_PER_MINUTE = "tokens_per_minute"
    REQUESTS_PER_DAY = "requests_per_day"
    TOKENS_PER_DAY = "tokens_per_day"
    SERVER_ENFORCED = "server_enforced"  # an upstream 429 (reported to the observer only)


_WINDOW_SECONDS = {
    RateLimitType.REQUESTS_PER_MINUTE: 60.0,
    RateLimitType.TOKENS_PER_MINUTE: 60.0,
    RateLimitType.REQUESTS_PER_DAY: 86_400.0,
    RateLimitType.TOKENS_PER_DAY: 86_400.0,
}
_TOKEN_KINDS = frozenset({RateLimitType.TOKENS_PER_MINUTE, RateLimitType.TOKENS_PER_DAY})


# --- config ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RateLimitConfig:
    """The `rate_limit:` settings (read in config.py). A limit of None means unlimited (the default)."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    requests_per_day: int | None = None
    tokens_per_day: int | None = None
    auto_adjust: bool = True
    queue_requests: bool = True
    max_queue_size: int = 100
    # Shared buckets (resilience/shared_limit.py): every process and pod with the same Redis
    # shares them. The URL may hold a password: kept out of repr and logs.
    redis_url: str | None = dataclasses.field(default=None, repr=False)
    redis_failure: Literal["local", "closed"] = "local"
    redis_timeout: float = 0.25  # per Redis call (event-loop lag included); a deadline can shorten it
    replicas_hint: int = 1  # processes sharing the limits: the `local` fallback gets limit / this

    def __post_init__(self) -> None:
        for kind in _WINDOW_SECONDS:
            value = getattr(self, kind.value)
            check(
                value is None or value >= 1,
                "rate_limit",
                kind.value,
                f"must be a positive integer, or empty for unlimited; got {value}",
            )
        check(
            self.max_queue_size >= 0,
            "rate_limit",
            "max_queue_size",
            f"must be >= 0, got {self.max_queue_size}",
        )
        check(
            self.redis_failure in ("local", "closed"),
            "rate_limit",
            "redis_failure",
            f"must be 'local' or 'closed', got {self.redis_failure!r}",
        )
        check(self.redis_timeout > 0, "rate_limit", "redis_timeout", f"must be > 0, got {self.redis_timeout}")
        check(
            self.replicas_hint >= 1, "rate_limit", "replicas_hint", f"must be >= 1, got {self.replicas_hint}"
        )
        check(
            not self.redis_url or self.redis_url.startswith(("redis://", "rediss://", "unix://")),
            "rate_limit",
            "redis_url",
            "must be a redis://, rediss:// or unix:// URL",
        )

    def limit(self, kind: RateLimitType) -> int | None:
        value: int | None = getattr(self, kind.value)
        return value

    def has_limits(self) -> bool:
        return any(self.limit(kind) is not None for kind in _WINDOW_SECONDS)

    def for_tenant(self, limits: Mapping[str, Any]) -> RateLimitConfig:
        """This config with a tenant's own limits (tenants file `limits:`) in place of the global ones."""
        unknown = sorted(set(limits) - {kind.value for kind in _WINDOW_SECONDS})
        check(not unknown, "limits", ",".join(unknown), "unknown limit (known: " + _KINDS_TEXT + ")")
        own: dict[str, Any] = {k: coerce_optional_int("limits", k, v) for k, v in limits.items()}
        return dataclasses.replace(self, **own)

    def divided(self, replicas: int) -> RateLimitConfig:
        """Each of `replicas` processes' share of the limits (the fallback when Redis is down)."""
        if replicas <= 1:
            return self
        share: dict[str, Any] = {
            kind.value: max(1, limit // replicas)
            for kind in _WINDOW_SECONDS
            if (limit := self.limit(kind)) is not None
        }
        return dataclasses.replace(self, **share)


_KINDS_TEXT = ", ".join(kind.value for kind in _WINDOW_SECONDS)


# --- upstream headers ------------------------------------------------------------------------
def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    raw = header(headers, name)
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return int(value) if math.isfinite(value) and value >= 0 else None


def _duration_header(headers: Mapping[str, str], name: str) -> float | None:
    raw = header(headers, name)
    if raw is None:
        return None
    try:
        value = parse_duration(raw)
    except ValueError:
        return None
    return value if value >= 0 else None


@dataclasses.dataclass(frozen=True)
class RateLimitHeaders:
    """OpenAI's `x-ratelimit-*` headers; resets in seconds."""

    limit_requests: int | None = None
    limit_tokens: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests: float | None = None
    reset_tokens: float | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateLimitHeaders | None:
        """None when the answer carries no readable `x-ratelimit-*` header."""
        parsed = cls(
            limit_requests=_int_header(headers, "x-ratelimit-limit-requests"),
            limit_tokens=_int_header(headers, "x-ratelimit-limit-tokens"),
            remaining_requests=_int_header(headers, "x-ratelimit-remaining-requests"),
            remaining_tokens=_int_header(headers, "x-ratelimit-remaining-tokens"),
            reset_requests=_duration_header(headers, "x-ratelimit-reset-requests"),
            reset_tokens=_duration_header(headers, "x-ratelimit-reset-tokens"),
        )
        return None if parsed == cls() else parsed


# --- hook ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RateLimitDecision:
    """What a `RateLimitHook` wants: `wait(delay)`, `queue()`, `reject()` or `default()`."""

    action: Literal["wait", "queue", "reject", "default"]
    delay: float | None = None

    @classmethod
    def wait(cls, delay: float) -> RateLimitDecision:
        if not (math.isfinite(delay) and delay >= 0):
            raise ValueError(f"wait delay must be a finite number >= 0, got {delay}")
        return cls("wait", delay)

    @classmethod
    def queue(cls) -> RateLimitDecision:
        return cls("queue")

    @classmethod
    def reject(cls) -> RateLimitDecision:
        return cls("reject")

    @classmethod
    def default(cls) -> RateLimitDecision:
        return cls("default")


class RateLimitHook(Protocol):
    """Methods may be plain or `async`; subclass to inherit the no-op defaults.

    The call is named by its `Operation` (endpoint, credential, estimate, deadline).
    `on_rate_limit` runs when a request cannot go at once: `wait(d)` sleeps d (never past the
    deadline) then tries again from the back of the line, `queue()` queues even when
    `queue_requests` is off (the queue bound and the deadline still apply), `reject()` fails now.
    """

    def on_rate_limit(
        self, op: Operation, limit_type: RateLimitType, retry_after: float | None
    ) -> RateLimitDecision | Awaitable[RateLimitDecision]:
        return RateLimitDecision.default()

    def on_rate_limit_update(self, op: Operation, headers: RateLimitHeaders) -> Awaitable[None] | None:
        return None


# --- buckets ---------------------------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class _Bucket:
    kind: RateLimitType
    capacity: float
    rate: float  # units per second
    level: float
    updated: float
    configured: float | None  # the configured limit; None for a bucket learned from headers

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now
        self.level = min(self.level, self.capacity)

    def wait_for(self, amount: float) -> float:
        """Seconds until the (refilled) level covers `amount`; 0 when it already does."""
        missing = amount - self.level
        if missing <= _EPSILON:
            return 0.0
        return missing / self.rate


@dataclasses.dataclass(eq=False)
class _Waiter:
    costs: dict[RateLimitType, float]


class WaitLine:
    """A credential's FIFO of waiting calls and the signal that wakes them (in process and,
    for the shared limiter, this process's line in front of Redis)."""

    def __init__(self) -> None:
        self.queue: collections.deque[Any] = collections.deque()
        self._changed = asyncio.Event()

    def notify(self) -> None:
        """Wake every queued waiter so it re-evaluates (the head may now fit)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_change(self, clock: Clock, limit: float | None) -> None:
        """Until the buckets or the queue change, or `limit` seconds pass on `clock` (an
        injectable clock, hence no `asyncio.timeout`)."""
        event = self._changed
        if limit is None:
            await event.wait()
            return
        if limit <= 0:
            await asyncio.sleep(0)
            return
        changed = asyncio.ensure_future(event.wait())
        timer = asyncio.ensure_future(clock.sleep(limit))
        try:
            await asyncio.wait({changed, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
            timer.cancel()


class _CredentialLimiter(WaitLine):
    """The buckets and the wait queue of one credential."""

    def __init__(self, config: RateLimitConfig, now: float) -> None:
        super().__init__()
        self.buckets: dict[RateLimitType, _Bucket] = {}
        for kind, window in _WINDOW_SECONDS.items():
            limit = config.limit(kind)
            if limit is not None:
                self.buckets[kind] = _Bucket(kind, limit, limit / window, limit, now, float(limit))

    def costs(self, token_estimate: int) -> dict[RateLimitType, float]:
        return {kind: float(max(0, token_estimate)) if kind in _TOKEN_KINDS else 1.0 for kind in self.buckets}

    def refill(self, now: float) -> None:
        for bucket in self.buckets.values():
            bucket.refill(now)

    def too_large(self, costs: Mapping[RateLimitType, float]) -> _Bucket | None:
        for kind, cost in costs.items():
            bucket = self.buckets.get(kind)
            if bucket is not None and cost > bucket.capacity:
                return bucket
        return None

    def estimate(
        self, costs: Mapping[RateLimitType, float], ahead: list[_Waiter], now: float
    ) -> tuple[float, RateLimitType]:
        """Seconds until `costs` fit after everyone `ahead` is served, and the binding limit.

        Refill is continuous, so serving the queue in order needs exactly the summed demand.
        """
        self.refill(now)
        wait, binding = 0.0, next(iter(costs), RateLimitType.REQUESTS_PER_MINUTE)
        for kind, cost in costs.items():
            bucket = self.buckets.get(kind)
            if bucket is None:
                continue
            demand = cost + sum(w.costs.get(kind, 0.0) for w in ahead)
            needed = bucket.wait_for(demand)
            if needed > wait:
                wait, binding = needed, kind
        return wait, binding

    def take(self, costs: Mapping[RateLimitType, float], now: float) -> dict[RateLimitType, float]:
        self.refill(now)
        taken: dict[RateLimitType, float] = {}
        for kind, cost in costs.items():
            bucket = self.buckets.get(kind)
            if bucket is not None:
                bucket.level -= cost
                taken[kind] = cost
        return taken

    def give_back(self, amounts: Mapping[RateLimitType, float], now: float) -> None:
        self.refill(now)
        for kind, amount in amounts.items():
            bucket = self.buckets.get(kind)
            if bucket is not None:
                bucket.level = min(bucket.capacity, bucket.level + amount)
        self.notify()

    def adjust(
        self,
        kind: RateLimitType,
        limit: int | None,
        remaining: int | None,
        reset: float | None,
        now: float,
    ) -> None:
        bucket = self.buckets.get(kind)
        if bucket is None:
            if not limit:
                return  # nothing to learn a bucket size from
            bucket = _Bucket(kind, limit, limit / 60.0, limit, now, None)
            self.buckets[kind] = bucket
        bucket.refill(now)
        if limit:
            # The tenant's configured limit may be stricter than the key's; never looser.
            size = float(limit) if bucket.configured is None else min(bucket.configured, limit)
            bucket.capacity = size
            bucket.rate = size / 60.0
            bucket.level = min(bucket.level, size)
        if remaining is not None:
            # Only ever lower the level: requests sent after this answer was produced are
            # already charged here but not in the upstream's count.
            bucket.level = min(bucket.level, float(remaining))
            if remaining == 0 and reset:
                # Exhausted upstream: nothing is available until its reset, then normal refill.
                bucket.level = min(bucket.level, -reset * bucket.rate)
        self.notify()


# --- shared with the Redis limiter -------------------------------------------------------------
def too_large(kind: RateLimitType, cost: float, capacity: float) -> errors.TokenLimitExceeded:
    """A request bigger than a whole bucket: it can never be sent."""
    return errors.TokenLimitExceeded(
        f"the request needs {cost:.0f} from the {kind.value} limit, which only allows "
        f"{capacity:.0f}; it can never be sent, shorten it or lower max tokens",
        metadata={"limit_type": kind.value, "limit": f"{capacity:.0f}"},
    )


def too_many(kind: RateLimitType, capacity: float | None, wait: float, why: str) -> errors.TooManyRequests:
    """No capacity in time: RESOURCE_EXHAUSTED with RetryInfo = when it returns."""
    return errors.TooManyRequests(
        f"local rate limit {kind.value} reached for this credential: {why}; capacity returns in {wait:.3g} s",
        retry_after=max(0.0, wait),
        metadata={"limit_type": kind.value, "limit": f"{capacity:.0f}" if capacity is not None else ""},
    )


def decide(
    observer: Callable[[Operation, str, str], None] | None, op: Operation, outcome: str, kind: str
) -> None:
    """Tell telemetry an acquire was admitted, queued or rejected (and by which limit)."""
    if observer is not None:
        notify(observer, op, outcome, kind)


class _Refundable(Protocol):
    def give_back(self, amounts: Mapping[RateLimitType, float], now: float) -> None: ...


# --- reservations ----------------------------------------------------------------------------
class Reservation:
    """What one attempt took from its credential's buckets. Settle or release it exactly once;
    later calls do nothing (so a cleanup path cannot refund twice)."""

    def __init__(
        self,
        limiter: _Refundable | None,
        taken: Mapping[RateLimitType, float],
        clock: Clock,
        token_estimate: int,
    ) -> None:
        self._limiter = limiter
        self._taken = dict(taken)
        self._clock = clock
        self.token_estimate = token_estimate
        self.done = False

    @classmethod
    def unlimited(cls, clock: Clock | None = None, token_estimate: int = 0) -> Reservation:
        return cls(None, {}, clock or MonotonicClock(), token_estimate)

    def settle(self, actual_tokens: int) -> None:
        """Real usage is known: refund (or charge) the token buckets by the difference."""
        if self.done:
            return
        self.done = True
        if self._limiter is None:
            return
        delta = {
            kind: amount - max(0, actual_tokens)
            for kind, amount in self._taken.items()
            if kind in _TOKEN_KINDS
        }
        self._limiter.give_back(delta, self._clock.now())

    def release(self) -> None:
        """Nothing was used (cancelled before the upstream saw it): give everything back."""
        if self.done:
            return
        self.done = True
        if self._limiter is not None:
            self._limiter.give_back(self._taken, self._clock.now())


# --- the limiter -----------------------------------------------------------------------------
class RateLimiter:
    """Per-credential token buckets. `on_limited(op, limit_type)` is told of every local hit."""

    def __init__(
        self,
        config: RateLimitConfig | None = None,
        *,
        clock: Clock | None = None,
        hook: RateLimitHook | None = None,
        on_limited: Callable[[Operation, str], None] | None = None,
        on_decision: Callable[[Operation, str, str], None] | None = None,
        tenants: Mapping[str, RateLimitConfig] | None = None,
    ) -> None:
        self.config = config or RateLimitConfig()
        self._clock = clock or MonotonicClock()
        self._hook = hook
        self._on_limited = on_limited
        self._on_decision = on_decision
        self._tenants = dict(tenants or {})  # credential name -> its own limits
        self._limiters: dict[str, _CredentialLimiter] = {}
        self._has_limits = self.config.has_limits() or any(c.has_limits() for c in self._tenants.values())

    def _limiter_for(self, credential: str, *, create: bool) -> _CredentialLimiter | None:
        limiter = self._limiters.get(credential)
        if limiter is None and (create or self._has_limits):
            config = self._tenants.get(credential, self.config)
            limiter = self._limiters[credential] = _CredentialLimiter(config, self._clock.now())
        return limiter

    def levels(self, credential: str) -> dict[str, float]:
        """Current bucket levels (refilled to now); for tests, debugging and health pages."""
        limiter = self._limiter_for(credential, create=False)
        if limiter is None:
            return {}
        limiter.refill(self._clock.now())
        return {kind.value: bucket.level for kind, bucket in limiter.buckets.items()}

    def queued(self, credential: str) -> int:
        limiter = self._limiters.get(credential)
        return len(limiter.queue) if limiter else 0

    async def acquire(self, op: Operation) -> Reservation:
        """Reserve 1 request + `op.token_estimate` tokens, waiting in line if allowed.

        Raises TokenLimitExceeded (the request can never fit) or TooManyRequests (no capacity
        in time). Cancellation while queued leaves the queue and propagates.
        """
        limiter = self._limiter_for(op.credential, create=False)
        if limiter is None or not limiter.buckets:
            return Reservation(None, {}, self._clock, op.token_estimate)
        try:
            reservation = await self._acquire(op, limiter)
        except errors.RateLimitError as err:
            decide(self._on_decision, op, "rejected", err.metadata.get("limit_type", ""))
            raise
        decide(self._on_decision, op, "admitted", "")
        return reservation

    async def _acquire(self, op: Operation, limiter: _CredentialLimiter) -> Reservation:
        costs = limiter.costs(op.token_estimate)
        while True:
            self._check_size(limiter, costs)
            now = self._clock.now()
            wait, kind = limiter.estimate(costs, list(limiter.queue), now)
            if not limiter.queue and wait <= 0:
                return Reservation(limiter, limiter.take(costs, now), self._clock, op.token_estimate)
            if self._on_limited is not None:
                notify(self._on_limited, op, kind.value)
            decision = RateLimitDecision.default()
            if self._hook is not None:
                decision = await call_hook(self._hook.on_rate_limit, op, kind, wait, default=decision)
            if decision.action == "reject":
                raise self._reject(limiter, kind, wait, "the rate-limit hook rejected the request")
            if decision.action == "wait" and decision.delay is not None:
                if op.deadline is not None and now + decision.delay >= op.deadline:
                    raise self._reject(limiter, kind, wait, "the call's deadline ends before then")
                await self._clock.sleep(decision.delay)
                continue
            if not (self.config.queue_requests or decision.action == "queue"):
                raise self._reject(limiter, kind, wait, "queueing is disabled")
            if len(limiter.queue) >= self.config.max_queue_size:
                raise self._reject(
                    limiter, kind, wait, f"the wait queue is full ({len(limiter.queue)} waiting)"
                )
            if op.deadline is not None and now + wait >= op.deadline:
                raise self._reject(limiter, kind, wait, "the call's deadline ends before then")
            return await self._wait_in_line(limiter, op, costs)

    async def _wait_in_line(
        self, limiter: _CredentialLimiter, op: Operation, costs: dict[RateLimitType, float]
    ) -> Reservation:
        waiter = _Waiter(costs)
        limiter.queue.append(waiter)
        decide(self._on_decision, op, "queued", limiter.estimate(costs, [], self._clock.now())[1].value)
        try:
            while True:
                self._check_size(limiter, costs)
                now = self._clock.now()
                position = limiter.queue.index(waiter)
                wait, kind = limiter.estimate(costs, list(limiter.queue)[:position], now)
                if position == 0 and wait <= 0:
                    limiter.queue.popleft()
                    taken = limiter.take(costs, now)
                    limiter.notify()  # the next in line re-evaluates
                    return Reservation(limiter, taken, self._clock, op.token_estimate)
                if op.deadline is not None and now + wait >= op.deadline:
                    raise self._reject(limiter, kind, wait, "the call's deadline ends before then")
                # The head sleeps until its capacity returns; the others until the line moves.
                timeout: float | None = wait if position == 0 else None
                if op.deadline is not None:
                    timeout = min(math.inf if timeout is None else timeout, op.deadline - now)
                await limiter.wait_change(self._clock, timeout)
        finally:
            if waiter in limiter.queue:  # rejected or cancelled: leave the line, let it move
                limiter.queue.remove(waiter)
                limiter.notify()

    def _check_size(self, limiter: _CredentialLimiter, costs: Mapping[RateLimitType, float]) -> None:
        bucket = limiter.too_large(costs)
        if bucket is not None:
            raise too_large(bucket.kind, costs[bucket.kind], bucket.capacity)

    def _reject(
        self, limiter: _CredentialLimiter, kind: RateLimitType, wait: float, why: str
    ) -> errors.TooManyRequests:
        bucket = limiter.buckets.get(kind)
        return too_many(kind, bucket.capacity if bucket is not None else None, wait, why)

    async def start(self) -> None:
        """Nothing to prepare in process (the shared limiter connects to Redis)."""

    async def aclose(self) -> None:
        """Nothing to release in process (the shared limiter closes its Redis client)."""

    def observe_headers(self, op: Operation, headers: Mapping[str, str]) -> RateLimitHeaders | None:
        """Feed an upstream answer's `x-ratelimit-*` headers (success or error) to the buckets."""
        parsed = RateLimitHeaders.from_headers(headers)
        if parsed is None:
            return None
        if self._hook is not None:
            fire_hook(self._hook.on_rate_limit_update, op, parsed)
        if not self.config.auto_adjust:
            return parsed
        limiter = self._limiter_for(op.credential, create=True)
        assert limiter is not None
        now = self._clock.now()
        limiter.adjust(
            RateLimitType.REQUESTS_PER_MINUTE,
            parsed.limit_requests,
            parsed.remaining_requests,
            parsed.reset_requests,
            now,
        )
        limiter.adjust(
            RateLimitType.TOKENS_PER_MINUTE,
            parsed.limit_tokens,
            parsed.remaining_tokens,
            parsed.reset_tokens,
            now,
        )
        return parsed
