"""Retry decisions: which failures to retry, and how long to wait before the next try.

This module is pure: it decides, `policy.py` sleeps. The decision for one failed attempt:

1. Never retried, whatever the headers say: quota exhaustion (`insufficient_quota`), auth,
   configuration, validation and content-policy errors, a request larger than a local bucket,
   and local rejections (circuit open). Retrying them cannot succeed and only burns budget.
2. `x-should-retry: true|false` from the upstream decides next (it knows better than a status).
3. An upstream answer retries when its status is in `retryable_status_codes`.
4. A failure without an answer (connect error, timeout, stream cut) retries when its taxonomy
   class says so (`OpenAIError.retryable`; a TLS failure does not).

The wait honours the upstream's `retry-after-ms` / `retry-after` (already parsed into
`error.retry_after`); otherwise it is exponential backoff with jitter. An upstream that asks
for longer than `max_backoff` is not retried here: the caller gets the error with its
`retry_after` (-> RetryInfo) instead of a gateway holding the call open for minutes.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import random
from collections.abc import Awaitable, Mapping
from typing import Literal, Protocol

from openai_grpc_server import errors
from openai_grpc_server.coerce import check, parse_duration

__all__ = [
    "RetryConfig",
    "RetryDecision",
    "RetryHook",
    "RetryPlan",
    "RetryPolicy",
    "Verdict",
    "header",
    "parse_duration",
    "should_retry_header",
]


# --- config ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RetryConfig:
    """The `retry:` settings (read in config.py). Durations in seconds."""

    max_retries: int = 3
    initial_backoff: float = 0.5
    max_backoff: float = 60.0
    backoff_multiplier: float = 2.0
    jitter: float = 0.1
    retryable_status_codes: tuple[int, ...] = (408, 409, 429, 500, 502, 503, 504, 529)

    def __post_init__(self) -> None:
        s = "retry"
        check(self.max_retries >= 0, s, "max_retries", f"must be >= 0, got {self.max_retries}")
        check(self.initial_backoff >= 0, s, "initial_backoff", f"must be >= 0, got {self.initial_backoff}")
        check(
            self.max_backoff >= self.initial_backoff,
            s,
            "max_backoff",
            f"must be >= initial_backoff ({self.initial_backoff}), got {self.max_backoff}",
        )
        check(
            self.backoff_multiplier >= 1.0,
            s,
            "backoff_multiplier",
            f"must be >= 1, got {self.backoff_multiplier}",
        )
        check(0.0 <= self.jitter <= 1.0, s, "jitter", f"must be between 0 and 1, got {self.jitter}")
        for code in self.retryable_status_codes:
            check(100 <= code <= 599, s, "retryable_status_codes", f"not an HTTP status code: {code}")
        # Normalise so equal configs compare equal whatever order the codes came in.
        object.__setattr__(self, "retryable_status_codes", tuple(sorted(set(self.retryable_status_codes))))


# --- hook ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RetryDecision:
    """What a `RetryHook` wants: `retry(delay)`, `abort()` or `default()`."""

    action: Literal["retry", "abort", "default"]
    delay: float | None = None

    @classmethod
    def retry(cls, delay: float) -> RetryDecision:
        if not (math.isfinite(delay) and delay >= 0):
            raise ValueError(f"retry delay must be a finite number >= 0, got {delay}")
        return cls("retry", delay)

    @classmethod
    def abort(cls) -> RetryDecision:
        return cls("abort")

    @classmethod
    def default(cls) -> RetryDecision:
        return cls("default")


class RetryHook(Protocol):
    """Methods may be plain or `async`; subclass to inherit the no-op defaults.

    `on_retry` is consulted only when the policy would retry; it can change the delay or abort,
    but even its delay never sleeps past the caller's deadline. `attempt` is the number of the
    attempt about to start (2 = first retry).
    """

    def on_retry(
        self, attempt: int, error: errors.OpenAIError, next_delay: float
    ) -> RetryDecision | Awaitable[RetryDecision]:
        return RetryDecision.default()

    def on_exhausted(self, error: errors.OpenAIError, attempts: int) -> Awaitable[None] | None:
        """The retry budget (count or deadline) ran out; `error` is what the caller gets."""
        return None


# --- decisions -------------------------------------------------------------------------------
class Verdict(enum.Enum):
    RETRY = "retry"
    NOT_RETRYABLE = "not_retryable"  # this failure can never succeed on a retry
    EXHAUSTED = "exhausted"  # max_retries reached
    TOO_LONG = "too_long"  # upstream asked to wait longer than max_backoff


@dataclasses.dataclass(frozen=True)
class RetryPlan:
    verdict: Verdict
    delay: float = 0.0  # seconds to wait before the next attempt (RETRY only)


# Failures no retry can fix. Local rejections (circuit open, a request bigger than a bucket)
# are here too: repeating them at once only repeats the rejection.
_NEVER_RETRY: tuple[type[errors.OpenAIError], ...] = (
    errors.QuotaExceeded,
    errors.TokenLimitExceeded,
    errors.AuthenticationError,
    errors.ConfigurationError,
    errors.RequestError,
    errors.ContentPolicyError,
    errors.CallerError,
    errors.CircuitOpen,
    errors.GatewayInternal,
)
_QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached"})


def header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup that works for plain dicts as well as httpx.Headers."""
    value = headers.get(name)
    if value is not None:
        return value
    for key, val in headers.items():
        if key.lower() == name:
            return val
    return None


