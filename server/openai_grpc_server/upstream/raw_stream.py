"""Reading a streamed upstream body one buffer per await.

httpx's `aiter_bytes` stacks async iterators per read (the response, its raw bytes, the
transport's stream, aiohttp's chunk iterator, a decoder and a chunker); a stream relayed at a
20 ms cadence pays them for every event. Over the gateway's own aiohttp transport the bytes
come from an aiohttp `StreamReader`, whose `readany` is one await per read and hands over
everything buffered at once. `event_reader` answers None (callers keep httpx's public path) for
another transport or a compressed body (httpx decodes it; aiohttp is told not to).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import httpx
from openai_grpc_server.upstream import transport

Read = Callable[[], Awaitable[bytes]]  # the next piece of the body; b"" at its end


def event_reader(response: httpx.Response) -> Read | None:
    """`readany` of the aiohttp StreamReader under `response`, or None (use httpx)."""
    if response.headers.get("content-encoding", "identity").lower() not in ("", "identity"):
        return None
    stream = response.stream
    if not isinstance(stream, transport.AiohttpStream):
        return None
    return stream.reader.readany


def httpx_reader(chunks: AsyncIterator[bytes]) -> Read:
    """The same contract over one of httpx's byte iterators (which never yields b"")."""

    async def read() -> bytes:
        try:
            return await anext(chunks)
        except StopAsyncIteration:
            return b""

    return read


def as_httpx_error(exc: Exception) -> Exception:
    """The httpx error the transport raises for an aiohttp one (any other error as it is), so a
    stream read either way fails with the same classification and message."""
    if isinstance(exc, aiohttp.ClientError):
        mapped = transport.as_httpx_error(exc)
        mapped.__cause__ = exc
        return mapped
    return exc
