"""httpx's transport interface over aiohttp's connection pool: the gateway's default transport.

The gateway speaks httpx (requests, responses, transports; `MockTransport` in unit tests) and
hands each request straight to this transport. Per request it does what aiohttp needs and
nothing else: no URL re-parsing, one `ClientTimeout`, the body passed through as it is.

Two things the general-purpose httpx-aiohttp transport does not do, and why they matter here:
- a response whose declared length fits the caller's limit (`READ_WHOLE` extension) is read in
  one aiohttp call and handed back already read: a unary answer costs one wake-up and none of
  httpx's chunk iterators;
- aiohttp failures become the httpx exception that says what happened (a refused connection
  is `ConnectError`, a cut body `ReadError`, a wrong status line `RemoteProtocolError`), raised
  from the aiohttp one, so classification still sees the cause.
The measured difference is in the benchmark's lever table (`upstream_transport`).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import yarl

# Request extension: read the whole body in the transport when its declared length is at most
# this many bytes (otherwise the response comes back open, to be read and bounded by the caller).
READ_WHOLE = "openai_grpc.read_whole"
_HTTP11 = {"http_version": b"HTTP/1.1"}


def as_httpx_error(exc: BaseException, request: httpx.Request | None = None) -> httpx.TransportError:
    """The httpx exception for an aiohttp (or socket) failure, most specific first."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(text, request=request)
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return httpx.ReadTimeout(text, request=request)
    if isinstance(exc, aiohttp.ClientProxyConnectionError | aiohttp.ClientHttpProxyError):
        return httpx.ProxyError(text, request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(text, request=request)
    if isinstance(exc, aiohttp.InvalidURL):
        return httpx.UnsupportedProtocol(text, request=request)
    if isinstance(exc, aiohttp.ClientResponseError):  # a status line or header aiohttp could not parse
        return httpx.RemoteProtocolError(text, request=request)
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
        return httpx.ReadError(text, request=request)
    if isinstance(exc, aiohttp.ClientOSError | OSError):
        return httpx.NetworkError(text, request=request)
    return httpx.TransportError(text, request=request)


class AiohttpStream(httpx.AsyncByteStream):
    """An open aiohttp response body: chunks as they arrive, closed once."""

    __slots__ = ("_request", "response")

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self.response = response
        self._request = request

    @property
    def reader(self) -> aiohttp.StreamReader:
        """The body's reader, for a relay that reads it without the iterator layers."""
        return self.response.content

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise as_httpx_error(exc, self._request) from exc

    async def aclose(self) -> None:
        # A body read to its end gives the connection back to the pool; one abandoned midway
        # (a caller that left) closes it, so the upstream sees the disconnect at once.
        if self.response.content.at_eof():
            self.response.release()
        else:
            self.response.close()


class AiohttpTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        *,
        limit: int,
        keepalive_expiry: float,
        ssl_context: ssl.SSLContext,
        proxy: httpx.Proxy | None = None,
    ) -> None:
        self._limit = limit
        self._keepalive = keepalive_expiry
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None
        self._proxy: dict[str, Any] = {}
        if proxy is not None:
            self._proxy = {
                "proxy": str(proxy.url),
                "proxy_auth": aiohttp.BasicAuth(*proxy.auth) if proxy.auth else None,
                "proxy_headers": dict(proxy.headers.multi_items()) or None,
            }

    def _open(self) -> aiohttp.ClientSession:
        """The session, made on first use (aiohttp wants the running loop)."""
        connector = aiohttp.TCPConnector(
            limit=self._limit, keepalive_timeout=self._keepalive, ttl_dns_cache=300, ssl=self._ssl
        )
        # No trust_env: httpx has already chosen this transport's proxy for the URL.
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or self._open()
        ext = request.extensions
        t = ext.get("timeout") or {}
        stream = request.stream
        data: Any = request.content if isinstance(stream, httpx.ByteStream) else stream
        headers = request.headers.multi_items()
        if data is stream:  # aiohttp frames a streamed body itself
            headers = [(k, v) for k, v in headers if k != "transfer-encoding"]
        try:
            response = await session.request(
                request.method,
                yarl.URL(str(request.url), encoded=True),
                headers=headers,
                data=data or None,
                allow_redirects=False,
                # httpx decodes content-encoding itself; aiohttp handing over decoded bytes
                # under the same header would have them decoded twice.
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(
                    sock_connect=t.get("connect"), sock_read=t.get("read"), connect=t.get("pool")
                ),
                server_hostname=ext.get("sni_hostname"),
                **self._proxy,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise as_httpx_error(exc, request) from exc
        whole = ext.get(READ_WHOLE)
        length = response.content_length
        if whole is not None and length is not None and length <= whole:
            try:
                body = await response.read()
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                response.close()
                raise as_httpx_error(exc, request) from exc
            response.release()
            return httpx.Response(
                response.status,
                headers=response.raw_headers,
                content=body,
                request=request,
                extensions=_HTTP11,
            )
        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            stream=AiohttpStream(response, request),
            request=request,
            extensions=_HTTP11,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
