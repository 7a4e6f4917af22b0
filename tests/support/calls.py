"""Calls through a test gateway: a chat request, and a failing call decoded into its rich status."""

from __future__ import annotations

import dataclasses
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from tests.support.gateway import Gateway
from tests.support.rich_status import details_of, status_of, trailing_pairs


@dataclasses.dataclass
class Failure:
    code: grpc.StatusCode
    message: str
    details: dict[str, Any]
    trailing: dict[str, str]

    @property
    def info(self) -> error_details_pb2.ErrorInfo:
        info = self.details["ErrorInfo"]
        assert isinstance(info, error_details_pb2.ErrorInfo)
        return info


async def call_failing(gw: Gateway, rpc: str, request: Message) -> Failure:
    call = gw.unary(rpc)(request, timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    err = caught.value
    status = status_of(err)
    assert status is not None, "the status carries no google.rpc.Status details"
    assert status.code == err.code().value[0]
    trailing = {k: v for k, v in trailing_pairs(err) if isinstance(v, str)}
    return Failure(err.code(), err.details() or "", dict(details_of(err)), trailing)


def chat(gw: Gateway, **fields: Any) -> Message:
    req = gw.request("CreateChatCompletion", model="gpt-4o-mini", **fields)
    msg = req.messages.add()  # type: ignore[attr-defined]
    msg.role = "user"
    msg.content_text = "hi"
    return req
