"""JSON comparison after a trip through the codec: what proto3 cannot tell apart counts as equal."""

from __future__ import annotations

from typing import Any


def normal(value: Any) -> Any:
    if isinstance(value, dict):
        out = {k: normal(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not None and v not in ([], {})}
    if isinstance(value, list):
        return [normal(v) for v in value]
    if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) > 2**53:
        # `extra` is a Struct, whose numbers are doubles: integers past 2**53 keep 53 bits.
        return float(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def drop_filled_defaults(back: Any, original: Any) -> Any:
    """Examples sometimes omit a field the spec requires; the proto then writes its zero value.

    That adds a default, it loses nothing, so such keys are not counted as differences.
    """
    if isinstance(back, dict) and isinstance(original, dict):
        return {
            k: drop_filled_defaults(v, original.get(k))
            for k, v in back.items()
            if k in original or v not in (0, False, "", [], {})
        }
    if isinstance(back, list) and isinstance(original, list) and len(back) == len(original):
        return [drop_filled_defaults(b, o) for b, o in zip(back, original, strict=True)]
    return back
