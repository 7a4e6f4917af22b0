"""Injectable time source for the resilience layer, and the async helpers it shares.

Everything in `resilience/` reads time and sleeps through a `Clock`, never through `time` or
`asyncio.sleep` directly, so tests can drive backoff, token refill, deadlines and breaker
recovery without real waiting. Times are monotonic seconds: wall-clock jumps (NTP, DST, a
non-UTC TZ) can never shorten or stretch a backoff, a refill or a recovery timeout.
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

__all__ = ["Clock", "FakeClock", "MonotonicClock"]

log = logging.getLogger("openai_grpc_server.resilience")

T = TypeVar("T")


@runtime_checkable
class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds. Deadlines (`Operation.deadline`) are expressed on this scale."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend the calling task for `seconds` (<= 0: just yield once)."""
        ...


class MonotonicClock:
    """The production clock: `time.monotonic` and `asyncio.sleep`."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A manual clock for tests.

    `sleep` parks the task until `advance` moves time past its wake-up point. With
    `auto_advance=True` time also jumps by itself: once every task has had a chance to run, the
    clock moves to the earliest wake-up point (like trio's autojump clock), so retry loops run
    instantly while a background timer (breaker recovery) still fires only when simulated time
    really reaches it. Every requested sleep is recorded in `sleeps`.
    """

    def __init__(self, start: float = 1_000.0, *, auto_advance: bool = False) -> None:
        self._now = float(start)
        self.auto_advance = auto_advance
        self.sleeps: list[float] = []
        self._seq = itertools.count()
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._jumper: asyncio.Task[None] | None = None

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        entry = (self._now + seconds, next(self._seq), fut)
        heapq.heappush(self._sleepers, entry)
        if self.auto_advance and (self._jumper is None or self._jumper.done()):
            self._jumper = loop.create_task(self._autojump())
        try:
            await fut
        finally:
            if not fut.done():  # cancelled: drop the entry so it cannot be woken later
                fut.cancel()
                self._sleepers.remove(entry)
                heapq.heapify(self._sleepers)

    @property
    def pending(self) -> int:
        """How many tasks are parked in `sleep`."""
        return sum(1 for _, _, fut in self._sleepers if not fut.done())

    async def _autojump(self, idle_yields: int = 20) -> None:
        while True:
            await _yield(idle_yields)  # let every runnable task run (or park) first
            while self._sleepers and self._sleepers[0][2].done():
                heapq.heappop(self._sleepers)
            if not self._sleepers:
                return
            self.advance(max(0.0, self._sleepers[0][0] - self._now))

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper that is due (they run at the next yield)."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    async def run_for(self, seconds: float, *, yields: int = 20) -> None:
        """Advance in steps, one wake-up time at a time, letting woken tasks run in between.

        Tasks woken at time t often sleep again (a refill wait, the next backoff); stepping
        through wake-up points in order reproduces what real time would do.
        """
        target = self._now + seconds
        await _yield(yields)
        while self._sleepers and self._sleepers[0][0] <= target:
            self.advance(max(0.0, self._sleepers[0][0] - self._now))
            await _yield(yields)
        self.advance(max(0.0, target - self._now))
        await _yield(yields)


async def _yield(times: int) -> None:
    for _ in range(times):
        await asyncio.sleep(0)


# --- hook plumbing ---------------------------------------------------------------------------
# Hooks (retry, rate limit, breaker) may be plain or async methods. A failing hook must never fail the call
# it observes: errors are logged and the default behaviour applies.

_background: set[asyncio.Task[Any]] = set()


async def call_hook(fn: Callable[..., T | Awaitable[T]], *args: Any, default: T) -> T:
    """Run a hook from async code and return its answer (`default` if it raises)."""
    try:
        result = fn(*args)
        if inspect.isawaitable(result):
            return await result
        return result
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("resilience hook %s failed; using the default behaviour", _name(fn))
        return default


def fire_hook(fn: Callable[..., Any], *args: Any) -> None:
    """Run a notification hook from sync code; an async hook runs as a background task."""
    try:
        result = fn(*args)
    except Exception:
        log.exception("resilience hook %s failed", _name(fn))
        return
    if inspect.isawaitable(result):
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (sync caller): the coroutine cannot run; close it quietly
            if inspect.iscoroutine(result):
                result.close()
            return
        task = loop.create_task(_guard(result, _name(fn)))
        _background.add(task)  # keep a reference: the loop only holds weak ones
        task.add_done_callback(_background.discard)


def notify(fn: Callable[..., Any], *args: Any) -> None:
    """Call an observer method; telemetry bugs are logged, never raised into the request."""
    try:
        fn(*args)
    except Exception:
        log.exception("resilience observer %s failed", _name(fn))


async def _guard(awaitable: Awaitable[Any], name: str) -> None:
    try:
        await awaitable
    except Exception:
        log.exception("resilience hook %s failed", name)


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", repr(fn))
