"""Every unary RPC of the contract, through a real gateway and the fake upstream.

For each RPC (taken from the descriptors, so a new RPC is tested without new code) the test
checks the exact method, path, query, body and headers the gateway sent, and that the caller
got the fake's answer, field for field.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from openai_grpc_server import codec, routes
from openai_grpc_server.fake_upstream import FakeUpstream

from tests.support import specmodel
from tests.support.gateway import API_KEY, Gateway
from tests.support.json_compare import drop_filled_defaults, normal

UNARY = [r for r in routes.load_routes() if r.kind is routes.Kind.UNARY]
_CURL_BODY = re.compile(r"-d '(\{.*?\})'\s*$", re.S | re.M)


# Request examples of the spec that the spec itself rejects (`{...}` placeholders, a flat static
# chunking strategy): the valid equivalent.
_EXAMPLE_FIXES: dict[str, dict[str, Any]] = {
    "SearchVectorStore": {"query": "What is the return policy?"},
    "CreateVectorStoreFileBatch": {
        "files": [
            {"file_id": "file-abc123", "attributes": {"category": "finance"}},
            {
                "file_id": "file-abc456",
                "chunking_strategy": {
                    "type": "static",
                    "static": {"max_chunk_size_tokens": 1200, "chunk_overlap_tokens": 200},
                },
            },
        ]
    },
}


def _example_body(route: routes.Route) -> dict[str, Any]:
    if route.name in _EXAMPLE_FIXES:
        return _EXAMPLE_FIXES[route.name]
    op = specmodel.load_spec()["paths"][route.path_template][route.http_method.lower()]
    examples = op.get("x-oaiMeta", {}).get("examples", [])
    for ex in examples if isinstance(examples, list) else [examples]:
        curl = (ex.get("request") or {}).get("curl", "")
        m = _CURL_BODY.search(curl) if isinstance(curl, str) else None
        if m:
            try:
                body = json.loads(m.group(1))
            except json.JSONDecodeError:
                continue
            if isinstance(body, dict):
                return body
    return {"model": "gpt-4o-mini"} if "model" in route.input_desc.fields_by_name else {}


def _param_value(name: str) -> str:
    # A model id with ':' checks that path parameters are URL-escaped.
    return "ft:gpt-4o-mini:acme:demo:abc123" if name == "model" else f"{name}_abc123"


@pytest.mark.parametrize("route", UNARY, ids=[r.name for r in UNARY])
async def test_unary_rpc(route: routes.Route, gateway: Gateway, clean_fake: FakeUpstream) -> None:
    body = _example_body(route) if route.has_body else {}
    request = route.input_cls()
    codec.decode_into(body, request)
    params = {p: _param_value(p) for p in route.path_params}
    for p, v in params.items():
        setattr(request, p, v)
    expected_query: dict[str, str] = {}
    if not route.has_body and "limit" in route.input_desc.fields_by_name:
        request.limit = 2  # type: ignore[attr-defined]
        expected_query = {"limit": "2"}

    call = gateway.unary(route.name)(request, timeout=10)
    response = await call
    metadata = dict(await call.trailing_metadata())

    sent = clean_fake.requests
    assert len(sent) == 1, [r.path for r in sent]
    got = sent[0]
    path = route.path_template
    for p, v in params.items():
        path = path.replace("{" + p + "}", v)
    assert got.method == route.http_method
    assert unquote(got.path) == "/v1" + path
    assert got.query == expected_query
    if route.has_body:
        expected = dict(body)
        if route.path_template == "/embeddings" and body.get("encoding_format", "float") == "float":
            expected["encoding_format"] = "base64"  # the gateway unpacks base64 itself (cheaper)
        assert normal(got.json) == normal(expected)
    else:
        assert not got.body_size
    assert got.headers["authorization"] == f"Bearer {API_KEY}"
    assert got.headers["openai-organization"] == "org-test"
    assert got.headers["openai-project"] == "proj-test"
    assert got.headers["user-agent"].startswith("openai-grpc/")
    assert got.headers.get("openai-beta") == route.behaviour.beta
    assert metadata.get("x-request-id") == got.request_id

    # The caller gets what the upstream answered, field for field (replayed on a fresh fake
    # state, so generated ids repeat).
    clean_fake.reset()
    async with httpx.AsyncClient() as client:
        replay = await client.request(
            route.http_method,
            clean_fake.base_url + path,
            params=expected_query or None,
            json=body if route.has_body else None,
        )
    answer = replay.json()
    env = codec.envelope_field(response.DESCRIPTOR)
    encoded = codec.encode(getattr(response, env.name) if env else response)
    assert normal(drop_filled_defaults(encoded, answer)) == normal(answer)


def test_every_unary_rpc_is_covered() -> None:
    assert len(UNARY) >= 70


@pytest.mark.parametrize("fmt", [None, "float", "base64"])
async def test_embeddings_go_upstream_as_base64(
    fmt: str | None, gateway: Gateway, clean_fake: FakeUpstream
) -> None:
    from openai_grpc.v1 import common_pb2, embeddings_pb2  # noqa: PLC0415

    request = embeddings_pb2.CreateEmbeddingRequest(
        model="text-embedding-3-small", texts=common_pb2.StringList(values=["a", "b", "c"]), dimensions=256
    )
    if fmt:
        request.encoding_format = fmt
    answer = await gateway.unary("CreateEmbedding")(request, timeout=10)
    assert clean_fake.requests[-1].json["encoding_format"] == "base64"
    async with httpx.AsyncClient() as client:
        floats = (
            await client.post(
                clean_fake.base_url + "/embeddings",
                json={"model": "text-embedding-3-small", "input": ["a", "b", "c"], "dimensions": 256},
            )
        ).json()
    assert len(answer.data) == 3
    for got, want in zip(answer.data, floats["data"], strict=True):
        if fmt == "base64":
            assert got.WhichOneof("embedding") == "base64"
        else:
            assert list(got.floats.values) == want["embedding"]
            assert len(got.floats.values) == 256
