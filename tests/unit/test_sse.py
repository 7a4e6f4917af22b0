"""The incremental SSE decoder against the WHATWG HTML "event stream interpretation" rules.

Every table case is decoded the way the gateway reads an upstream body: `feed` once per network
chunk, then `close` at end of stream. The property test at the end checks that where a stream
is cut into chunks never changes what it decodes to.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai_grpc_server.upstream.sse import SSEDecoder, SSEEvent

BOM = b"\xef\xbb\xbf"


def ev(data: str, event: str = "", id: str | None = None, retry: int | None = None) -> SSEEvent:
    return SSEEvent(data=data, event=event, id=id, retry=retry)


def decode(chunks: Iterable[bytes]) -> list[SSEEvent]:
    """Feed every chunk, then close: all events the stream produced, in order."""
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.close())
    return events


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """`data` cut at the given offsets (empty pieces included, the decoder must accept them)."""
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def one_byte_chunks(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# --- line endings ----------------------------------------------------------------------------

LINE_ENDINGS: list[tuple[str, Sequence[bytes], list[SSEEvent]]] = [
    ("lf", [b"data: a\n\n"], [ev("a")]),
    ("cr", [b"data: a\r\r"], [ev("a")]),
    ("crlf", [b"data: a\r\n\r\n"], [ev("a")]),
    ("lf-two-events", [b"data: a\n\ndata: b\n\n"], [ev("a"), ev("b")]),
    ("cr-two-events", [b"data: a\r\rdata: b\r\r"], [ev("a"), ev("b")]),
    ("crlf-two-events", [b"data: a\r\n\r\ndata: b\r\n\r\n"], [ev("a"), ev("b")]),
    ("mixed-in-one-event", [b"data: a\r\ndata: b\rdata: c\n\r\n"], [ev("a\nb\nc")]),
    ("mixed-across-events", [b"data: a\n\r\ndata: b\r\rdata: c\r\n\n"], [ev("a"), ev("b"), ev("c")]),
    ("cr-then-crlf-is-two-line-ends", [b"data: a\r\r\n"], [ev("a")]),
    ("lf-then-cr-is-two-line-ends", [b"data: a\n\r"], [ev("a")]),
    ("lfcr-is-not-one-line-end", [b"data: a\n\rdata: b\n\n"], [ev("a"), ev("b")]),
    # CR at the end of one chunk, LF at the start of the next: ONE line end. Counting it twice
    # would end the event after "a" and produce two events.
    ("crlf-split-across-chunks", [b"data: a\r", b"\ndata: b\r\n\r\n"], [ev("a\nb")]),
    ("crlf-split-blank-line", [b"data: a\r\n\r", b"\n"], [ev("a")]),
    ("crlf-split-blank-line-then-more", [b"data: a\r\n\r", b"\ndata: b\n\n"], [ev("a"), ev("b")]),
    ("cr-then-other-chunk-is-a-line-end", [b"data: a\r", b"data: b\r", b"\r"], [ev("a\nb")]),
    (
        "every-byte-its-own-chunk-crlf",
        one_byte_chunks(b"data: a\r\ndata: b\r\n\r\n"),
        [ev("a\nb")],
    ),
    (
        "cr-and-lf-as-separate-chunks",
        [b"data: a", b"\r", b"\n", b"data: b", b"\r", b"\n", b"\r", b"\n"],
        [ev("a\nb")],
    ),
    ("empty-chunks-in-between", [b"", b"data: a\r", b"", b"\n", b"", b"\r\n", b""], [ev("a")]),
]


@pytest.mark.parametrize(
    ("chunks", "expected"), [c[1:] for c in LINE_ENDINGS], ids=[c[0] for c in LINE_ENDINGS]
)
def test_line_endings(chunks: Sequence[bytes], expected: list[SSEEvent]) -> None:
    assert decode(chunks) == expected


# --- fields ----------------------------------------------------------------------------------

FIELDS: list[tuple[str, bytes, list[SSEEvent]]] = [
    # data
    ("multi-line-data-joined-with-lf", b"data: a\ndata: b\ndata: c\n\n", [ev("a\nb\nc")]),
    ("empty-data-lines-kept", b"data: a\ndata:\ndata: c\n\n", [ev("a\n\nc")]),
    ("single-empty-data-line", b"data:\n\n", [ev("")]),
    ("two-empty-data-lines", b"data\ndata\n\n", [ev("\n")]),
    ("no-colon-is-field-with-empty-value", b"data\n\n", [ev("")]),
    ("no-colon-event-resets-to-default", b"event\ndata: x\n\n", [ev("x")]),
    ("no-colon-id-sets-empty-id", b"id: 1\ndata: a\n\nid\ndata: b\n\n", [ev("a", id="1"), ev("b", id="")]),
    ("data-with-space", b"data: a\n\n", [ev("a")]),
    ("data-without-space", b"data:a\n\n", [ev("a")]),
    ("only-one-space-stripped", b"data:  a\n\n", [ev(" a")]),
    ("three-spaces-two-kept", b"data:   a\n\n", [ev("  a")]),
    ("only-a-space", b"data: \n\n", [ev("")]),
    ("tab-not-stripped", b"data:\ta\n\n", [ev("\ta")]),
    ("trailing-space-kept", b"data: a \n\n", [ev("a ")]),
    ("colon-inside-value-kept", b'data: {"a": "b:c"}\n\n', [ev('{"a": "b:c"}')]),
    ("second-colon-is-value", b"data::a\n\n", [ev(":a")]),
    # comments
    ("comment-ignored", b": keep-alive\ndata: a\n: another\n\n", [ev("a")]),
    ("comment-without-text", b":\ndata: a\n\n", [ev("a")]),
    ("comment-only-block-does-not-dispatch", b": ping\n\n", []),
    ("comment-looking-like-data", b":data: x\ndata: a\n\n", [ev("a")]),
    ("comments-only-stream", b": a\n: b\n:\n\n", []),
    # event
    ("event-name", b"event: delta\ndata: a\n\n", [ev("a", "delta")]),
    ("event-name-without-space", b"event:delta\ndata: a\n\n", [ev("a", "delta")]),
    ("event-reset-after-dispatch", b"event: delta\ndata: a\n\ndata: b\n\n", [ev("a", "delta"), ev("b")]),
    ("event-reset-by-blank-line-without-data", b"event: x\n\ndata: b\n\n", [ev("b")]),
    ("last-event-line-wins", b"event: a\nevent: b\ndata: x\n\n", [ev("x", "b")]),
    ("event-after-data-in-same-block", b"data: x\nevent: late\n\n", [ev("x", "late")]),
    # id
    ("id-kept-across-events", b"id: 1\ndata: a\n\ndata: b\n\n", [ev("a", id="1"), ev("b", id="1")]),
    ("id-updated", b"id: 1\ndata: a\n\nid: 2\ndata: b\n\n", [ev("a", id="1"), ev("b", id="2")]),
    ("id-set-by-block-without-data-persists", b"id: 7\n\ndata: a\n\n", [ev("a", id="7")]),
    ("id-with-nul-ignored", b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n", [ev("a", id="1"), ev("b", id="1")]),
    ("id-with-nul-first-leaves-none", b"id: \x00\ndata: a\n\n", [ev("a")]),
    ("no-id-is-none", b"data: a\n\n", [ev("a", id=None)]),
    # retry
    ("retry-digits", b"retry: 1500\ndata: a\n\n", [ev("a", retry=1500)]),
    ("retry-without-space", b"retry:0\ndata: a\n\n", [ev("a", retry=0)]),
    ("retry-letters-ignored", b"retry: 15a\ndata: a\n\n", [ev("a")]),
    ("retry-negative-ignored", b"retry: -1\ndata: a\n\n", [ev("a")]),
    ("retry-decimal-ignored", b"retry: 1.5\ndata: a\n\n", [ev("a")]),
    ("retry-empty-ignored", b"retry:\ndata: a\n\n", [ev("a")]),
    ("retry-inner-space-ignored", b"retry: 1 0\ndata: a\n\n", [ev("a")]),
    ("retry-plus-sign-ignored", b"retry: +5\ndata: a\n\n", [ev("a")]),
    ("retry-non-ascii-digits-ignored", "retry: \u0661\u0662\ndata: a\n\n".encode(), [ev("a")]),
    ("retry-fullwidth-digits-ignored", "retry: \uff11\uff12\ndata: a\n\n".encode(), [ev("a")]),
    ("retry-superscript-ignored", "retry: \u00b2\ndata: a\n\n".encode(), [ev("a")]),
    # unknown fields
    ("unknown-field-ignored", b"foo: bar\ndata: a\n\n", [ev("a")]),
    ("field-names-are-case-sensitive", b"Data: x\nDATA: y\nEvent: e\nID: 9\ndata: a\n\n", [ev("a")]),
    ("space-before-colon-is-another-field", b"data : x\ndata: a\n\n", [ev("a")]),
    ("unknown-field-only-does-not-dispatch", b"foo: bar\n\n", []),
    # an empty data buffer does not dispatch
    ("blank-lines-only", b"\n\n\n\r\n\r", []),
    ("event-and-id-without-data", b"event: x\nid: 1\n\n", []),
    ("retry-without-data", b"retry: 10\n\n", []),
    ("blank-lines-between-events", b"\n\ndata: a\n\n\n\n\ndata: b\n\n", [ev("a"), ev("b")]),
    # byte order mark
    ("bom-stripped", BOM + b"data: a\n\n", [ev("a")]),
    ("bom-before-comment", BOM + b": hi\ndata: a\n\n", [ev("a")]),
    ("only-one-bom-stripped", BOM + BOM + b"data: a\n\ndata: b\n\n", [ev("b")]),
    ("bom-later-in-stream-not-stripped", b"data: a\n\n" + BOM + b"data: b\n\n", [ev("a")]),
    ("bom-inside-value-kept", b"data: " + BOM + b"x\n\n", [ev("\ufeffx")]),
    # text
    ("utf8-multibyte", "data: héllo 世界 🎉\n\n".encode(), [ev("héllo 世界 🎉")]),
    ("invalid-utf8-replaced", b"data: a\xffb\n\n", [ev("a\ufffdb")]),
    ("nul-in-data-kept", b"data: a\x00b\n\n", [ev("a\x00b")]),
    # OpenAI's terminator
    ("done", b"data: [DONE]\n\n", [ev("[DONE]")]),
    (
        "openai-stream",
        b'data: {"id":"c1","choices":[{"delta":{"content":"Hi"}}]}\n\n'
        b'data: {"id":"c1","choices":[]}\n\n'
        b"data: [DONE]\n\n",
        [
            ev('{"id":"c1","choices":[{"delta":{"content":"Hi"}}]}'),
            ev('{"id":"c1","choices":[]}'),
            ev("[DONE]"),
        ],
    ),
    (
        "assistants-stream",
        b'event: thread.run.created\ndata: {"id":"run_1"}\n\nevent: done\ndata: [DONE]\n\n',
        [ev('{"id":"run_1"}', "thread.run.created"), ev("[DONE]", "done")],
    ),
]


@pytest.mark.parametrize(("stream", "expected"), [c[1:] for c in FIELDS], ids=[c[0] for c in FIELDS])
def test_fields(stream: bytes, expected: list[SSEEvent]) -> None:
    assert decode([stream]) == expected


@pytest.mark.parametrize(("stream", "expected"), [c[1:] for c in FIELDS], ids=[c[0] for c in FIELDS])
def test_fields_fed_one_byte_at_a_time(stream: bytes, expected: list[SSEEvent]) -> None:
    assert decode(one_byte_chunks(stream)) == expected


# --- chunk boundaries ------------------------------------------------------------------------

# BOM, every line-ending style, multi-byte characters (2, 3 and 4 bytes), comments and fields.
MIXED = (
    BOM
    + b": opening comment\r\n"
    + "id: ü-1\r\nevent: délta\rdata: héllo\ndata: 世界 🎉\r\n\r\n".encode()
    + b"retry: 250\rdata: x\r\r"
    + b'data: {"k":"v"}\n\n'
    + b"data: [DONE]\r\n\r\n"
)
MIXED_EVENTS = [
    ev("héllo\n世界 🎉", "délta", "ü-1"),
    ev("x", "", "ü-1", 250),
    ev('{"k":"v"}', "", "ü-1"),
    ev("[DONE]", "", "ü-1"),
]


def test_mixed_stream_in_one_piece() -> None:
    assert decode([MIXED]) == MIXED_EVENTS


@pytest.mark.parametrize("cut", range(len(MIXED) + 1))
def test_split_at_every_offset(cut: int) -> None:
    assert decode(split_at(MIXED, [cut])) == MIXED_EVENTS


def test_split_at_every_pair_of_offsets() -> None:
    for i in range(len(MIXED) + 1):
        for j in range(i, len(MIXED) + 1, 3):
            assert decode(split_at(MIXED, [i, j])) == MIXED_EVENTS, (i, j)


def test_one_byte_chunks() -> None:
    assert decode(one_byte_chunks(MIXED)) == MIXED_EVENTS


@pytest.mark.parametrize(
    "chunks",
    [
        [b"\xef", b"\xbb\xbfdata: a\n\n"],
        [b"\xef\xbb", b"\xbfdata: a\n\n"],
        [b"\xef", b"\xbb", b"\xbf", b"data: a\n\n"],
        [b"", b"\xef", b"", b"\xbb\xbf", b"data: a\n\n"],
        [BOM, b"data: a\n\n"],
    ],
    ids=["1+rest", "2+rest", "1+1+1+rest", "with-empty-chunks", "whole-bom-alone"],
)
def test_bom_split_across_chunks(chunks: list[bytes]) -> None:
    assert decode(chunks) == [ev("a")]


@pytest.mark.parametrize(
    "chunks",
    [
        [b"\xef", b"data: a\n\n"],
        [b"\xef\xbb", b"data: a\n\n"],
    ],
    ids=["1-byte", "2-byte"],
)
def test_partial_bom_is_not_stripped(chunks: list[bytes]) -> None:
    """Bytes that only looked like the start of a BOM are data: the first line is no `data` field."""
    assert decode(chunks) == []


@pytest.mark.parametrize(
    ("text", "cut_inside"),
    [("é", 1), ("世", 1), ("世", 2), ("🎉", 1), ("🎉", 2), ("🎉", 3)],
)
def test_multibyte_character_split_across_chunks(text: str, cut_inside: int) -> None:
    head = b"data: a"
    stream = head + text.encode() + b"b\n\n"
    assert decode(split_at(stream, [len(head) + cut_inside])) == [ev(f"a{text}b")]


# --- feed and close --------------------------------------------------------------------------


def test_feed_returns_events_completed_by_that_chunk() -> None:
    d = SSEDecoder()
    assert d.feed(b"data: a\n") == []
    assert d.feed(b"\ndata: b\n\ndata: c") == [ev("a"), ev("b")]
    assert d.feed(b"\n") == []
    assert d.feed(b"\n") == [ev("c")]
    assert d.close() == []


def test_unterminated_final_event_is_dropped() -> None:
    d = SSEDecoder()
    assert d.feed(b"data: a\n\ndata: b") == [ev("a")]
    assert d.close() == []


def test_final_event_without_blank_line_is_dropped() -> None:
    d = SSEDecoder()
    assert d.feed(b"data: a\n\ndata: b\n") == [ev("a")]
    assert d.close() == []


def test_final_lone_cr_ends_its_line_at_close() -> None:
    """`data: a` CR CR: the last CR might be half of a CRLF until the stream ends."""
    d = SSEDecoder()
    assert d.feed(b"data: a\r\r") == []
    assert d.close() == [ev("a")]


def test_final_lone_cr_after_data_line_only_ends_the_line() -> None:
    d = SSEDecoder()
    assert d.feed(b"data: a\r") == []
    assert d.close() == []  # the line ended, but no blank line followed: nothing to dispatch


def test_held_cr_becomes_line_end_when_next_chunk_is_not_lf() -> None:
    d = SSEDecoder()
    assert d.feed(b"data: a\r") == []
    assert d.feed(b"\r") == []  # the first CR is a line end now; the second may be half a CRLF
    assert d.feed(b"data: b\n\n") == [ev("a"), ev("b")]


def test_close_on_empty_decoder() -> None:
    assert SSEDecoder().close() == []


def test_close_with_only_a_partial_bom() -> None:
    d = SSEDecoder()
    assert d.feed(b"\xef\xbb") == []
    assert d.close() == []


# --- property: chunking never changes the result ---------------------------------------------

_TEXT = st.text(
    alphabet=st.characters(exclude_characters="\r\n", codec="utf-8"),
    max_size=12,
)
_EOLS = st.sampled_from(["\n", "\r", "\r\n"])


@st.composite
def event_streams(draw: st.DrawFn) -> tuple[bytes, list[SSEEvent]]:
    """A valid event stream and the events it encodes.

    Lines are (content, line ending) pairs. A CR-terminated line followed by an EMPTY line that
    ends in LF would read as one CRLF, so that one combination is never generated.
    """
    lines: list[tuple[str, str]] = []

    def add(content: str) -> None:
        eol = draw(_EOLS)
        if content == "" and lines and lines[-1][1] == "\r":
            eol = draw(st.sampled_from(["\r", "\r\n"]))
        lines.append((content, eol))

    def field(name: str, value: str) -> str:
        sep = draw(st.sampled_from([": ", ":"]))
        if sep == ":" and value.startswith(" "):
            sep = ": "  # without the space, the value's own leading space would be stripped
        return f"{name}{sep}{value}"

    def comments() -> None:
        for text in draw(st.lists(_TEXT, max_size=2)):
            add(":" + text)

    expected: list[SSEEvent] = []
    last_id: str | None = None
    comments()
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.none() | _TEXT)
        new_id = draw(st.none() | _TEXT.filter(lambda s: "\x00" not in s))
        data = draw(st.lists(_TEXT, min_size=1, max_size=3))
        header: list[str] = []
        if name is not None:
            header.append(field("event", name))
        if new_id is not None:
            header.append(field("id", new_id))
            last_id = new_id
        body = [field("data", d) for d in data]
        block = draw(st.permutations(header)) + body if draw(st.booleans()) else [*body, *header]
        for content in block:
            add(content)
            if draw(st.integers(0, 4)) == 0:
                comments()
        add("")  # the blank line that dispatches
        for _ in range(draw(st.integers(0, 1))):
            add("")  # extra blank lines dispatch nothing
        expected.append(ev("\n".join(data), name or "", last_id))
    raw = "".join(content + eol for content, eol in lines).encode()
    if draw(st.booleans()):
        raw = BOM + raw
    return raw, expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=event_streams(), data=st.data())
def test_any_chunking_decodes_like_one_piece(
    stream: tuple[bytes, list[SSEEvent]], data: st.DataObject
) -> None:
    raw, expected = stream
    whole = decode([raw])
    assert whole == expected
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=12), label="cuts")
    assert decode(split_at(raw, cuts)) == whole
    assert decode(one_byte_chunks(raw)) == whole


# --- size limit and cost (issue 9) -----------------------------------------------------------


def test_one_long_event_in_many_chunks_decodes_whole() -> None:
    # A 1 MiB line in 1 KiB reads: the buffer grows, nothing is lost or split.
    data = b"data: " + b"x" * (1 << 20) + b"\n\n"
    assert decode(data[i : i + 1024] for i in range(0, len(data), 1024)) == [ev("x" * (1 << 20))]


def test_an_event_over_the_limit_stops_the_decoder_after_the_events_before_it() -> None:
    decoder = SSEDecoder(max_event_bytes=100)
    got = decoder.feed(b"data: a\n\ndata: " + b"x" * 200)
    assert got == [ev("a")]
    assert decoder.overflow
    assert decoder.feed(b"\n\ndata: b\n\n") == []  # nothing more is decoded
    assert decoder.close() == []


def test_the_limit_counts_every_data_line_of_one_event() -> None:
    decoder = SSEDecoder(max_event_bytes=100)
    events: list[SSEEvent] = []
    for _ in range(20):
        events += decoder.feed(b"data: 0123456789\n")
    assert events == [] and decoder.overflow


def test_events_at_the_limit_pass_and_the_count_restarts_per_event() -> None:
    decoder = SSEDecoder(max_event_bytes=64)
    line = b"data: " + b"y" * 50 + b"\n\n"
    assert decoder.feed(line * 3) == [ev("y" * 50)] * 3
    assert not decoder.overflow


def test_seen_bytes_tells_a_silent_stream_from_a_non_sse_one() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"<html>not an event stream</html>\n") == []
    assert decoder.seen_bytes == 33


# --- the fast path (nothing pending, LF line ends) agrees with the general decoder -----------


def decode_general(chunks: Iterable[bytes]) -> list[SSEEvent]:
    """As `decode`, but every chunk goes the general, line-by-line way."""
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        if chunk:
            decoder._feed(chunk, events)
    events.extend(decoder.close())
    return events


OPENAI_LIKE = (
    b'data: {"id":"c1","choices":[{"delta":{"content":"Hi"}}]}\n\n'
    b"data: \n\n"
    b"data:{}\n\n"
    b": keep-alive\n\n"
    b"event: thread.run.created\ndata: {}\n\n"
    b'data: {"a":"\xc3\xa9"}\n\n\n\n'
    b"id: 7\ndata: x\n\n"
    b"data: y\n\n"
    b"data: a\ndata: b\n\n"
    b"data: [DONE]\n\n"
)


@settings(max_examples=300, deadline=None)
@given(cuts=st.lists(st.integers(0, len(OPENAI_LIKE)), max_size=6))
def test_fast_path_agrees_with_the_general_decoder(cuts: list[int]) -> None:
    chunks = split_at(OPENAI_LIKE, cuts)
    assert decode(chunks) == decode_general(chunks) == decode_general([OPENAI_LIKE])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=event_streams(), data=st.data())
def test_fast_path_agrees_on_any_stream(stream: tuple[bytes, list[SSEEvent]], data: st.DataObject) -> None:
    raw, _ = stream
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=8), label="cuts")
    chunks = split_at(raw, cuts)
    assert decode(chunks) == decode_general(chunks)


def test_fast_path_keeps_the_size_limit() -> None:
    decoder = SSEDecoder(max_event_bytes=20)
    assert decoder.feed(b"data: short\n\ndata: " + b"x" * 30 + b"\n\ndata: late\n\n") == [ev("short")]
    assert decoder.overflow
    exact = SSEDecoder(max_event_bytes=20)
    assert exact.feed(b"data: " + b"y" * 14 + b"\n\n") == [ev("y" * 14)]  # 20 bytes: at the limit
    assert not exact.overflow


def test_fast_path_keeps_the_last_event_id() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"id: 5\ndata: a\n\n") == [ev("a", id="5")]
    assert decoder.feed(b"data: b\n\ndata: c\n\n") == [ev("b", id="5"), ev("c", id="5")]
