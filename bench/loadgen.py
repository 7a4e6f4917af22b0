"""Closed-loop load generator, one process on uvloop: `python -m bench.loadgen '<json spec>'`.

gRPC goes through grpc.aio with the generated stubs on one channel; HTTP (the direct path to
the fake upstream, and LiteLLM's proxy) through one aiohttp session.

Protocol with the orchestrator (`bench.run`): the generator prints `@MARK <name>` and waits
for one line on stdin (sent once the orchestrator has read /proc), and ends with
`@RESULT <json>`. Timed modes run `warmup` seconds, then mark START, run `duration` seconds,
mark END; only requests that both start and end inside [START, END] are counted, and only
stream messages received inside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import sys
import time
from array import array
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import grpc
import orjson
from openai_grpc.v1 import (
    chat_pb2,
    chat_pb2_grpc,
    common_pb2,
    embeddings_pb2,
    embeddings_pb2_grpc,
    files_pb2,
    files_pb2_grpc,
)

perf = time.perf_counter
EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs
MODES = ("unary", "embed", "stream", "hold", "upload", "cancel")


@dataclasses.dataclass
class Spec:
    transport: str  # "grpc" | "http"
    target: str  # grpc: host:port; http: base URL ending in /v1
    mode: str  # one of MODES
    api_key: str = "sk-bench-placeholder"
    model: str = "gpt-4o-mini"
    embed_model: str = "text-embedding-3-small"
    embed_inputs: int = 16
    embed_dims: int = 1536
    concurrency: int = 1
    warmup: float = 2.0
    duration: float = 8.0
    stagger: float = 0.0  # each worker first waits a random 0..stagger s
    count: int = 0  # cancel: cancellations; hold: streams held open
    upload_bytes: int = 0
    chunk_bytes: int = 1 << 20
    uploads: int = 1
    gap_threshold_ms: float = 40.0
    timeout: float = 120.0
    settle: float = 1.0  # pauses around marks (hold, cancel, upload modes)
    seed: int = 1

    @classmethod
    def parse(cls, text: str) -> Spec:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SystemExit(f"loadgen: unknown spec fields {sorted(unknown)}")
        spec = cls(**data)
        if spec.mode not in MODES or spec.transport not in ("grpc", "http"):
            raise SystemExit(f"loadgen: bad mode/transport {spec.mode}/{spec.transport}")
        return spec


def summary_ms(values: array[float] | list[float]) -> dict[str, float | int | None]:
    """Count, mean and percentiles (nearest rank) of durations in seconds, reported in ms."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "p50": None, "p90": None, "p99": None, "p999": None, "max": None}
    s = sorted(values)

    def q(p: float) -> float:
        return round(s[min(n - 1, max(0, round(p * n + 0.5) - 1))] * 1000, 4)

    return {
        "n": n,
        "mean": round(sum(s) / n * 1000, 4),
        "p50": q(0.50),
        "p90": q(0.90),
        "p99": q(0.99),
        "p999": q(0.999),
        "max": round(s[-1] * 1000, 4),
    }


class Recorder:
    """What happened inside the measured window."""

    def __init__(self, gap_threshold_s: float) -> None:
        self.start = float("inf")
        self.end = float("inf")
        self.thr = gap_threshold_s
        self.lat: array[float] = array("d")
        self.ttfc: array[float] = array("d")
        self.gaps: array[float] = array("d")
        self.gaps_over = 0
        self.ok = 0
        self.errors = 0
        self.errors_outside = 0
        self.error_kinds: Counter[str] = Counter()
        self.events = 0
        self.messages = 0
        self.stream_events: Counter[int] = Counter()

    def error(self, exc: BaseException, inside: bool = True) -> None:
        if inside:
            self.errors += 1
        else:
            self.errors_outside += 1
        if isinstance(exc, grpc.aio.AioRpcError):
            kind = f"{exc.code().name}: {(exc.details() or '')[:160]}"
        else:
            kind = f"{type(exc).__name__}: {str(exc)[:160]}"
        self.error_kinds[kind] += 1

    def on_message(self, t0: float, prev: float | None, t: float, events: int) -> None:
        if self.start <= t <= self.end:
            self.events += events
            self.messages += 1
            if prev is None:
                if t0 >= self.start:
                    self.ttfc.append(t - t0)
            elif prev >= self.start:
                gap = t - prev
                self.gaps.append(gap)
                if gap > self.thr:
                    self.gaps_over += 1


