"""Per-endpoint behaviour: the one table of what some OpenAI endpoints need beyond the generic
route (everything else follows from the contract's descriptors).

Each row matches endpoints as `METHOD /path/template` with `*` wildcards and says what it sets
and why; an endpoint takes every row that matches, in order. The behaviour is resolved once per
route when the route table is built (`Route.behaviour`), never per call. Each row is tested in
tests/unit/test_endpoints.py.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any

ASSISTANTS_BETA = "assistants=v2"
# Content types of transcripts asked for as text, srt or vtt: the resource's `text` carries them.
TRANSCRIPT_TEXT_TYPES = ("text/plain", "text/vtt", "application/x-subrip", "text/srt")


@dataclasses.dataclass(frozen=True)
class Behaviour:
    # `OpenAI-Beta` header the endpoint wants; the gateway adds it so callers need not know.
    beta: str | None = None
    # Ask for embeddings as base64 and unpack them into floats here (docs/benchmarks.md levers).
    embeddings_base64: bool = False
    # The stream has `stream_options.include_usage`: the gateway always asks for usage (for the
    # token limiter and metrics) and hides the usage-only chunk from a caller that did not ask.
    stream_usage: bool = False
    # Event types (SSE `event:` or the payload's `type`) that finish the stream besides [DONE].
    terminal_events: frozenset[str] = frozenset()
    # Multipart field of an upload chunk whose `field` is empty.
    upload_field: str = "file"
    # A POST that changes a resource's state: OpenAI's 400 there means "wrong state for that"
    # (cancel a finished batch), FAILED_PRECONDITION rather than INVALID_ARGUMENT.
    state_change: bool = False
    # Local checks of a chat request (model, messages, ranges) before any upstream call.
    chat_rules: bool = False
    # Answer content types taken whole as the resource's `text` instead of parsed as JSON.
    text_types: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Row:
    pattern: str
    why: str
    sets: dict[str, Any]

    def matches(self, endpoint: str) -> bool:
        return fnmatch.fnmatchcase(endpoint, self.pattern)


def _row(pattern: str, why: str, **sets: Any) -> Row:
    unknown = set(sets) - {f.name for f in dataclasses.fields(Behaviour)}
    if unknown:
        raise TypeError(f"endpoint row {pattern!r} sets unknown behaviour {sorted(unknown)}")
    return Row(pattern, why, sets)


_STATE_CHANGE = "a 400 on this state change means the resource is in the wrong state"

TABLE: tuple[Row, ...] = (
    _row("* /assistants*", "Assistants API v2 is a beta API", beta=ASSISTANTS_BETA),
    _row("* /threads*", "Assistants API v2 is a beta API", beta=ASSISTANTS_BETA),
    _row("* /vector_stores*", "Assistants API v2 is a beta API", beta=ASSISTANTS_BETA),
    _row(
        "POST /threads*",
        "Assistants streams end with an `event: done` (whose data is [DONE])",
        terminal_events=frozenset({"done"}),
    ),
    _row("POST /embeddings", "base64 costs a fifth of float JSON to move and parse", embeddings_base64=True),
    _row(
        "POST /chat/completions",
        "chat requests are checked locally; streams report usage only when asked",
        chat_rules=True,
        stream_usage=True,
    ),
    _row("POST /completions", "streams report usage only when asked", stream_usage=True),
    _row(
        "POST /responses",
        "a Responses stream ends with its final response event",
        terminal_events=frozenset({"response.completed", "response.failed", "response.incomplete"}),
    ),
    _row(
        "POST /images/generations",
        "an image stream ends with its completed event",
        terminal_events=frozenset({"image_generation.completed"}),
    ),
    _row(
        "POST /images/edits",
        "the image to edit is the `image` part; a streamed edit ends with its completed event",
        upload_field="image",
        terminal_events=frozenset({"image_edit.completed"}),
    ),
    _row("POST /images/variations", "the source image is the `image` part", upload_field="image"),
    _row(
        "POST /uploads/{upload_id}/parts", "an upload part's bytes are its `data` part", upload_field="data"
    ),
    _row("POST */cancel", _STATE_CHANGE, state_change=True),
    _row("POST */pause", _STATE_CHANGE, state_change=True),
    _row("POST */resume", _STATE_CHANGE, state_change=True),
    _row("POST */complete", _STATE_CHANGE, state_change=True),
    _row("POST */submit_tool_outputs", _STATE_CHANGE, state_change=True),
    _row(
        "POST /audio/transcriptions",
        "transcripts asked for as text, srt or vtt come back as that text",
        text_types=TRANSCRIPT_TEXT_TYPES,
    ),
    _row(
        "POST /audio/translations",
        "translations asked for as text, srt or vtt come back as that text",
        text_types=TRANSCRIPT_TEXT_TYPES,
    ),
)

GENERIC = Behaviour()


def behaviour_for(endpoint: str) -> Behaviour:
    """The behaviour of `METHOD /path/template`: every matching row applied in order."""
    sets: dict[str, Any] = {}
    for row in TABLE:
        if row.matches(endpoint):
            sets.update(row.sets)
    return dataclasses.replace(GENERIC, **sets) if sets else GENERIC
