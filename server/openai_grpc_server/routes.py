"""The route table: every RPC of the contract and the REST call it makes, read from the
`google.api.http` options (and the contract's own `(openai_grpc.v1.query)` field option) in
the descriptor pool. Nothing here is written per RPC.

Where a field travels follows the HTTP rule: path parameters by name; without a body every
other field is a query parameter; with `body: "*"` every other field is a body field unless it
is marked `(openai_grpc.v1.query) = true` (OpenAI's `include` next to a JSON body).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import importlib
import pkgutil
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from google.api import annotations_pb2
from google.protobuf import descriptor, message_factory
from google.protobuf.message import Message
from openai_grpc.v1 import options_pb2

from openai_grpc_server import codec
from openai_grpc_server.endpoints import Behaviour, behaviour_for

CONTRACT_PACKAGE = "openai_grpc.v1"
_PARAM = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
# The `Accept` header the official SDK sends: JSON; bytes for downloads and speech; anything
# where OpenAI answers without a body (the output message has nothing but `extra`).
_ACCEPT = "application/json"
_ACCEPT_DOWNLOAD = "application/binary"
_ACCEPT_SPEECH = "application/octet-stream"
_ACCEPT_NO_CONTENT = "*/*"
# Query arrays as OpenAI's SDKs write them (`include[]=a&include[]=b`).
QUERY_LIST_SUFFIX = "[]"


class Kind(enum.Enum):
    UNARY = "unary"  # JSON in, JSON out
    EVENTS = "events"  # server stream of SSE events
    BINARY = "binary"  # server stream of bytes (downloads, speech)
    UPLOAD = "upload"  # client stream: metadata, then file chunks -> multipart


@dataclasses.dataclass(frozen=True)
class Route:
    service: str
    name: str
    http_method: str
    path_template: str
    path_params: tuple[str, ...]
    has_body: bool
    # OpenAI keys of the fields sent in the query string although the RPC has a body.
    query_keys: tuple[str, ...]
    kind: Kind
    input_desc: descriptor.Descriptor
    output_desc: descriptor.Descriptor
    input_cls: type[Message]
    output_cls: type[Message]
    # What this endpoint needs beyond the generic route (the table in endpoints.py).
    behaviour: Behaviour

    @property
    def full_method(self) -> str:
        return f"/{self.service}/{self.name}"

    @property
    def endpoint(self) -> str:
        """Stable label for metrics, logs and breaker keys: `POST /chat/completions`."""
        return f"{self.http_method} {self.path_template}"

    @functools.cached_property
    def accept(self) -> str:
        if self.kind is Kind.BINARY:
            return _ACCEPT_DOWNLOAD if self.http_method == "GET" else _ACCEPT_SPEECH
        if all(f.name == codec.EXTRA for f in self.output_desc.fields):
            return _ACCEPT_NO_CONTENT
        return _ACCEPT

    def build_path(self, params: dict[str, Any]) -> str:
        def sub(m: re.Match[str]) -> str:
            return quote(str(params[m.group(1)]), safe="")

        return _PARAM.sub(sub, self.path_template)


def _kind(method: descriptor.MethodDescriptor) -> Kind:
    out = method.output_type
    if method.client_streaming:
        return Kind.UPLOAD
    if method.server_streaming:
        if "events" in out.fields_by_name:
            return Kind.EVENTS
        return Kind.BINARY
    return Kind.UNARY


def query_keys(desc: descriptor.Descriptor) -> tuple[str, ...]:
    """Keys of the fields marked `(openai_grpc.v1.query) = true`."""
    return tuple(codec.json_key(f) for f in desc.fields if f.GetOptions().Extensions[options_pb2.query])


def contract_modules() -> Iterator[Any]:
    """Import every generated `*_pb2` module of the contract (registers it in the pool)."""
    pkg = importlib.import_module(CONTRACT_PACKAGE)
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.endswith("_pb2"):
            yield importlib.import_module(f"{CONTRACT_PACKAGE}.{info.name}")


def load_routes() -> list[Route]:
    routes: list[Route] = []
    for module in contract_modules():
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                opts = method.GetOptions()
                if not opts.HasExtension(annotations_pb2.http):
                    continue
                rule = opts.Extensions[annotations_pb2.http]
                verb = rule.WhichOneof("pattern")
                if verb is None or verb == "custom":
                    continue
                template = getattr(rule, verb)
                routes.append(
                    Route(
                        service=service.full_name,
                        name=method.name,
                        http_method=verb.upper(),
                        path_template=template,
                        path_params=tuple(_PARAM.findall(template)),
                        has_body=rule.body == "*",
                        query_keys=query_keys(method.input_type),
                        kind=_kind(method),
                        input_desc=method.input_type,
                        output_desc=method.output_type,
                        input_cls=message_factory.GetMessageClass(method.input_type),
                        output_cls=message_factory.GetMessageClass(method.output_type),
                        behaviour=behaviour_for(f"{verb.upper()} {template}"),
                    )
                )
    return routes


@dataclasses.dataclass(frozen=True)
class UpstreamRequest:
    method: str
    path: str
    query: list[tuple[str, str]]
    body: dict[str, Any] | None


def flatten(key: str, value: Any, list_suffix: str = "") -> Iterator[tuple[str, str]]:
    """JSON value -> form/query pairs as OpenAI reads them: booleans as `true`/`false`, objects
    as `key[sub]` (deepObject), list items repeated under `key` + `list_suffix`, null skipped."""
    if isinstance(value, bool):
        yield key, "true" if value else "false"
    elif isinstance(value, list):
        for v in value:
            yield from flatten(key + list_suffix, v, list_suffix)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from flatten(f"{key}[{k}]", v, list_suffix)
    elif isinstance(value, float) and value.is_integer():
        yield key, str(int(value))  # a proto double 0.0 is the number 0, as callers write it
    elif value is not None:
        yield key, str(value)


def build_request(route: Route, msg: Message, *, stream: bool = False) -> UpstreamRequest:
    """The REST call for one request message: path parameters, then query or JSON body."""
    data = codec.encode(msg)
    assert isinstance(data, dict)
    params = {p: data.pop(p, "") for p in route.path_params}
    path = route.build_path(params)
    if route.has_body:
        query = [
            item for k in route.query_keys if k in data for item in flatten(k, data.pop(k), QUERY_LIST_SUFFIX)
        ]
        if stream:
            data["stream"] = True
        return UpstreamRequest(route.http_method, path, query, data)
    query = [item for k, v in data.items() for item in flatten(k, v, QUERY_LIST_SUFFIX)]
    return UpstreamRequest(route.http_method, path, query, None)
