"""Circuit breaker: a thin wrapper over aiobreaker 1.2.0.

aiobreaker keeps the state machine (closed / open / half-open, its storage, its listeners) and
decides, in the closed state, when the failure count trips the circuit. This wrapper fixes what
aiobreaker 1.2.0 gets wrong for a gateway, and adds the knobs it lacks:

* Time. aiobreaker stamps `opened_at` with `datetime.utcnow()` but computes `opens_at` /
  `time_until_open` against local `datetime.now()`, so recovery times are off by the UTC offset
  unless TZ=UTC (hours early or late). Here all timing uses the injectable monotonic `Clock`,
  recorded through aiobreaker's storage extension point; aiobreaker's own timing is never read.
* Single probe. aiobreaker's half-open state lets every concurrent call through, so a
  recovering upstream gets the full stampede. Here half-open admits one probe at a time; the
  others get `CircuitOpen` with a short retry_after.
* Eager half-open. aiobreaker only leaves "open" when the next call arrives, so the state
  gauge says "open" long after recovery. Here a timer moves it to half-open on time.
* `success_threshold` successful probes close the circuit (aiobreaker closes on the first), and
  only failures inside `failure_window` count toward `failure_threshold`.

Only errors with `breaker_failure` (5xx, timeouts, connection failures, stream cuts) count as
failures. Any other answer, a 4xx included, proves the upstream is alive and counts as a
success. Cancellation is neither: it says nothing about the upstream.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import aiobreaker  # type: ignore[import-untyped, unused-ignore]
from aiobreaker.storage.memory import CircuitMemoryStorage  # type: ignore[import-untyped, unused-ignore]

from openai_grpc_server import errors
from openai_grpc_server.coerce import check

from .clock import Clock, MonotonicClock, fire_hook, notify

if TYPE_CHECKING:
    from .operation import Operation

__all__ = [
    "GLOBAL_BREAKER",
    "HALF_OPEN_RETRY_AFTER",
    "BreakerConfig",
    "BreakerRegistry",
    "CircuitBreaker",
    "CircuitBreakerHook",
    "CircuitState",
    "CircuitStats",
    "Permit",
    "RequestOutcome",
]

GLOBAL_BREAKER = "all"  # breaker key (and metric label) when per_endpoint is off
HALF_OPEN_RETRY_AFTER = 1.0  # retry_after for callers turned away while a probe is in flight


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


_FROM_AIOBREAKER = {
    aiobreaker.CircuitBreakerState.CLOSED: CircuitState.CLOSED,
    aiobreaker.CircuitBreakerState.OPEN: CircuitState.OPEN,
    aiobreaker.CircuitBreakerState.HALF_OPEN: CircuitState.HALF_OPEN,
}


class RequestOutcome(enum.StrEnum):
    """An outcome as the breaker counts it: any upstream answer that is not a failure is a success."""

    SUCCESS = "success"
    FAILURE = "failure"


@dataclasses.dataclass(frozen=True)
class CircuitStats:
    """Times are on the breaker's monotonic clock."""

    failure_count: int  # failures currently counted toward failure_threshold
    success_count: int  # successes since the last state change
    total_requests: int  # outcomes recorded since the breaker was created
    last_failure: float | None
    state_changed_at: float


# --- config ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class BreakerConfig:
    """The `breaker:` settings (read in config.py). Durations in seconds. What fails is fixed: an error
    counts when its taxonomy class says `breaker_failure`."""

    failure_threshold: int = 5
    success_threshold: int = 3
    failure_window: float = 60.0
    recovery_timeout: float = 30.0
    per_endpoint: bool = False

    def __post_init__(self) -> None:
        s = "breaker"
        check(
            self.failure_threshold >= 1, s, "failure_threshold", f"must be >= 1, got {self.failure_threshold}"
        )
        check(
            self.success_threshold >= 1, s, "success_threshold", f"must be >= 1, got {self.success_threshold}"
        )
        check(self.failure_window > 0, s, "failure_window", f"must be > 0 seconds, got {self.failure_window}")
        check(
            self.recovery_timeout > 0,
            s,
            "recovery_timeout",
            f"must be > 0 seconds, got {self.recovery_timeout}",
        )


