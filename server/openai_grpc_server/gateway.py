"""The boundary every RPC goes through, the steps all kinds of call share, and the generic
unary handler.

caller -> slot -> authenticate -> decode -> validate -> resilience (breaker -> limiter -> HTTP
-> classify -> retry) -> codec -> caller. `Boundary` owns the start and the end; every failure
leaves through `status.abort`, so the caller gets exactly one precise status; an unexpected
exception becomes INTERNAL with a generic message and the traceback goes to the log only.
docs/architecture.md describes the whole path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, NoReturn

import grpc
from google.protobuf.message import Message
from opentelemetry.trace import Span

from openai_grpc_server import embeddings, jsonlib, routes, status, validation
from openai_grpc_server.auth import Authenticator, Credential
from openai_grpc_server.call import (
    Call,
    Context,
    Undecodable,
    decode_answer,
    ensure_decoded,
    estimate_tokens,
    total_tokens,
    usage_of,
)
from openai_grpc_server.errors import GatewayInternal, GatewayOverloaded, OpenAIError, redact
from openai_grpc_server.resilience import Attempt, Operation, Reservation, ResiliencePolicy
from openai_grpc_server.routes import Route
from openai_grpc_server.telemetry import Telemetry
from openai_grpc_server.upstream.client import JsonResponse, UpstreamClient, forwarded_metadata

log = logging.getLogger("openai_grpc.gateway")


class Admission:
    """At most `slots` calls at work and `queue` waiting for a slot; a caller beyond that, or
    one that waited `wait` seconds, gets RESOURCE_EXHAUSTED with RetryInfo at once.

    grpc.aio's maximum_concurrent_rpcs is unreliable, and an unbounded wait lets a burst pile up
    until grpc itself cancels calls: shed load early and say when to come back instead."""

    def __init__(self, slots: int, queue: int, wait: float) -> None:
        self._sem = asyncio.Semaphore(slots)
        self.queue = queue
        self.wait = wait
        self.waiting = 0

    async def acquire(self, time_left: float | None) -> None:
        """A slot for one call; give it back with `release`. Plain methods, not a context
        manager: this runs on every call, and a generator-based one costs a few µs each."""
        if not self._sem.locked():
            await self._sem.acquire()  # a free slot: never blocks
            return
        if self.waiting >= self.queue:
            raise self._overloaded("every slot is busy and the wait queue is full")
        wait = self.wait if time_left is None else max(0.0, min(self.wait, time_left - 0.05))
        self.waiting += 1
        try:
            await asyncio.wait_for(self._sem.acquire(), wait)
        except TimeoutError:
            raise self._overloaded(f"no slot came free within {wait:.1f} s") from None
        finally:
            self.waiting -= 1

    def release(self) -> None:
        self._sem.release()

    @staticmethod
    def _overloaded(why: str) -> GatewayOverloaded:
        return GatewayOverloaded(
            f"the gateway is at capacity ({why}); retry after the RetryInfo delay", retry_after=1.0
        )


class Rpc:
    """One RPC inside its boundary: when it started, who calls, and (once the handler has
    described it) the call; a stream's span, when the handler opened one, ends with the RPC."""

    __slots__ = ("call", "credential", "span", "started")

    def __init__(self, started: float, credential: Credential) -> None:
        self.started = started
        self.credential = credential
        self.call: Call | None = None
        self.span: Span | None = None


class Boundary:
    """The start and end of every RPC, whatever its kind: `async with gw.boundary(route, ctx)`.

    Start: a concurrency slot, then caller authentication (nothing about the request is looked
    at before). End: the slot is given back; a failure leaves with exactly one status
    (`Gateway.fail`: metrics, access log, error to status); a caller that went away is logged
    and `CancelledError` propagates (swallowing it leaks the call in grpc.aio); a stream's span
    ends after the failure was recorded on it. Handlers only do their kind's work inside."""

    __slots__ = ("_context", "_gw", "_route", "_rpc")

    def __init__(self, gw: Gateway, route: Route, context: Context) -> None:
        self._gw = gw
        self._route = route
        self._context = context
        self._rpc: Rpc | None = None

    async def __aenter__(self) -> Rpc:
        started = time.perf_counter()
        admission = self._gw.admission
        try:
            await admission.acquire(self._context.time_remaining())
        except Exception as exc:  # no slot: RESOURCE_EXHAUSTED at once
            await self._gw.fail(self._context, None, self._route, exc, started)
        except asyncio.CancelledError:  # the caller left while waiting for a slot
            self._gw.telemetry.cancelled(self._route, None, started)
            raise
        try:
            credential = self._gw.authenticate(self._context)
        except Exception as exc:
            admission.release()
            await self._gw.fail(self._context, None, self._route, exc, started)
        self._rpc = Rpc(started, credential)
        return self._rpc

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        rpc = self._rpc
        assert rpc is not None
        self._gw.admission.release()
        try:
            if isinstance(exc, Exception):
                await self._gw.fail(self._context, rpc.call, self._route, exc, rpc.started)
            elif isinstance(exc, asyncio.CancelledError):  # the caller left: logged, and re-raised
                self._gw.telemetry.cancelled(self._route, rpc.call, rpc.started)
        finally:
            if rpc.span is not None:
                rpc.span.end()


