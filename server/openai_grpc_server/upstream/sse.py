"""Incremental server-sent-events decoder (WHATWG HTML, "event stream interpretation").

Fed raw network chunks as they arrive: lines may be split anywhere, end in LF, CR or CRLF
(even a CRLF split across two chunks), `data:` may span several lines, comments and unknown
fields are skipped. `feed` returns the events completed by that chunk, so the gateway can relay
what one upstream read delivered as one gRPC message without waiting for more.

Decoding is linear in the bytes: a line still being received sits in one growing buffer that is
scanned only from where the previous read stopped (rescanning it on every read made one 8 MiB
event cost 15 s of CPU). An event larger than `max_event_bytes` stops the decoder: `feed` still
returns the events completed before it, then `overflow` is set and nothing more is decoded.
"""

from __future__ import annotations

import dataclasses

_BOM = b"\xef\xbb\xbf"
_CR = 0x0D
_LF = 0x0A


@dataclasses.dataclass(slots=True)
class SSEEvent:
    data: str
    event: str = ""  # empty: the default type, "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    __slots__ = (
        "_buf",
        "_data",
        "_event",
        "_event_size",
        "_id",
        "_retry",
        "_scanned",
        "_started",
        "max_event_bytes",
        "overflow",
        "seen_bytes",
    )

    def __init__(self, max_event_bytes: int | None = None) -> None:
        self._buf = bytearray()  # bytes not yet split into lines
        self._scanned = 0  # bytes of `_buf` already known to hold no line end
        self._data: list[str] = []
        self._event_size = 0  # bytes of the event being assembled (its completed lines)
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None
        self._started = False
        self.max_event_bytes = max_event_bytes
        self.overflow = False  # an event outgrew `max_event_bytes`: the stream is unusable
        self.seen_bytes = 0  # everything fed, for telling "no events" from "no bytes"

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        if self.overflow or not chunk:
            return events
        self.seen_bytes += len(chunk)
        if self._buf or self._data or self._event or self._retry is not None or b"\r" in chunk:
            self._feed(chunk, events)
            return events
        if not self._started:
            if chunk[0] == _BOM[0]:
                self._feed(chunk, events)  # maybe a byte order mark
                return events
            self._started = True
        # Fast path: nothing pending, LF line ends. What OpenAI sends is `data: {...}` LF LF, one
        # event per line pair; those are cut out whole (one split, one decode each) instead of
        # line by line. The first piece that is anything else goes, with the rest, the long way.
        limit = self.max_event_bytes
        parts = chunk.split(b"\n\n")
        tail = parts.pop()  # after the last blank line: an event still arriving, or b""
        for i, part in enumerate(parts):
            if part.startswith(b"data: ") and b"\n" not in part and (limit is None or len(part) <= limit):
                events.append(SSEEvent(part[6:].decode("utf-8", errors="replace"), "", self._id))
                continue
            self._feed(b"\n\n".join(parts[i:]) + b"\n\n" + tail, events)
            return events
        if tail:
            self._feed(tail, events)
        return events

    def _feed(self, chunk: bytes, events: list[SSEEvent]) -> None:
        """The general decoder: any line ends, fields, comments, split lines and characters."""
        buf = self._buf
        buf += chunk
        if not self._started:
            if len(buf) < len(_BOM) and _BOM.startswith(buf):
                return
            self._started = True
            if buf.startswith(_BOM):
                del buf[: len(_BOM)]
        start = 0
        pos = self._scanned
        end = len(buf)
        limit = self.max_event_bytes
        while pos < end:
            lf = buf.find(b"\n", pos)
            cr = buf.find(b"\r", pos, lf if lf >= 0 else end)
            if cr < 0 and lf < 0:
                pos = end
                break
            eol = cr if cr >= 0 else lf
            if buf[eol] == _CR:
                if eol + 1 == end:
                    pos = eol  # maybe the first half of a CRLF split across chunks
                    break
                nxt = eol + 2 if buf[eol + 1] == _LF else eol + 1
            else:
                nxt = eol + 1
            self._line(buf, start, eol, events)
            if limit is not None and self._event_size > limit:
                self._overflow()
                return
            start = pos = nxt
        if start:
            del buf[:start]
            pos -= start
        self._scanned = pos
        if limit is not None and self._event_size + len(buf) > limit:
            self._overflow()

    def close(self) -> list[SSEEvent]:
        """End of stream: a held CR still ends its line; an unterminated event is dropped."""
        events: list[SSEEvent] = []
        if not self.overflow and self._buf.endswith(b"\r"):
            self._line(self._buf, 0, len(self._buf) - 1, events)
        self._buf = bytearray()
        self._scanned = 0
        self._data = []
        self._event_size = 0
        self._event = ""
        return events

    def _overflow(self) -> None:
        self.overflow = True
        self._buf = bytearray()
        self._data = []

    def _line(self, buf: bytearray, start: int, end: int, events: list[SSEEvent]) -> None:
        """One line, `buf[start:end]`, read in place: a multi-MiB `data:` value is decoded once,
        without first being copied out of the buffer."""
        if start == end:
            if self._data:
                events.append(SSEEvent("\n".join(self._data), self._event, self._id, self._retry))
            self._data = []
            self._event_size = 0
            self._event = ""
            self._retry = None
            return
        if buf[start] == 0x3A:  # ":" starts a comment
            return
        colon = buf.find(b":", start, end)
        if colon < 0:
            name, vstart = buf[start:end].decode("utf-8", errors="replace"), end
        else:
            name = buf[start:colon].decode("utf-8", errors="replace")
            vstart = colon + 1
            if vstart < end and buf[vstart] == 0x20:
                vstart += 1
        with memoryview(buf) as view:
            value = str(view[vstart:end], "utf-8", errors="replace")
        if name == "data":
            self._event_size += end - start  # what the event holds in memory
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\x00" not in value:
                self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
