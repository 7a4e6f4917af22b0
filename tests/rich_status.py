"""Decoding google.rpc.Status details, shared by the unit and integration error tests."""

from __future__ import annotations

from google.protobuf.message import Message
from google.rpc import error_details_pb2

DETAIL_TYPES: dict[str, type[Message]] = {
    "ErrorInfo": error_details_pb2.ErrorInfo,
    "RetryInfo": error_details_pb2.RetryInfo,
    "QuotaFailure": error_details_pb2.QuotaFailure,
    "BadRequest": error_details_pb2.BadRequest,
    "RequestInfo": error_details_pb2.RequestInfo,
    "ResourceInfo": error_details_pb2.ResourceInfo,
    "PreconditionFailure": error_details_pb2.PreconditionFailure,
}
