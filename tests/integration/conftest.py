"""Every request the fake upstream receives from a gateway is validated against `spec/openapi.yaml`
(openapi-core, tests/support/openapi_validation.py): a test whose gateway sent a request the spec
rejects fails at teardown, whatever it asserted itself. The gateway and fake fixtures are
tests/conftest.py's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.support import openapi_validation
from tests.support.gateway import received
from tests.support.redis_server import RedisServer

# How many were validated in this session (printed in the terminal summary).
validated_requests = 0


@pytest.fixture(autouse=True)
def _upstream_requests_follow_the_spec() -> Iterator[None]:
    """Validate what this test made the gateway send upstream (after the test, in one go)."""
    global validated_requests  # noqa: PLW0603
    received.clear()
    yield
    records = list(received)
    received.clear()
    problems = [v for r in records for v in openapi_validation.violations(r)]
    validated_requests += len(records)
    if problems:
        pytest.fail("upstream requests the spec rejects:\n" + "\n".join(problems[:20]), pytrace=False)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if validated_requests:
        terminalreporter.write_line(
            f"upstream requests validated against spec/openapi.yaml: {validated_requests}"
        )


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free port, for one test module."""
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A client of that server, emptied before each test (restarting the server if a test stopped it)."""
    if not redis_server.ping():
        redis_server.start()
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushall()
    yield client
    await client.aclose()