class Gateway:
    def __init__(
        self,
        upstream: UpstreamClient,
        authenticator: Authenticator,
        policy: ResiliencePolicy,
        telemetry: Telemetry,
        *,
        max_concurrent: int = 2000,
        max_queued: int = 2000,
        queue_wait: float = 10.0,
        embeddings_base64: bool = True,
        coalesce_events: bool = True,
        max_event_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.max_event_bytes = max_event_bytes
        self.embeddings_base64 = embeddings_base64
        # Relay the events of one upstream read in one gRPC message (each message costs ~30 µs).
        self.coalesce_events = coalesce_events
        self.upstream = upstream
        self.auth = authenticator
        self.policy = policy
        self.telemetry = telemetry
        # grpc.aio's maximum_concurrent_rpcs is unreliable: bound in-flight work ourselves.
        self.admission = Admission(max_concurrent, max_queued, queue_wait)

    # --- shared steps ------------------------------------------------------------------------
    def boundary(self, route: Route, context: Context) -> Boundary:
        """The start and end every RPC shares (see `Boundary`)."""
        return Boundary(self, route, context)

    def authenticate(self, context: Context) -> Credential:
        """First step of every call: nothing about the request is looked at before this."""
        if self.auth.mode == "none":
            return self.auth.authenticate({})  # no caller metadata to read
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        return self.auth.authenticate(metadata)

    def begin(
        self,
        route: Route,
        request: Message | None,
        context: Context,
        body: Mapping[str, Any] | None,
        size: int,
        rpc: Rpc,
    ) -> Call:
        """Describe the authenticated call for the resilience policy; it becomes `rpc.call`."""
        credential = rpc.credential
        deadline = self.policy.deadline_in(context.time_remaining())
        op = Operation(
            endpoint=route.endpoint,
            credential=credential.name,
            token_estimate=estimate_tokens(body, size),
            deadline=deadline,
        )
        model = str(body.get("model", "")) if body else str(getattr(request, "model", "") or "")
        # The model only labels metrics, spans and logs: a secret pasted into it must not leak there.
        model = redact(model)
        rpc.call = Call(route, credential, op, model, rpc.started)
        return rpc.call

    def observe(self, call: Call, forwarded: list[tuple[str, str]]) -> None:
        """Feed upstream `x-ratelimit-*` headers (already picked out for the caller) to the limiter."""
        for k, v in forwarded:
            if k == "x-request-id":
                call.request_id = v
        if any(k.startswith("x-ratelimit-") for k, _ in forwarded):
            self.policy.observe_headers(call.op, dict(forwarded))

    def settle(self, reservation: Reservation, call: Call, usage: Mapping[str, Any] | None) -> None:
        """Settle the call's tokens with the answer's real usage; an answer without usage keeps
        the estimate charged, whatever the kind of call (it was still paid for upstream)."""
        reservation.settle(total_tokens(usage) if usage else call.op.token_estimate)

    async def fail(
        self,
        context: Context,
        call: Call | None,
        route: Route,
        exc: BaseException,
        started: float,
    ) -> NoReturn:
        """End the RPC with the status for `exc` (an abort already under way passes through).
        `started`, the RPC's start, times a failure that came before `call` was made."""
        if _is_abort(exc):
            raise exc
        err = as_gateway_error(exc, route)
        self.telemetry.request_done(route, call, err, started)
        await status.abort(context, err, forwarded_metadata(err.headers))

    # --- unary -------------------------------------------------------------------------------
    def unary(self, route: Route) -> Callable[[Message | Undecodable, Context], Awaitable[Message]]:
        async def handler(raw: Message | Undecodable, context: Context) -> Message:
            async with self.boundary(route, context) as rpc:
                request = ensure_decoded(route, raw)
                validation.check(route, request)
                req = routes.build_request(route, request)
                unpack = (
                    self.embeddings_base64
                    and route.behaviour.embeddings_base64
                    and embeddings.prepare(req.body or {})
                )
                payload = jsonlib.dumps(req.body) if req.body is not None else None
                call = self.begin(route, request, context, req.body, len(payload or b""), rpc)
                with self.telemetry.request_span(call, streaming=False):
                    return await self._unary(route, call, req, payload, context, unpack)

        return handler

    async def _unary(
        self,
        route: Route,
        call: Call,
        req: routes.UpstreamRequest,
        payload: bytes | None,
        context: Context,
        unpack_embeddings: bool,
    ) -> Message:
        async def attempt(a: Attempt) -> JsonResponse:
            return await self.upstream.send_json(
                req.method,
                req.path,
                cred=call.credential,
                query=req.query,
                json=payload,
                time_left=a.timeout,
                behaviour=route.behaviour,
                accept=route.accept,
            )

        value, reservation = await self.policy.execute(call.op, attempt)
        forwarded = forwarded_metadata(value.headers)
        self.observe(call, forwarded)
        self.telemetry.http_response(value.status, self.upstream, req.path, value.headers)
        usage = usage_of(value.body)
        self.settle(reservation, call, usage)
        self.telemetry.response(call, value.body, usage)
        if unpack_embeddings:
            embeddings.restore(value.body)
        response = decode_answer(route, value)
        # Trailing, not initial metadata: a separate initial-metadata send costs a whole extra
        # batch in grpc.aio (13 % of a unary call's CPU here); trailers ride with the status.
        context.set_trailing_metadata(forwarded)
        self.telemetry.request_done(route, call)
        return response


def _is_abort(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AbortError) or type(exc).__name__ == "AbortError"


def as_gateway_error(exc: BaseException, route: Route) -> OpenAIError:
    if isinstance(exc, OpenAIError):
        return exc
    log.exception("unexpected error in %s", route.full_method, exc_info=exc)
    return GatewayInternal("internal error in the gateway; the operator's logs have the details")
