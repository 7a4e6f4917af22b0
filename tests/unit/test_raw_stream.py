"""upstream/raw_stream.py reaches aiohttp's StreamReader under an httpx-aiohttp response through
a private attribute: these tests fail when httpx or httpx-aiohttp change that shape (the relay
would then quietly fall back to httpx's slower public path)."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator

import aiohttp
import httpx
import pytest
from aiohttp import web
from httpx_aiohttp import AiohttpTransport, HttpxAiohttpClient
from openai_grpc_server.upstream.raw_stream import as_httpx_error, event_reader

BODY = b"data: 1\n\ndata: 2\n\n"


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def plain(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(BODY)
        return resp

    async def zipped(request: web.Request) -> web.Response:
        return web.Response(
            body=gzip.compress(BODY),
            headers={"content-type": "text/event-stream", "content-encoding": "gzip"},
        )

    app = web.Application()
    app.router.add_get("/plain", plain)
    app.router.add_get("/zipped", zipped)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def _read_all(response: httpx.Response) -> bytes:
    read = event_reader(response)
    assert read is not None, "httpx-aiohttp changed shape: event_reader found no StreamReader"
    out = b""
    while chunk := await read():
        out += chunk
    return out


async def test_through_the_client(server: str) -> None:
    async with HttpxAiohttpClient() as client, client.stream("GET", f"{server}/plain") as response:
        assert await _read_all(response) == BODY


async def test_through_the_transport(server: str) -> None:
    transport = AiohttpTransport()
    try:
        response = await transport.handle_async_request(httpx.Request("GET", f"{server}/plain"))
        try:
            assert await _read_all(response) == BODY
        finally:
            await response.aclose()
    finally:
        await transport.aclose()


async def test_compressed_bodies_stay_with_httpx(server: str) -> None:
    async with HttpxAiohttpClient() as client, client.stream("GET", f"{server}/zipped") as response:
        assert event_reader(response) is None
        assert b"".join([c async for c in response.aiter_bytes()]) == BODY


async def test_other_transports_stay_with_httpx(server: str) -> None:
    async with httpx.AsyncClient() as client, client.stream("GET", f"{server}/plain") as response:
        assert event_reader(response) is None


def test_aiohttp_errors_read_as_httpx_errors() -> None:
    assert isinstance(as_httpx_error(aiohttp.ClientPayloadError("cut")), httpx.ReadError)
    other = ValueError("x")
    assert as_httpx_error(other) is other
