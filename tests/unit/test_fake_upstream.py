"""The fake OpenAI upstream, driven over real HTTP (httpx against a started server on port 0)."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai_grpc_server.fake_upstream import (
    FakeConfig,
    FakeUpstream,
    RateLimitHeaders,
    Step,
    load_endpoints,
    pattern_bytes,
    pattern_sha256,
    stream_text,
)

ROOT = Path(__file__).resolve().parents[2]
MULTIPART_ROUTES = {
    "POST /files",
    "POST /uploads/{upload_id}/parts",
    "POST /images/edits",
    "POST /images/variations",
    "POST /audio/transcriptions",
    "POST /audio/translations",
}


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream(host="127.0.0.1", port=0) as server:
        yield server


@pytest.fixture
async def client(fake: FakeUpstream) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fake.base_url, timeout=10) as c:
        yield c


def parse_sse(text: str) -> list[tuple[str | None, str]]:
    """(event name, data) per SSE event."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        events.append((name, "\n".join(data)))
    return events


def endpoint_rows() -> list[tuple[str, str]]:
    rows = []
    for line in (ROOT / "spec" / "endpoints.tsv").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            _, method, path, _ = line.split("\t")
            rows.append((method, path))
    return rows


def concrete(path: str) -> str:
    return "/".join(f"x_{seg[1:-1]}" if seg.startswith("{") else seg for seg in path.split("/"))


async def read_until_error(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> tuple[bytes, bool]:
    """Raw body bytes of a stream and whether it ended in a transport error."""
    got = b""
    async with client.stream("POST", url, json=body) as resp:
        try:
            async for piece in resp.aiter_raw():
                got += piece
        except httpx.TransportError:
            return got, True
    return got, False


# --- bodies and routing -----------------------------------------------------------------------


async def test_examples_served_with_ids_and_model(fake: FakeUpstream, client: httpx.AsyncClient) -> None:
    examples = {ep.key: ep.body for ep in load_endpoints()}

    r = await client.get("/models/gpt-test")
    assert r.json() == {**examples["GET /models/{model}"], "id": "gpt-test"}

    r = await client.post("/chat/completions", json={"model": "my-model", "messages": []})
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "my-model"
    assert body["choices"] == examples["POST /chat/completions"]["choices"]

    r = await client.get("/threads/thread_9/runs/run_7")
    assert (r.json()["id"], r.json()["thread_id"], r.json()["object"]) == ("run_7", "thread_9", "thread.run")

    # A literal segment beats a parameter: /threads/runs is not /threads/{thread_id}.
    r = await client.post("/threads/runs", json={"assistant_id": "asst_1"})
    assert r.json()["object"] == "thread.run"
    assert fake.last_request() is not None and fake.last_request().route == "POST /threads/runs"  # type: ignore[union-attr]

    r = await client.post("/vector_stores/vs_1/file_batches/batch_2/cancel")
    assert (r.json()["id"], r.json()["vector_store_id"]) == ("batch_2", "vs_1")

    r = await client.get("/models")
    assert r.json()["object"] == "list" and len(r.json()["data"]) == 3


async def test_every_endpoint_answers(fake: FakeUpstream, client: httpx.AsyncClient) -> None:
    rows = endpoint_rows()
    assert {f"{m} {p}" for m, p in rows} == {ep.key for ep in load_endpoints()}
    for method, path in rows:
        key = f"{method} {path}"
        kwargs: dict[str, Any] = {}
        if key in MULTIPART_ROUTES:
            kwargs = {"files": {"file": ("a.bin", b"abc")}, "data": {"model": "m", "purpose": "batch"}}
        elif method == "POST":
            kwargs = {"json": {"model": "m"}}
        r = await client.request(method, concrete(path), **kwargs)
        assert 200 <= r.status_code < 300, (key, r.status_code, r.text)
        ctype = r.headers["content-type"]
        if key == "POST /audio/speech":
            assert ctype == "audio/mpeg" and len(r.content) == fake.config.speech_bytes
        elif key == "GET /files/{file_id}/content":
            assert ctype == "application/octet-stream" and len(r.content) == fake.config.file_bytes
        else:
            assert ctype.startswith("application/json"), key
            assert isinstance(r.json(), dict), key
        recorded = fake.last_request()
        assert recorded is not None and recorded.route == key, (key, recorded)


async def test_unknown_paths_are_openai_404s(client: httpx.AsyncClient, fake: FakeUpstream) -> None:
    for method, url in [("GET", "/nope"), ("PUT", "/models"), ("GET", "/models/a/b/c")]:
        r = await client.request(method, url)
        assert r.status_code == 404
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = await client.get(fake.root_url + "/v2/models")
    assert r.status_code == 404


async def test_default_and_ratelimit_headers(fake: FakeUpstream, client: httpx.AsyncClient) -> None:
    r1, r2 = await client.get("/models"), await client.get("/models")
    assert (r1.headers["x-request-id"], r2.headers["x-request-id"]) == ("req_1", "req_2")
    assert r1.headers["openai-processing-ms"].isdigit()
    assert "x-ratelimit-limit-requests" not in r1.headers
    fake.config.ratelimit = RateLimitHeaders(reset_requests="1s", reset_tokens="6m0s")
    r = await client.get("/models")
    assert r.headers["x-ratelimit-limit-requests"] == "10000"
    assert r.headers["x-ratelimit-remaining-tokens"] == "1999000"
    assert (r.headers["x-ratelimit-reset-requests"], r.headers["x-ratelimit-reset-tokens"]) == ("1s", "6m0s")


# --- streaming --------------------------------------------------------------------------------


@pytest.mark.parametrize("include_usage", [False, True])
async def test_chat_stream(client: httpx.AsyncClient, include_usage: bool) -> None:
    body: dict[str, Any] = {"model": "m-stream", "messages": [], "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    r = await client.post("/chat/completions", json=body)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(r.text)
    assert events[-1] == (None, "[DONE]")
    chunks = [json.loads(d) for _, d in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "m-stream" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    if include_usage:
        usage_chunk = chunks.pop()
        assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 8
        assert all(c["usage"] is None for c in chunks)
    else:
        assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    content = [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]]
    assert len(content) == 8 and "".join(content) == stream_text(8)


async def test_completions_responses_and_assistants_streams(
    fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    fake.script("POST /completions", Step(chunks=3))
    events = parse_sse((await client.post("/completions", json={"stream": True})).text)
    assert events[-1] == (None, "[DONE]")
    texts = [json.loads(d)["choices"][0]["text"] for _, d in events[:-1]]
    assert texts[:3] == ["Hello", "!", " This"] and json.loads(events[-2][1])["object"] == "text_completion"

    events = parse_sse((await client.post("/responses", json={"model": "m", "stream": True})).text)
    names = [n for n, _ in events]
    assert names[0] == "response.created" and names[-1] == "response.completed"
    assert names.count("response.output_text.delta") == 8 and "[DONE]" not in [d for _, d in events]
    assert [json.loads(d)["sequence_number"] for _, d in events] == list(range(len(events)))
    assert json.loads(events[-1][1])["response"]["output"][0]["content"][0]["text"] == stream_text(8)

    run_urls = ("/threads/runs", "/threads/thread_1/runs", "/threads/thread_1/runs/run_1/submit_tool_outputs")
    for url in run_urls:
        events = parse_sse((await client.post(url, json={"stream": True})).text)
        names = [n for n, _ in events]
        assert "thread.run.created" in names and names[-2] == "thread.run.completed", url
        assert names.count("thread.message.delta") == 8
        assert events[-1] == ("done", "[DONE]")
    assert names[0] == "thread.run.created"


async def test_cut_after_closes_without_done(fake: FakeUpstream, client: httpx.AsyncClient) -> None:
    fake.script("POST /chat/completions", Step(cut_after=3))
    raw, errored = await read_until_error(client, "/chat/completions", {"stream": True})
    assert errored
    events = parse_sse(raw.decode())
    assert len(events) == 3 and all(d != "[DONE]" for _, d in events)

    fake.script("POST /chat/completions", Step(cut_after=2, cut_clean=True))
    raw, errored = await read_until_error(client, "/chat/completions", {"stream": True})
    assert not errored and len(parse_sse(raw.decode())) == 2


async def test_error_event_in_stream(fake: FakeUpstream, client: httpx.AsyncClient) -> None:
    fake.script("POST /chat/completions", Step(error_event_after=2, error_code="overloaded", message="busy"))
    events = parse_sse((await client.post("/chat/completions", json={"stream": True})).text)
    assert len(events) == 3
    assert json.loads(events[2][1]) == {
        "error": {"message": "busy", "type": "server_error", "param": None, "code": "overloaded"}
    }
    fake.script("POST /responses", Step(error_event_after=1))
    events = parse_sse((await client.post("/responses", json={"stream": True})).text)
    assert events[-1][0] == "error" and json.loads(events[-1][1])["type"] == "error"


async def test_split_writes_still_decode(fake: FakeUpstream, client: httpx.AsyncClient) -> None:
    whole = (await client.post("/chat/completions", json={"stream": True})).content
    for step in (Step(split=1), Step(split=9, split_seed=7), Step(split_seed=1234)):
        fake.script("POST /chat/completions", step)
        pieces = []
        async with client.stream("POST", "/chat/completions", json={"stream": True}) as resp:
            async for piece in resp.aiter_raw():
                pieces.append(piece)
        assert b"".join(pieces) == whole
        assert len(pieces) > len(parse_sse(whole.decode())), step
    # Non-streamed bodies can be split too.
    fake.script("GET /models", Step(split=3))
    assert (await client.get("/models")).json()["object"] == "list"


# --- scripted faults --------------------------------------------------------------------------


async def test_scripted_sequence(fake: FakeUpstream, client: httpx.AsyncClient) -> None:
    fake.script(
        "POST /chat/completions",
        Step(status=429, headers={"retry-after-ms": "200", "x-ratelimit-remaining-requests": "0"}),
        Step(status=503, headers={"x-should-retry": "true"}),
        Step(),
    )
    r = await client.post("/chat/completions", json={})
    assert r.status_code == 429 and r.headers["retry-after-ms"] == "200"
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    assert r.json()["error"]["type"] == "requests" and r.json()["error"]["code"] == "rate_limit_exceeded"
    r = await client.post("/chat/completions", json={})
    assert r.status_code == 503 and r.headers["x-should-retry"] == "true"
    assert r.json()["error"]["type"] == "server_error"
    r = await client.post("/chat/completions", json={})
    assert r.status_code == 200 and r.json()["object"] == "chat.completion"
    assert fake.pending_steps() == {}
    # A route's queue leaves other routes alone; /v1 in a route key is optional.
    fake.script("POST /v1/embeddings", Step(status=500))
    assert (await client.get("/models")).status_code == 200
    assert fake.pending_steps() == {"POST /embeddings": 1}
    fake.clear_script()
    assert fake.pending_steps() == {}


async def test_repeat_window_wildcard_and_custom_error(fake: FakeUpstream, client: httpx.AsyncClient) -> None:
    fake.script("*", Step(status=500, repeat=2))
    assert [(await client.get("/models")).status_code for _ in range(3)] == [500, 500, 200]

    fake.script("GET /models/{model}", Step(status=429, for_seconds=0.2))
    started = time.monotonic()
    statuses = []
    while time.monotonic() - started < 0.4:
        statuses.append((await client.get("/models/m")).status_code)
        await asyncio.sleep(0.02)
    assert statuses[0] == 429 and statuses[-1] == 200 and statuses.index(200) >= 3

    fake.script(
        "POST /embeddings",
        Step(status=400, error_type="invalid_request_error", error_code="bad", param="input", message="no"),
    )
    r = await client.post("/embeddings", json={})
    expected = {"message": "no", "type": "invalid_request_error", "param": "input", "code": "bad"}
    assert r.json() == {"error": expected}


async def test_drop_html_delay_extra_fields(fake: FakeUpstream, client: httpx.AsyncClient) -> None:
    fake.script("POST /chat/completions", Step(drop=True))
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post("/chat/completions", json={})

    html = "<html><body><h1>502 Bad Gateway</h1></body></html>"
    fake.script("GET /models", Step(status=502, raw_body=html, content_type="text/html"))
    r = await client.get("/models")
    assert (r.status_code, r.headers["content-type"], r.text) == (502, "text/html", html)

    fake.script("GET /models", Step(raw_body=b'{"object": "li', status=200))
    assert (await client.get("/models")).content == b'{"object": "li'

    fake.script("GET /models", Step(extra_fields={"brand_new": {"x": 1}}, content_type="text/plain"))
    r = await client.get("/models")
    assert r.headers["content-type"] == "text/plain" and r.json()["brand_new"] == {"x": 1}

    fake.script("GET /models", Step(delay_ms=150))
    started = time.monotonic()
    await client.get("/models")
    assert time.monotonic() - started >= 0.14


# --- binary and multipart ---------------------------------------------------------------------


async def test_multipart_upload_recorded_and_downloadable(
    fake: FakeUpstream, client: httpx.AsyncClient
) -> None:
    data = pattern_bytes("upload-test", 0, 3 * 1024 * 1024 + 17)
    r = await client.post(
        "/files",
        files={"file": ("train.jsonl", data, "application/jsonl")},
        data={"purpose": "fine-tune"},
    )
    created = r.json()
    assert (created["object"], created["bytes"], created["filename"]) == ("file", len(data), "train.jsonl")
    assert created["purpose"] == "fine-tune"
    rec = fake.last_request("POST /files")
    assert rec is not None and rec.form == {"purpose": "fine-tune"}
    (part,) = rec.file_parts
    assert (part.name, part.filename, part.content_type) == ("file", "train.jsonl", "application/jsonl")
    assert (part.size, part.sha256) == (len(data), hashlib.sha256(data).hexdigest())

    assert (await client.get(f"/files/{created['id']}")).json()["bytes"] == len(data)
    content = (await client.get(f"/files/{created['id']}/content")).content
    assert len(content) == len(data)
    assert hashlib.sha256(content).hexdigest() == pattern_sha256(created["id"], len(data))

    # Uploads API: part sizes add up on completion.
    up = (await client.post("/uploads", json={"filename": "big.bin", "bytes": 30, "purpose": "batch"})).json()
    ids = []
    for size in (10, 20):
        part_r = await client.post(f"/uploads/{up['id']}/parts", files={"data": ("blob", b"x" * size)})
        ids.append(part_r.json()["id"])
    done = (await client.post(f"/uploads/{up['id']}/complete", json={"part_ids": ids})).json()
    assert done["status"] == "completed" and done["file"]["bytes"] == 30


async def test_large_download_matches_pattern(client: httpx.AsyncClient) -> None:
    size = 64 * 1024 * 1024 + 5  # streamed in 64 KiB writes, hashed as it arrives
    file_id = f"file-size-{size}"
    digest, n = hashlib.sha256(), 0
    async with client.stream("GET", f"/files/{file_id}/content") as resp:
        assert resp.headers["content-length"] == str(size)
        async for piece in resp.aiter_raw():
            digest.update(piece)
            n += len(piece)
    assert n == size and digest.hexdigest() == pattern_sha256(file_id, size)


async def test_speech_and_cut_download(fake: FakeUpstream, client: httpx.AsyncClient) -> None:
    r = await client.post("/audio/speech", json={"model": "tts-1", "input": "hi", "voice": "alloy"})
    assert r.headers["content-type"] == "audio/mpeg" and r.content == pattern_bytes("speech", 0, 32 * 1024)
    r = await client.post("/audio/speech", json={"input": "hi", "response_format": "wav"})
    assert r.headers["content-type"] == "audio/wav"

    fake.script("GET /files/{file_id}/content", Step(cut_after_bytes=100_000))
    with pytest.raises(httpx.RemoteProtocolError):
        await client.get("/files/file-size-1000000/content")


def test_pattern_helpers() -> None:
    whole = pattern_bytes("s", 0, 200_000)
    assert pattern_bytes("s", 65_530, 20) == whole[65_530:65_550]
    assert pattern_bytes("t", 0, 100) != whole[:100]
    assert pattern_sha256("s", 200_000) == hashlib.sha256(whole).hexdigest()
    # Blocks differ, so a repeated or reordered 64 KiB block changes the hash.
    assert whole[: 64 * 1024] != whole[64 * 1024 : 128 * 1024]


# --- recording, disconnects, control routes ---------------------------------------------------


async def test_requests_recorded() -> None:
    async with (
        FakeUpstream(config=FakeConfig(record_limit=3)) as small,
        httpx.AsyncClient(base_url=small.base_url) as c,
    ):
        await c.post(
            "/chat/completions?a=1&a=2&b=x",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": "Bearer sk-test", "OpenAI-Organization": "org-1"},
        )
        rec = small.requests[-1]
        assert (rec.method, rec.path, rec.route) == ("POST", "/v1/chat/completions", "POST /chat/completions")
        assert rec.query == {"a": "1", "b": "x"} and rec.query_all["a"] == ["1", "2"]
        assert rec.headers["authorization"] == "Bearer sk-test"
        assert rec.headers["openai-organization"] == "org-1"
        assert rec.json["messages"][0]["content"] == "hi" and rec.request_id == "req_1"
        for _ in range(5):
            await c.get("/models")
        assert len(small.requests) == 3


async def test_disconnect_is_counted(fake: FakeUpstream, client: httpx.AsyncClient) -> None:
    fake.script("POST /chat/completions", Step(chunks=100, gap_ms=20))
    async with client.stream("POST", "/chat/completions", json={"stream": True}) as resp:
        async for _ in resp.aiter_raw():
            break
        assert fake.stats.open_streams == 1
    # Leaving the block closes the connection mid-stream.
    assert await fake.wait_for_disconnects(1, within=0.1)
    assert await fake.wait_until_idle(within=0.1)
    assert fake.stats.open_streams == 0 and fake.stats.streams_completed == 0


async def test_coalesced_streams_are_byte_identical(fake: FakeUpstream, client: httpx.AsyncClient) -> None:
    body = {"model": "m", "stream": True, "stream_options": {"include_usage": True}}
    per_event = (await client.post("/chat/completions", json=body)).content
    fake.config.coalesce_streams = True
    assert (await client.post("/chat/completions", json=body)).content == per_event


async def test_stop_cuts_open_streams_quickly() -> None:
    fake = FakeUpstream()
    await fake.start()
    fake.script("*", Step(chunks=50, gap_ms=200))
    async with (
        httpx.AsyncClient(base_url=fake.base_url) as c,
        c.stream("POST", "/chat/completions", json={"stream": True}) as resp,
    ):
        started = time.monotonic()
        await fake.stop()
        assert time.monotonic() - started < 0.5
        with pytest.raises(httpx.RemoteProtocolError):
            await resp.aread()
    # A server-side stop is not a client disconnect.
    assert fake.stats.disconnects == 0 and fake.stats.open_streams == 0


async def test_control_routes(fake: FakeUpstream, client: httpx.AsyncClient) -> None:
    root = fake.root_url
    r = await client.post(
        f"{root}/_fake/script",
        json=[
            {"route": "POST /embeddings", "status": 503},
            {"route": "*", "raw_body_b64": "aGk=", "status": 500},
        ],
    )
    assert r.json()["pending"] == {"POST /embeddings": 1, "*": 1}
    assert (await client.post("/embeddings", json={})).status_code == 503
    r = await client.get("/models")
    assert (r.status_code, r.content) == (500, b"hi")
    r = await client.post(f"{root}/_fake/script", json={"route": "GET /models", "steps": [{"bogus": 1}]})
    assert r.status_code == 400

    reqs = (await client.get(f"{root}/_fake/requests", params={"route": "POST /embeddings"})).json()["data"]
    assert len(reqs) == 1 and reqs[0]["route"] == "POST /embeddings"
    stats = (await client.get(f"{root}/_fake/stats")).json()
    assert stats["requests"] == 2 and stats["disconnects"] == 0 and stats["open_streams"] == 0

    r = await client.post(f"{root}/_fake/config", json={"chunks": 2, "ratelimit": True})
    assert r.json()["chunks"] == 2
    events = parse_sse((await client.post("/chat/completions", json={"stream": True})).text)
    assert len(events) == 1 + 2 + 1 + 1

    assert (await client.post(f"{root}/_fake/reset")).json() == {"ok": True}
    assert (await client.get(f"{root}/_fake/requests")).json()["data"] == []
    assert (await client.get(f"{root}/_fake/nope")).status_code == 404


def test_examples_json_matches_generator() -> None:
    path = ROOT / "scripts" / "gen_fake_examples.py"
    spec = importlib.util.spec_from_file_location("gen_fake_examples", path)
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    near_json = '{\n  a: 1,\n  "b": [1,\n    ...\n  ],\n  "c": {...},\n}'
    assert gen.lenient_json(near_json) == {"a": 1, "b": [1], "c": {}}
    assert [f"{m} {p}" for m, p in gen.read_endpoints(ROOT / "spec" / "endpoints.tsv")] == [
        f"{m} {p}" for m, p in endpoint_rows()
    ]


def test_cli_prints_url_and_stops_on_sigterm() -> None:
    cmd = [sys.executable, "-m", "openai_grpc_server.fake_upstream", "--port", "0", "--chunks", "2"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
            r = httpx.post(url + "/chat/completions", json={"stream": True}, timeout=5)
            assert len(parse_sse(r.text)) == 1 + 2 + 1 + 1
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=5) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
