"""Client-streaming uploads: metadata first, then file chunks, streamed into a multipart body.

The multipart body is produced while the caller's chunks arrive, so a 256 MiB file never sits
in memory: gRPC flow control holds the caller back while OpenAI reads slowly. The body cannot
be replayed, so an upload is not retried once its first byte has gone upstream; a failure
before that (breaker open, limiter full) is reported like any other call.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf.message import Message

from openai_grpc_server import codec, validation
from openai_grpc_server.call import (
    Context,
    Undecodable,
    decode_answer,
    ensure_decoded,
    usage_of,
)
from openai_grpc_server.errors import MalformedRequest
from openai_grpc_server.gateway import Gateway
from openai_grpc_server.resilience import Attempt
from openai_grpc_server.routes import QUERY_LIST_SUFFIX, Route, flatten
from openai_grpc_server.upstream.client import forwarded_metadata


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")


def form_fields(data: dict[str, Any]) -> list[tuple[str, str]]:
    """Flatten metadata the way OpenAI's SDKs do: lists as `name[]`, objects as `name[key]`."""
    return [item for k, v in data.items() for item in flatten(k, v, QUERY_LIST_SUFFIX)]


class MultipartStream:
    """Yields the multipart body: text fields, then each file part as its chunks arrive."""

    def __init__(
        self,
        fields: list[tuple[str, str]],
        chunks: AsyncIterator[Message | Undecodable],
        main_field: str,
        route: Route,
    ) -> None:
        self.route = route
        self.boundary = "openai-grpc-" + secrets.token_hex(12)
        self.fields = fields
        self.chunks = chunks
        self.main_field = main_field

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def _head(self, name: str, filename: str | None = None, ctype: str | None = None) -> bytes:
        disp = f'form-data; name="{_quote(name)}"'
        if filename is not None:
            disp += f'; filename="{_quote(filename or "upload")}"'
        lines = [f"--{self.boundary}", f"Content-Disposition: {disp}"]
        if filename is not None:
            lines.append(f"Content-Type: {ctype or 'application/octet-stream'}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for name, value in self.fields:
            yield self._head(name) + value.encode() + b"\r\n"
        current: tuple[str, str] | None = None
        async for item in self.chunks:
            msg = ensure_decoded(self.route, item)
            if msg.WhichOneof("payload") != "chunk":
                raise MalformedRequest("after the first message, an upload carries only `chunk` messages")
            chunk = msg.chunk  # type: ignore[attr-defined]
            field = chunk.field or self.main_field
            # File name and type are read on a part's first chunk; later chunks may leave them empty.
            starts_part = (
                current is None or field != current[0] or (chunk.filename and chunk.filename != current[1])
            )
            if starts_part:
                if current is not None:
                    yield b"\r\n"
                yield self._head(field, chunk.filename or "upload", chunk.content_type or None)
                current = (field, chunk.filename)
            if chunk.data:
                yield chunk.data
        if current is not None:
            yield b"\r\n"
        yield f"--{self.boundary}--\r\n".encode()


async def relay_upload(
    gw: Gateway, route: Route, requests: AsyncIterator[Message | Undecodable], context: Context
) -> Message:
    async with gw.boundary(route, context) as rpc:
        try:
            head = ensure_decoded(route, await anext(requests))
        except StopAsyncIteration:
            raise MalformedRequest(
                "an upload starts with a `metadata` message; the stream was empty"
            ) from None
        if head.WhichOneof("payload") != "metadata":
            raise MalformedRequest("the first message of an upload must carry `metadata`")
        meta = head.metadata  # type: ignore[attr-defined]
        validation.check_upload_metadata(route, meta)
        data = codec.encode(meta)
        assert isinstance(data, dict)
        params = {p: data.pop(p, "") for p in route.path_params}
        path = route.build_path(params)
        call = gw.begin(route, meta, context, data, 0, rpc)
        body = MultipartStream(form_fields(data), requests, route.behaviour.upload_field, route)
        active = call

        async def attempt(a: Attempt) -> Any:
            return await gw.upstream.send_json(
                route.http_method,
                path,
                cred=active.credential,
                content=body,
                content_type=body.content_type,
                time_left=a.timeout,
                behaviour=route.behaviour,
                accept=route.accept,
            )

        # The caller's chunks are streamed as they arrive and cannot be sent twice: no retries.
        op = dataclasses.replace(call.op, replayable=False)
        with gw.telemetry.request_span(call, streaming=False):
            value, reservation = await gw.policy.execute(op, attempt)
        forwarded = forwarded_metadata(value.headers)
        gw.observe(call, forwarded)
        gw.settle(reservation, call, usage_of(value.body))
        response = decode_answer(route, value)
        context.set_trailing_metadata(forwarded)
        gw.telemetry.request_done(route, call)
        return response


__all__ = ["MultipartStream", "form_fields", "relay_upload"]
