"""Setting values as operators write them, read into their types: the one place for it.

Every reader takes the setting's section and key, so a bad value stops the process with one
line naming it (`retry.max_backoff: expected a duration, got 'soon'`). Values come from the
config file, environment variables or flags: numbers or strings ("0.5", "500ms", "true",
"408,429,500", "unlimited"). `check` is the same one-line error for a value out of range.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

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


def coerce_status_codes(section: str, key: str, value: Any) -> tuple[int, ...]:
    items: Iterable[Any]
    if isinstance(value, str):
        items = [part for part in re.split(r"[,\s]+", value.strip()) if part]
    elif isinstance(value, Iterable):
        items = value
    else:
        raise _err(section, key, f"expected a list of HTTP status codes, got {value!r}")
    return tuple(sorted({coerce_int(section, key, item) for item in items}))


def coerce_optional_str(section: str, key: str, value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def coerce_lower(section: str, key: str, value: Any) -> str:
    return str(value).strip().lower()
