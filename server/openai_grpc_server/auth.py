"""Inbound callers -> tenants -> upstream credentials.

Modes: `none` (every caller uses the default credential: local use and demo) and `tokens`
(callers present `authorization: Bearer <token>`; each token belongs to a tenant with its own
upstream key, organization and project). Callers can never pick the upstream URL or headers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from openai_grpc_server.errors import CallerForbidden, CallerUnauthenticated, MissingApiKey, register_secrets
from openai_grpc_server.resilience.rate_limit import RateLimitConfig


class Secret:
    """A value that never shows itself in repr, str, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('[REDACTED]')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(hashlib.sha256(self._value.encode()).digest())


@dataclasses.dataclass(frozen=True)
class Credential:
    """Who the gateway is towards OpenAI for one tenant."""

    name: str
    api_key: Secret
    organization: str | None = None
    project: str | None = None


@dataclasses.dataclass(frozen=True)
class Tenant:
    name: str
    credential: Credential
    token_digest: bytes
    # The tenant's own requests/tokens per minute/day (`RateLimitConfig.for_tenant`); the
    # limiter keys its buckets by the tenant name, never by its token or key.
    limits: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Authenticator:
    def __init__(self, mode: str, default: Credential | None, tenants: Sequence[Tenant] = ()) -> None:
        if mode not in ("none", "tokens"):
            raise ValueError(f"auth mode must be 'none' or 'tokens', not {mode!r}")
        self.mode = mode
        self.default = default
        self.tenants = tuple(tenants)
        # Redaction is by value: an upstream echoing a key cannot leak it, whatever its shape.
        keys = [t.credential.api_key.reveal() for t in self.tenants]
        register_secrets([*keys, default.api_key.reveal() if default else ""])

    def authenticate(self, metadata: Mapping[str, str]) -> Credential:
        if self.mode == "none":
            if self.default is None or not self.default.api_key:
                raise MissingApiKey("the gateway has no OpenAI API key configured for this caller")
            return self.default
        header = metadata.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise CallerUnauthenticated(
                "send `authorization: Bearer <token>` metadata with a token of this gateway"
            )
        digest = _digest(token.strip())
        found: Tenant | None = None
        # Compare against every tenant so the time taken does not reveal which one matched.
        for tenant in self.tenants:
            if hmac.compare_digest(digest, tenant.token_digest):
                found = tenant
        if found is None:
            raise CallerForbidden("the bearer token is not known to this gateway")
        if not found.credential.api_key:
            raise MissingApiKey(f"tenant {found.name!r} has no OpenAI API key configured")
        return found.credential


def tenants_from_mapping(data: Any, source: Path) -> list[Tenant]:
    """Parse a tenants file: {"tenants": [{"name", "token", "api_key", "organization", "project",
    "limits": {"requests_per_minute", "tokens_per_minute", "requests_per_day", "tokens_per_day"}}]}."""
    items = data.get("tenants") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise ValueError(f"{source}: expected a non-empty `tenants` list")
    tenants: list[Tenant] = []
    for i, item in enumerate(items):
        if (
            not isinstance(item, dict)
            or not item.get("name")
            or not item.get("token")
            or not item.get("api_key")
        ):
            raise ValueError(f"{source}: tenant #{i + 1} needs `name`, `token` and `api_key`")
        name = str(item["name"])
        if any(t.name == name for t in tenants):
            raise ValueError(f"{source}: tenant name {name!r} is used twice (names key the rate limits)")
        limits = item.get("limits") or {}
        if not isinstance(limits, dict):
            raise ValueError(f"{source}: tenant {name!r}: `limits` must be a mapping")
        try:
            RateLimitConfig().for_tenant(limits)
        except ValueError as exc:
            raise ValueError(f"{source}: tenant {name!r}: {exc}") from exc
        cred = Credential(
            name=str(item["name"]),
            api_key=Secret(str(item["api_key"]).strip()),
            organization=item.get("organization"),
            project=item.get("project"),
        )
        tenants.append(Tenant(name, cred, _digest(str(item["token"])), limits))
    # Caller tokens are kept only as digests; their values are known here, once.
    register_secrets(str(item["token"]) for item in items)
    return tenants
