"""The fake OpenAI upstream: an aiohttp low-level server answering every endpoint of
spec/endpoints.tsv under /v1, with scripted faults, request recording and disconnect stats.

Built on `aiohttp.web.Server` (no router, no middlewares, no access log) because benchmarks
drive it hard; `handler_cancellation=True` so a client going away cancels the handler at once,
which is how disconnects are observed even while a stream is sleeping between events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import random
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import BodyPartReader, web

from .bodies import (
    STREAM_KINDS,
    StreamPlan,
    build_body,
    build_stream,
    cached_stream,
    dumps,
    embeddings_body,
    error_event,
    render_json,
)
from .patterns import BLOCK_SIZE, iter_pattern
from .routes import Match, Router, load_endpoints
from .steps import ScriptBook, Step, normalize_route

JSON_CT = "application/json"
SSE_CT = "text/event-stream; charset=utf-8"
_TEXT_FIELD_LIMIT = 1 << 20  # text form fields longer than this are only hashed
_SPEECH_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
_FILE_SIZE_PREFIX = "file-size-"


# --- configuration, records, stats ----------------------------------------------------------


@dataclass
class RateLimitHeaders:
    """Values for the x-ratelimit-* headers sent on every answer when configured."""

    limit_requests: int = 10_000
    limit_tokens: int = 2_000_000
    remaining_requests: int = 9_999
    remaining_tokens: int = 1_999_000
    reset_requests: str = "6ms"
    reset_tokens: str = "30ms"

    def as_headers(self) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(self.limit_requests),
            "x-ratelimit-limit-tokens": str(self.limit_tokens),
            "x-ratelimit-remaining-requests": str(self.remaining_requests),
            "x-ratelimit-remaining-tokens": str(self.remaining_tokens),
            "x-ratelimit-reset-requests": self.reset_requests,
            "x-ratelimit-reset-tokens": self.reset_tokens,
        }


@dataclass
class FakeConfig:
    chunks: int = 8  # content chunks per SSE stream
    gap_ms: float = 0.0  # pause between SSE events
    speech_bytes: int = 32 * 1024  # size of POST /audio/speech bodies
    speech_chunk_bytes: int = 4096
    file_bytes: int = 1024  # content size of files neither uploaded nor `file-size-<N>`
    download_chunk_bytes: int = BLOCK_SIZE
    record_limit: int = 10_000  # ring buffer of recorded requests
    record: bool = True  # benchmarks may turn recording off
    # With gap_ms == 0 and no fault scripted, send each stream in one write instead of one
    # write per event: far fewer syscalls for benchmarks, less realistic framing for tests.
    coalesce_streams: bool = False
    ratelimit: RateLimitHeaders | None = None

    def update(self, data: Mapping[str, Any]) -> None:
        """Apply a JSON object of field values (the /_fake/config route, the CLI)."""
        known = {f.name for f in dataclasses.fields(self)}
        for key, raw in data.items():
            if key not in known:
                raise ValueError(f"unknown config field {key!r}")
            current = getattr(self, key)
            value: Any = raw
            if key == "ratelimit":
                value = _ratelimit_from(raw)
            elif isinstance(current, bool):
                value = bool(raw)
            elif isinstance(current, (int, float)):
                # Coerce so a bad value fails here (400), not later inside a stream.
                value = type(current)(raw)
            setattr(self, key, value)


def _ratelimit_from(value: Any) -> RateLimitHeaders | None:
    """JSON -> config: true means defaults, false/null off, an object those values."""
    if isinstance(value, RateLimitHeaders):
        return value
    if isinstance(value, dict):
        return RateLimitHeaders(**value)
    return RateLimitHeaders() if value is True else None


@dataclass
class MultipartPart:
    name: str | None
    filename: str | None
    content_type: str | None
    size: int
    sha256: str
    value: str | None = None  # text fields (no filename) up to 1 MiB, decoded as UTF-8


@dataclass
class RecordedRequest:
    method: str
    path: str  # as received, percent-decoded, e.g. "/v1/files/file-abc/content"
    route: str | None  # matched template key, e.g. "GET /files/{file_id}/content"
    params: dict[str, str]  # path parameters
    query: dict[str, str]  # first value of each key
    query_all: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    content_type: str | None
    json: Any  # parsed JSON body, else None
    multipart: list[MultipartPart] | None
    body_size: int
    body_sha256: str | None  # of non-multipart bodies
    time: float  # time.time() when the request arrived
    request_id: str  # the x-request-id answered

    @property
    def form(self) -> dict[str, str]:
        """Text fields of a multipart body."""
        return {p.name: p.value for p in self.multipart or () if p.name is not None and p.value is not None}

    @property
    def file_parts(self) -> list[MultipartPart]:
        return [p for p in self.multipart or () if p.filename is not None]


@dataclass
class FakeStats:
    requests: int = 0  # answered or attempted (control routes excluded)
    streams_started: int = 0  # SSE and binary streamed responses
    streams_completed: int = 0
    open_streams: int = 0
    disconnects: int = 0  # streams whose client went away before the server finished
    cancelled: int = 0  # any request whose client went away before it was answered
    last_disconnect_at: float | None = None  # time.monotonic()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def reset(self) -> None:
        """Zero the counters in place (callers may hold this object); open_streams is live state."""
        for f in dataclasses.fields(self):
            if f.name != "open_streams":
                setattr(self, f.name, f.default)


@dataclass
class UploadedFile:
    id: str
    filename: str
    bytes: int
    purpose: str = "assistants"
    created_at: int = 1_700_000_000

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "expires_at": None,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


@dataclass
class _Upload:
    id: str
    filename: str
    bytes: int
    purpose: str
    mime_type: str | None
    parts: dict[str, int] = field(default_factory=dict)  # part id -> size


@dataclass
class _Ctx:
    """One request being answered."""

    request: web.BaseRequest
    rid: str
    started: float
    step: Step | None = None


@dataclass
class _Body:
    json: Any = None
    multipart: list[MultipartPart] | None = None
    size: int = 0
    sha256: str | None = None
    invalid_json: bool = False


def openai_error(
    message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _default_error(status: int) -> tuple[str, str | None, str]:
    """(type, code, message) the real API uses for a status."""
    if status == 401:
        return "invalid_request_error", "invalid_api_key", "Incorrect API key provided."
    if status == 429:
        return "requests", "rate_limit_exceeded", "Rate limit reached for requests."
    if status >= 500:
        return "server_error", None, "The server had an error while processing your request."
    if status == 404:
        return "invalid_request_error", None, "Not found."
    return "invalid_request_error", None, f"Request failed with status {status}."


def _step_error(step: Step, status: int) -> dict[str, Any]:
    type_, code, message = _default_error(status)
    return openai_error(
        step.message or message, step.error_type or type_, step.param, step.error_code or code
    )


def _explicit_answer(step: Step) -> tuple[int, bytes, str] | None:
    """(status, body, content type) when the step replaces the answer outright."""
    if step.raw_body is not None:
        raw = step.raw_body.encode() if isinstance(step.raw_body, str) else step.raw_body
        return step.status, raw, step.content_type or JSON_CT
    if step.body is not None:
        value = step.body
        if step.extra_fields and isinstance(value, dict):
            value = {**value, **step.extra_fields}
        return step.status, dumps(value), step.content_type or JSON_CT
    if step.status >= 400:
        err = _step_error(step, step.status)
        if step.extra_fields:
            err.update(step.extra_fields)
        return step.status, dumps(err), step.content_type or JSON_CT
    return None


def _plain_stream(step: Step) -> bool:
    """No stream fault scripted, so the stream may be written in one piece."""
    return (
        step.cut_after is None
        and step.error_event_after is None
        and not step.split
        and step.split_seed is None
    )


class _Writer:
    """Writes response bytes, optionally re-cut at arbitrary offsets (Step.split)."""

    def __init__(self, resp: web.StreamResponse, split: int, seed: int | None) -> None:
        self._resp = resp
        self._split = split
        self._rng = random.Random(seed) if seed is not None else None
        self._pending = bytearray()
        self._next = self._draw()

    def _draw(self) -> int:
        if self._rng is not None:
            return self._rng.randint(1, self._split or 64)
        return self._split

    @property
    def active(self) -> bool:
        return self._split > 0 or self._rng is not None

    async def write(self, data: bytes) -> None:
        if not self.active:
            await self._resp.write(data)
            return
        self._pending += data
        while len(self._pending) >= self._next:
            piece = bytes(self._pending[: self._next])
            del self._pending[: self._next]
            await self._resp.write(piece)
            # Yield so each piece leaves in its own segment rather than coalescing.
            await asyncio.sleep(0)
            self._next = self._draw()

    async def flush(self) -> None:
        if self._pending:
            piece = bytes(self._pending)
            self._pending.clear()
            await self._resp.write(piece)


# --- the server -------------------------------------------------------------------------------


class FakeUpstream:
    """An OpenAI-compatible HTTP server for demos, tests and benchmarks.

    All methods are meant to be called from the event loop the server runs on.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        config: FakeConfig | None = None,
        *,
        shutdown_timeout: float = 0.0,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.port = port
        self.config = config or FakeConfig()
        self._shutdown_timeout = shutdown_timeout
        self._router = Router(load_endpoints())
        self._endpoints = {ep.key: ep for ep in self._router.endpoints}
        self._scripts = ScriptBook()
        self._records: deque[RecordedRequest] = deque(maxlen=self.config.record_limit)
        # Called with every recorded request, on the event loop (tests validate them).
        self.observers: list[Callable[[RecordedRequest], None]] = []
        self.stats = FakeStats()
        self.files: dict[str, UploadedFile] = {}
        self._uploads: dict[str, _Upload] = {}
        self._seq = 0
        self._ids = 0
        self._stopping = False
        self._server: web.Server | None = None
        self._runner: web.ServerRunner | None = None

    # -- lifecycle

    async def start(self) -> None:
        self._stopping = False
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # Binding here (not in aiohttp) is what lets port 0 report the port it got.
            sock.bind((self.host, self._requested_port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self._server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        self._runner = web.ServerRunner(self._server, shutdown_timeout=self._shutdown_timeout)
        await self._runner.setup()
        await web.SockSite(self._runner, sock, backlog=1024).start()

    async def stop(self) -> None:
        """Stop serving. In-flight requests get `shutdown_timeout` seconds (default: cut at once,
        which a fake can afford and which keeps test teardown fast)."""
        self._stopping = True
        if self._server is not None and self._shutdown_timeout <= 0:
            for handler in self._server.connections:
                handler.force_close()
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = None
        self._server = None

    async def __aenter__(self) -> FakeUpstream:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def root_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        if ":" in host:
            host = f"[{host}]" if host != "::" else "[::1]"
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.root_url + "/v1"

    # -- scripting, records, state

    def script(self, route: str, *steps: Step) -> None:
        """Queue steps for a route: "POST /chat/completions" (template or concrete path,
        /v1 optional), "POST *" (any POST) or "*" (anything). Most specific queue wins."""
        self._scripts.add(route, steps or (Step(),))

    def clear_script(self, route: str | None = None) -> None:
        self._scripts.clear(route)

    def pending_steps(self) -> dict[str, int]:
        return self._scripts.pending()

    @property
    def requests(self) -> list[RecordedRequest]:
        return list(self._records)

    def requests_for(self, route: str) -> list[RecordedRequest]:
        """Recorded requests whose template key or concrete `METHOD /path` equals `route`."""
        key = normalize_route(route)
        out = []
        for r in self._records:
            concrete = f"{r.method} {r.path[3:] if r.path.startswith('/v1/') else r.path}"
            if key in (r.route, concrete):
                out.append(r)
        return out

    def last_request(self, route: str | None = None) -> RecordedRequest | None:
        records = self.requests_for(route) if route else list(self._records)
        return records[-1] if records else None

    def clear_requests(self) -> None:
        self._records.clear()

    def add_file(
        self, file_id: str, size: int, filename: str = "file.bin", purpose: str = "assistants"
    ) -> UploadedFile:
        """Make GET /files/{file_id} and its /content know this file (content is the pattern)."""
        f = UploadedFile(file_id, filename, size, purpose)
        self.files[file_id] = f
        return f

    def reset(self) -> None:
        """Forget scripts, records, stats, files and counters (config is kept)."""
        self._scripts.clear()
        self._records = deque(maxlen=self.config.record_limit)
        self.stats.reset()
        self.files.clear()
        self._uploads.clear()
        self._seq = 0
        self._ids = 0

    @property
    def open_connections(self) -> int:
        return len(self._server.connections) if self._server is not None else 0

    async def wait_for_disconnects(self, count: int = 1, within: float = 1.0) -> bool:
        """True once stats.disconnects >= count, False if that takes longer than `within` s."""
        return await self._wait(lambda: self.stats.disconnects >= count, within)

    async def wait_until_idle(self, within: float = 1.0) -> bool:
        """True once no streamed response is open, False if that takes longer than `within` s."""
        return await self._wait(lambda: self.stats.open_streams == 0, within)

    async def _wait(self, cond: Callable[[], bool], within: float) -> bool:
        deadline = time.monotonic() + within
        while not cond():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.002)
        return True

    # -- request handling

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        raw_path = request.raw_path.partition("?")[0]
        if raw_path.startswith("/_fake/"):
            return await self._control(request, raw_path)
        self._seq += 1
        ctx = _Ctx(request, f"req_{self._seq}", time.monotonic())
        self.stats.requests += 1
        try:
            return await self._serve(ctx, raw_path)
        except asyncio.CancelledError:
            if not self._stopping:
                self.stats.cancelled += 1
            raise

    async def _serve(self, ctx: _Ctx, raw_path: str) -> web.StreamResponse:
        request = ctx.request
        method = request.method
        rel = raw_path[3:] if raw_path.startswith("/v1/") else None
        match = self._router.match(method, rel) if rel is not None else None
        try:
            body = await self._read_body(request)
        except ConnectionError:
            # The client went away mid-upload; nobody is left to answer.
            self.stats.cancelled += 1
            return web.Response()
        except (ValueError, RuntimeError) as exc:
            self._record(ctx, match, _Body())
            return self._json(ctx, 400, dumps(openai_error(f"Malformed request body: {exc}")))
        self._record(ctx, match, body)

        rel_path = request.path[3:] if request.path.startswith("/v1/") else request.path
        keys = [f"{method} {rel_path}"]
        if match is not None:
            keys.append(match.endpoint.key)
        keys += [f"{method} *", "*"]
        step = ctx.step = self._scripts.take(keys)

        if step is not None:
            if step.delay_ms > 0:
                await asyncio.sleep(step.delay_ms / 1000)
            if step.drop:
                if request.transport is not None:
                    request.transport.close()
                # aiohttp swallows the write error on the closed transport.
                return web.Response()
            explicit = _explicit_answer(step)
            if explicit is not None:
                status, payload, ctype = explicit
                return await self._send(ctx, status, payload, ctype)

        if match is None:
            return self._json(ctx, 404, dumps(openai_error(f"Invalid URL ({method} {request.path})")))
        if body.invalid_json:
            msg = (
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
                "using your HTTP library correctly. The OpenAI API expects a JSON payload.)"
            )
            return self._json(ctx, 400, dumps(openai_error(msg)))
        return await self._dispatch(ctx, match, body)

    async def _dispatch(self, ctx: _Ctx, match: Match, body: _Body) -> web.StreamResponse:
        ep, params, step = match.endpoint, match.params, ctx.step
        key = ep.key
        data = body.json if isinstance(body.json, dict) else {}
        form = {p.name: p.value for p in body.multipart or () if p.name and p.value is not None}
        model = data.get("model") if isinstance(data.get("model"), str) else form.get("model")
        extra = step.extra_fields if step is not None else None
        status = step.status if step is not None else 200

        if key == "POST /audio/speech":
            ctype = _SPEECH_TYPES.get(data.get("response_format") or "mp3", "application/octet-stream")
            return await self._stream_bytes(
                ctx,
                status,
                ctype,
                seed="speech",
                size=self.config.speech_bytes,
                chunk=self.config.speech_chunk_bytes,
                with_length=False,
            )
        if key == "GET /files/{file_id}/content":
            file_id = params["file_id"]
            return await self._stream_bytes(
                ctx,
                status,
                "application/octet-stream",
                seed=file_id,
                size=self._file_size(file_id),
                chunk=self.config.download_chunk_bytes,
                with_length=True,
            )
        kind = STREAM_KINDS.get(key)
        if kind is not None and data.get("stream") is True:
            n = self.config.chunks if step is None or step.chunks is None else step.chunks
            opts = data.get("stream_options")
            include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
            thread_ep = self._endpoints.get("POST /threads") if key == "POST /threads/runs" else None
            if extra:
                base = build_body(ep, params, model)
                thread = build_body(thread_ep, {}, None) if thread_ep is not None else None
                plan = build_stream(kind, base, n, include_usage=include_usage, thread=thread, extra=extra)
            else:
                plan = cached_stream(
                    kind,
                    ep,
                    params=tuple(params.items()),
                    model=model,
                    n=n,
                    include_usage=include_usage,
                    thread_endpoint=thread_ep,
                )
            return await self._stream_sse(ctx, status, plan)

        if key == "POST /embeddings" and not extra:
            answer = embeddings_body(data, model)
            if answer is not None:
                return await self._send(ctx, status, answer, JSON_CT)
        special = self._stateful_body(key, params, data, form, body)
        if special is not None:
            if extra:
                special.update(extra)
            return await self._send(ctx, status, dumps(special), JSON_CT)
        if key in ("POST /audio/transcriptions", "POST /audio/translations"):
            fmt = form.get("response_format") or data.get("response_format")
            if fmt in ("text", "srt", "vtt") and isinstance(ep.body, dict):
                text = str(ep.body.get("text", ""))
                if fmt == "srt":
                    text = f"1\n00:00:00,000 --> 00:00:05,000\n{text}\n"
                elif fmt == "vtt":
                    text = f"WEBVTT\n\n00:00:00.000 --> 00:00:05.000\n{text}\n"
                return await self._send(ctx, status, text.encode(), "text/plain; charset=utf-8")
        return await self._send(ctx, status, render_json(ep, params, model, extra), JSON_CT)

    def _new_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}{self._ids:06d}"

    def _file_size(self, file_id: str) -> int:
        known = self.files.get(file_id)
        if known is not None:
            return known.bytes
        if file_id.startswith(_FILE_SIZE_PREFIX):
            digits = file_id[len(_FILE_SIZE_PREFIX) :]
            if digits.isdigit():
                return int(digits)
        return self.config.file_bytes

    def _stateful_body(
        self,
        key: str,
        params: Mapping[str, str],
        data: Mapping[str, Any],
        form: Mapping[str, str],
        body: _Body,
    ) -> dict[str, Any] | None:
        """Bodies for files and uploads, which remember what was sent so sizes round-trip."""
        if key == "POST /files":
            part = next((p for p in body.multipart or () if p.filename is not None), None)
            f = UploadedFile(
                self._new_id("file-fake"),
                (part.filename or "file") if part is not None else "file",
                part.size if part is not None else 0,
                form.get("purpose", "assistants"),
            )
            self.files[f.id] = f
            return f.to_json()
        if key == "GET /files/{file_id}":
            known = self.files.get(params["file_id"])
            return known.to_json() if known is not None else None
        if key == "DELETE /files/{file_id}":
            self.files.pop(params["file_id"], None)
            return None
        if key == "POST /uploads":
            up = _Upload(
                self._new_id("upload_fake"),
                str(data.get("filename", "upload.bin")),
                int(data.get("bytes", 0)),
                str(data.get("purpose", "assistants")),
                data.get("mime_type") if isinstance(data.get("mime_type"), str) else None,
            )
            self._uploads[up.id] = up
            return self._upload_json(up, "pending")
        if key == "POST /uploads/{upload_id}/parts":
            part_id = self._new_id("part_fake")
            size = sum(p.size for p in body.multipart or () if p.filename is not None or p.name == "data")
            target = self._uploads.get(params["upload_id"])
            if target is not None:
                target.parts[part_id] = size
            return {
                "id": part_id,
                "object": "upload.part",
                "created_at": 1_719_185_911,
                "upload_id": params["upload_id"],
            }
        if key in ("POST /uploads/{upload_id}/complete", "POST /uploads/{upload_id}/cancel"):
            known_up = self._uploads.get(params["upload_id"])
            if known_up is None:
                return None
            if key.endswith("/cancel"):
                return self._upload_json(known_up, "cancelled")
            order = data.get("part_ids")
            ids = (
                [p for p in order if isinstance(p, str)] if isinstance(order, list) else list(known_up.parts)
            )
            total = sum(known_up.parts.get(p, 0) for p in ids) if known_up.parts else known_up.bytes
            f = UploadedFile(self._new_id("file-fake"), known_up.filename, total, known_up.purpose)
            self.files[f.id] = f
            out = self._upload_json(known_up, "completed")
            out["bytes"] = total
            out["file"] = f.to_json()
            return out
        return None

    @staticmethod
    def _upload_json(up: _Upload, status: str) -> dict[str, Any]:
        return {
            "id": up.id,
            "object": "upload",
            "bytes": up.bytes,
            "created_at": 1_719_184_911,
            "expires_at": 1_719_188_511,
            "filename": up.filename,
            "purpose": up.purpose,
            "status": status,
            "file": None,
        }

    # -- reading and recording

    async def _read_body(self, request: web.BaseRequest) -> _Body:
        if not request.body_exists:
            return _Body()
        # request.content_type defaults to application/octet-stream; a missing header means
        # "try JSON" (lenient like the real API), a non-JSON type means "only hash it".
        ctype = request.content_type if "Content-Type" in request.headers else ""
        if ctype.startswith("multipart/"):
            return _Body(multipart=await self._read_multipart(request))
        if ctype in ("application/json", "") or ctype.endswith("+json"):
            raw = await request.content.read()
            out = _Body(size=len(raw), sha256=hashlib.sha256(raw).hexdigest())
            if raw:
                try:
                    out.json = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    out.invalid_json = ctype != ""
            return out
        # Anything else is hashed as it streams in, never held.
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_chunked(BLOCK_SIZE):
            digest.update(chunk)
            size += len(chunk)
        return _Body(size=size, sha256=digest.hexdigest())

    async def _read_multipart(self, request: web.BaseRequest) -> list[MultipartPart]:
        reader = await request.multipart()
        parts: list[MultipartPart] = []
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                # Nested multipart/mixed: not used by the OpenAI API; drain it.
                await part.release()
                continue
            digest = hashlib.sha256()
            size = 0
            text: bytearray | None = bytearray() if part.filename is None else None
            while chunk := await part.read_chunk(BLOCK_SIZE):
                digest.update(chunk)
                size += len(chunk)
                if text is not None:
                    text += chunk
                    if len(text) > _TEXT_FIELD_LIMIT:
                        text = None
            parts.append(
                MultipartPart(
                    part.name,
                    part.filename,
                    part.headers.get("Content-Type"),
                    size,
                    digest.hexdigest(),
                    text.decode("utf-8", "replace") if text is not None else None,
                )
            )
        return parts

    def _record(self, ctx: _Ctx, match: Match | None, body: _Body) -> None:
        if not self.config.record:
            return
        request = ctx.request
        query: dict[str, str] = {}
        query_all: dict[str, list[str]] = {}
        for k, v in request.query.items():
            query.setdefault(k, v)
            query_all.setdefault(k, []).append(v)
        headers: dict[str, str] = {}
        for k, v in request.headers.items():
            lk = k.lower()
            headers[lk] = f"{headers[lk]}, {v}" if lk in headers else v
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            route=match.endpoint.key if match is not None else None,
            params=dict(match.params) if match is not None else {},
            query=query,
            query_all=query_all,
            headers=headers,
            content_type=request.content_type if request.body_exists else None,
            json=body.json,
            multipart=body.multipart,
            body_size=body.size if body.multipart is None else sum(p.size for p in body.multipart),
            body_sha256=body.sha256,
            time=time.time(),
            request_id=ctx.rid,
        )
        self._records.append(record)
        for observer in self.observers:
            observer(record)

    # -- writing

    def _headers(self, ctx: _Ctx, ctype: str) -> dict[str, str]:
        headers = {
            "Content-Type": ctype,
            "x-request-id": ctx.rid,
            "openai-processing-ms": str(int((time.monotonic() - ctx.started) * 1000)),
            "openai-version": "2020-10-01",
        }
        if self.config.ratelimit is not None:
            headers.update(self.config.ratelimit.as_headers())
        step = ctx.step
        if step is not None and step.headers:
            for k, v in step.headers.items():
                if k.lower() == "content-type":
                    headers["Content-Type"] = v
                else:
                    headers[k.lower()] = str(v)
        return headers

    def _json(self, ctx: _Ctx, status: int, payload: bytes) -> web.Response:
        return web.Response(status=status, body=payload, headers=self._headers(ctx, JSON_CT))

    async def _send(self, ctx: _Ctx, status: int, payload: bytes, ctype: str) -> web.StreamResponse:
        step = ctx.step
        if step is not None and step.content_type is not None:
            ctype = step.content_type
        headers = self._headers(ctx, ctype)
        if step is None or not (step.split or step.split_seed is not None):
            return web.Response(status=status, body=payload, headers=headers)
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = len(payload)
        await resp.prepare(ctx.request)
        writer = _Writer(resp, step.split, step.split_seed)
        await writer.write(payload)
        await writer.flush()
        await resp.write_eof()
        return resp

    @staticmethod
    def _cut(request: web.BaseRequest) -> None:
        # Server-initiated: not counted as a disconnect.
        if request.transport is not None:
            request.transport.close()

    async def _stream_sse(self, ctx: _Ctx, status: int, plan: StreamPlan) -> web.StreamResponse:
        step = ctx.step
        headers = self._headers(ctx, SSE_CT)
        headers.setdefault("cache-control", "no-cache")
        resp = web.StreamResponse(status=status, headers=headers)
        gap_ms = self.config.gap_ms if step is None or step.gap_ms is None else step.gap_ms
        self.stats.streams_started += 1
        self.stats.open_streams += 1
        try:
            await resp.prepare(ctx.request)
            if self.config.coalesce_streams and gap_ms == 0 and (step is None or _plain_stream(step)):
                await resp.write(plan.joined)
            elif not await self._write_events(ctx, resp, plan, gap_ms / 1000):
                return resp  # cut by the script
            await resp.write_eof()
            self.stats.streams_completed += 1
            return resp
        except asyncio.CancelledError:
            self._count_disconnect()
            raise
        except ConnectionError:
            self._count_disconnect()
            return resp
        finally:
            self.stats.open_streams -= 1

    async def _write_events(self, ctx: _Ctx, resp: web.StreamResponse, plan: StreamPlan, gap: float) -> bool:
        """Write the events with the step's faults applied; False if the stream was cut."""
        step = ctx.step
        writer = _Writer(resp, step.split if step else 0, step.split_seed if step else None)
        cut_after = step.cut_after if step is not None else None
        error_after = step.error_event_after if step is not None else None
        items = (*plan.events, plan.done) if plan.done is not None else plan.events
        # One more round than there are items, so faults can also apply after the last one.
        for i in range(len(items) + 1):
            if cut_after is not None and i >= cut_after:
                await writer.flush()
                if step is not None and step.cut_clean:
                    await resp.write_eof()
                else:
                    self._cut(ctx.request)
                return False
            if step is not None and error_after is not None and i >= error_after:
                await writer.write(error_event(plan.kind, _step_error(step, 500)["error"], i))
                break
            if i == len(items):
                break
            if i and gap > 0:
                await asyncio.sleep(gap)
            await writer.write(items[i])
        await writer.flush()
        return True

    async def _stream_bytes(
        self, ctx: _Ctx, status: int, ctype: str, *, seed: str, size: int, chunk: int, with_length: bool
    ) -> web.StreamResponse:
        step = ctx.step
        resp = web.StreamResponse(status=status, headers=self._headers(ctx, ctype))
        if with_length:
            resp.content_length = size
        # Only a scripted gap paces downloads: the configured gap_ms is for SSE events.
        gap = (step.gap_ms or 0) / 1000 if step is not None else 0.0
        cut_at = step.cut_after_bytes if step is not None else None
        writer = _Writer(resp, step.split if step else 0, step.split_seed if step else None)
        self.stats.streams_started += 1
        self.stats.open_streams += 1
        try:
            await resp.prepare(ctx.request)
            first = True
            for piece in iter_pattern(seed, size if cut_at is None else min(size, cut_at), chunk=chunk):
                if not first and gap > 0:
                    await asyncio.sleep(gap)
                first = False
                await writer.write(piece)
            await writer.flush()
            if cut_at is not None and cut_at < size:
                self._cut(ctx.request)
                return resp
            await resp.write_eof()
            self.stats.streams_completed += 1
            return resp
        except asyncio.CancelledError:
            self._count_disconnect()
            raise
        except ConnectionError:
            self._count_disconnect()
            return resp
        finally:
            self.stats.open_streams -= 1

    def _count_disconnect(self) -> None:
        if not self._stopping:
            self.stats.disconnects += 1
            self.stats.last_disconnect_at = time.monotonic()

    # -- control routes (/_fake/...): never recorded, never scripted

    async def _control(self, request: web.BaseRequest, raw_path: str) -> web.StreamResponse:
        route = f"{request.method} {raw_path}"
        try:
            payload: Any = None
            if request.body_exists:
                raw = await request.content.read()
                payload = orjson.loads(raw) if raw else None
            result = self._control_result(route, request, payload)
        except (ValueError, TypeError) as exc:
            return web.Response(status=400, body=dumps(openai_error(str(exc))), content_type=JSON_CT)
        if result is None:
            return web.Response(
                status=404, body=dumps(openai_error(f"Invalid URL ({route})")), content_type=JSON_CT
            )
        return web.Response(body=dumps(result), content_type=JSON_CT)

    def _control_result(self, route: str, request: web.BaseRequest, payload: Any) -> Any:
        if route == "GET /_fake/requests":
            records = self.requests_for(request.query["route"]) if "route" in request.query else self.requests
            limit = request.query.get("limit")
            if limit is not None:
                records = records[-int(limit) :] if int(limit) > 0 else []
            return {"object": "list", "data": [dataclasses.asdict(r) for r in records]}
        if route == "POST /_fake/reset":
            self.reset()
            return {"ok": True}
        if route == "POST /_fake/script":
            for r, steps in _parse_script(payload):
                self.script(r, *steps)
            return {"ok": True, "pending": self.pending_steps()}
        if route == "POST /_fake/script/clear":
            self.clear_script(payload.get("route") if isinstance(payload, dict) else None)
            return {"ok": True, "pending": self.pending_steps()}
        if route == "GET /_fake/stats":
            return {
                **self.stats.to_dict(),
                "open_connections": self.open_connections,
                "pending_steps": self.pending_steps(),
            }
        if route == "GET /_fake/config":
            return dataclasses.asdict(self.config)
        if route == "POST /_fake/config":
            if not isinstance(payload, dict):
                raise ValueError("expected a JSON object of config fields")
            self.config.update(payload)
            return dataclasses.asdict(self.config)
        return None


def _parse_script(payload: Any) -> Iterable[tuple[str, list[Step]]]:
    """Accept `[{route?, ...step}]`, `{route, steps: [...]}` or a single step object."""
    if isinstance(payload, dict) and "steps" in payload:
        route = str(payload.get("route", "*"))
        return [(route, [Step.from_dict(s) for s in payload["steps"]])]
    items = payload if isinstance(payload, list) else [payload]
    out: list[tuple[str, list[Step]]] = []
    for item in items:
        if not isinstance(item, dict):
            raise ValueError("each step must be a JSON object")
        out.append((str(item.get("route", "*")), [Step.from_dict(item)]))
    return out
