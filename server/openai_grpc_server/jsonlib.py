"""JSON on the request path: orjson, or the standard library (a benchmark lever).

Callers use `jsonlib.dumps` / `jsonlib.loads` through the module, so `use()` at start-up
switches every path at once. orjson's JSONDecodeError subclasses the standard library's, so
`json.JSONDecodeError` catches both.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson

JSONDecodeError = json.JSONDecodeError


def _std_dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


dumps: Callable[[Any], bytes] = orjson.dumps
loads: Callable[[bytes | str], Any] = orjson.loads


def use(name: str) -> None:
    global dumps, loads
    if name == "orjson":
        dumps, loads = orjson.dumps, orjson.loads
    elif name == "stdlib":
        dumps, loads = _std_dumps, json.loads
    else:
        raise ValueError(f"json_library must be 'orjson' or 'stdlib', not {name!r}")
