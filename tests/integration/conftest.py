"""A real grpc.aio gateway on loopback in front of a real HTTP fake upstream, per test session.

Every request the fake upstream receives is validated against `spec/openapi.yaml` (openapi-core,
tests/contract/openapi_validation.py): a test whose gateway sent a request the spec rejects
fails at teardown, whatever it asserted itself.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from openai_grpc_server import app, routes
from openai_grpc_server.auth import Secret
from openai_grpc_server.config import Settings
from openai_grpc_server.fake_upstream import FakeUpstream, RecordedRequest
from openai_grpc_server.resilience import BreakerConfig, RetryConfig
from openai_grpc_server.telemetry import Telemetry
from openai_grpc_server.upstream.client import USER_AGENT

from tests.contract import openapi_validation

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

    def unary(self, name: str) -> Callable[..., Any]:
        r = self.routes[name]
        return self.channel.unary_unary(
            r.full_method,
            request_serializer=r.input_cls.SerializeToString,
            response_deserializer=r.output_cls.FromString,
        )

    def server_stream(self, name: str) -> Callable[..., Any]:
        r = self.routes[name]
        return self.channel.unary_stream(
            r.full_method,
            request_serializer=r.input_cls.SerializeToString,
            response_deserializer=r.output_cls.FromString,
        )

    def client_stream(self, name: str) -> Callable[..., Any]:
        r = self.routes[name]
        return self.channel.stream_unary(
            r.full_method,
            request_serializer=r.input_cls.SerializeToString,
            response_deserializer=r.output_cls.FromString,
        )

    def request(self, name: str, **fields: Any) -> Message:
        return self.routes[name].input_cls(**fields)


# Requests the session's fake upstream received and no test has validated yet.
_received: list[RecordedRequest] = []
# How many were validated in this session (printed in the terminal summary).
validated_requests = 0


def _from_gateway(record: RecordedRequest) -> None:
    # Tests also call the fake directly (to know what it answers): only the gateway's count.
    if record.headers.get("user-agent") == USER_AGENT:
        _received.append(record)


@pytest.fixture(scope="session")
async def fake() -> AsyncIterator[FakeUpstream]:
    upstream = FakeUpstream(host="127.0.0.1", port=0)
    upstream.observers.append(_from_gateway)
    await upstream.start()
    yield upstream
    await upstream.stop()


@pytest.fixture(autouse=True)
def _upstream_requests_follow_the_spec() -> Iterator[None]:
    """Validate what this test made the gateway send upstream (after the test, in one go)."""
    global validated_requests  # noqa: PLW0603
    _received.clear()
    yield
    records = list(_received)
    _received.clear()
    problems = [v for r in records for v in openapi_validation.violations(r)]
    validated_requests += len(records)
    if problems:
        pytest.fail("upstream requests the spec rejects:\n" + "\n".join(problems[:20]), pytrace=False)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if validated_requests:
        terminalreporter.write_line(
            f"upstream requests validated against spec/openapi.yaml: {validated_requests}"
        )


async def start_gateway(
    settings: Settings, telemetry: Telemetry | None = None, interceptors: tuple[Any, ...] | None = None
) -> Gateway:
    running = await app.start(settings, telemetry=telemetry, interceptors=interceptors)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    return Gateway(running, channel, {r.name: r for r in routes.load_routes()})


async def stop_gateway(gw: Gateway) -> None:
    await gw.channel.close(None)
    await gw.running.stop(0)


@pytest.fixture(scope="session")
async def gateway(fake: FakeUpstream) -> AsyncIterator[Gateway]:
    gw = await start_gateway(settings_for(fake.base_url))
    yield gw
    await stop_gateway(gw)


@pytest.fixture
def clean_fake(fake: FakeUpstream) -> FakeUpstream:
    fake.reset()
    return fake
