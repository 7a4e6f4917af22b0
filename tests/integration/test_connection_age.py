"""max_connection_age: a client's one HTTP/2 connection is replaced after the age (GOAWAY), so
behind a Kubernetes ClusterIP Service new pods get traffic; calls in flight finish in the grace."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from openai_grpc_server import app
from openai_grpc_server.fake_upstream import FakeUpstream, Step

from tests.support.gateway import settings_for, start_gateway, stop_gateway


class PeerRecorder(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # not subscriptable at run time
    """Records the client address (and so the connection) each unary call arrived on."""

    def __init__(self) -> None:
        self.peers: list[str] = []

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        inner = handler.unary_unary if handler is not None else None
        if inner is None:
            return handler

        async def record(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            self.peers.append(context.peer())
            return await inner(request, context)  # type: ignore[arg-type]  # grpc-stubs: sync context

        return handler._replace(unary_unary=record)  # type: ignore[attr-defined,no-any-return]


async def _health_checks(max_age: float, calls: int = 20) -> list[str]:
    """`calls` health checks on one channel, 0.1 s apart; the peer of each."""
    recorder = PeerRecorder()
    settings = settings_for("http://127.0.0.1:9", max_connection_age_seconds=max_age)
    gw = await start_gateway(settings, interceptors=(*app.default_interceptors(settings), recorder))
    try:
        stub = health_pb2_grpc.HealthStub(gw.channel)  # type: ignore[no-untyped-call]  # grpcio-health-checking is untyped
        for _ in range(calls):
            answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            await asyncio.sleep(0.1)
    finally:
        await stop_gateway(gw)
    return recorder.peers


async def test_a_channel_reconnects_after_the_maximum_age() -> None:
    peers = await _health_checks(max_age=0.3)
    # Every call succeeded (GOAWAY never fails a call) and they arrived on several connections.
    assert len(peers) == 20
    assert len(set(peers)) >= 2, peers


async def test_without_a_maximum_age_the_channel_keeps_one_connection() -> None:
    peers = await _health_checks(max_age=0)
    assert len(peers) == 20
    assert len(set(peers)) == 1, peers


@pytest.mark.parametrize(("grace", "survives"), [(None, True), (0.2, False)])
async def test_a_call_in_flight_finishes_within_the_grace(
    clean_fake: FakeUpstream, grace: float | None, survives: bool
) -> None:
    """Unset, the grace is request_timeout: a slow call outlives the connection's age. A grace
    shorter than the call cuts it, which is why that is not the default."""
    clean_fake.script("GET /models", Step(delay_ms=1500))
    settings = settings_for(
        clean_fake.base_url, max_connection_age_seconds=0.3, max_connection_age_grace_seconds=grace
    )
    gw = await start_gateway(settings)
    try:
        call = gw.unary("ListModels")(gw.request("ListModels"), timeout=10)
        if survives:
            answer = await call
            assert len(answer.data) > 0
        else:
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await call
            assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await stop_gateway(gw)
