"""One RPC in flight, and what every kind of call needs to read its request and answer.

`Call` describes an authenticated call for the resilience policy and telemetry; the helpers
read the caller's raw bytes, estimate a request's tokens and find the usage in an answer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from google.protobuf.message import Message
from opentelemetry.trace import Span

from openai_grpc_server import codec
from openai_grpc_server.auth import Credential
from openai_grpc_server.errors import CodecFailure, MalformedRequest
from openai_grpc_server.resilience.operation import Operation
from openai_grpc_server.routes import Route
from openai_grpc_server.upstream.client import JsonResponse

Context = grpc.aio.ServicerContext[Any, Any]

# Rough prompt-size estimate for the token limiter until real usage settles it.
_BYTES_PER_TOKEN = 4
_OUTPUT_TOKEN_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def estimate_tokens(body: Mapping[str, Any] | None, body_bytes: int) -> int:
    if not body:
        return 0
    output = next((body[k] for k in _OUTPUT_TOKEN_FIELDS if isinstance(body.get(k), int)), 0)
    return body_bytes // _BYTES_PER_TOKEN + int(output)


def usage_of(payload: Any) -> dict[str, Any] | None:
    """The `usage` object of a response or stream event, wherever the API puts it."""
    if not isinstance(payload, dict):
        return None
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        inner = payload.get("response")
        usage = inner.get("usage") if isinstance(inner, dict) else None
    return usage if isinstance(usage, dict) else None


def total_tokens(usage: Mapping[str, Any]) -> int:
    total = usage.get("total_tokens")
    if isinstance(total, int):
        return total
    parts = [usage.get(k) for k in ("prompt_tokens", "completion_tokens", "input_tokens", "output_tokens")]
    return sum(p for p in parts if isinstance(p, int))


class Undecodable:
    """What the request deserializer hands over for bytes that are not the request message
    (bad protobuf, invalid UTF-8): the handler answers INVALID_ARGUMENT after authenticating,
    instead of grpc's UNKNOWN "Unexpected <class DecodeError>"."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def error(self, route: Route) -> MalformedRequest:
        return MalformedRequest(
            f"the request bytes are not a valid {route.input_desc.full_name}: {self.reason}",
            metadata={"requestMessage": route.input_desc.full_name},
        )


def deserializer(route: Route) -> Callable[[bytes], Message | Undecodable]:
    parse = route.input_cls.FromString

    def des(data: bytes) -> Message | Undecodable:
        try:
            return parse(data)
        except Exception as exc:  # DecodeError, or invalid UTF-8 in a string field
            return Undecodable(type(exc).__name__)

    return des


def ensure_decoded(route: Route, request: Message | Undecodable) -> Message:
    if isinstance(request, Undecodable):
        raise request.error(route)
    return request


@dataclasses.dataclass
class Call:
    """One RPC in flight: who calls, what it costs, where it goes."""

    route: Route
    credential: Credential
    op: Operation
    model: str
    started: float
    # Learnt on the way, for telemetry: the upstream's request id and answering model, and
    # the `openai.request` span (when tracing is on).
    request_id: str = ""
    response_model: str = ""
    span: Span | None = None


def decode_answer(route: Route, value: JsonResponse) -> Message:
    """The response message for a 2xx JSON answer; one that does not fit is UPSTREAM_BAD_RESPONSE."""
    response = route.output_cls()
    try:
        codec.decode_response(value.body, response)
    except ValueError as exc:  # CodecError, or a value protobuf itself rejects (int64 overflow)
        raise CodecFailure(
            f"OpenAI's answer does not fit {route.output_desc.name}: {exc}",
            upstream_status=value.status,
            request_id=value.headers.get("x-request-id"),
            headers=value.headers,
        ) from exc
    return response
