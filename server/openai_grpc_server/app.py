"""Builds the grpc.aio server from the route table; lifecycle, health, reflection, SIGTERM drain."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from openai_grpc_server import jsonlib, processes, reflection, routes
from openai_grpc_server.call import Context, deserializer
from openai_grpc_server.config import ConfigError, Settings
from openai_grpc_server.gateway import Gateway
from openai_grpc_server.resilience import ResiliencePolicy
from openai_grpc_server.routes import Kind, Route
from openai_grpc_server.services.streams import relay_binary, relay_events
from openai_grpc_server.services.uploads import relay_upload
from openai_grpc_server.telemetry import Telemetry, server_auto_instrumented
from openai_grpc_server.upstream.client import UpstreamClient

log = logging.getLogger("openai_grpc.app")


def _handler(gw: Gateway, route: Route) -> grpc.RpcMethodHandler[Any, Any]:
    des = deserializer(route)  # bad bytes become INVALID_ARGUMENT, not grpc's UNKNOWN
    ser = route.output_cls.SerializeToString
    if route.kind is Kind.UNARY:
        return grpc.unary_unary_rpc_method_handler(gw.unary(route), des, ser)
    if route.kind is Kind.UPLOAD:

        async def upload(requests: AsyncIterator[Any], context: Context) -> Any:
            return await relay_upload(gw, route, requests, context)

        return grpc.stream_unary_rpc_method_handler(upload, des, ser)
    relay: Callable[..., AsyncIterator[Any]] = relay_events if route.kind is Kind.EVENTS else relay_binary

    async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
        async for message in relay(gw, route, request, context):
            yield message

    return grpc.unary_stream_rpc_method_handler(stream, des, ser)


def generic_handlers(gw: Gateway, table: list[Route]) -> list[grpc.GenericRpcHandler[Any, Any]]:
    by_service: dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]] = {}
    for route in table:
        by_service.setdefault(route.service, {})[route.name] = _handler(gw, route)
    return [grpc.method_handlers_generic_handler(svc, methods) for svc, methods in by_service.items()]


@dataclasses.dataclass
class Running:
    server: grpc.aio.Server
    port: int
    gateway: Gateway
    health: health_aio.HealthServicer
    services: list[str] = dataclasses.field(default_factory=list)

    async def set_serving(self, serving: bool = True) -> None:
        answer = health_pb2.HealthCheckResponse
        status = answer.SERVING if serving else answer.NOT_SERVING
        for svc in ("", *self.services):
            await self.health.set(svc, status)

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.gateway.policy.aclose()
        await self.gateway.upstream.aclose()


def _credentials(s: Settings) -> grpc.ServerCredentials | None:
    if not s.tls_cert or not s.tls_key:
        return None
    with open(s.tls_cert, "rb") as c, open(s.tls_key, "rb") as k:
        pair = [(k.read(), c.read())]
    ca = None
    if s.tls_client_ca:
        with open(s.tls_client_ca, "rb") as f:
            ca = f.read()
    return grpc.ssl_server_credentials(pair, root_certificates=ca, require_client_auth=ca is not None)


def connection_age_options(settings: Settings) -> list[tuple[str, int]]:
    """GOAWAY after max_connection_age so clients reconnect through the Service and new pods
    get traffic; grpc core adds +-10 % jitter so a fleet's connections do not reconnect at once."""
    if settings.max_connection_age_seconds <= 0:
        return []
    return [
        ("grpc.max_connection_age_ms", round(settings.max_connection_age_seconds * 1000)),
        ("grpc.max_connection_age_grace_ms", round(settings.connection_age_grace() * 1000)),
    ]


def _pending_limit(s: Settings) -> int:
    return max(20_000, 4 * (s.max_concurrent_rpcs + s.max_queued_rpcs))


def default_interceptors(settings: Settings) -> tuple[Any, ...]:
    """OpenTelemetry's server interceptor (one span and the status of every RPC), when tracing
    is on. It costs about a fifth of a unary call's CPU, so it is opt-in (`tracing: true`).
    Under `opentelemetry-instrument` every grpc.aio server already gets that interceptor: a
    second one would make two server spans per RPC."""
    if not settings.tracing or server_auto_instrumented():
        return ()
    from opentelemetry.instrumentation.grpc import aio_server_interceptor  # noqa: PLC0415

    return (aio_server_interceptor(),)  # type: ignore[no-untyped-call]


