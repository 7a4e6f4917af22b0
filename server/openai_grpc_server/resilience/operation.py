"""What one upstream call is, as every resilience piece sees it.

`Operation` lives apart from the policy so the breaker and the limiters, which the policy
combines, can name it without importing the policy back.
"""

from __future__ import annotations

import dataclasses

__all__ = ["Attempt", "Operation"]


@dataclasses.dataclass(frozen=True)
class Operation:
    endpoint: str  # "POST /chat/completions": breaker key when per_endpoint, metric label
    credential: str  # rate-limit bucket key: a tenant/credential id (never the API key itself)
    token_estimate: int = 0  # tokens to reserve before sending (prompt estimate + max output)
    deadline: float | None = None  # absolute time on the policy's clock; None = no deadline
    # False when an attempt cannot be repeated (an upload whose body was consumed as it was sent).
    replayable: bool = True


@dataclasses.dataclass(frozen=True)
class Attempt:
    number: int  # 1-based
    timeout: float | None  # seconds left before the deadline, for the HTTP timeout
