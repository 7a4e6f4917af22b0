"""OpenAI's own examples survive JSON -> proto -> JSON through the codec, nothing lost.

Every example response in `x-oaiMeta.examples` and every JSON body of the curl examples is
decoded into the message of the RPC bound to that endpoint and encoded back. Null and absent
count as equal, and so do an empty array or object and absent (proto3 repeated and map fields
carry no presence). Keys the proto does not know travel through `extra`.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

import pytest
from google.protobuf import message_factory
from openai_grpc_server import codec, routes

from tests.support import specmodel
from tests.support.json_compare import drop_filled_defaults, normal

_CURL_BODY = re.compile(r"-d '(\{.*?\})'\s*$", re.S | re.M)


def _examples() -> list[tuple[str, routes.Route, str, Any]]:
    table = {(r.http_method, r.path_template): r for r in routes.load_routes() if r.kind is routes.Kind.UNARY}
    spec = specmodel.load_spec()
    cases = []
    for e in specmodel.load_endpoints():
        route = table.get((e.method, e.path))
        if route is None:
            continue
        meta = spec["paths"][e.path][e.method.lower()].get("x-oaiMeta", {})
        examples = meta.get("examples", [])
        if isinstance(examples, dict):
            examples = [examples]
        for i, ex in enumerate(examples):
            resp = ex.get("response")
            if isinstance(resp, str):
                with contextlib.suppress(json.JSONDecodeError):
                    cases.append((f"{route.name}-response-{i}", route, "response", json.loads(resp)))
            curl = (ex.get("request") or {}).get("curl", "")
            m = _CURL_BODY.search(curl) if isinstance(curl, str) else None
            if m and route.has_body:
                try:
                    body = json.loads(m.group(1))
                except json.JSONDecodeError:
                    continue
                if isinstance(body, dict):
                    cases.append((f"{route.name}-request-{i}", route, "request", body))
    return cases


CASES = _examples()


def test_examples_found() -> None:
    kinds = {k for _, _, k, _ in CASES}
    assert len(CASES) > 80 and kinds == {"request", "response"}


@pytest.mark.parametrize(("route", "kind", "payload"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_roundtrip(route: routes.Route, kind: str, payload: Any) -> None:
    if kind == "response":
        msg = route.output_cls()
        codec.decode_response(payload, msg)
        env = codec.envelope_field(msg.DESCRIPTOR)  # type: ignore[arg-type]  # types-protobuf: upb's Descriptor
        back = codec.encode(getattr(msg, env.name)) if env else codec.encode(msg)
    else:
        msg = route.input_cls()
        codec.decode_into(payload, msg)
        back = codec.encode(msg)
        for param in route.path_params:  # the URL carries these, not the body
            if back.get(param) == "":
                del back[param]
    assert normal(drop_filled_defaults(back, payload)) == normal(payload)


def test_unknown_keys_travel_through_extra() -> None:
    route = next(r for r in routes.load_routes() if r.name == "GetModel")
    msg = route.output_cls()
    codec.decode_response(
        {"id": "m", "object": "model", "created": 1, "owned_by": "x", "brand_new": {"a": [1]}}, msg
    )
    model = msg.model  # type: ignore[attr-defined]
    assert model.extra["brand_new"]["a"][0] == 1
    assert codec.encode(model)["brand_new"] == {"a": [1]}


def test_int64_stays_a_json_number() -> None:
    route = next(r for r in routes.load_routes() if r.name == "GetModel")
    msg = route.output_cls()
    codec.decode_response({"id": "m", "object": "model", "created": 1741569952, "owned_by": "x"}, msg)
    assert codec.encode(msg.model)["created"] == 1741569952  # type: ignore[attr-defined]


def test_unions_pick_the_member_by_json_type() -> None:
    route = next(r for r in routes.load_routes() if r.name == "CreateEmbedding")
    for value in ("text", ["a", "b"], [1, 2], [[1], [2, 3]]):
        msg = route.input_cls()
        codec.decode_into({"model": "m", "input": value}, msg)
        assert codec.encode(msg)["input"] == value
    cls = message_factory.GetMessageClass(route.input_desc)
    assert cls is route.input_cls
