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
from openai_grpc_server.endpoints import GENERIC, Behaviour
from openai_grpc_server.errors import DeserializationError, OpenAIError, ResponseTooLarge, redact
from openai_grpc_server.upstream.classify import classify_exception, classify_response
from openai_grpc_server.upstream.transport import READ_WHOLE, AiohttpTransport

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
_FORWARDED = frozenset(FORWARDED_HEADERS)
# Sent with every request, as httpx's client would (the URL and timeout come per call).
_CLIENT_HEADERS = {"user-agent": USER_AGENT, "accept-encoding": "gzip, deflate"}
_URL_CACHE = 1024
_CREDENTIAL_CACHE = 256


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
    # "httpx": httpx's own connection pool (httpcore); "aiohttp": httpx's transport interface
    # over aiohttp's pool (upstream/transport.py), which costs less CPU per request
    # (docs/benchmarks.md).
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
    return AiohttpTransport(
        limit=settings.max_connections,
        keepalive_expiry=settings.keepalive_expiry,
        ssl_context=ssl_context,
        proxy=proxy,
    )


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
    # httpx's `items()` would decode every header and merge repeated ones first.
    items = headers.multi_items() if isinstance(headers, httpx.Headers) else headers.items()
    for k, v in items:
        key = k.lower()
        if key in _FORWARDED or key.startswith(FORWARDED_PREFIXES):
            # An upstream echoing a key in a header must not leak it; a plain number (most of
            # these headers) cannot hold one and skips the two pattern scans.
            out.append((key, v if v.isdigit() else redact(v)))
    return out


class UpstreamClient:
    """Calls go straight to the transport httpx chose for the base URL: `AsyncClient.send`'s
    per-call machinery (URL merging, cookies, auth and redirect hooks) costs more than the
    exchange itself and does nothing for one fixed host (lever table: `upstream_transport`).
    The `AsyncClient` stays for that choice (proxies from the environment, the CA set)."""

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
        # One host: the transport (and proxy) httpx picks for it is the same for every call.
        self._transport = self._client._transport_for_url(httpx.URL(base + "/"))
        self._urls: dict[str, httpx.URL] = {}
        # By identity: hashing the frozen Credential would hash every field (the key too) per call.
        self._cred_headers: dict[int, tuple[Credential, dict[str, str]]] = {}
        self._default_timeout = self._timeout(None)

    def _timeout(self, remaining: float | None) -> dict[str, float]:
        """httpx's `timeout` request extension, bounded by the caller's time left."""
        s = self.settings
        total = s.request_timeout if remaining is None else max(0.001, min(s.request_timeout, remaining))
        return {
            "connect": min(s.connect_timeout, total),
            "read": total,
            "write": total,
            "pool": min(s.pool_timeout, total),
        }

    def _url(self, path: str, query: list[tuple[str, str]] | None) -> httpx.URL:
        """The URL of `path`; parsed once per distinct path (a bounded cache: IDs vary)."""
        if query:
            return httpx.URL(self._base + path, params=query)
        url = self._urls.get(path)
        if url is None:
            if len(self._urls) >= _URL_CACHE:
                self._urls.clear()
            url = self._urls[path] = httpx.URL(self._base + path)
        return url

    def _headers(
        self, cred: Credential, beta: str | None, content_type: str | None, accept: str
    ) -> dict[str, str]:
        known = self._cred_headers.get(id(cred))
        if known is not None and known[0] is cred:
            base = known[1]
        else:  # once per credential (a reload brings new ones; old ones age out)
            if len(self._cred_headers) >= _CREDENTIAL_CACHE:
                self._cred_headers.clear()
            base = {"authorization": f"Bearer {cred.api_key.reveal()}", **_CLIENT_HEADERS}
            if cred.organization:
                base["openai-organization"] = cred.organization
            if cred.project:
                base["openai-project"] = cred.project
            self._cred_headers[id(cred)] = (cred, base)
        headers = {**base, "accept": accept}
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
        behaviour: Behaviour = GENERIC,
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
        extensions: dict[str, Any] = {
            "timeout": self._default_timeout if time_left is None else self._timeout(time_left)
        }
        if not stream:
            extensions[READ_WHOLE] = self.settings.max_response_bytes
        request = httpx.Request(
            method,
            self._url(path, query),
            headers=self._headers(cred, behaviour.beta, content_type, accept),
            content=json if json is not None else content,
            extensions=extensions,
        )
        try:
            response = await self._transport.handle_async_request(request)
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
                response.status_code,
                response.headers,
                response.content,
                path=path,
                state_change=behaviour.state_change,
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
        if response.is_stream_consumed:  # the transport read it (a declared length within the limit)
            if len(response.content) > limit:
                raise ResponseTooLarge.of(len(response.content), limit, response.headers)
            return
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
        text_types = kwargs.get("behaviour", GENERIC).text_types
        return JsonResponse(response.status_code, response.headers, parse_json(response, text_types))

    def url(self, path: str) -> str:
        """The upstream URL of `path`, for traces (never carries credentials)."""
        return redact(f"{self._base}{path}")

    async def aclose(self) -> None:
        await self._client.aclose()


def parse_json(response: httpx.Response, text_types: tuple[str, ...] = ()) -> Any:
    """Parse a 2xx body; a wrong content type is tolerated when the body still parses. A body
    of one of `text_types` (transcripts as text, srt or vtt) is the resource's `text` whole."""
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
    if text_types and ctype.startswith(text_types):
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
