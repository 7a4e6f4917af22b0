"""The gateway as an operator runs it: start-up checks, demo mode, grpcurl, SIGTERM drain."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from openai_grpc_server.fake_upstream import FakeUpstream, Step

from tests.contract.protomodel import ROOT

GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "GRPC_"))}
    env.update(extra)
    return env


def run_server(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "openai_grpc_server", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        ((), {}, "no OpenAI API key"),
        ((), {"OPENAI_API_KEY": "sk-x", "OPENAI_BASE_URL": "api.openai.com/v1"}, "is not an http(s) URL"),
        (("--config", "/nonexistent/gateway.yaml"), {"OPENAI_API_KEY": "sk-x"}, "cannot read /nonexistent"),
        ((), {"OPENAI_API_KEY": "sk-x", "OPENAI_GRPC_PORT": "http"}, "OPENAI_GRPC_PORT"),
        ((), {"OPENAI_API_KEY": "sk-x", "OPENAI_GRPC_RETRY_MAX_RETRIES": "-1"}, "retry"),
        (
            (),
            {"OPENAI_API_KEY": "sk-x", "OPENAI_GRPC_RATE_LIMIT_REDIS_FAILURE": "open"},
            "rate_limit.redis_failure",
        ),
    ],
    ids=["no-key", "bad-base-url", "unreadable-config", "bad-port", "bad-retry", "bad-redis-failure"],
)
def test_bad_configuration_stops_at_start(args: tuple[str, ...], env: dict[str, str], needle: str) -> None:
    proc = run_server(*args, env=clean_env(**env))
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr
    assert "sk-x" not in proc.stderr + proc.stdout


@pytest.fixture(scope="module")
def demo() -> Iterator[tuple[int, str]]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "openai_grpc_server", "--demo", "--port", str(port)],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    banner = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        banner.append(line)
        if "grpcurl" in line:
            break
    try:
        yield port, "".join(banner)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GRPCURL, *args], capture_output=True, text=True, timeout=30)


def test_demo_prints_a_grpcurl_line_that_works_as_printed(demo: tuple[int, str]) -> None:
    port, banner = demo
    line = next(x.strip() for x in banner.splitlines() if x.strip().startswith("grpcurl"))
    argv = shlex.split(line)
    argv[0] = GRPCURL
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    completion = answer.get("chatCompletion") or answer["chat_completion"]
    assert completion["choices"][0]["message"]
    assert f"localhost:{port}" in line


def test_grpcurl_list_describe_and_health(demo: tuple[int, str]) -> None:
    port, _ = demo
    addr = f"localhost:{port}"
    listed = grpcurl("-plaintext", addr, "list")
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert {
        "openai_grpc.v1.ChatService",
        "openai_grpc.v1.FilesService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services
    described = grpcurl("-plaintext", addr, "describe", "openai_grpc.v1.ChatService")
    assert described.returncode == 0, described.stderr
    assert "rpc StreamChatCompletion" in described.stdout and "returns ( stream" in described.stdout
    health = grpcurl("-plaintext", addr, "grpc.health.v1.Health/Check")
    assert health.returncode == 0 and '"SERVING"' in health.stdout
    models = grpcurl("-plaintext", "-d", "{}", addr, "openai_grpc.v1.ModelsService/ListModels")
    assert models.returncode == 0 and '"data"' in models.stdout


def test_grpcurl_streams_a_chat_completion(demo: tuple[int, str]) -> None:
    port, _ = demo
    data = '{"model":"gpt-4o-mini","messages":[{"role":"user","content_text":"hi"}]}'
    proc = grpcurl(
        "-plaintext", "-d", data, f"localhost:{port}", "openai_grpc.v1.ChatService/StreamChatCompletion"
    )
    assert proc.returncode == 0, proc.stderr
    # Events one upstream read delivered travel in one message: count the events themselves.
    assert proc.stdout.count('"chat.completion.chunk"') >= 3


def test_grpcurl_describes_the_proto_offline() -> None:
    proc = grpcurl(
        "-import-path",
        str(ROOT / "protos"),
        "-proto",
        "openai_grpc/v1/chat.proto",
        "describe",
        "openai_grpc.v1.ChatService",
    )
    assert proc.returncode == 0, proc.stderr
    assert "// " in proc.stdout and "CreateChatCompletion" in proc.stdout


async def test_sigterm_drains_in_flight_calls(fake: FakeUpstream) -> None:
    fake.reset()
    fake.script("GET /models", Step(delay_ms=1200))
    port = free_port()
    env = clean_env(
        OPENAI_API_KEY="sk-drain-test",
        OPENAI_BASE_URL=fake.base_url,
        OPENAI_GRPC_PORT=str(port),
        OPENAI_GRPC_GRACE_SECONDS="10",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "openai_grpc_server",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    await asyncio.wait_for(proc.stdout.readline(), 30)  # the "listening" line
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415
    from openai_grpc.v1 import models_pb2, models_pb2_grpc  # noqa: PLC0415

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = models_pb2_grpc.ModelsServiceStub(channel).ListModels(
            models_pb2.ListModelsRequest(), timeout=20
        )
        await asyncio.sleep(0.3)  # the call is now waiting on the slow upstream
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        health = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.aio.AioRpcError):
            # New calls are refused while draining (or health already says NOT_SERVING).
            resp = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
            assert resp.status != health_pb2.HealthCheckResponse.SERVING
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata())
        answer = await call
        assert len(answer.data) > 0
    assert await asyncio.wait_for(proc.wait(), 20) == 0
    assert proc.stderr is not None
    logs = (await proc.stderr.read()).decode()
    assert "sk-drain-test" not in logs
    for line in logs.splitlines():
        json.loads(line)  # every log line is structured JSON


def _readme_grpcurl_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    return [line.strip() for b in blocks for line in b.splitlines() if line.strip().startswith("grpcurl ")]


def test_readme_grpcurl_examples_work_verbatim() -> None:
    """Every grpcurl line of the README, run as written against `--demo` on :50051."""
    lines = _readme_grpcurl_lines()
    assert len(lines) >= 8
    proc = subprocess.Popen(
        [sys.executable, "-m", "openai_grpc_server", "--demo"],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert "grpcurl" in "".join(proc.stdout.readline() for _ in range(2))
        for line in lines:
            argv = shlex.split(line)
            argv[0] = GRPCURL
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            if '"temperature":3' in line:
                assert done.returncode != 0 and "InvalidArgument" in done.stderr, line
                assert "VALIDATION_FAILED" in done.stderr and "temperature" in done.stderr
            else:
                assert done.returncode == 0, f"{line}\n{done.stderr}"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


async def test_workers_share_the_port(fake: FakeUpstream) -> None:
    fake.reset()
    port = free_port()
    env = clean_env(OPENAI_API_KEY="sk-workers-test", OPENAI_BASE_URL=fake.base_url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "openai_grpc_server",
        "--workers",
        "2",
        "--port",
        str(port),
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    for _ in range(2):  # one "listening" line per worker
        await asyncio.wait_for(proc.stdout.readline(), 30)
    assert len(_children(proc.pid)) == 2
    from openai_grpc.v1 import models_pb2, models_pb2_grpc  # noqa: PLC0415

    async def one() -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await models_pb2_grpc.ModelsServiceStub(channel).ListModels(
                models_pb2.ListModelsRequest(), timeout=10
            )

    await asyncio.gather(*(one() for _ in range(20)))
    assert len(fake.requests) == 20
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