async def start(
    settings: Settings,
    *,
    interceptors: tuple[Any, ...] | None = None,
    telemetry: Telemetry | None = None,
    serving: bool = True,
) -> Running:
    """Listen and serve. With `serving=False` health says NOT_SERVING until `set_serving()`
    (a worker waits for its supervisor: see processes.py)."""
    telemetry = telemetry or Telemetry()
    jsonlib.use(settings.json_library)
    authenticator = settings.authenticator()
    policy = ResiliencePolicy(
        settings.retry,
        settings.rate_limit,
        settings.breaker,
        observer=telemetry,
        tenant_limits={
            t.name: settings.rate_limit.for_tenant(t.limits) for t in authenticator.tenants if t.limits
        },
    )
    await policy.start()
    upstream = UpstreamClient(settings.upstream())
    gw = Gateway(
        upstream,
        authenticator,
        policy,
        telemetry,
        max_concurrent=settings.max_concurrent_rpcs,
        max_queued=settings.max_queued_rpcs,
        queue_wait=settings.queue_wait_seconds,
        embeddings_base64=settings.embeddings_base64,
        coalesce_events=settings.coalesce_events,
        max_event_bytes=settings.max_event_bytes,
    )
    table = routes.load_routes()
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 1),
        # Long-lived streams through Kubernetes load balancers: keep idle connections alive.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        *connection_age_options(settings),
        # Calls grpc core holds before the event loop picks them up. Past its defaults (1,000
        # soft, 3,000 hard) core drops them as CANCELLED; with room here every burst reaches
        # the admission queue, which answers RESOURCE_EXHAUSTED with RetryInfo at once.
        ("grpc.server.max_pending_requests", _pending_limit(settings)),
        ("grpc.server.max_pending_requests_hard_limit", _pending_limit(settings)),
    ]
    chain = default_interceptors(settings) if interceptors is None else interceptors
    server = grpc.aio.server(interceptors=chain, options=options)
    server.add_generic_rpc_handlers(generic_handlers(gw, table))
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)  # type: ignore[no-untyped-call]
    services = sorted({r.service for r in table})
    if settings.reflection:
        reflected = [*services, health.SERVICE_NAME]
        # The error details every failure carries: grpcurl decodes them through reflection.
        details = [error_details_pb2.DESCRIPTOR, status_pb2.DESCRIPTOR]
        reflection.add_to_server(server, reflected, extra_files=[health_pb2.DESCRIPTOR, *details])
    address = f"{settings.host}:{settings.port}"
    creds = _credentials(settings)
    try:
        port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    except RuntimeError:  # grpc's "Failed to bind": __main__ shows OSError as one line
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    running = Running(server, port, gw, health_servicer, services)
    await running.set_serving(serving)
    log.info("gateway listening", extra={"address": f"{settings.host}:{port}", "rpcs": len(table)})
    return running


def reload(settings: Settings, gw: Gateway) -> None:
    """SIGHUP: read the tenants file and the key file again. Calls in flight keep the credential
    they started with; a file that does not load leaves the previous tenants in place."""
    try:
        authenticator = settings.authenticator()
    except ConfigError as exc:
        log.error("reload failed; keeping the previous tenants and keys", extra={"error": str(exc)})
        return
    gw.auth = authenticator
    log.info("reloaded tenants and keys", extra={"tenants": len(authenticator.tenants)})


async def serve(
    settings: Settings, on_ready: Callable[[Running], None] | None = None, supervisor_fd: int | None = None
) -> None:
    """Run until SIGTERM/SIGINT: then NOT_SERVING, drain in-flight RPCs within the grace, exit.

    A worker (`supervisor_fd`) serves when its supervisor says so and stops when it is gone."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    running = await start(settings, serving=supervisor_fd is None)
    # What start built (descriptors, routes, grpc, aiohttp, telemetry) lives as long as the
    # process: frozen out of the collector's sight, a full collection no longer walks ~70k
    # objects (a 47 ms pause at 64 streams, longer than a stream's 40 ms stall budget; 4 ms now).
    gc.collect()
    gc.freeze()
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGHUP, reload, settings, running.gateway)
    if supervisor_fd is not None:
        processes.follow_supervisor(supervisor_fd, running.set_serving, stop)
    if on_ready:
        on_ready(running)
    await stop.wait()
    log.info("shutting down", extra={"grace_seconds": settings.grace_seconds})
    await running.stop(settings.grace_seconds)
    log.info("stopped")
