"""Client-streaming uploads end to end: metadata, then file chunks, relayed as a streamed
multipart body that the fake upstream parses and hashes part by part.

The 256 MiB tests run the gateway as a separate process, so its memory can be measured: the
upload must never be held whole, and a 256 MiB download must come back byte for byte.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import grpc
import pytest
from google.protobuf.message import Message
from openai_grpc.v1 import audio_pb2, common_pb2, files_pb2, images_pb2, uploads_pb2
from openai_grpc_server import routes
from openai_grpc_server.fake_upstream import FakeUpstream, MultipartPart, pattern_bytes, pattern_sha256

from tests.support.gateway import Gateway

TIMEOUT = 10.0
REPO = Path(__file__).resolve().parents[2]
ROUTES = {r.name: r for r in routes.load_routes()}
MiB = 1 << 20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def send(gateway: Gateway, name: str, frames: Iterable[Message]) -> Any:
    return await gateway.client_stream(name)(iter(list(frames)), timeout=TIMEOUT)


def text_fields(parts: list[MultipartPart]) -> list[tuple[str | None, str | None]]:
    return [(p.name, p.value) for p in parts if p.filename is None]


async def expect_error(gateway: Gateway, name: str, frames: Iterable[Message]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await send(gateway, name, frames)
    return caught.value


# --- UploadFile ------------------------------------------------------------------------------


async def test_upload_file(gateway: Gateway, clean_fake: FakeUpstream) -> None:
    data = pattern_bytes("upload-file", 0, 300_001)
    frames: list[Message] = [
        files_pb2.UploadFileRequest(metadata=files_pb2.UploadFileMetadata(purpose="fine-tune"))
    ]
    frames += [
        files_pb2.UploadFileRequest(
            chunk=common_pb2.FileChunk(filename="train.jsonl", content_type="application/jsonl", data=piece)
        )
        for piece in pieces(data, 64 * 1024)
    ]
    response = await send(gateway, "UploadFile", frames)

    [request] = clean_fake.requests
    assert request.method == "POST"
    assert request.path == "/v1/files"
    assert request.content_type == "multipart/form-data"
    assert request.form == {"purpose": "fine-tune"}
    [part] = request.file_parts
    assert part.name == "file"
    assert part.filename == "train.jsonl"
    assert part.content_type == "application/jsonl"
    assert part.size == len(data)
    assert part.sha256 == sha(data)

    [stored] = clean_fake.files.values()
    assert response.file.id == stored.id
    assert response.file.bytes == len(data)
    assert response.file.filename == "train.jsonl"
    assert response.file.purpose == "fine-tune"
    assert response.file.object == "file"


async def test_upload_file_name_on_first_chunk_only(gateway: Gateway, clean_fake: FakeUpstream) -> None:
    # FileChunk: "filename ... only read on the first chunk of a part", so later chunks may omit it.
    data = pattern_bytes("upload-first-name", 0, 200_000)
    frames: list[Message] = [
        files_pb2.UploadFileRequest(metadata=files_pb2.UploadFileMetadata(purpose="batch"))
    ]
    for i, piece in enumerate(pieces(data, 50_000)):
        chunk = (
            common_pb2.FileChunk(filename="batch.jsonl", data=piece)
            if i == 0
            else common_pb2.FileChunk(data=piece)
        )
        frames.append(files_pb2.UploadFileRequest(chunk=chunk))
    await send(gateway, "UploadFile", frames)

    [request] = clean_fake.requests
    parts = [(p.name, p.filename, p.size) for p in request.file_parts]
    assert parts == [("file", "batch.jsonl", len(data))], "the file was split into several multipart parts"
    assert request.file_parts[0].sha256 == sha(data)


# --- other upload RPCs -----------------------------------------------------------------------


async def test_image_edit_with_two_images_and_a_mask(gateway: Gateway, clean_fake: FakeUpstream) -> None:
    files = {
        ("image[]", "first.png"): pattern_bytes("edit-first", 0, 150_000),
        ("image[]", "second.png"): pattern_bytes("edit-second", 0, 70_001),
        ("mask", "mask.png"): pattern_bytes("edit-mask", 0, 40_000),
    }
    meta = images_pb2.CreateImageEditMetadata(
        prompt="Put both otters in one picture", model="gpt-image-1", n=1
    )
    frames: list[Message] = [images_pb2.CreateImageEditRequest(metadata=meta)]
    for (field, filename), data in files.items():
        frames += [
            images_pb2.CreateImageEditRequest(
                chunk=common_pb2.FileChunk(
                    field=field, filename=filename, content_type="image/png", data=piece
                )
            )
            for piece in pieces(data, 32 * 1024)
        ]
    response = await send(gateway, "CreateImageEdit", frames)

    [request] = clean_fake.requests
    assert request.path == "/v1/images/edits"
    assert dict(text_fields(request.multipart or [])) == {
        "prompt": "Put both otters in one picture",
        "model": "gpt-image-1",
        "n": "1",
    }
    got = [(p.name, p.filename, p.content_type, p.size, p.sha256) for p in request.file_parts]
    want = [(f, n, "image/png", len(d), sha(d)) for (f, n), d in files.items()]
    assert got == want
    assert response.result.data[0].b64_json == "iVBORw0KGgo="
    assert response.result.usage.total_tokens == 100


async def test_transcription_sends_list_fields_with_brackets(
    gateway: Gateway, clean_fake: FakeUpstream
) -> None:
    audio = pattern_bytes("transcribe-audio", 0, 100_000)
    meta = audio_pb2.CreateTranscriptionMetadata(
        model="whisper-1",
        language="en",
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    frames: list[Message] = [audio_pb2.CreateTranscriptionRequest(metadata=meta)]
    frames += [
        audio_pb2.CreateTranscriptionRequest(
            chunk=common_pb2.FileChunk(filename="speech.mp3", content_type="audio/mpeg", data=piece)
        )
        for piece in pieces(audio, 40_000)
    ]
    response = await send(gateway, "CreateTranscription", frames)

    [request] = clean_fake.requests
    assert request.path == "/v1/audio/transcriptions"
    fields = text_fields(request.multipart or [])
    assert ("model", "whisper-1") in fields
    assert ("language", "en") in fields
    assert ("response_format", "verbose_json") in fields
    assert [v for n, v in fields if n == "timestamp_granularities[]"] == ["word", "segment"]
    assert not any(n == "timestamp_granularities" for n, _ in fields)
    [part] = request.file_parts
    assert (part.name, part.filename, part.content_type) == ("file", "speech.mp3", "audio/mpeg")
    assert (part.size, part.sha256) == (len(audio), sha(audio))
    assert response.transcription.text.startswith("Imagine the wildest idea")


async def test_add_upload_part(gateway: Gateway, clean_fake: FakeUpstream) -> None:
    data = pattern_bytes("upload-part", 0, 123_457)
    frames: list[Message] = [
        uploads_pb2.AddUploadPartRequest(
            metadata=uploads_pb2.AddUploadPartMetadata(upload_id="upload_abc123")
        )
    ]
    frames += [
        uploads_pb2.AddUploadPartRequest(chunk=common_pb2.FileChunk(data=piece))
        for piece in pieces(data, 30_000)
    ]
    response = await send(gateway, "AddUploadPart", frames)

    [request] = clean_fake.requests
    assert request.path == "/v1/uploads/upload_abc123/parts"
    assert request.params == {"upload_id": "upload_abc123"}
    assert text_fields(request.multipart or []) == []  # upload_id went into the URL only
    [part] = request.file_parts
    assert part.name == "data"
    assert (part.size, part.sha256) == (len(data), sha(data))
    assert response.part.upload_id == "upload_abc123"
    assert response.part.object == "upload.part"
    assert response.part.id.startswith("part_fake")


# --- errors ----------------------------------------------------------------------------------


async def test_first_message_must_be_metadata(gateway: Gateway, clean_fake: FakeUpstream) -> None:
    frames = [files_pb2.UploadFileRequest(chunk=common_pb2.FileChunk(filename="a.txt", data=b"hello"))]
    err = await expect_error(gateway, "UploadFile", frames)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    assert "metadata" in (err.details() or "")
    assert clean_fake.requests == []


async def test_empty_upload_stream(gateway: Gateway, clean_fake: FakeUpstream) -> None:
    err = await expect_error(gateway, "UploadFile", [])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    assert clean_fake.requests == []


async def test_upload_part_without_upload_id(gateway: Gateway, clean_fake: FakeUpstream) -> None:
    frames = [
        uploads_pb2.AddUploadPartRequest(metadata=uploads_pb2.AddUploadPartMetadata()),
        uploads_pb2.AddUploadPartRequest(chunk=common_pb2.FileChunk(data=b"x")),
    ]
    err = await expect_error(gateway, "AddUploadPart", frames)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    assert "upload_id" in (err.details() or "")
    assert clean_fake.requests == []


async def test_metadata_twice_is_rejected(gateway: Gateway, clean_fake: FakeUpstream) -> None:
    meta = files_pb2.UploadFileMetadata(purpose="assistants")
    frames = [
        files_pb2.UploadFileRequest(metadata=meta),
        files_pb2.UploadFileRequest(chunk=common_pb2.FileChunk(filename="a.txt", data=b"hello")),
        files_pb2.UploadFileRequest(metadata=meta),
    ]
    err = await expect_error(gateway, "UploadFile", frames)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())


# --- 256 MiB through a gateway process -------------------------------------------------------


@dataclasses.dataclass
class GatewayProcess:
    process: asyncio.subprocess.Process
    channel: grpc.aio.Channel
    log: Path

    def memory_kib(self) -> dict[str, int]:
        """VmRSS and VmHWM of the gateway process, in KiB."""
        out = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
        return out

    def reset_peak(self) -> bool:
        """Reset VmHWM to the current RSS (Linux `clear_refs` 5); False if not allowed."""
        try:
            Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    def stream_unary(self, name: str) -> Any:
        r = ROUTES[name]
        return self.channel.stream_unary(
            r.full_method,
            request_serializer=r.input_cls.SerializeToString,
            response_deserializer=r.output_cls.FromString,
        )

    def unary_stream(self, name: str) -> Any:
        r = ROUTES[name]
        return self.channel.unary_stream(
            r.full_method,
            request_serializer=r.input_cls.SerializeToString,
            response_deserializer=r.output_cls.FromString,
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _open_log(path: Path) -> IO[bytes]:
    return path.open("wb")


@pytest.fixture(scope="module")
async def gateway_process(
    fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[GatewayProcess]:
    port = _free_port()
    log = tmp_path_factory.mktemp("gateway-process") / "gateway.log"
    env = {
        **os.environ,
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_GRPC_HOST": "127.0.0.1",
        "OPENAI_GRPC_PORT": str(port),
        "OPENAI_GRPC_GRACE_SECONDS": "1",
        "OPENAI_GRPC_LOG_LEVEL": "WARNING",
        "OPENAI_GRPC_TRUST_ENV": "false",  # the runner's proxies must not sit before the loopback fake
    }
    with _open_log(log) as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "openai_grpc_server", env=env, cwd=REPO, stdout=out, stderr=out
        )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        try:
            await asyncio.wait_for(channel.channel_ready(), 20)
        except TimeoutError:
            pytest.fail(f"the gateway process did not start: {log.read_text()[-2000:]}")
        yield GatewayProcess(process, channel, log)
    finally:
        await channel.close(grace=None)
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


_BIG = 256 * MiB
_BASE = hashlib.shake_256(b"openai-grpc big upload").digest(MiB)


async def _upload_frames(size: int, digest: Any) -> AsyncIterator[Message]:
    """Metadata, then `size` bytes in 1 MiB chunks made on the fly (one chunk alive at a time)."""
    yield files_pb2.UploadFileRequest(metadata=files_pb2.UploadFileMetadata(purpose="batch"))
    for i in range(size // MiB):
        data = i.to_bytes(8, "big") + _BASE[8:]
        digest.update(data)
        yield files_pb2.UploadFileRequest(chunk=common_pb2.FileChunk(filename="big.bin", data=data))


@pytest.mark.slow
async def test_256_mib_upload_is_streamed(gateway_process: GatewayProcess, clean_fake: FakeUpstream) -> None:
    upload = gateway_process.stream_unary("UploadFile")
    # Warm up (imports, pools, first-call allocations) before taking the baseline.
    await upload(_upload_frames(4 * MiB, hashlib.sha256()), timeout=TIMEOUT)
    clean_fake.clear_requests()
    await asyncio.sleep(0.2)
    before = gateway_process.memory_kib()
    gateway_process.reset_peak()

    digest = hashlib.sha256()
    started = time.monotonic()
    response = await upload(_upload_frames(_BIG, digest), timeout=45)
    elapsed = time.monotonic() - started
    after = gateway_process.memory_kib()

    [request] = clean_fake.requests
    [part] = request.file_parts
    assert part.name == "file"
    assert part.filename == "big.bin"
    assert part.size == _BIG
    assert part.sha256 == digest.hexdigest()
    assert request.form == {"purpose": "batch"}
    assert response.file.bytes == _BIG
    growth_mib = (after["VmHWM"] - before["VmRSS"]) / 1024
    assert growth_mib < 64, f"gateway RSS grew by {growth_mib:.1f} MiB for a 256 MiB upload ({elapsed:.1f}s)"


@pytest.mark.slow
async def test_256_mib_download_streams_back_intact(
    gateway_process: GatewayProcess, clean_fake: FakeUpstream
) -> None:
    file_id = f"file-size-{_BIG}"
    expected = pattern_sha256(file_id, _BIG)
    await asyncio.sleep(0.1)
    before = gateway_process.memory_kib()
    peak_reset = gateway_process.reset_peak()

    request = files_pb2.DownloadFileContentRequest(file_id=file_id)
    call = gateway_process.unary_stream("DownloadFileContent")(request, timeout=45)
    digest = hashlib.sha256()
    total = 0
    async for message in call:
        digest.update(message.chunk.data)
        total += len(message.chunk.data)
    assert await call.code() == grpc.StatusCode.OK
    after = gateway_process.memory_kib()

    assert total == _BIG
    assert digest.hexdigest() == expected
    assert clean_fake.stats.streams_completed == 1
    if peak_reset:
        growth_mib = (after["VmHWM"] - before["VmRSS"]) / 1024
        assert growth_mib < 64, f"gateway RSS grew by {growth_mib:.1f} MiB for a 256 MiB download"


async def test_upstream_failure_after_the_body_was_sent_is_not_retried(fake: FakeUpstream) -> None:
    """The chunks were consumed as they went upstream: report the failure, never resend half a file."""
    from openai_grpc_server.fake_upstream import Step  # noqa: PLC0415
    from openai_grpc_server.resilience import RetryConfig  # noqa: PLC0415

    from tests.support.gateway import settings_for, start_gateway, stop_gateway  # noqa: PLC0415

    fake.reset()
    gw = await start_gateway(
        settings_for(fake.base_url, retry=RetryConfig(max_retries=3, initial_backoff=0.01))
    )
    try:
        fake.script("POST /files", Step(status=503, message="busy", repeat=5))
        frames = [
            files_pb2.UploadFileRequest(metadata=files_pb2.UploadFileMetadata(purpose="batch")),
            files_pb2.UploadFileRequest(chunk=common_pb2.FileChunk(filename="a.jsonl", data=b"x" * 1000)),
        ]
        err = await expect_error(gw, "UploadFile", frames)
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert len(fake.requests) == 1
    finally:
        await stop_gateway(gw)
