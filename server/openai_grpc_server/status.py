"""Taxonomy -> `google.rpc.Status` with rich details, and the one way to end an RPC with it.

The status travels as `grpc-status-details-bin` in the trailing metadata of `context.abort`
(not `abort_with_status`, which OpenTelemetry's aio instrumentation does not see).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from openai_grpc_server.errors import OpenAIError, redact

DOMAIN = "openai-grpc"
# When the upstream gave no delay, a short hint still tells callers the failure is transient.
DEFAULT_RETRY_DELAY = 1.0

Metadata = Sequence[tuple[str, str | bytes]]


def _pack(msg: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(msg)  # type: ignore[arg-type]
    return packed


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    finite = seconds if math.isfinite(seconds) and seconds < 1e9 else 1e9  # NaN or huge: clamp
    d.FromNanoseconds(int(max(0.0, finite) * 1e9))
    return d


def to_rpc_status(err: OpenAIError) -> status_pb2.Status:
    """Every string that came from the upstream or the caller is redacted here, the one exit
    of a failure: an upstream echoing a key in `param`, `code` or a request id cannot leak it."""
    info = error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN)
    meta = info.metadata
    meta["errorCode"] = err.error_code
    if err.upstream_status is not None:
        meta["upstreamStatus"] = str(err.upstream_status)
    if err.request_id:
        meta["requestId"] = redact(err.request_id)
    if err.openai_type:
        meta["openaiType"] = redact(err.openai_type)
    if err.openai_code:
        meta["openaiCode"] = redact(err.openai_code)
    if err.param:
        meta["param"] = redact(err.param)
    for k, v in err.metadata.items():
        meta[k] = redact(v)
    details = [_pack(info)]
    kinds = err.details
    if ("RetryInfo" in kinds and err.retryable) or ("RetryInfo" in kinds and err.retry_after is not None):
        delay = err.retry_after if err.retry_after is not None else DEFAULT_RETRY_DELAY
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=_duration(delay))))
    if "QuotaFailure" in kinds:
        limit = err.metadata.get("limit_type") or err.openai_code or "requests"
        details.append(
            _pack(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(subject=limit, description=err.message)
                    ]
                )
            )
        )
    if "BadRequest" in kinds:
        violation = error_details_pb2.BadRequest.FieldViolation
        violations = [
            violation(field=redact(v.field), description=redact(v.description)) for v in err.violations
        ] or [violation(field=redact(err.param or ""), description=err.message)]
        details.append(_pack(error_details_pb2.BadRequest(field_violations=violations)))
    if "RequestInfo" in kinds:
        details.append(_pack(error_details_pb2.RequestInfo(request_id=redact(err.request_id or ""))))
    if "ResourceInfo" in kinds:
        rtype, rname = err.resource or ("", "")
        details.append(
            _pack(
                error_details_pb2.ResourceInfo(
                    resource_type=redact(rtype), resource_name=redact(rname), description=err.message
                )
            )
        )
    if "PreconditionFailure" in kinds:
        details.append(
            _pack(
                error_details_pb2.PreconditionFailure(
                    violations=[
                        error_details_pb2.PreconditionFailure.Violation(
                            type="STATE",
                            subject=redact(err.resource[1]) if err.resource else "",
                            description=err.message,
                        )
                    ]
                )
            )
        )
    return status_pb2.Status(code=err.code.value[0], message=err.message, details=details)


def trailing_metadata(err: OpenAIError, extra: Metadata = ()) -> tuple[tuple[str, str | bytes], ...]:
    status = rpc_status.to_status(to_rpc_status(err))
    return (*status.trailing_metadata, *extra)


async def abort(
    context: grpc.aio.ServicerContext[object, object], err: OpenAIError, extra: Metadata = ()
) -> NoReturn:
    # `extra` is forwarded upstream headers, already redacted by `forwarded_metadata`.
    await context.abort(err.code, err.message, trailing_metadata=trailing_metadata(err, extra))
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises
