"""The Go driving side (bench/driver): it builds, its fake upstream answers the benchmark's
requests with the very bytes the Python fake answers, and its load generator speaks bench.run's
protocol. No timing is asserted."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import driver, upstream_fixtures
from bench.procs import Proc, free_port

REPO = Path(__file__).resolve().parents[2]
MODEL, EMBED = "gpt-4o-mini", "text-embedding-3-small"
# Headers whose values legitimately differ between two servers (or two requests).
VOLATILE = {"date", "server", "openai-processing-ms", "x-request-id", "transfer-encoding", "content-length"}


def _wait(url: str) -> None:
    for _ in range(300):
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                r.read()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


@pytest.fixture(scope="module")
def fakes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    tmp = tmp_path_factory.mktemp("fakes")
    binary = driver.ensure(tmp / "build.log")
    fx = upstream_fixtures.write(
        tmp / "fixtures.json", upstream_fixtures.build([MODEL], [6], [(EMBED, 3, 8)])
    )
    py_port, go_port = free_port(), free_port()
    py = Proc(
        "py-fake",
        [sys.executable, "-m", "openai_grpc_server.fake_upstream", "--port", str(py_port), "--chunks", "6"],
        log_path=tmp / "py.log",
        cwd=REPO,
    )
    go = Proc(
        "go-fake",
        [str(binary), "fake", "--port", str(go_port), "--fixtures", str(fx), "--chunks", "6"],
        log_path=tmp / "go.log",
    )
    py.start()
    go.start()
    try:
        _wait(f"http://127.0.0.1:{py_port}/_fake/stats")
        _wait(f"http://127.0.0.1:{go_port}/_fake/stats")
        yield f"http://127.0.0.1:{py_port}", f"http://127.0.0.1:{go_port}"
    finally:
        go.stop()
        py.stop()


def _post(
    root: str, path: str, body: bytes, ctype: str = "application/json"
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(root + path, data=body, headers={"content-type": ctype}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()


REQUESTS = {
    "chat": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
    "stream": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True},
    "stream_usage": {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    },
    "embeddings": {"model": EMBED, "input": ["a", "b", "c"], "dimensions": 8},
    "embeddings_b64": {
        "model": EMBED,
        "input": ["a", "b", "c"],
        "dimensions": 8,
        "encoding_format": "base64",
    },
}


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_go_fake_answers_the_python_fakes_bytes(fakes: tuple[str, str], name: str) -> None:
    py, go = fakes
    payload = json.dumps(REQUESTS[name]).encode()
    path = "/v1/embeddings" if name.startswith("embeddings") else "/v1/chat/completions"
    s1, h1, b1 = _post(py, path, payload)
    s2, h2, b2 = _post(go, path, payload)
    assert (s1, b1) == (s2, b2)
    assert {k: v for k, v in h1.items() if k not in VOLATILE} == {
        k: v for k, v in h2.items() if k not in VOLATILE
    }
    assert re.fullmatch(r"req_\d+", h2["x-request-id"])


def test_go_fake_counts_uploads_like_the_python_fake(fakes: tuple[str, str]) -> None:
    boundary = "b0und"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nassistants\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + b"z" * 100_000
        + f"\r\n--{boundary}--\r\n".encode()
    )
    ctype = f"multipart/form-data; boundary={boundary}"
    answers = [json.loads(_post(root, "/v1/files", body, ctype)[2]) for root in fakes]
    for a in answers:
        a.pop("id")
    assert answers[0] == answers[1]
    assert answers[1]["bytes"] == 100_000


def test_go_load_generator_speaks_the_protocol(fakes: tuple[str, str]) -> None:
    _, go = fakes
    spec = {
        "transport": "http",
        "target": go + "/v1",
        "mode": "stream",
        "concurrency": 2,
        "warmup": 0.1,
        "duration": 0.3,
    }
    marks: list[str] = []
    result = None
    with subprocess.Popen(
        [str(driver.BIN), "load", json.dumps(spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("@MARK "):
                marks.append(line[6:].strip())
                proc.stdin.write("ok\n")
                proc.stdin.flush()
            elif line.startswith("@RESULT "):
                result = json.loads(line[8:])
        assert proc.wait(30) == 0
    assert marks == ["START", "END"]
    assert result is not None and result["errors"] == 0 and result["ok"] > 0
    assert result["events_per_stream"] == {"8": result["ok"]}  # role + 6 chunks + stop
    for key in ("rps", "latency_ms", "events_per_s", "gap_ms", "ttfc_ms", "gaps_over_threshold"):
        assert key in result
