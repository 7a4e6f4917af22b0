"""The request path shared by every RPC, and the generic unary handler.

caller -> authenticate -> validate -> resilience (breaker -> limiter -> HTTP -> classify ->
retry) -> codec -> caller. Every failure leaves through `status.abort`, so the caller gets
exactly one precise status; an unexpected exception becomes INTERNAL with a generic message
and the traceback goes to the log only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NoReturn

import grpc
from google.protobuf.message import Message

from openai_grpc_server import codec, jsonlib, routes, status, validation
from openai_grpc_server.auth import Authenticator, Credential
from openai_grpc_server.errors import CodecFailure, GatewayInternal, OpenAIError
from openai_grpc_server.resilience import Attempt, Operation, ResiliencePolicy
from openai_grpc_server.routes import Route
from openai_grpc_server.services import embeddings
from openai_grpc_server.telemetry import Telemetry
from openai_grpc_server.upstream.client import JsonResponse, UpstreamClient, forwarded_metadata

log = logging.getLogger("openai_grpc.gateway")
Context = grpc.aio.ServicerContext[Any, Any]

# Rough prompt-size estimate for the token limiter until real usage settles it.
_BYTES_PER_TOKEN = 4
_OUTPUT_TOKEN_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def estimate_tokens(body: Mapping[str, Any] | None, body_bytes: int) -> int:
    if not body:
        return 0
    output = next((body[k] for k in _OUTPUT_TOKEN_FIELDS if isinstance(body.get(k), int)), 0)
    return body_bytes // _BYTES_PER_TOKEN + int(output)


def usage_of(payload: Any) -> dict[str, Any] | None:
    """The `usage` object of a response or stream event, wherever the API puts it."""
    if not isinstance(payload, dict):
        return None
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        inner = payload.get("response")
        usage = inner.get("usage") if isinstance(inner, dict) else None
    return usage if isinstance(usage, dict) else None


def total_tokens(usage: Mapping[str, Any]) -> int:
    total = usage.get("total_tokens")
    if isinstance(total, int):
        return total
    parts = [usage.get(k) for k in ("prompt_tokens", "completion_tokens", "input_tokens", "output_tokens")]
    return sum(p for p in parts if isinstance(p, int))


@dataclasses.dataclass
class Call:
    """One RPC in flight: who calls, what it costs, where it goes."""

    route: Route
    credential: Credential
    op: Operation
    model: str
    started: float


class Gateway:
    def __init__(
        self,
        upstream: UpstreamClient,
        authenticator: Authenticator,
        policy: ResiliencePolicy,
        telemetry: Telemetry,
        *,
        max_concurrent: int = 2000,
        embeddings_base64: bool = True,
        coalesce_events: bool = True,
    ) -> None:
        self.embeddings_base64 = embeddings_base64
        # Relay the events of one upstream read in one gRPC message (each message costs ~30 µs).
        self.coalesce_events = coalesce_events
        self.upstream = upstream
        self.auth = authenticator
        self.policy = policy
        self.telemetry = telemetry
        # grpc.aio's maximum_concurrent_rpcs is unreliable: bound in-flight work ourselves.
        self.slots = asyncio.Semaphore(max_concurrent)

    # --- shared steps ------------------------------------------------------------------------
    def begin(
        self,
        route: Route,
        request: Message | None,
        context: Context,
        body: Mapping[str, Any] | None,
        size: int,
    ) -> Call:
        """Authenticate the caller and describe the call for the resilience policy."""
        if self.auth.mode == "none":
            credential = self.auth.authenticate({})  # no caller metadata to read
        else:
            metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
            credential = self.auth.authenticate(metadata)
        deadline = self.policy.deadline_in(context.time_remaining())
        op = Operation(
            endpoint=route.endpoint,
            credential=credential.name,
            token_estimate=estimate_tokens(body, size),
            deadline=deadline,
        )
        model = str(body.get("model", "")) if body else str(getattr(request, "model", "") or "")
        return Call(route, credential, op, model, time.perf_counter())

    def observe(self, call: Call, forwarded: list[tuple[str, str]]) -> None:
        """Feed upstream `x-ratelimit-*` headers (already picked out for the caller) to the limiter."""
        if any(k.startswith("x-ratelimit-") for k, _ in forwarded):
            self.policy.observe_headers(call.op, dict(forwarded))

    async def fail(self, context: Context, call: Call | None, route: Route, exc: BaseException) -> NoReturn:
        """End the RPC with the status for `exc` (an abort already under way passes through)."""
        if _is_abort(exc):
            raise exc
        err = as_gateway_error(exc, route)
        if call is not None:
            self.telemetry.request_done(route.endpoint, call.model, call.started, err)
        await status.abort(context, err, forwarded_metadata(err.headers))

    # --- unary -------------------------------------------------------------------------------
    def unary(self, route: Route) -> Callable[[Message, Context], Awaitable[Message]]:
        async def handler(request: Message, context: Context) -> Message:
            async with self.slots:
                call: Call | None = None
                try:
                    validation.check(route, request)
                    req = routes.build_request(route, request)
                    unpack = (
                        self.embeddings_base64
                        and route.path_template == embeddings.PATH
                        and embeddings.prepare(req.body or {})
                    )
                    payload = jsonlib.dumps(req.body) if req.body is not None else None
                    call = self.begin(route, request, context, req.body, len(payload or b""))
                    with self.telemetry.request_span(call, streaming=False):
                        return await self._unary(route, call, req, payload, context, unpack)
                except Exception as exc:  # CancelledError is not an Exception: it propagates
                    await self.fail(context, call, route, exc)

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
                beta=route.beta_header,
                accept=route.accept,
            )

        value, reservation = await self.policy.execute(call.op, attempt)
        forwarded = forwarded_metadata(value.headers)
        self.observe(call, forwarded)
        self.telemetry.http_response(value.status, self.upstream, req.path, value.headers)
        usage = usage_of(value.body)
        reservation.settle(total_tokens(usage) if usage else call.op.token_estimate)
        if usage is not None:
            self.telemetry.usage(call.model, usage)
        if unpack_embeddings:
            embeddings.restore(value.body)
        response = route.output_cls()
        try:
            codec.decode_response(value.body, response)
        except codec.CodecError as exc:
            raise CodecFailure(
                f"OpenAI's answer does not fit {route.output_desc.name}: {exc}",
                request_id=value.headers.get("x-request-id"),
                headers=value.headers,
            ) from exc
        # Trailing, not initial metadata: a separate initial-metadata send costs a whole extra
        # batch in grpc.aio (13 % of a unary call's CPU here); trailers ride with the status.
        context.set_trailing_metadata(forwarded)
        self.telemetry.request_done(route.endpoint, call.model, call.started, None)
        return response


def _is_abort(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AbortError) or type(exc).__name__ == "AbortError"


def as_gateway_error(exc: BaseException, route: Route) -> OpenAIError:
    if isinstance(exc, OpenAIError):
        return exc
    log.exception("unexpected error in %s", route.full_method, exc_info=exc)
    return GatewayInternal("internal error in the gateway; the operator's logs have the details")
