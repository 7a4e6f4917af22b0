"""Local request checks: fail fast, before any upstream call.

Every violation is collected, so one INVALID_ARGUMENT lists them all as BadRequest field
violations. Generic checks come from the descriptors (REQUIRED path parameters must be set);
the chat rules apply where the endpoint table says so (endpoints.py).
"""

from __future__ import annotations

import functools

from google.protobuf import descriptor
from google.protobuf.message import Message

from openai_grpc_server import codec
from openai_grpc_server.errors import FieldViolation, ValidationError
from openai_grpc_server.routes import Route

# Values an HTTP client rewrites as dot segments (RFC 3986 5.2.4), reaching another resource.
_DOT_SEGMENTS = frozenset({".", ".."})


@functools.cache
def _reserved_keys(desc: descriptor.Descriptor, params: tuple[str, ...]) -> frozenset[str]:
    """Keys `extra` may not carry: typed fields and unions (they would bypass validation),
    path parameters (routing) and `stream` (the RPC decides whether the call streams)."""
    plan = codec.plan_for(desc)
    return frozenset({*plan.fields, *plan.unions, *params, "stream"})


def _path_and_extra(msg: Message, params: tuple[str, ...], prefix: str = "") -> list[FieldViolation]:
    out: list[FieldViolation] = []
    for param in params:
        value = getattr(msg, param, "")
        if not value:
            out.append(FieldViolation(prefix + param, f"`{param}` is required: it is part of the URL"))
        elif value in _DOT_SEGMENTS:
            out.append(
                FieldViolation(prefix + param, f"`{param}` cannot be {value!r}: it is one URL path segment")
            )
    desc = msg.DESCRIPTOR
    if codec.EXTRA in desc.fields_by_name and msg.HasField(codec.EXTRA):
        reserved = _reserved_keys(desc, params)
        for key in getattr(msg, codec.EXTRA):
            if key in reserved:
                out.append(
                    FieldViolation(
                        f"{prefix}extra.{key}",
                        f"`extra` adds only what the contract does not know; `{key}` is "
                        "set by its own field or by the RPC",
                    )
                )
    return out


def _raise(violations: list[FieldViolation]) -> None:
    if violations:
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
        raise ValidationError(f"request validation failed: {summary}", violations=tuple(violations))


def check_upload_metadata(route: Route, meta: Message) -> None:
    """The first message of an upload: its path parameters and `extra` (fields `metadata.*`)."""
    _raise(_path_and_extra(meta, route.path_params, "metadata."))


def _has(msg: Message, name: str) -> bool:
    f = msg.DESCRIPTOR.fields_by_name.get(name)
    return f is not None and f.has_presence and msg.HasField(name)


def check(route: Route, msg: Message, *, streaming: bool = False) -> None:
    violations = _path_and_extra(msg, route.path_params)
    if route.behaviour.chat_rules:
        violations.extend(_chat(msg, streaming))
    _raise(violations)


def _chat(msg: Message, streaming: bool) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    if not getattr(msg, "model", ""):
        out.append(FieldViolation("model", "a model is required, for example `gpt-4o-mini`"))
    if not len(getattr(msg, "messages", ())):
        out.append(FieldViolation("messages", "at least one message is required"))
    if _has(msg, "temperature") and not 0.0 <= getattr(msg, "temperature") <= 2.0:  # noqa: B009
        out.append(FieldViolation("temperature", "must be between 0 and 2"))
    if _has(msg, "n") and not 1 <= getattr(msg, "n") <= 128:  # noqa: B009
        out.append(FieldViolation("n", "must be between 1 and 128"))
    if _has(msg, "max_tokens") and _has(msg, "max_completion_tokens"):
        out.append(FieldViolation("max_tokens", "set either max_tokens or max_completion_tokens, not both"))
    if streaming and _has(msg, "n") and getattr(msg, "n") > 1:  # noqa: B009
        out.append(FieldViolation("n", "streaming supports a single choice: n must be 1"))
    return out
