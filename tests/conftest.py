"""Fixtures every tier that talks to a gateway shares: one fake upstream and one gateway per session.

Helpers live in tests/support/; conftest files hold fixtures and hooks only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from openai_grpc_server.fake_upstream import FakeUpstream

from tests.support.gateway import Gateway, record_from_gateway, settings_for, start_gateway, stop_gateway


@pytest.fixture(scope="session")
async def fake() -> AsyncIterator[FakeUpstream]:
    upstream = FakeUpstream(host="127.0.0.1", port=0)
    upstream.observers.append(record_from_gateway)
    await upstream.start()
    yield upstream
    await upstream.stop()


@pytest.fixture(scope="session")
async def gateway(fake: FakeUpstream) -> AsyncIterator[Gateway]:
    gw = await start_gateway(settings_for(fake.base_url))
    yield gw
    await stop_gateway(gw)


@pytest.fixture
def clean_fake(fake: FakeUpstream) -> FakeUpstream:
    fake.reset()
    return fake
