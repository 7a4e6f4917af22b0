"""A real grpc.aio gateway on loopback for tests: its settings, a handle with typed callables per
RPC, and the record of what it sent upstream (validated against spec/openapi.yaml by the
integration conftest)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import Message
from openai_grpc_server import app, routes
from openai_grpc_server.auth import Secret
from openai_grpc_server.config import Settings
from openai_grpc_server.fake_upstream import RecordedRequest
from openai_grpc_server.resilience import BreakerConfig, RetryConfig
from openai_grpc_server.telemetry import Telemetry
from openai_grpc_server.upstream.client import USER_AGENT

API_KEY = "sk-test-integration-0123456789"


def settings_for(base_url: str, **overrides: Any) -> Settings:
    base = Settings(
        host="127.0.0.1",
        port=0,
        base_url=base_url,
        api_key=Secret(API_KEY),
        organization="org-test",
        project="proj-test",
        request_timeout=10.0,
        retry=RetryConfig(max_retries=0),
        # The error-table tests send many 5xx in a row: keep the breaker out of their way.
        breaker=BreakerConfig(failure_threshold=10_000),
        # The suite runs against either upstream transport (scripts/test.sh runs both).
        upstream_transport=os.environ.get("OPENAI_GRPC_TEST_TRANSPORT", "aiohttp"),
        # The runner's own proxies must not stand between the gateway and its loopback upstream
        # (test_upstream_env.py covers trust_env with a gateway process of its own).
        trust_env=False,
    )
    return dataclasses.replace(base, **overrides)


@dataclasses.dataclass
class Gateway:
    running: app.Running
    channel: grpc.aio.Channel
    routes: dict[str, routes.Route]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    def _bind(self, factory: Callable[..., Any], name: str) -> Callable[..., Any]:
        r = self.routes[name]
        bound: Callable[..., Any] = factory(
            r.full_method,
            request_serializer=r.input_cls.SerializeToString,
            response_deserializer=r.output_cls.FromString,
        )
        return bound

    def unary(self, name: str) -> Callable[..., Any]:
        return self._bind(self.channel.unary_unary, name)

    def server_stream(self, name: str) -> Callable[..., Any]:
        return self._bind(self.channel.unary_stream, name)

    def client_stream(self, name: str) -> Callable[..., Any]:
        return self._bind(self.channel.stream_unary, name)

    def request(self, name: str, **fields: Any) -> Message:
        return self.routes[name].input_cls(**fields)


async def start_gateway(
    settings: Settings, telemetry: Telemetry | None = None, interceptors: tuple[Any, ...] | None = None
) -> Gateway:
    running = await app.start(settings, telemetry=telemetry, interceptors=interceptors)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    return Gateway(running, channel, {r.name: r for r in routes.load_routes()})


async def stop_gateway(gw: Gateway) -> None:
    await gw.channel.close(None)
    await gw.running.stop(0)


# Requests the session's fake upstream received from a gateway and no test has validated yet.
received: list[RecordedRequest] = []


def record_from_gateway(record: RecordedRequest) -> None:
    """A fake upstream observer. Tests also call the fake directly (to know what it answers): only
    the gateway's requests count."""
    if record.headers.get("user-agent") == USER_AGENT:
        received.append(record)