# --- hook ------------------------------------------------------------------------------------
class CircuitBreakerHook(Protocol):
    """Methods may be plain or `async` (async ones run in the background: a hook
    never delays a call). Subclass to inherit the no-op defaults. `endpoint` is the breaker key:
    the operation's endpoint when per_endpoint, else "all"; the call is named by its
    `Operation`."""

    def on_state_change(
        self, endpoint: str, from_state: CircuitState, to_state: CircuitState, stats: CircuitStats
    ) -> Awaitable[None] | None:
        return None

    def on_rejected(self, op: Operation, endpoint: str) -> Awaitable[None] | None:
        return None

    def on_outcome(self, outcome: RequestOutcome, endpoint: str) -> Awaitable[None] | None:
        return None


# --- aiobreaker integration ------------------------------------------------------------------
class _ClockStorage(CircuitMemoryStorage):  # type: ignore[misc]
    """aiobreaker storage whose failure counter only sees failures inside the window and whose
    `opened_at` is also stamped on our monotonic clock (aiobreaker's datetime stays for its
    own bookkeeping, which this wrapper never relies on)."""

    def __init__(self, clock: Clock, window: float) -> None:
        super().__init__(aiobreaker.CircuitBreakerState.CLOSED)
        self._clock = clock
        self._window = window
        self._failures: collections.deque[float] = collections.deque()
        self.opened_at_monotonic: float | None = None

    def increment_counter(self) -> None:
        self._failures.append(self._clock.now())

    def reset_counter(self) -> None:
        self._failures.clear()

    @property
    def has_failures(self) -> bool:
        """Any failure recorded (expired ones included: cheaper than `counter` per call)."""
        return bool(self._failures)

    @property
    def counter(self) -> int:
        horizon = self._clock.now() - self._window
        while self._failures and self._failures[0] <= horizon:
            self._failures.popleft()
        return len(self._failures)

    @property
    def opened_at(self) -> datetime | None:
        value: datetime | None = self._opened_at
        return value

    @opened_at.setter
    def opened_at(self, date_time: datetime) -> None:
        self._opened_at = date_time
        self.opened_at_monotonic = self._clock.now()


class _Listener(aiobreaker.CircuitBreakerListener):  # type: ignore[misc]
    def __init__(self, owner: CircuitBreaker) -> None:
        self._owner = owner

    def state_change(self, breaker: Any, old: Any, new: Any) -> None:
        # aiobreaker notifies before it stores the new state (`self.state = storage.state = X`
        # assigns left to right); store it first so listeners that read the state see the new
        # one instead of re-triggering the transition.
        breaker._state_storage.state = new.state
        before = _FROM_AIOBREAKER[old.state] if old is not None else CircuitState.CLOSED
        self._owner._on_state_change(before, _FROM_AIOBREAKER[new.state])


def _replay(error: errors.OpenAIError | None) -> None:
    """The 'call' aiobreaker guards when an outcome is recorded: it re-raises the outcome."""
    if error is not None:
        raise error


