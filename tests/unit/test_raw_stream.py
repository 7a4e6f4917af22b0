"""upstream/raw_stream.py reads aiohttp's StreamReader under a response of the gateway's own
transport, and leaves every other response to httpx's public path."""

from __future__ import annotations

import contextlib
import gzip
from collections.abc import AsyncIterator

import aiohttp
import httpx
import pytest
from aiohttp import web
from openai_grpc_server.auth import Credential, Secret
from openai_grpc_server.upstream.client import UpstreamClient, UpstreamSettings
from openai_grpc_server.upstream.raw_stream import as_httpx_error, event_reader
from openai_grpc_server.upstream.transport import AiohttpTransport

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
    assert read is not None, "event_reader found no StreamReader under the transport's response"
    out = b""
    while chunk := await read():
        out += chunk
    return out


@contextlib.asynccontextmanager
async def _response(url: str) -> AsyncIterator[httpx.Response]:
    """A GET through the gateway's own transport, closed afterwards."""
    transport = AiohttpTransport(limit=10, keepalive_expiry=5.0, ssl_context=httpx.create_ssl_context())
    try:
        response = await transport.handle_async_request(httpx.Request("GET", url))
        try:
            yield response
        finally:
            await response.aclose()
    finally:
        await transport.aclose()


async def test_through_the_transport(server: str) -> None:
    async with _response(f"{server}/plain") as response:
        assert await _read_all(response) == BODY


async def test_compressed_bodies_stay_with_httpx(server: str) -> None:
    async with _response(f"{server}/zipped") as response:
        assert event_reader(response) is None
        assert b"".join([c async for c in response.aiter_bytes()]) == BODY


async def test_other_transports_stay_with_httpx(server: str) -> None:
    async with httpx.AsyncClient() as client, client.stream("GET", f"{server}/plain") as response:
        assert event_reader(response) is None


def test_aiohttp_errors_read_as_httpx_errors() -> None:
    cut = aiohttp.ClientPayloadError("cut")
    mapped = as_httpx_error(cut)
    assert isinstance(mapped, httpx.ReadError)
    assert mapped.__cause__ is cut  # classification still sees what aiohttp said
    other = ValueError("x")
    assert as_httpx_error(other) is other


async def test_the_gateway_client_hands_streams_to_the_fast_path(server: str) -> None:
    """UpstreamClient returns the transport's own response: the relay must not fall back."""
    client = UpstreamClient(UpstreamSettings(base_url=server, trust_env=False))
    try:
        cred = Credential(name="t", api_key=Secret("sk-test-0123456789"))
        response = await client.send("GET", "/plain", cred=cred, stream=True)
        try:
            assert await _read_all(response) == BODY
        finally:
            await response.aclose()
    finally:
        await client.aclose()
