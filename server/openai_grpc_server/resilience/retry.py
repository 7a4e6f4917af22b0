"""Retry decisions (seed 9.1): which failures to retry, and how long to wait before the next try.

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
import re
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any, Literal, Protocol, Self

from openai_grpc_server import errors

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


# --- config value parsing (shared by the three configs) --------------------------------------
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration ("20ms", "1s", "6m0s", "1h2m3.5s") or a bare number."""
    raw = text.strip().lower()
    if not raw:
        raise ValueError("empty duration")
    try:
        value = float(raw)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise ValueError(f"not a finite duration: {text!r}")
        return value
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(raw):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(raw) or pos == 0:
        raise ValueError(f"not a duration: {text!r}")
    return total


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_NONE = frozenset({"", "none", "null", "unlimited"})


def _err(section: str, key: str, message: str) -> ValueError:
    return ValueError(f"{section}.{key}: {message}")


def coerce_int(section: str, key: str, value: Any) -> int:
    if isinstance(value, bool):
        raise _err(section, key, f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip().replace("_", ""))
        except ValueError:
            pass
    raise _err(section, key, f"expected an integer, got {value!r}")


def coerce_optional_int(section: str, key: str, value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
        return None
    return coerce_int(section, key, value)


def coerce_float(section: str, key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise _err(section, key, f"expected a number, got {value!r}")
    if isinstance(value, int | float):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value.strip())
        except ValueError:
            raise _err(section, key, f"expected a number, got {value!r}") from None
    else:
        raise _err(section, key, f"expected a number, got {value!r}")
    if not math.isfinite(result):
        raise _err(section, key, f"expected a finite number, got {value!r}")
    return result


def coerce_seconds(section: str, key: str, value: Any) -> float:
    """A duration: a number of seconds, or a string like "500ms", "30s", "1m"."""
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError:
            raise _err(section, key, f"expected seconds or a duration like '500ms', got {value!r}") from None
    return coerce_float(section, key, value)


def coerce_bool(section: str, key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    raise _err(section, key, f"expected true or false, got {value!r}")


def coerce_mapping(
    section: str, cls: type[Any], data: Mapping[str, Any], coercers: Mapping[str, Any]
) -> dict[str, Any]:
    """Coerce each known key; an unknown key is an error (a typo must not silently do nothing)."""
    known = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise ValueError(f"{section}.{key}: unknown setting (known: {', '.join(sorted(known))})")
        out[key] = coercers[key](section, key, value)
    return out


def check(ok: bool, section: str, key: str, message: str) -> None:
    if not ok:
        raise _err(section, key, message)


def _coerce_status_codes(section: str, key: str, value: Any) -> tuple[int, ...]:
    items: Iterable[Any]
    if isinstance(value, str):
        items = [part for part in re.split(r"[,\s]+", value.strip()) if part]
    elif isinstance(value, Iterable):
        items = value
    else:
        raise _err(section, key, f"expected a list of HTTP status codes, got {value!r}")
    return tuple(sorted({coerce_int(section, key, item) for item in items}))


# --- config ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RetryConfig:
    """Seed 9.1.1. Durations in seconds."""

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

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Self:
        """Build from env/file values: numbers or strings ("0.5", "500ms", "408,429,500")."""
        return cls(
            **coerce_mapping(
                "retry",
                cls,
                data,
                {
                    "max_retries": coerce_int,
                    "initial_backoff": coerce_seconds,
                    "max_backoff": coerce_seconds,
                    "backoff_multiplier": coerce_float,
                    "jitter": coerce_float,
                    "retryable_status_codes": _coerce_status_codes,
                },
            )
        )


# --- hook (seed 9.1.2) -----------------------------------------------------------------------
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
    """Seed 9.1.2. Methods may be plain or `async`; subclass to inherit the no-op defaults.

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
