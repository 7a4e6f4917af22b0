"""Decoding the google.rpc.Status a failed call carries, shared by the unit and integration tests."""

from __future__ import annotations

from typing import cast

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DETAIL_TYPES: dict[str, type[Message]] = {
    "ErrorInfo": error_details_pb2.ErrorInfo,
    "RetryInfo": error_details_pb2.RetryInfo,
    "QuotaFailure": error_details_pb2.QuotaFailure,
    "BadRequest": error_details_pb2.BadRequest,
    "RequestInfo": error_details_pb2.RequestInfo,
    "ResourceInfo": error_details_pb2.ResourceInfo,
    "PreconditionFailure": error_details_pb2.PreconditionFailure,
}


def status_of(err: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    # grpc-stubs types from_call's argument as grpc.Call; an AioRpcError has what it reads.
    status: status_pb2.Status | None = rpc_status.from_call(cast(grpc.Call, err))
    return status


def details_of(err: grpc.aio.AioRpcError) -> dict[str, Message]:
    """The status's details by type name (none when the call carries no google.rpc.Status)."""
    status = status_of(err)
    details: dict[str, Message] = {}
    for packed in status.details if status is not None else ():
        for name, cls in DETAIL_TYPES.items():
            if packed.Is(cls.DESCRIPTOR):  # type: ignore[arg-type]  # types-protobuf: upb's Descriptor
                detail = cls()
                packed.Unpack(detail)
                details[name] = detail
    return details


def trailing_pairs(err: grpc.aio.AioRpcError) -> list[tuple[str, str | bytes]]:
    # grpc-stubs types metadata items as an opaque _Metadatum; they are (key, value) pairs.
    return cast("list[tuple[str, str | bytes]]", list(err.trailing_metadata() or ()))


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    info = details_of(err).get("ErrorInfo")
    assert isinstance(info, error_details_pb2.ErrorInfo), f"no ErrorInfo in the status of {err!r}"
    return info
