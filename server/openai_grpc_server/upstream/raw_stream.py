"""Reading a streamed upstream body straight from aiohttp's StreamReader.

httpx's `aiter_bytes` stacks five async iterators per read (the response, its raw bytes, the
client's bound stream, httpx-aiohttp's wrapper and aiohttp's chunk iterator, plus a decoder and
a chunker); a stream relayed at a 20 ms cadence pays them for every event. Under httpx-aiohttp
the bytes come from an aiohttp `StreamReader`, whose `readany` is one await per read.

httpx-aiohttp keeps the aiohttp response in a private attribute, so reaching it is isolated in
`event_reader`, which answers None (callers keep httpx's public path) for another transport, a
compressed body (httpx decodes it; aiohttp is told not to) or a library that changed shape.
tests/unit/test_raw_stream.py fails when the library changes shape.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import httpx

Read = Callable[[], Awaitable[bytes]]  # the next piece of the body; b"" at its end


def event_reader(response: httpx.Response) -> Read | None:
    """`readany` of the aiohttp StreamReader under `response`, or None (use httpx)."""
    if response.headers.get("content-encoding", "identity").lower() not in ("", "identity"):
        return None
    stream = response.stream
    # httpx.AsyncClient.send wraps the transport's stream in its BoundAsyncStream (`_stream`).
    inner = getattr(stream, "_stream", stream)
    aio = getattr(inner, "_aiohttp_response", None)
    if not isinstance(aio, aiohttp.ClientResponse):
        return None
    content = aio.content
    if not isinstance(content, aiohttp.StreamReader):
        return None
    return content.readany


def httpx_reader(chunks: AsyncIterator[bytes]) -> Read:
    """The same contract over one of httpx's byte iterators (which never yields b"")."""

    async def read() -> bytes:
        try:
            return await anext(chunks)
        except StopAsyncIteration:
            return b""

    return read


def as_httpx_error(exc: Exception) -> Exception:
    """The httpx error httpx-aiohttp raises for an aiohttp one (any other error as it is), so a
    stream read either way fails with the same classification and message."""
    if not isinstance(exc, aiohttp.ClientError):
        return exc
    from httpx_aiohttp.transport import map_aiohttp_exceptions  # noqa: PLC0415

    try:
        with map_aiohttp_exceptions():
            raise exc
    except Exception as mapped:  # the mapped exception is the answer
        return mapped
    return exc  # pragma: no cover - the block above always raises
