"""Tenants file parsing: each tenant's own rate limits, unique names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from openai_grpc_server.auth import tenants_from_mapping

SRC = Path("tenants.json")


def tenant(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "token": f"tok-{name}", "api_key": f"sk-{name}-key", **extra}


def test_limits_are_read_per_tenant() -> None:
    parsed = tenants_from_mapping(
        {"tenants": [tenant("a", limits={"requests_per_minute": 60, "tokens_per_day": "1000"}), tenant("b")]},
        SRC,
    )
    assert parsed[0].limits == {"requests_per_minute": 60, "tokens_per_day": "1000"}
    assert parsed[1].limits == {}


@pytest.mark.parametrize(
    ("items", "needle"),
    [
        ([tenant("a"), tenant("a")], "tenant name 'a' is used twice"),
        ([tenant("a", limits=[60])], "`limits` must be a mapping"),
        ([tenant("a", limits={"rpm": 60})], "unknown limit"),
        ([tenant("a", limits={"requests_per_minute": 0})], "must be a positive integer"),
    ],
)
def test_bad_tenants_are_refused(items: list[dict[str, Any]], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        tenants_from_mapping({"tenants": items}, SRC)