# --- the breaker -----------------------------------------------------------------------------
class Permit:
    """Admission for one attempt. Report exactly one of `record(outcome)` or `cancel()`."""

    __slots__ = ("_breaker", "_done", "probe")

    def __init__(self, breaker: CircuitBreaker, probe: int | None) -> None:
        self._breaker = breaker
        self.probe = probe  # the probe's id in half-open, else None
        self._done = False

    def record(self, error: errors.OpenAIError | None) -> None:
        """The upstream answered (error=None: success) or failed with a classified error."""
        if not self._done:
            self._done = True
            self._breaker.record(error, probe=self.probe)

    def cancel(self) -> None:
        """No outcome (cancelled, or stopped before the upstream was called): free the probe slot."""
        if not self._done:
            self._done = True
            self._breaker._release(probe=self.probe)


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        config: BreakerConfig | None = None,
        *,
        clock: Clock | None = None,
        hook: CircuitBreakerHook | None = None,
        on_state: Callable[[str, str], None] | None = None,
    ) -> None:
        self.name = name
        self.config = config or BreakerConfig()
        self._clock = clock or MonotonicClock()
        self._hook = hook
        self._on_state = on_state
        self._storage = _ClockStorage(self._clock, self.config.failure_window)
        self._cb = aiobreaker.CircuitBreaker(
            fail_max=self.config.failure_threshold,
            timeout_duration=timedelta(seconds=self.config.recovery_timeout),
            exclude=[lambda exc: not getattr(exc, "breaker_failure", False)],
            listeners=[_Listener(self)],
            state_storage=self._storage,
            name=name,
        )
        # Start time of the probe in flight, or None. A probe silent for longer than
        # recovery_timeout is presumed lost (a permit never reported) so half-open cannot stick.
        self._probe_started: float | None = None
        self._probe_id = 0
        self._successes = 0
        self._total = 0
        self._last_failure: float | None = None
        self._changed_at = self._clock.now()
        self._timer: asyncio.Task[None] | None = None
        if self._on_state is not None:
            notify(self._on_state, name, CircuitState.CLOSED.value)

    # -- state --
    @property
    def state(self) -> CircuitState:
        self._maybe_half_open()
        return _FROM_AIOBREAKER[self._cb.current_state]

    def stats(self) -> CircuitStats:
        return CircuitStats(
            failure_count=self._storage.counter,
            success_count=self._successes,
            total_requests=self._total,
            last_failure=self._last_failure,
            state_changed_at=self._changed_at,
        )

    def time_until_half_open(self) -> float:
        """Seconds until an open circuit admits a probe (0 when not open)."""
        opened = self._storage.opened_at_monotonic
        if self._cb.current_state is not aiobreaker.CircuitBreakerState.OPEN or opened is None:
            return 0.0
        return max(0.0, opened + self.config.recovery_timeout - self._clock.now())

    def _maybe_half_open(self) -> None:
        # Lazy twin of the timer: also correct when no event loop ran the timer yet.
        if self._cb.current_state is aiobreaker.CircuitBreakerState.OPEN and self.time_until_half_open() <= 0:
            self._cb.half_open()

    # -- admission and outcomes --
    def admit(self, op: Operation | None = None) -> Permit:
        """A permit to call the upstream, or `errors.CircuitOpen` with retry_after."""
        state = self.state
        if state is CircuitState.CLOSED:
            return Permit(self, probe=None)
        if state is CircuitState.HALF_OPEN and not self._probe_busy():
            self._probe_started = self._clock.now()
            self._probe_id += 1
            return Permit(self, probe=self._probe_id)
        if state is CircuitState.OPEN:
            wait = self.time_until_half_open()
            why = f"the next probe is allowed in {wait:.3g} s"
        else:
            wait = min(HALF_OPEN_RETRY_AFTER, self.config.recovery_timeout)
            why = "a probe request is already testing the upstream"
        if self._hook is not None and op is not None:
            fire_hook(self._hook.on_rejected, op, self.name)
        scope = "all endpoints" if self.name == GLOBAL_BREAKER else self.name
        raise errors.CircuitOpen(
            f"circuit breaker for {scope} is {state.value} after repeated upstream failures; {why}",
            retry_after=wait,
            metadata={"endpoint": self.name, "breaker_state": state.value},
        )

    def record(self, error: errors.OpenAIError | None, *, probe: int | None = None) -> None:
        """Count one outcome. Also used for failures found after the call returned (a stream
        cut mid-way): those are not probes."""
        failed = error is not None and error.breaker_failure
        now = self._clock.now()
        self._total += 1
        if failed:
            self._last_failure = now
        self._release(probe=probe)
        if self._hook is not None:
            fire_hook(
                self._hook.on_outcome,
                RequestOutcome.FAILURE if failed else RequestOutcome.SUCCESS,
                self.name,
            )
        state = self.state
        if state is CircuitState.HALF_OPEN:
            if failed:
                self._cb.open()  # a failed probe (or late failure) reopens for a full recovery time
            elif probe is not None:
                self._successes += 1
                if self._successes >= self.config.success_threshold:
                    self._cb.close()
        elif state is CircuitState.CLOSED:
            if not failed:
                self._successes += 1
                if not self._storage.has_failures:
                    return  # aiobreaker would only reset an empty count: skip its call machinery
            # aiobreaker counts the failure (or resets the count on success) and opens the
            # circuit when the threshold is reached.
            traceback = error.__traceback__ if error is not None else None
            try:
                self._cb.call(_replay, error)
            except (aiobreaker.CircuitBreakerError, errors.OpenAIError):
                pass
            finally:
                if error is not None:
                    error.__traceback__ = traceback  # keep the caller's traceback clean
        # Open: outcomes of calls admitted before it opened neither extend nor shorten it.

    def _release(self, *, probe: int | None) -> None:
        # Only the current probe frees the slot: a probe presumed lost that reports late must
        # not let a second probe run beside the current one.
        if probe is not None and probe == self._probe_id:
            self._probe_started = None

    def _probe_busy(self) -> bool:
        started = self._probe_started
        return started is not None and self._clock.now() - started < self.config.recovery_timeout

    # -- aiobreaker listener --
    def _on_state_change(self, before: CircuitState, after: CircuitState) -> None:
        self._changed_at = self._clock.now()
        self._successes = 0
        self._probe_started = None
        self._cancel_timer()
        if after is CircuitState.OPEN:
            self._start_timer()
        if self._on_state is not None:
            notify(self._on_state, self.name, after.value)
        if self._hook is not None:
            fire_hook(self._hook.on_state_change, self.name, before, after, self.stats())

    def _start_timer(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: the lazy check in `state` moves to half-open on the next look
        self._timer = loop.create_task(self._half_open_later(self._storage.opened_at_monotonic))

    async def _half_open_later(self, opened_at: float | None) -> None:
        await self._clock.sleep(self.config.recovery_timeout)
        if self._storage.opened_at_monotonic == opened_at:  # not reopened meanwhile
            self._maybe_half_open()

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer is not _current_task():
            timer.cancel()

    async def aclose(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer is not _current_task():
            timer.cancel()
            await asyncio.gather(timer, return_exceptions=True)


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


class BreakerRegistry:
    """One breaker for everything, or one per endpoint (`per_endpoint`), created on first use."""

    def __init__(
        self,
        config: BreakerConfig | None = None,
        *,
        clock: Clock | None = None,
        hook: CircuitBreakerHook | None = None,
        on_state: Callable[[str, str], None] | None = None,
    ) -> None:
        self.config = config or BreakerConfig()
        self._clock = clock or MonotonicClock()
        self._hook = hook
        self._on_state = on_state
        self._breakers: dict[str, CircuitBreaker] = {}

    def key(self, endpoint: str) -> str:
        return endpoint if self.config.per_endpoint else GLOBAL_BREAKER

    def get(self, endpoint: str) -> CircuitBreaker:
        key = self.key(endpoint)
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = self._breakers[key] = CircuitBreaker(
                key, self.config, clock=self._clock, hook=self._hook, on_state=self._on_state
            )
        return breaker

    def states(self) -> dict[str, CircuitState]:
        return {key: breaker.state for key, breaker in self._breakers.items()}

    async def aclose(self) -> None:
        for breaker in list(self._breakers.values()):
            await breaker.aclose()
