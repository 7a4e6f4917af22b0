"""Wire parity with the official SDK: for every endpoint of spec/endpoints.tsv, the same operation
once through the pinned `openai` Python SDK and once through the gateway, both against the same
recording fake upstream; the two HTTP requests must be the same.

Compared: method, path, query (order-insensitive), the JSON body (numbers as numbers), multipart
field names, values, file names and file bytes, the media type, and the headers OpenAI reads
(Authorization, OpenAI-Organization, OpenAI-Project, OpenAI-Beta, Accept). A difference fails
unless tests/support/sdk_allowlist.py lists it with its reason. The gateway's requests are
also validated against the spec (tests/integration/conftest.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from google.protobuf import message_factory
from google.protobuf.message import Message
from openai_grpc.v1 import common_pb2
from openai_grpc_server import codec, routes
from openai_grpc_server.fake_upstream import FakeUpstream, RecordedRequest

from tests.integration.sdk_operations import OPERATIONS, SDK_LACKS, Op
from tests.support import specmodel
from tests.support.gateway import API_KEY, Gateway
from tests.support.sdk_allowlist import ALLOWED

# The SDK's deprecation warnings for endpoints still served and compared: pyproject's filterwarnings.
TIMEOUT = 10.0
COMPARED_HEADERS = ("authorization", "openai-organization", "openai-project", "openai-beta", "accept")


@dataclasses.dataclass
class Tally:
    compared: set[str] = dataclasses.field(default_factory=set)
    identical: set[str] = dataclasses.field(default_factory=set)
    allowed_used: set[tuple[str, str]] = dataclasses.field(default_factory=set)


TALLY = Tally()


def wire(record: RecordedRequest) -> dict[str, Any]:
    """What OpenAI reads of a request, in a comparable form."""
    ctype = record.headers.get("content-type")
    out: dict[str, Any] = {
        "method": record.method,
        "path": record.path,
        "query": sorted((k, v) for k, vs in record.query_all.items() for v in vs),
        "content-type": ctype.split(";")[0].strip().lower() if ctype else None,
    }
    if record.multipart is not None:
        out["body"] = sorted(
            (p.name or "", p.filename or "", p.sha256 if p.filename is not None else p.value or "")
            for p in record.multipart
        )
    elif record.json is not None:
        out["body"] = record.json
    else:
        out["body"] = f"{record.body_size} bytes"
    for h in COMPARED_HEADERS:
        out[h] = record.headers.get(h)
    return out


def differences(sdk: RecordedRequest, gw: RecordedRequest) -> dict[str, tuple[Any, Any]]:
    a, b = wire(sdk), wire(gw)
    return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def only_request(fake: FakeUpstream, who: str) -> RecordedRequest:
    records = fake.requests
    assert len(records) == 1, f"{who} sent {len(records)} requests: {[r.path for r in records]}"
    return records[0]


async def run_sdk(op: Op, client: openai.AsyncOpenAI) -> None:
    result = await op.sdk(client, {**op.args, **op.files})
    if op.stream:
        async for _ in result:
            pass


def gateway_request(op: Op, route: routes.Route) -> Message:
    return codec.from_json(op.args, route.input_cls)


def upload_frames(op: Op, route: routes.Route) -> Iterator[Message]:
    meta_desc = codec.message_type(route.input_desc.fields_by_name["metadata"])
    meta = codec.from_json(op.args, message_factory.GetMessageClass(meta_desc))
    yield route.input_cls(metadata=meta)
    for field, (filename, data, ctype) in op.files.items():
        yield route.input_cls(
            chunk=common_pb2.FileChunk(field=field, filename=filename, content_type=ctype, data=data)
        )


async def run_gateway(op: Op, gateway: Gateway) -> None:
    route = gateway.routes[op.rpc]
    if route.kind is routes.Kind.UNARY:
        await gateway.unary(op.rpc)(gateway_request(op, route), timeout=TIMEOUT)
    elif route.kind is routes.Kind.UPLOAD:
        await gateway.client_stream(op.rpc)(upload_frames(op, route), timeout=TIMEOUT)
    else:
        async for _ in gateway.server_stream(op.rpc)(gateway_request(op, route), timeout=TIMEOUT):
            pass


@pytest.fixture
async def sdk(fake: FakeUpstream) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(
        api_key=API_KEY,
        organization="org-test",
        project="proj-test",
        base_url=fake.base_url,
        max_retries=0,
        timeout=TIMEOUT,
    )
    yield client
    await client.close()


@pytest.mark.parametrize("op", OPERATIONS, ids=[op.id for op in OPERATIONS])
async def test_the_gateway_sends_what_the_sdk_sends(
    op: Op, gateway: Gateway, clean_fake: FakeUpstream, sdk: openai.AsyncOpenAI
) -> None:
    assert gateway.routes[op.rpc].endpoint == op.endpoint, "the table binds the RPC to another endpoint"
    clean_fake.add_file("file-abc", 64, "batch.jsonl")
    # Both clients get a plausible answer and finish normally (an error would fail the test).
    if op.answer is not None:
        clean_fake.script(op.endpoint, op.answer, op.answer)
    await run_sdk(op, sdk)
    from_sdk = only_request(clean_fake, "the SDK")
    clean_fake.clear_requests()
    await run_gateway(op, gateway)
    from_gateway = only_request(clean_fake, "the gateway")

    diffs = differences(from_sdk, from_gateway)
    TALLY.compared.add(op.id)
    allowed = {aspect for aspect in diffs if (op.rpc, aspect) in ALLOWED}
    TALLY.allowed_used |= {(op.rpc, aspect) for aspect in allowed}
    unexpected = {k: v for k, v in diffs.items() if k not in allowed}
    assert not unexpected, "\n".join(
        f"{k}: SDK {a!r}\n{' ' * len(k)}  gateway {b!r}" for k, (a, b) in unexpected.items()
    )
    if not diffs:
        TALLY.identical.add(op.id)


def test_the_table_covers_every_endpoint_the_sdk_covers() -> None:
    listed = {f"{e.method} {e.path}" for e in specmodel.load_endpoints()}
    in_table = {op.endpoint for op in OPERATIONS}
    assert in_table <= listed, in_table - listed
    assert listed - in_table == set(SDK_LACKS), "endpoints neither in the table nor in SDK_LACKS"
    assert len(listed) == 92
    streamed = {r.endpoint for r in routes.load_routes() if r.kind is routes.Kind.EVENTS}
    assert streamed <= {op.endpoint for op in OPERATIONS if op.stream}, (
        "streamed endpoints without a stream op"
    )


def test_every_allow_list_entry_is_used_and_justified(capsys: pytest.CaptureFixture[str]) -> None:
    """Runs after the comparisons (file order); meaningful when they all ran."""
    for key, reason in ALLOWED.items():
        assert key[0] in {op.rpc for op in OPERATIONS}, key
        assert len(reason) > 40, f"{key}: say why the gateway differs"
    if len(TALLY.compared) < len(OPERATIONS):
        pytest.skip("only part of the comparisons ran (e.g. -k): cannot tell unused entries")
    unused = set(ALLOWED) - TALLY.allowed_used
    assert not unused, f"allow-list entries that match no difference any more: {sorted(unused)}"
    endpoints = {op.endpoint for op in OPERATIONS}
    with capsys.disabled():
        print(
            f"\nSDK parity: {len(OPERATIONS)} operations over {len(endpoints)} endpoints compared, "
            f"{len(TALLY.identical)} identical, {len(TALLY.compared) - len(TALLY.identical)} with "
            f"allow-listed differences ({len(ALLOWED)} entries)"
        )
