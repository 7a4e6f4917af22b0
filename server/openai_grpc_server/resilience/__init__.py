"""Resilience for upstream calls (docs/architecture.md, Resilience): retry with backoff and
Retry-After, per-credential token-bucket rate limits, and a circuit breaker, combined per
attempt by `ResiliencePolicy.execute`."""

from .breaker import (
    GLOBAL_BREAKER,
    BreakerConfig,
    BreakerRegistry,
    CircuitBreaker,
    CircuitBreakerHook,
    CircuitState,
    CircuitStats,
    Permit,
    RequestOutcome,
)
from .clock import Clock, FakeClock, MonotonicClock
from .operation import Attempt, Operation
from .policy import NullObserver, ResilienceObserver, ResiliencePolicy
from .rate_limit import (
    RateLimitConfig,
    RateLimitDecision,
    RateLimiter,
    RateLimitHeaders,
    RateLimitHook,
    RateLimitType,
    Reservation,
)
from .retry import RetryConfig, RetryDecision, RetryHook, RetryPlan, RetryPolicy, Verdict, parse_duration

__all__ = [
    "GLOBAL_BREAKER",
    "Attempt",
    "BreakerConfig",
    "BreakerRegistry",
    "CircuitBreaker",
    "CircuitBreakerHook",
    "CircuitState",
    "CircuitStats",
    "Clock",
    "FakeClock",
    "MonotonicClock",
    "NullObserver",
    "Operation",
    "Permit",
    "RateLimitConfig",
    "RateLimitDecision",
    "RateLimitHeaders",
    "RateLimitHook",
    "RateLimitType",
    "RateLimiter",
    "RequestOutcome",
    "Reservation",
    "ResilienceObserver",
    "ResiliencePolicy",
    "RetryConfig",
    "RetryDecision",
    "RetryHook",
    "RetryPlan",
    "RetryPolicy",
    "Verdict",
    "parse_duration",
]
