"""The one shared HTTP client to OpenAI: auth headers, deadline-bound timeouts, classification.

Every upstream exchange goes through `UpstreamClient.send`; it never returns a non-2xx
response: those become taxonomy errors here, so callers only handle success.
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import AsyncIterable, Mapping
from typing import Any, NoReturn

import httpx
from openai_grpc_server import __version__, jsonlib
from openai_grpc_server.auth import Credential
from openai_grpc_server.errors import DeserializationError, OpenAIError, ResponseTooLarge, redact
from openai_grpc_server.upstream.classify import classify_exception, classify_response

USER_AGENT = f"openai-grpc/{__version__}"
# Response headers callers get back as gRPC metadata.
FORWARDED_HEADERS = (
    "x-request-id",
    "openai-processing-ms",
    "openai-version",
    "retry-after",
    "retry-after-ms",
)
FORWARDED_PREFIXES = ("x-ratelimit-",)
_TEXT_TYPES = ("text/plain", "text/vtt", "application/x-subrip", "text/srt")


@dataclasses.dataclass(frozen=True)
class UpstreamSettings:
    base_url: str
    connect_timeout: float = 5.0
    # Total time for one unary exchange; streams use it as the idle gap between reads.
    request_timeout: float = 600.0
    max_connections: int = 1000
    max_keepalive: int = 200
    keepalive_expiry: float = 30.0
    pool_timeout: float = 10.0
    # "httpx": httpx's own connection pool; "aiohttp": httpx's API over aiohttp's pool
    # (httpx-aiohttp), which costs less CPU per request (docs/benchmarks.md).
    transport: str = "aiohttp"
    # A unary answer larger than this fails before it is held whole (UPSTREAM_BAD_RESPONSE).
    max_response_bytes: int = 64 * 1024 * 1024
    # As the OpenAI SDK (httpx's trust_env): HTTPS_PROXY/HTTP_PROXY/ALL_PROXY/NO_PROXY (either
    # case) pick a proxy per URL, SSL_CERT_FILE/SSL_CERT_DIR replace the bundled CAs.
    trust_env: bool = True


@dataclasses.dataclass
class JsonResponse:
    status: int
    headers: httpx.Headers
    body: Any


def _aiohttp_transport(
    settings: UpstreamSettings, ssl_context: ssl.SSLContext, proxy: httpx.Proxy | None = None
) -> httpx.AsyncBaseTransport:
    import aiohttp  # noqa: PLC0415
    from httpx_aiohttp import AiohttpTransport  # noqa: PLC0415

    def session() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=settings.max_connections,
            keepalive_timeout=settings.keepalive_expiry,
            ttl_dns_cache=300,
            ssl=ssl_context,
        )
        # No trust_env here: httpx has already chosen this transport's proxy for the URL.
        return aiohttp.ClientSession(connector=connector, auto_decompress=True)

    transport: httpx.AsyncBaseTransport = AiohttpTransport(client=session, proxy=proxy, verify=ssl_context)
    return transport


class _AiohttpClient(httpx.AsyncClient):
    """httpx over aiohttp's pool, with httpx's own choice of proxy per URL (its `mounts` from the
    environment), as the OpenAI SDK's aiohttp client does: both transports route alike."""

    def __init__(self, settings: UpstreamSettings, **kwargs: Any) -> None:
        self._upstream = settings
        super().__init__(**kwargs)

    def _init_transport(self, verify: Any = True, *_: Any, **__: Any) -> httpx.AsyncBaseTransport:
        return _aiohttp_transport(self._upstream, verify)

    def _init_proxy_transport(
        self, proxy: httpx.Proxy, verify: Any = True, *_: Any, **__: Any
    ) -> httpx.AsyncBaseTransport:
        return _aiohttp_transport(self._upstream, verify, proxy)


