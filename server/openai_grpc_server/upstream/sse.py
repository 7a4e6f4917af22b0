"""Incremental server-sent-events decoder (WHATWG HTML, "event stream interpretation").

Fed raw network chunks as they arrive: lines may be split anywhere, end in LF, CR or CRLF
(even a CRLF split across two chunks), `data:` may span several lines, comments and unknown
fields are skipped. `feed` returns the events completed by that chunk, so the gateway can relay
what one upstream read delivered as one gRPC message without waiting for more.
"""

from __future__ import annotations

import dataclasses
import re

_EOL = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


@dataclasses.dataclass(slots=True)
class SSEEvent:
    data: str
    event: str = ""  # empty: the default type, "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    __slots__ = ("_buf", "_data", "_event", "_id", "_retry", "_started")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None
        self._started = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buf = self._buf + chunk if self._buf else chunk
        if not self._started and buf:
            if len(buf) < len(_BOM) and _BOM.startswith(buf):
                self._buf = buf
                return []
            self._started = True
            if buf.startswith(_BOM):
                buf = buf[len(_BOM) :]
        events: list[SSEEvent] = []
        start = 0
        end = len(buf)
        while True:
            m = _EOL.search(buf, start)
            if m is None:
                break
            if m.end() == end and buf[m.start() : m.end()] == b"\r":
                break  # maybe the first half of a CRLF split across chunks
            self._line(buf[start : m.start()], events)
            start = m.end()
        self._buf = buf[start:]
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: a held CR still ends its line; an unterminated event is dropped."""
        events: list[SSEEvent] = []
        if self._buf.endswith(b"\r"):
            self._line(self._buf[:-1], events)
        self._buf = b""
        self._data = []
        self._event = ""
        return events

    def _line(self, raw: bytes, events: list[SSEEvent]) -> None:
        if not raw:
            if self._data:
                events.append(SSEEvent("\n".join(self._data), self._event, self._id, self._retry))
            self._data = []
            self._event = ""
            self._retry = None
            return
        line = raw.decode("utf-8", errors="replace")
        if line[0] == ":":
            return
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id":
            if "\x00" not in value:
                self._id = value
        elif field == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