Op = Callable[[float], Awaitable[int]]


class LoadGen:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.rec = Recorder(spec.gap_threshold_ms / 1000)
        self.channel: grpc.aio.Channel | None = None
        self.session: aiohttp.ClientSession | None = None
        self.block = random.Random(spec.seed).randbytes(spec.chunk_bytes)
        texts = [f"benchmark input {i}: the quick brown fox jumps over the lazy dog" for i in range(64)]
        self.texts = texts[: spec.embed_inputs]

    # -- set-up --------------------------------------------------------------------------------

    async def setup(self) -> None:
        s = self.spec
        if s.transport == "grpc":
            opts = [
                ("grpc.max_receive_message_length", 256 << 20),
                ("grpc.max_send_message_length", 256 << 20),
            ]
            self.channel = grpc.aio.insecure_channel(s.target, options=opts)
            await asyncio.wait_for(self.channel.channel_ready(), 15)
            self.chat = chat_pb2_grpc.ChatServiceStub(self.channel)
            self.emb = embeddings_pb2_grpc.EmbeddingsServiceStub(self.channel)
            self.files = files_pb2_grpc.FilesServiceStub(self.channel)
            msgs = [chat_pb2.ChatCompletionRequestMessage(role="user", content_text="hi")]
            self.chat_req = chat_pb2.CreateChatCompletionRequest(model=s.model, messages=msgs)
            self.stream_req = chat_pb2.StreamChatCompletionRequest(model=s.model, messages=msgs)
            self.emb_req = embeddings_pb2.CreateEmbeddingRequest(
                model=s.embed_model, texts=common_pb2.StringList(values=self.texts), dimensions=s.embed_dims
            )
        else:
            conn = aiohttp.TCPConnector(limit=0, force_close=False, enable_cleanup_closed=False)
            self.session = aiohttp.ClientSession(
                connector=conn,
                headers={"authorization": f"Bearer {s.api_key}"},
                timeout=aiohttp.ClientTimeout(total=s.timeout),
            )
            base = s.target.rstrip("/")
            self.chat_url = base + "/chat/completions"
            self.emb_url = base + "/embeddings"
            self.files_url = base + "/files"
            message = [{"role": "user", "content": "hi"}]
            self.chat_body = orjson.dumps({"model": s.model, "messages": message})
            self.stream_body = orjson.dumps({"model": s.model, "messages": message, "stream": True})
            self.emb_body = orjson.dumps(
                {"model": s.embed_model, "input": self.texts, "dimensions": s.embed_dims}
            )
            self.json_headers = {"content-type": "application/json"}

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close(None)
        if self.session is not None:
            await self.session.close()

    async def mark(self, name: str) -> None:
        sys.stdout.write(f"@MARK {name}\n")
        sys.stdout.flush()
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

    # -- one request of each kind: return the number of events/items received ---------------

    async def unary(self, t0: float) -> int:
        if self.channel is not None:
            resp = await self.chat.CreateChatCompletion(self.chat_req, timeout=self.spec.timeout)
            if len(resp.chat_completion.choices) != 1:
                raise ValueError(f"expected 1 choice, got {len(resp.chat_completion.choices)}")
            return 1
        assert self.session is not None
        async with self.session.post(self.chat_url, data=self.chat_body, headers=self.json_headers) as r:
            body = await r.read()
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}: {body[:160]!r}")
        if len(orjson.loads(body)["choices"]) != 1:
            raise ValueError("expected 1 choice")
        return 1

    async def embed(self, t0: float) -> int:
        s = self.spec
        if self.channel is not None:
            resp = await self.emb.CreateEmbedding(self.emb_req, timeout=s.timeout)
            data = resp.data
            n, dims = len(data), (len(data[0].floats.values) if data else 0)
        else:
            assert self.session is not None
            async with self.session.post(self.emb_url, data=self.emb_body, headers=self.json_headers) as r:
                body = await r.read()
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}: {body[:160]!r}")
            items = orjson.loads(body)["data"]
            n, dims = len(items), (len(items[0]["embedding"]) if items else 0)
        if n != s.embed_inputs or dims != s.embed_dims:
            raise ValueError(f"expected {s.embed_inputs}x{s.embed_dims} embeddings, got {n}x{dims}")
        return n

    async def stream(self, t0: float) -> int:
        rec = self.rec
        prev: float | None = None
        total = 0
        if self.channel is not None:
            call = self.chat.StreamChatCompletion(self.stream_req, timeout=self.spec.timeout)
            async for msg in call:
                t = perf()
                k = len(msg.events)
                rec.on_message(t0, prev, t, k)
                prev = t
                total += k
            return total
        assert self.session is not None
        async with self.session.post(self.chat_url, data=self.stream_body, headers=self.json_headers) as r:
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}: {(await r.read())[:160]!r}")
            async for line in r.content:
                if line.startswith(b"data:") and not line.startswith(b"data: [DONE]"):
                    t = perf()
                    rec.on_message(t0, prev, t, 1)
                    prev = t
                    total += 1
        return total

    async def first_then_cancel(self) -> None:
        if self.channel is not None:
            call = self.chat.StreamChatCompletion(self.stream_req, timeout=self.spec.timeout)
            msg = await call.read()
            if msg is EOF:
                raise RuntimeError("stream ended before its first message")
            call.cancel()
            return
        assert self.session is not None
        resp = await self.session.post(self.chat_url, data=self.stream_body, headers=self.json_headers)
        try:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")
            async for line in resp.content:
                if line.startswith(b"data:"):
                    return
            raise RuntimeError("stream ended before its first event")
        finally:
            resp.close()  # drops the connection: the server sees the client go away

    async def hold_one(self, ready: Callable[[], None]) -> None:
        """Open a stream, report its first message, then keep reading until cancelled."""
        if self.channel is not None:
            call = self.chat.StreamChatCompletion(self.stream_req, timeout=self.spec.timeout)
            try:
                msg = await call.read()
                if msg is EOF:
                    raise RuntimeError("stream ended before its first message")
                ready()
                while await call.read() is not EOF:
                    pass
            finally:
                call.cancel()
            return
        assert self.session is not None
        resp = await self.session.post(self.chat_url, data=self.stream_body, headers=self.json_headers)
        try:
            first = True
            async for line in resp.content:
                if first and line.startswith(b"data:"):
                    first = False
                    ready()
        finally:
            resp.close()

    async def upload_one(self, size: int) -> int:
        """One file of `size` bytes in chunk_bytes pieces; returns the size the server reports."""
        chunk = self.spec.chunk_bytes
        if self.channel is not None:

            async def messages() -> AsyncIterator[files_pb2.UploadFileRequest]:
                yield files_pb2.UploadFileRequest(metadata=files_pb2.UploadFileMetadata(purpose="assistants"))
                sent = 0
                while sent < size:
                    n = min(chunk, size - sent)
                    piece = common_pb2.FileChunk(
                        data=self.block if n == chunk else self.block[:n],
                        # The proto says the filename is only read on the first chunk.
                        filename="bench.bin" if sent == 0 else "",
                        content_type="application/octet-stream" if sent == 0 else "",
                    )
                    yield files_pb2.UploadFileRequest(chunk=piece)
                    sent += n

            resp = await self.files.UploadFile(messages(), timeout=self.spec.timeout)
            return int(resp.file.bytes)
        assert self.session is not None
        boundary = "bench-boundary-7f3a9c"

        async def body() -> AsyncIterator[bytes]:
            yield (
                f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nassistants\r\n'
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="bench.bin"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            sent = 0
            while sent < size:
                n = min(chunk, size - sent)
                yield self.block if n == chunk else self.block[:n]
                sent += n
            yield f"\r\n--{boundary}--\r\n".encode()

        headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
        async with self.session.post(self.files_url, data=body(), headers=headers) as r:
            raw = await r.read()
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}: {raw[:160]!r}")
        return int(orjson.loads(raw)["bytes"])

    # -- modes ---------------------------------------------------------------------------------

    async def timed(self, op: Op) -> dict[str, Any]:
        s, rec = self.spec, self.rec
        rng = random.Random(s.seed)

        async def worker(delay: float) -> None:
            if delay:
                await asyncio.sleep(delay)
            while True:
                t0 = perf()
                try:
                    n = await op(t0)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    t1 = perf()
                    rec.error(exc, inside=t0 >= rec.start and t1 <= rec.end)
                    await asyncio.sleep(0.005)  # never spin on a failing target
                    continue
                t1 = perf()
                if t0 >= rec.start and t1 <= rec.end:
                    rec.ok += 1
                    rec.lat.append(t1 - t0)
                    if s.mode == "stream":
                        rec.stream_events[n] += 1

        delays = [rng.uniform(0, s.stagger) if s.stagger else 0.0 for _ in range(s.concurrency)]
        tasks = [asyncio.create_task(worker(d)) for d in delays]
        try:
            await asyncio.sleep(s.warmup)
            await self.mark("START")
            rec.start = perf()
            rec.end = rec.start + s.duration
            await asyncio.sleep(max(0.0, rec.end - perf()))
            await self.mark("END")
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        window = rec.end - rec.start
        out: dict[str, Any] = {
            "window_s": round(window, 4),
            "ok": rec.ok,
            "errors": rec.errors,
            "errors_outside_window": rec.errors_outside,
            "error_kinds": dict(rec.error_kinds.most_common(5)),
            "rps": round(rec.ok / window, 2),
            "latency_ms": summary_ms(rec.lat),
        }
        if s.mode == "stream":
            out.update(
                events=rec.events,
                messages=rec.messages,
                events_per_s=round(rec.events / window, 1),
                messages_per_s=round(rec.messages / window, 1),
                ttfc_ms=summary_ms(rec.ttfc),
                gap_ms=summary_ms(rec.gaps),
                gaps_over_threshold=rec.gaps_over,
                gap_threshold_ms=s.gap_threshold_ms,
                events_per_stream=dict(rec.stream_events.most_common(3)),
            )
        return out

    async def cancel_mode(self) -> dict[str, Any]:
        s = self.spec
        for _ in range(min(10, s.count)):  # warm-up, not counted
            try:
                await self.first_then_cancel()
            except Exception as exc:
                self.rec.error(exc, inside=False)
        await asyncio.sleep(self.spec.settle)
        await self.mark("START")
        issued = 0
        first_ms: array[float] = array("d")

        async def worker() -> None:
            nonlocal issued
            while issued < s.count:
                issued += 1
                t0 = perf()
                try:
                    await self.first_then_cancel()
                except Exception as exc:
                    self.rec.error(exc)
                    continue
                first_ms.append(perf() - t0)
                self.rec.ok += 1

        t_start = perf()
        await asyncio.gather(*(worker() for _ in range(min(s.concurrency, max(1, s.count)))))
        elapsed = perf() - t_start
        await self.mark("END")
        return {
            "window_s": round(elapsed, 4),
            "cancelled": self.rec.ok,
            "errors": self.rec.errors,
            "errors_outside_window": self.rec.errors_outside,
            "error_kinds": dict(self.rec.error_kinds.most_common(5)),
            "per_s": round(self.rec.ok / elapsed, 1) if elapsed else None,
            "first_message_ms": summary_ms(first_ms),
        }

    async def hold_mode(self) -> dict[str, Any]:
        s = self.spec
        # Warm-up: exercise the unary and stream paths a little, without growing to N streams.
        for _ in range(30):
            try:
                await self.unary(perf())
            except Exception as exc:
                self.rec.error(exc, inside=False)
        for _ in range(8):
            try:
                await self.first_then_cancel()
            except Exception as exc:
                self.rec.error(exc, inside=False)
        await asyncio.sleep(self.spec.settle)
        await self.mark("BASE")
        opened = 0
        all_open = asyncio.Event()

        def ready() -> None:
            nonlocal opened
            opened += 1
            if opened >= s.count:
                all_open.set()

        async def one() -> None:
            try:
                await self.hold_one(ready)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.rec.error(exc)

        t0 = perf()
        tasks = [asyncio.create_task(one()) for _ in range(s.count)]
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_open.wait(), s.timeout)
            open_s = perf() - t0
            await asyncio.sleep(self.spec.settle)
            await self.mark("HELD")
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(self.spec.settle)
        await self.mark("AFTER")
        return {
            "streams": s.count,
            "opened": opened,
            "open_s": round(open_s, 3),
            "errors": self.rec.errors,
            "error_kinds": dict(self.rec.error_kinds.most_common(5)),
        }

    async def upload_mode(self) -> dict[str, Any]:
        s = self.spec
        warm = min(s.upload_bytes, 4 * s.chunk_bytes)
        try:
            await self.upload_one(warm)
        except Exception as exc:
            self.rec.error(exc, inside=False)
        await asyncio.sleep(self.spec.settle)
        await self.mark("START")
        seconds: list[float] = []
        returned: list[int] = []
        t_start = perf()
        for _ in range(s.uploads):
            t0 = perf()
            try:
                returned.append(await self.upload_one(s.upload_bytes))
                seconds.append(perf() - t0)
            except Exception as exc:
                self.rec.error(exc)
        elapsed = perf() - t_start
        await self.mark("END")
        total = s.upload_bytes * len(seconds)
        return {
            "window_s": round(elapsed, 4),
            "uploads": len(seconds),
            "bytes_each": s.upload_bytes,
            "chunk_bytes": s.chunk_bytes,
            "seconds": [round(x, 4) for x in seconds],
            "mib_per_s": round(total / (1 << 20) / sum(seconds), 1) if seconds else None,
            "server_reported_bytes": returned,
            "size_verified": bool(returned) and all(b == s.upload_bytes for b in returned),
            "errors": self.rec.errors,
            "errors_outside_window": self.rec.errors_outside,
            "error_kinds": dict(self.rec.error_kinds.most_common(5)),
        }

    async def run(self) -> dict[str, Any]:
        mode = self.spec.mode
        if mode == "unary":
            return await self.timed(self.unary)
        if mode == "embed":
            return await self.timed(self.embed)
        if mode == "stream":
            return await self.timed(self.stream)
        if mode == "cancel":
            return await self.cancel_mode()
        if mode == "hold":
            return await self.hold_mode()
        return await self.upload_mode()


async def amain(spec: Spec) -> dict[str, Any]:
    gen = LoadGen(spec)
    try:
        await gen.setup()
        result = await gen.run()
    finally:
        await gen.close()
    result["loop"] = type(asyncio.get_running_loop()).__module__
    result["pid"] = os.getpid()
    return result


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.loadgen '<json spec>'", file=sys.stderr)
        return 2
    spec = Spec.parse(args[0])
    try:
        import uvloop  # noqa: PLC0415

        result = uvloop.run(amain(spec))
    except ImportError:  # pragma: no cover - uvloop is in the server extra
        result = asyncio.run(amain(spec))
    sys.stdout.write("@RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