def forwarded_metadata(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    out = []
    for k, v in headers.items():
        key = k.lower()
        if key in FORWARDED_HEADERS or key.startswith(FORWARDED_PREFIXES):
            out.append((key, redact(v)))  # an upstream echoing a key in a header must not leak it
    return out


class UpstreamClient:
    def __init__(self, settings: UpstreamSettings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        base = settings.base_url.rstrip("/")
        self._base = base
        options: dict[str, Any] = {
            "base_url": base,
            # Every open stream holds a connection: size the pool for the streams we accept.
            "limits": httpx.Limits(
                max_connections=settings.max_connections,
                max_keepalive_connections=settings.max_keepalive,
                keepalive_expiry=settings.keepalive_expiry,
            ),
            "timeout": self._timeout(None),
            "headers": {"user-agent": USER_AGENT},
            "follow_redirects": False,
            # One CA set for either transport, chosen as httpx (and so the SDK) does.
            "verify": httpx.create_ssl_context(trust_env=settings.trust_env),
            "trust_env": settings.trust_env,
        }
        self._client: httpx.AsyncClient
        if transport is None and settings.transport == "aiohttp":
            self._client = _AiohttpClient(settings, **options)
        else:
            self._client = httpx.AsyncClient(transport=transport, **options)

    def _timeout(self, remaining: float | None) -> httpx.Timeout:
        s = self.settings
        total = s.request_timeout if remaining is None else max(0.001, min(s.request_timeout, remaining))
        return httpx.Timeout(
            connect=min(s.connect_timeout, total), read=total, write=total, pool=min(s.pool_timeout, total)
        )

    @staticmethod
    def _headers(cred: Credential, beta: str | None, content_type: str | None, accept: str) -> dict[str, str]:
        headers = {"authorization": f"Bearer {cred.api_key.reveal()}", "accept": accept}
        if cred.organization:
            headers["openai-organization"] = cred.organization
        if cred.project:
            headers["openai-project"] = cred.project
        if beta:
            headers["openai-beta"] = beta
        if content_type:
            headers["content-type"] = content_type
        return headers

    async def send(
        self,
        method: str,
        path: str,
        *,
        cred: Credential,
        query: list[tuple[str, str]] | None = None,
        json: bytes | None = None,
        content: AsyncIterable[bytes] | None = None,
        content_type: str | None = None,
        time_left: float | None = None,
        beta: str | None = None,
        accept: str = "application/json",
        stream: bool = False,
    ) -> httpx.Response:
        """Send one request; returns a 2xx response (open, when `stream`) or raises OpenAIError.

        The body is `json` (already serialised: callers size it for the token estimate) or a
        streamed `content` with its `content_type` (multipart uploads). As OpenAI's SDKs do,
        every request but a GET says `application/json`, bodiless POSTs and DELETEs included.
        """
        if json is not None or (content is None and method != "GET"):
            content_type = "application/json"
        request = self._client.build_request(
            method,
            path,
            params=list(query) if query else None,
            content=json if json is not None else content,
            headers=self._headers(cred, beta, content_type, accept),
            timeout=self._timeout(time_left),
        )
        try:
            response = await self._client.send(request, stream=True)
        except Exception as exc:
            self.reraise(exc)
        if response.status_code >= 400 or not stream:
            try:
                await self._read_bounded(response)
            except OpenAIError:
                raise
            except Exception as exc:
                self.reraise(exc)
            finally:
                await response.aclose()
        if response.status_code >= 400:
            raise classify_response(
                response.status_code, response.headers, response.content, method=method, path=path
            )
        return response

    def reraise(self, exc: Exception) -> NoReturn:
        """Raise a transport failure as the taxonomy; an exception no transport explains stays
        as it is (the gateway logs its traceback and answers INTERNAL)."""
        if isinstance(exc, httpx.HTTPError) or type(exc).__module__.startswith(("aiohttp", "ssl")):
            raise classify_exception(exc, base_url=self.settings.base_url) from exc
        raise exc

    async def _read_bounded(self, response: httpx.Response) -> None:
        """Read the whole body, failing as soon as it is known to exceed `max_response_bytes`:
        from Content-Length before reading, else while counting (never holding it all first)."""
        limit = self.settings.max_response_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ResponseTooLarge.of(int(declared), limit, response.headers)
        parts: list[bytes] = []
        size = 0
        async for part in response.aiter_bytes():
            size += len(part)
            if size > limit:
                raise ResponseTooLarge.of(size, limit, response.headers)
            parts.append(part)
        # What `aread` would store; httpx has no public setter for a body read by hand.
        response._content = b"".join(parts)

    async def send_json(self, method: str, path: str, **kwargs: Any) -> JsonResponse:
        response = await self.send(method, path, **kwargs)
        return JsonResponse(response.status_code, response.headers, parse_json(response))

    def url(self, path: str) -> str:
        """The upstream URL of `path`, for traces (never carries credentials)."""
        return redact(f"{self._base}{path}")

    async def aclose(self) -> None:
        await self._client.aclose()


def parse_json(response: httpx.Response) -> Any:
    """Parse a 2xx body; a wrong content type is tolerated when the body still parses."""
    body = response.content
    if not body:
        if response.status_code == 204:
            return {}
        empty: OpenAIError = DeserializationError(
            f"OpenAI answered {response.status_code} with an empty body where a JSON object was expected",
            upstream_status=response.status_code,
            request_id=response.headers.get("x-request-id"),
            headers=response.headers,
        )
        raise empty
    ctype = response.headers.get("content-type", "")
    if ctype.startswith(_TEXT_TYPES):
        # Transcripts in text, srt or vtt format: the resource's `text` carries them whole.
        return {"text": response.text}
    try:
        return jsonlib.loads(body)
    except jsonlib.JSONDecodeError as exc:
        err: OpenAIError = DeserializationError(
            f"OpenAI answered {response.status_code} with a body that is not JSON "
            f"(content-type {ctype or 'missing'}, {len(body)} bytes)",
            upstream_status=response.status_code,
            request_id=response.headers.get("x-request-id"),
            headers=response.headers,
        )
        raise err from exc
