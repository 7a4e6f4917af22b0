"""A misbehaving HTTP upstream of the tests' own, separate from the demo fake.

A raw asyncio server, so it can do what no well-behaved HTTP framework allows: reset the
connection in the middle of a body or a stream, send SSE one byte at a time or with CRLF, stall,
send truncated, empty, non-JSON or huge bodies, speak TLS with a self-signed certificate, or not
speak HTTP at all. Every request is recorded as received on the wire (request target exactly as
sent, headers, body), so tests can assert what the upstream saw, and that nothing was sent.

One connection carries one request (`connection: close`); `behaviour` decides the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import ssl
import struct
import subprocess
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any


@dataclasses.dataclass
class Received:
    method: str
    target: str  # the request target exactly as sent: path and query, still percent-encoded
    headers: dict[str, str]
    body: bytes
    reader: asyncio.StreamReader | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]


Writer = asyncio.StreamWriter
Behaviour = Callable[[Received, Writer], Awaitable[None]]


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in {"connection": "close", **headers}.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def reply(
    status: int = 200,
    body: Any = None,
    *,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
    content_length: int | None = None,
    delay: float = 0.0,
) -> Behaviour:
    """A whole answer, after `delay` seconds; `body` bytes are sent as is, anything else as
    JSON. `content_length` may lie (a truncated body)."""
    data = body if isinstance(body, bytes) else json.dumps({} if body is None else body).encode()

    async def behave(_req: Received, w: Writer) -> None:
        if delay:
            await asyncio.sleep(delay)
        length = len(data) if content_length is None else content_length
        head = {"content-type": content_type, "content-length": str(length), **(headers or {})}
        w.write(_head(status, head))
        w.write(data)
        await w.drain()

    return behave


def stream(
    chunks: Iterable[bytes],
    *,
    delay: float = 0.0,
    content_type: str = "text/event-stream",
    reset_at_end: bool = False,
    stall_at_end: bool = False,
) -> Behaviour:
    """A body with no length, written chunk by chunk (each drained), then closed, reset or held."""
    parts = list(chunks)

    async def behave(req: Received, w: Writer) -> None:
        head = {"content-type": content_type} if content_type else {}
        w.write(_head(200, head))
        await w.drain()
        for part in parts:
            w.write(part)
            await w.drain()
            if delay:
                await asyncio.sleep(delay)
        if reset_at_end:
            reset(w)
        elif stall_at_end:
            await stall_until_closed(req)

    return behave


def huge_event(size: int, *, piece: int = 64 * 1024, before: bytes = b"") -> Behaviour:
    """`before`, then one `data:` line of `size` bytes, written in pieces (never held whole)."""

    async def behave(_req: Received, w: Writer) -> None:
        w.write(_head(200, {"content-type": "text/event-stream"}))
        w.write(before + b'data: {"x": "')
        left = size
        block = b"a" * piece
        while left > 0:
            w.write(block[: min(piece, left)])
            left -= piece
            await w.drain()
        w.write(b'"}\n\n')
        await w.drain()

    return behave


def endless_body(*, declared: int | None = None, piece: int = 64 * 1024) -> Behaviour:
    """A 200 JSON answer that never ends (or declares `declared` bytes): a client that holds a
    body whole before looking at its size would grow without bound."""

    async def behave(_req: Received, w: Writer) -> None:
        head = {"content-type": "application/json"}
        if declared is not None:
            head["content-length"] = str(declared)
        w.write(_head(200, head))
        w.write(b'{"data": "')
        block = b"a" * piece
        with contextlib.suppress(ConnectionError):
            while not w.is_closing():
                w.write(block)
                await w.drain()

    return behave


def raw(data: bytes) -> Behaviour:
    """Not HTTP at all: these bytes, then close."""

    async def behave(_req: Received, w: Writer) -> None:
        w.write(data)
        await w.drain()

    return behave


def reset_mid_body(status: int = 200, sent: bytes = b'{"id": "chatcmpl-1", "obj') -> Behaviour:
    """Announce a longer body, send part of it, then reset the connection (TCP RST)."""

    async def behave(_req: Received, w: Writer) -> None:
        w.write(_head(status, {"content-type": "application/json", "content-length": str(len(sent) + 1000)}))
        w.write(sent)
        await w.drain()
        await asyncio.sleep(0.05)
        reset(w)

    return behave


async def stall_until_closed(req: Received) -> None:
    """Hold the connection until the client closes it (its EOF reaches our reader)."""
    assert req.reader is not None
    with contextlib.suppress(ConnectionError):
        while await req.reader.read(65536):
            pass


def stall() -> Behaviour:
    """Read the request, answer nothing until the client gives up."""

    async def behave(req: Received, _w: Writer) -> None:
        await stall_until_closed(req)

    return behave


def reset(w: Writer) -> None:
    """Close with RST instead of FIN: SO_LINGER with a zero timeout."""
    sock = w.transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.transport.abort()


def sse_events(*payloads: Any, eol: bytes = b"\n", done: bool = True) -> bytes:
    out = b"".join(b"data: " + json.dumps(p).encode() + eol + eol for p in payloads)
    return out + (b"data: [DONE]" + eol + eol if done else b"")


def chat_chunk(text: str, i: int = 0) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": i, "delta": {"content": text}, "finish_reason": None}],
    }


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate and key for 127.0.0.1 (openssl CLI; bootstrap installs it)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


class FaultyUpstream:
    def __init__(self, *, tls: tuple[Path, Path] | None = None) -> None:
        self._ssl: ssl.SSLContext | None = None
        if tls is not None:
            self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._ssl.load_cert_chain(str(tls[0]), str(tls[1]))
        self.behaviour: Behaviour = reply()
        self.received: list[Received] = []
        self.connections = 0  # TCP connections accepted (a TLS client may give up before a request)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"{'https' if self._ssl else 'http'}://127.0.0.1:{self.port}/v1"

    def reset(self, behaviour: Behaviour | None = None) -> FaultyUpstream:
        self.behaviour = behaviour or reply()
        self.received = []
        self.connections = 0
        return self

    async def start(self) -> None:
        # TLS is started per connection (not by the server), so a failed handshake is counted.
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: Writer) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            if self._ssl is not None:
                await writer.start_tls(self._ssl)
            req = await self._read(reader, writer)
            if req is None:
                return
            req.reader = reader
            self.received.append(req)
            await self.behaviour(req, writer)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError, ValueError):
            pass  # the client went away or broke the exchange: what these tests provoke
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    @staticmethod
    async def _read(reader: asyncio.StreamReader, writer: Writer) -> Received | None:
        try:
            first = await reader.readexactly(1)
            if first == b"\x16":
                # A TLS ClientHello on this plaintext port: answer like any HTTP server does.
                writer.write(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
                return None
            head = first + await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        body = b""
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            body = b"".join(parts)
        return Received(method, target, headers, body)
