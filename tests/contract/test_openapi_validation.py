"""The spec validator the integration tests run on every upstream request rejects what it must."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from openai_grpc_server.fake_upstream import FakeUpstream, RecordedRequest

from tests.support import openapi_validation, specmodel
from tests.support.openapi_validation import fix_nullable, violations

AUTH = {"authorization": "Bearer sk-test"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as upstream:
        yield upstream


async def record(fake: FakeUpstream, method: str, path: str, **kwargs: Any) -> RecordedRequest:
    fake.clear_requests()
    headers = {**AUTH, **kwargs.pop("headers", {})}
    async with httpx.AsyncClient(base_url=fake.base_url) as client:
        await client.request(method, path, headers=headers, **kwargs)
    [request] = fake.requests
    return request


async def test_a_valid_json_request_passes(fake: FakeUpstream) -> None:
    body = {**CHAT, "temperature": 0.5, "max_completion_tokens": None, "metadata": {"k": "v"}}
    assert violations(await record(fake, "POST", "/chat/completions", json=body)) == []


@pytest.mark.parametrize(
    "body",
    [
        {**CHAT, "temperature": "hot"},
        {**CHAT, "n": 1.5},
        {"messages": CHAT["messages"]},  # model is required
        {**CHAT, "messages": [{"role": "user"}]},  # content is required
    ],
)
async def test_a_wrong_body_is_reported(fake: FakeUpstream, body: dict[str, Any]) -> None:
    assert violations(await record(fake, "POST", "/chat/completions", json=body))


async def test_a_missing_key_is_reported(fake: FakeUpstream) -> None:
    request = await record(fake, "GET", "/models", headers={"authorization": ""})
    assert any("Security" in v for v in violations(request))


async def test_query_parameters_are_typed(fake: FakeUpstream) -> None:
    assert violations(await record(fake, "GET", "/chat/completions", params={"limit": "2"})) == []
    assert violations(await record(fake, "GET", "/chat/completions", params={"limit": "many"}))


async def test_multipart_forms_are_checked_field_by_field(fake: FakeUpstream) -> None:
    files = {"file": ("a.jsonl", b"{}\n", "application/jsonl")}
    ok = await record(fake, "POST", "/files", data={"purpose": "batch"}, files=files)
    assert violations(ok) == []
    assert violations(await record(fake, "POST", "/files", files=files))  # purpose is required
    audio = {"file": ("a.mp3", b"ID3", "audio/mpeg")}
    good = {"model": "whisper-1", "temperature": "0", "timestamp_granularities[]": "word"}
    assert violations(await record(fake, "POST", "/audio/transcriptions", data=good, files=audio)) == []
    bad = {**good, "temperature": "warm"}
    assert violations(await record(fake, "POST", "/audio/transcriptions", data=bad, files=audio))


async def test_a_path_outside_the_spec_is_reported(fake: FakeUpstream) -> None:
    assert violations(await record(fake, "GET", "/no/such/endpoint"))


def test_nullable_becomes_a_31_schema() -> None:
    assert fix_nullable({"type": "string", "nullable": True}) == {"type": ["string", "null"]}
    assert fix_nullable({"type": "string", "enum": ["a"], "nullable": True})["enum"] == ["a", None]
    ref = fix_nullable({"$ref": "#/components/schemas/X", "nullable": True, "description": "d"})
    assert ref == {"description": "d", "anyOf": [{"$ref": "#/components/schemas/X"}, {"type": "null"}]}
    assert fix_nullable({"type": "integer"}) == {"type": "integer"}


def _has_key(node: Any, key: str) -> bool:
    if isinstance(node, dict):
        return key in node or any(_has_key(v, key) for v in node.values())
    return isinstance(node, list) and any(_has_key(v, key) for v in node)


def test_the_fixes_work_on_a_copy() -> None:
    """The tests' shared spec (specmodel) keeps `nullable`; only the validator's copy is fixed."""
    fixed = openapi_validation.fixed_spec()
    assert not _has_key(fixed, "nullable") and not _has_key(fixed, "discriminator")
    assert _has_key(specmodel.load_spec(), "nullable")