def should_retry_header(headers: Mapping[str, str]) -> bool | None:
    """`x-should-retry: true|false` -> True/False; absent or unreadable -> None."""
    raw = header(headers, "x-should-retry")
    if raw is None:
        return None
    lowered = raw.strip().lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    return None


class RetryPolicy:
    """Applies a `RetryConfig` to one failure at a time. `rng` is injectable for tests."""

    def __init__(self, config: RetryConfig | None = None, *, rng: random.Random | None = None) -> None:
        self.config = config or RetryConfig()
        self._rng = rng or random.Random()

    def is_retryable(self, error: errors.OpenAIError) -> bool:
        if isinstance(error, _NEVER_RETRY):
            return False
        if error.openai_code in _QUOTA_CODES or error.openai_type in _QUOTA_CODES:
            return False
        forced = should_retry_header(error.headers)
        if forced is not None:
            return forced
        if error.upstream_status is not None:
            return error.upstream_status in self.config.retryable_status_codes
        return type(error).retryable

    def backoff(self, retry: int) -> float:
        """Delay before retry number `retry` (1 = first retry), jitter applied.

        base = initial * multiplier^(retry-1), capped at max_backoff; the result is
        base * (1 +/- jitter), never above max_backoff and never negative. Jitter keeps a
        fleet of gateways from retrying in lock-step after a shared outage.
        """
        cfg = self.config
        exponent = max(0, retry - 1)
        try:
            base = cfg.initial_backoff * cfg.backoff_multiplier**exponent
        except OverflowError:
            base = cfg.max_backoff
        base = min(base, cfg.max_backoff)
        spread = cfg.jitter * (2.0 * self._rng.random() - 1.0)
        return max(0.0, min(cfg.max_backoff, base * (1.0 + spread)))

    def plan(self, error: errors.OpenAIError, retries_done: int) -> RetryPlan:
        """Decide after a failed attempt; `retries_done` retries have already been made."""
        if not self.is_retryable(error):
            return RetryPlan(Verdict.NOT_RETRYABLE)
        if retries_done >= self.config.max_retries:
            return RetryPlan(Verdict.EXHAUSTED)
        asked = error.retry_after
        if asked is not None and asked > 0:
            if asked > self.config.max_backoff:
                return RetryPlan(Verdict.TOO_LONG, asked)
            return RetryPlan(Verdict.RETRY, asked)
        return RetryPlan(Verdict.RETRY, self.backoff(retries_done + 1))
