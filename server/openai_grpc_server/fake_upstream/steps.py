"""Scripted responses: `Step` says how to answer one request; `ScriptBook` queues them per route."""

from __future__ import annotations

import base64
import dataclasses
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Step:
    """How to answer the next matching request. `Step()` answers normally.

    Precedence: `drop`, then `raw_body`, then `body`, then `status >= 400` (an OpenAI error
    body built from error_type/error_code/message/param), else the normal answer with the
    overrides below applied.
    """

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_ms: float = 0.0
    # Close the connection without answering (after delay_ms).
    drop: bool = False
    # Sent verbatim (str is UTF-8 encoded) with `content_type` (default application/json).
    raw_body: bytes | str | None = None
    content_type: str | None = None
    # A JSON value replacing the normal or error body.
    body: Any = None
    error_type: str | None = None
    error_code: str | None = None
    message: str | None = None
    param: str | None = None
    # Unknown keys merged into the JSON body (and into every streamed event object).
    extra_fields: dict[str, Any] = field(default_factory=dict)
    # Streams (SSE, and binary downloads for gap_ms/cut_after_bytes/split).
    chunks: int | None = None
    gap_ms: float | None = None
    # Close the connection after K events, without [DONE]; cut_clean ends the HTTP
    # body properly instead of aborting mid-chunked-encoding.
    cut_after: int | None = None
    cut_clean: bool = False
    # Send an in-stream error event after K events, then end the stream.
    error_event_after: int | None = None
    # Write the response bytes in pieces of `split` bytes (1 = one byte per write);
    # with split_seed, piece sizes are random in [1, split or 64] from that seed.
    split: int = 0
    split_seed: int | None = None
    # Binary downloads: close the connection after this many body bytes.
    cut_after_bytes: int | None = None
    # Apply to this many requests, or (if set) to every request for this many seconds
    # counted from the first request it answers.
    repeat: int = 1
    for_seconds: float | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Step:
        """Build from JSON (the /_fake/script route); `raw_body_b64` carries binary bodies."""
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key == "route":
                continue
            if key == "raw_body_b64":
                kwargs["raw_body"] = base64.b64decode(value)
            elif key in known:
                kwargs[key] = value
            else:
                raise ValueError(f"unknown Step field {key!r}")
        return cls(**kwargs)


def normalize_route(route: str) -> str:
    """`post /v1/chat/completions` -> `POST /chat/completions`; `*` and `POST *` kept."""
    route = route.strip()
    if route == "*":
        return route
    method, _, path = route.partition(" ")
    path = path.strip()
    if path.startswith("/v1/"):
        path = path[3:]
    return f"{method.upper()} {path}"


@dataclass
class _Pending:
    step: Step
    remaining: int
    started_at: float | None = None


class ScriptBook:
    """FIFO queues of steps keyed by route (`METHOD /template`, `METHOD /concrete/path`,
    `METHOD *` or `*`)."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[_Pending]] = {}

    def add(self, route: str, steps: Iterable[Step]) -> None:
        queue = self._queues.setdefault(normalize_route(route), deque())
        for step in steps:
            queue.append(_Pending(step, max(1, step.repeat)))

    def clear(self, route: str | None = None) -> None:
        if route is None:
            self._queues.clear()
        else:
            self._queues.pop(normalize_route(route), None)

    def pending(self) -> dict[str, int]:
        return {route: len(q) for route, q in self._queues.items() if q}

    def take(self, keys: Iterable[str]) -> Step | None:
        """The step for a request matching `keys` (most specific first), consuming it."""
        if not self._queues:
            return None
        now = time.monotonic()
        for key in keys:
            queue = self._queues.get(key)
            while queue:
                head = queue[0]
                window = head.step.for_seconds
                if window is not None:
                    if head.started_at is None:
                        head.started_at = now
                    if now - head.started_at < window:
                        return head.step
                    queue.popleft()
                    continue
                head.remaining -= 1
                if head.remaining <= 0:
                    queue.popleft()
                return head.step
        return None
