"""Every kind of call (unary, server stream, byte download, client-stream upload) treats the
upstream's answer the same way: an answer that does not fit, and the upstream's rate-limit
headers, are handled alike whatever the kind."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from openai_grpc.v1 import common_pb2, files_pb2
from openai_grpc_server.fake_upstream import FakeUpstream, Step
from openai_grpc_server.resilience import RateLimitConfig

from tests.support.gateway import Gateway, settings_for, start_gateway, stop_gateway

TIMEOUT = 10.0
# The upstream says this credential has no request left for 20 seconds.
EXHAUSTED = {
    "x-ratelimit-limit-requests": "100",
    "x-ratelimit-remaining-requests": "0",
    "x-ratelimit-reset-requests": "20s",
}
BINARY_CALLS: dict[str, tuple[str, dict[str, Any]]] = {
    "CreateSpeech": (
        "POST /audio/speech",
        {"model": "gpt-4o-mini-tts", "input": "Hello there", "preset": "alloy"},
    ),
    "DownloadFileContent": ("GET /files/{file_id}/content", {"file_id": "file-size-300001"}),
}


def reason_of(err: grpc.aio.AioRpcError) -> tuple[str, error_details_pb2.RetryInfo | None]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, "the status carries no google.rpc.Status details"
    reason, retry = "", None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
    return reason, retry


async def download(gw: Gateway, name: str, fields: dict[str, Any]) -> list[Any]:
    return [msg async for msg in gw.server_stream(name)(gw.request(name, **fields), timeout=TIMEOUT)]


@pytest.mark.parametrize("name", sorted(BINARY_CALLS))
async def test_binary_calls_feed_upstream_rate_limit_headers_to_the_limiter(
    fake: FakeUpstream, name: str
) -> None:
    """Like a unary call: after the upstream said "none left", the next call waits its turn
    (here: is refused at once with the delay) instead of hitting the upstream again."""
    route, fields = BINARY_CALLS[name]
    fake.reset()
    gw = await start_gateway(settings_for(fake.base_url, rate_limit=RateLimitConfig(queue_requests=False)))
    try:
        fake.script(route, Step(headers=EXHAUSTED))
        assert await download(gw, name, fields), "the first call streams its bytes"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await download(gw, name, fields)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        reason, retry = reason_of(caught.value)
        assert reason == "RATE_LIMITED"
        assert retry is not None and retry.retry_delay.seconds >= 15
        assert len(fake.requests) == 1
    finally:
        await stop_gateway(gw)


async def test_an_upload_answer_that_does_not_fit_is_upstream_bad_response(
    gateway: Gateway, clean_fake: FakeUpstream
) -> None:
    """As for a unary call: OpenAI's answer is wrong (a list where a file object belongs), not
    the gateway (reason UPSTREAM_BAD_RESPONSE, never a generic INTERNAL)."""
    clean_fake.script("POST /files", Step(body=[{"id": "file-1", "object": "file"}]))
    frames = [
        files_pb2.UploadFileRequest(metadata=files_pb2.UploadFileMetadata(purpose="batch")),
        files_pb2.UploadFileRequest(chunk=common_pb2.FileChunk(filename="a.jsonl", data=b"{}\n")),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.client_stream("UploadFile")(iter(frames), timeout=TIMEOUT)
    reason, _ = reason_of(caught.value)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert reason == "UPSTREAM_BAD_RESPONSE"
    assert "does not fit" in (caught.value.details() or "")
    assert len(clean_fake.requests) == 1
