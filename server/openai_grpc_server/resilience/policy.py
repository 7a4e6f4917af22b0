"""One resilient upstream call: breaker -> rate limit -> HTTP -> classify -> record -> retry?

`ResiliencePolicy.execute` runs the attempts of one operation. Per attempt, in this order:

1. the circuit breaker admits it (or raises `CircuitOpen`): an open circuit must not consume
   rate-limit capacity;
2. the rate limiter reserves 1 request + the token estimate (waiting in line if allowed);
3. `fn(attempt)` calls the upstream and raises an already classified `OpenAIError` on failure;
4. the outcome is recorded in the breaker and the reservation is settled or given back;
5. the retry policy decides whether and when to try again, never past the caller's deadline.

Cancellation (`asyncio.CancelledError`, the caller went away) gives the reservation back, is not
counted by the breaker, and always propagates: swallowing it leaks the call in grpc.aio.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Protocol, TypeVar

from openai_grpc_server import errors

from .breaker import BreakerConfig, BreakerRegistry, CircuitBreakerHook, CircuitState
from .clock import Clock, MonotonicClock, call_hook, notify
from .operation import Attempt, Operation
from .rate_limit import RateLimitConfig, RateLimiter, RateLimitHook, RateLimitType, Reservation
from .retry import RetryConfig, RetryDecision, RetryHook, RetryPolicy, Verdict

if TYPE_CHECKING:
    from .shared_limit import SharedRateLimiter

__all__ = ["Attempt", "NullObserver", "Operation", "ResilienceObserver", "ResiliencePolicy"]

T = TypeVar("T")

# An HTTP timeout this close to the deadline was set by the deadline (timers fire a little early
# or late); such a timeout says nothing about the upstream's health.
_DEADLINE_SLACK = 0.05


class ResilienceObserver(Protocol):
    """Telemetry's view of the layer. Subclass to inherit the no-op defaults. Called inline:
    implementations must be fast and must not raise (errors are logged and ignored)."""

    def on_attempt(
        self, op: Operation, attempt_number: int, delay_seconds: float, cause: errors.OpenAIError
    ) -> None:
        """Before each retry sleep; `attempt_number` is the attempt about to start (2 = first retry)."""
        return

    def on_retry_exhausted(self, op: Operation, attempts: int, error: errors.OpenAIError) -> None:
        """A retryable failure ended the call because the retry count or the deadline ran out."""
        return

    def on_rate_limited(self, op: Operation, limit_type: str) -> None:
        """A local limit made the request wait or fail, or the upstream answered 429
        (`limit_type` "server_enforced")."""
        return

    def on_breaker_state(self, endpoint: str, state: str) -> None:
        """A breaker was created ("closed") or changed state ("open", "half_open", "closed")."""
        return

    def on_rate_limit_decision(self, op: Operation, outcome: str, limit_type: str) -> None:
        """An acquire was "admitted", "queued" (waits for capacity) or "rejected" by `limit_type`."""
        return

    def on_limiter_round_trip(self, seconds: float) -> None:
        """One call to the shared limiter's Redis took `seconds`."""
        return

    def on_limiter_store(self, state: str) -> None:
        """The shared limiter is "shared" (on Redis), or Redis is away: "local" or "closed"."""
        return


class NullObserver(ResilienceObserver):
    pass


class ResiliencePolicy:
    def __init__(
        self,
        retry: RetryConfig,
        rate_limit: RateLimitConfig,
        breaker: BreakerConfig,
        *,
        clock: Clock | None = None,
        retry_hook: RetryHook | None = None,
        rate_limit_hook: RateLimitHook | None = None,
        breaker_hook: CircuitBreakerHook | None = None,
        observer: ResilienceObserver | None = None,
        rng: random.Random | None = None,
        tenant_limits: Mapping[str, RateLimitConfig] | None = None,
    ) -> None:
        self.clock: Clock = clock or MonotonicClock()
        self.observer: ResilienceObserver = observer or NullObserver()
        self.retry = RetryPolicy(retry, rng=rng)
        self._retry_hook = retry_hook
        self.limiter: RateLimiter | SharedRateLimiter
        if rate_limit.redis_url:
            from .shared_limit import SharedRateLimiter  # noqa: PLC0415 - redis only when configured

            self.limiter = SharedRateLimiter(
                rate_limit,
                clock=self.clock,
                hook=rate_limit_hook,
                on_limited=self.observer.on_rate_limited,
                on_decision=self.observer.on_rate_limit_decision,
                on_round_trip=self.observer.on_limiter_round_trip,
                on_store_state=self.observer.on_limiter_store,
                tenants=tenant_limits,
            )
        else:
            self.limiter = RateLimiter(
                rate_limit,
                clock=self.clock,
                hook=rate_limit_hook,
                on_limited=self.observer.on_rate_limited,
                on_decision=self.observer.on_rate_limit_decision,
                tenants=tenant_limits,
            )
        self.breakers = BreakerRegistry(
            breaker, clock=self.clock, hook=breaker_hook, on_state=self.observer.on_breaker_state
        )

    def deadline_in(self, seconds: float | None) -> float | None:
        """An `Operation.deadline` `seconds` from now (e.g. from `context.time_remaining()`)."""
        return None if seconds is None else self.clock.now() + seconds

    def breaker_state(self, endpoint: str) -> CircuitState:
        return self.breakers.get(endpoint).state

    async def execute(self, op: Operation, fn: Callable[[Attempt], Awaitable[T]]) -> tuple[T, Reservation]:
        """Run `fn` with breaker, rate limit and retries. Returns the value and the reservation
        of the successful attempt (settle it with the real usage, or release it); raises the
        final `OpenAIError` otherwise."""
        number = 0
        while True:
            number += 1
            self._check_deadline(op)
            permit = self.breakers.get(op.endpoint).admit(op)
            try:
                reservation = await self.limiter.acquire(op)
            except BaseException:
                permit.cancel()
                raise
            timeout = self._remaining(op)
            if timeout is not None and timeout <= 0:
                reservation.release()
                permit.cancel()
                raise self._deadline_error()
            try:
                value = await fn(Attempt(number, timeout))
            except errors.OpenAIError as err:
                failure = err
            except BaseException:
                # Cancelled (or an unclassified bug): nothing to say about the upstream's
                # health, and the caller gets its tokens back. Always re-raised.
                reservation.release()
                permit.cancel()
                raise
            else:
                permit.record(None)
                return value, reservation

            if self._deadline_timeout(op, failure):
                permit.cancel()  # the caller's budget ran out, not the upstream's health
            else:
                permit.record(failure)
            if failure.upstream_status is not None:
                reservation.settle(0)  # the upstream saw (and counted) the request, no tokens used
            else:
                reservation.release()  # never reached the upstream: give everything back
            if failure.headers:
                self.limiter.observe_headers(op, failure.headers)
            if isinstance(failure, errors.TooManyRequests) and failure.upstream_status == 429:
                notify(self.observer.on_rate_limited, op, RateLimitType.SERVER_ENFORCED.value)
            delay = await self._next_delay(op, failure, number)
            notify(self.observer.on_attempt, op, number + 1, delay, failure)
            await self.clock.sleep(delay)

    async def _next_delay(self, op: Operation, error: errors.OpenAIError, number: int) -> float:
        """The wait before attempt `number + 1`, or raise `error` when there is none."""
        plan = self.retry.plan(error, retries_done=number - 1)
        if plan.verdict in (Verdict.NOT_RETRYABLE, Verdict.TOO_LONG) or not op.replayable:
            raise error
        if plan.verdict is Verdict.EXHAUSTED:
            await self._exhausted(op, error, number)
            raise error
        delay = plan.delay
        if self._retry_hook is not None:
            decision = await call_hook(
                self._retry_hook.on_retry, number + 1, error, delay, default=RetryDecision.default()
            )
            if decision.action == "abort":
                raise error
            if decision.action == "retry" and decision.delay is not None:
                delay = decision.delay
        if op.deadline is not None and self.clock.now() + delay >= op.deadline:
            # Never sleep past the deadline: fail now and tell the caller when to come back
            # (the status mapper turns retry_after into RetryInfo).
            if error.retry_after is None and op.deadline > self.clock.now():
                error.retry_after = delay
            await self._exhausted(op, error, number)
            raise error
        return delay

    async def _exhausted(self, op: Operation, error: errors.OpenAIError, attempts: int) -> None:
        notify(self.observer.on_retry_exhausted, op, attempts, error)
        if self._retry_hook is not None:
            await call_hook(self._retry_hook.on_exhausted, error, attempts, default=None)

    def _deadline_timeout(self, op: Operation, error: errors.OpenAIError) -> bool:
        """A local timeout that fired because the attempt's timeout was the caller's deadline."""
        return (
            isinstance(error, errors.Timeout)
            and error.upstream_status is None
            and op.deadline is not None
            and self.clock.now() >= op.deadline - _DEADLINE_SLACK
        )

    def _remaining(self, op: Operation) -> float | None:
        return None if op.deadline is None else op.deadline - self.clock.now()

    def _check_deadline(self, op: Operation) -> None:
        remaining = self._remaining(op)
        if remaining is not None and remaining <= 0:
            raise self._deadline_error()

    @staticmethod
    def _deadline_error() -> errors.Timeout:
        return errors.Timeout("the call's deadline passed before the request could be sent to OpenAI")

    def observe_headers(self, op: Operation, headers: Mapping[str, str]) -> None:
        """Feed a successful answer's `x-ratelimit-*` headers to the buckets (auto_adjust)."""
        self.limiter.observe_headers(op, headers)

    def record_outcome(self, op: Operation, error: errors.OpenAIError | None) -> None:
        """Report a failure found after `execute` returned (a stream cut mid-way)."""
        self.breakers.get(op.endpoint).record(error)

    async def start(self) -> None:
        """Prepare what needs the event loop (the shared limiter's Redis connection)."""
        await self.limiter.start()

    async def aclose(self) -> None:
        """Stop background timers (breaker recovery, Redis probe); call on server shutdown."""
        await self.breakers.aclose()
        await self.limiter.aclose()
