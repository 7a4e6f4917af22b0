"""The gateway as an operator runs it: start-up checks, demo mode, grpcurl, SIGTERM drain."""

from __future__ import annotations

import asyncio
import importlib.metadata
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

from tests.support.process import (
    clean_env,
    free_port,
    gateway_process,
    health_status,
    list_models,
    run_server,
    spawn_gateway,
)
from tests.support.protomodel import ROOT

GRPCURL = str(Path(sys.executable).parent / "grpcurl")


KEY = {"OPENAI_API_KEY": "sk-x"}


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        ((), {}, "no OpenAI API key"),
        ((), {"OPENAI_API_KEY": "sk-x", "OPENAI_BASE_URL": "api.openai.com/v1"}, "is not an http(s) URL"),
        (("--config", "/nonexistent/gateway.yaml"), {"OPENAI_API_KEY": "sk-x"}, "cannot read /nonexistent"),
        ((), {"OPENAI_API_KEY": "sk-x", "OPENAI_GRPC_PORT": "http"}, "OPENAI_GRPC_PORT"),
        ((), {"OPENAI_API_KEY": "sk-x", "OPENAI_GRPC_RETRY_MAX_RETRIES": "-1"}, "retry"),
        (("--log-level", "LOUD"), {"OPENAI_API_KEY": "sk-x"}, "log_level must be DEBUG"),
        ((), {"OPENAI_API_KEY": "sk-x", "OPENAI_GRPC_LOG_LEVEL": "verbose"}, "log_level must be DEBUG"),
        (("--port", "http"), {"OPENAI_API_KEY": "sk-x"}, "argument --port: invalid int value"),
        (("--wokers", "2"), {"OPENAI_API_KEY": "sk-x"}, "unrecognized arguments: --wokers"),
        ((), {"OPENAI_API_KEY": "sk-x", "OPENAI_GRPC_TRUST_ENV": "maybe"}, "OPENAI_GRPC_TRUST_ENV"),
        (("--port", "1", "--host", "192.0.2.1"), {"OPENAI_API_KEY": "sk-x"}, "cannot listen on 192.0.2.1:1"),
        (
            (),
            {**KEY, "OPENAI_GRPC_TLS_CERT": "/dev/null", "OPENAI_GRPC_TLS_KEY": "/dev/null"},
            "tls_cert, tls_key or tls_client_ca cannot be loaded",
        ),
        (
            (),
            {"OPENAI_GRPC_AUTH_MODE": "tokens", "OPENAI_GRPC_TENANTS_FILE": "/dev/null"},
            "expected a non-empty `tenants` list",
        ),
        (
            (),
            {"OPENAI_API_KEY": "sk-x", "OPENAI_GRPC_RATE_LIMIT_REDIS_FAILURE": "open"},
            "rate_limit.redis_failure",
        ),
    ],
    ids=[
        "no-key",
        "bad-base-url",
        "unreadable-config",
        "bad-port",
        "bad-retry",
        "bad-log-level-flag",
        "bad-log-level-env",
        "port-not-a-number",
        "unknown-flag",
        "bad-trust-env",
        "address-not-here",
        "tls-not-pem",
        "tenants-file-empty",
        "bad-redis-failure",
    ],
)
def test_bad_configuration_stops_at_start(args: tuple[str, ...], env: dict[str, str], needle: str) -> None:
    proc = run_server(*args, env=clean_env(**env))
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr
    assert "sk-x" not in proc.stderr + proc.stdout


@pytest.fixture(scope="module")
def demo() -> Iterator[tuple[int, str]]:
    port = free_port()
    # `with`: the pipes are closed afterwards (else a ResourceWarning per pipe).
    with subprocess.Popen(
        [sys.executable, "-m", "openai_grpc_server", "--demo", "--port", str(port)],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
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
    proc = await spawn_gateway(env=env)
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
        health = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]  # grpcio-health-checking is untyped
        with pytest.raises(grpc.aio.AioRpcError):
            # New calls are refused while draining (or health already says NOT_SERVING).
            resp = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
            assert resp.status != health_pb2.HealthCheckResponse.SERVING
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "still serving", None
            )
        answer = await call
        assert len(answer.data) > 0
    assert await asyncio.wait_for(proc.wait(), 20) == 0
    assert proc.stderr is not None
    logs = (await proc.stderr.read()).decode()
    assert "sk-drain-test" not in logs
    for line in logs.splitlines():
        json.loads(line)  # every log line is structured JSON


def _readme_grpcurl_block() -> list[str]:
    """The README's grpcurl block: its set-up line (`export PATH=...`) and the grpcurl lines."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    block = next(b for b in blocks if "grpcurl -plaintext localhost:50051 list" in b)
    return [line.strip() for line in block.splitlines() if line.strip()]


def _shell_without_venv() -> dict[str, str]:
    """A user's shell: nothing of the project's venv on PATH until the README puts it there."""
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return clean_env(PATH=path)


def test_readme_grpcurl_examples_work_verbatim() -> None:
    """Every line of the README's grpcurl block, run as written by bash against `--demo` on :50051."""
    lines = _readme_grpcurl_block()
    setup = [line for line in lines if not line.startswith("grpcurl ")]
    commands = [line for line in lines if line.startswith("grpcurl ")]
    assert len(commands) >= 10 and setup
    shell = _shell_without_venv()
    bare = subprocess.run(["bash", "-c", "command -v grpcurl"], env=shell, capture_output=True, text=True)
    assert bare.returncode != 0, "grpcurl is on PATH without the README's set-up: the test proves nothing"
    with subprocess.Popen(
        [sys.executable, "-m", "openai_grpc_server", "--demo"],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            banner = "".join(proc.stdout.readline() for _ in range(2))
            if "grpcurl" not in banner:
                proc.kill()
                pytest.fail(f"no demo banner (is :50051 taken?): {proc.communicate(timeout=30)[1]}")
            for line in commands:
                script = "\n".join([*setup, line])
                done = subprocess.run(
                    ["bash", "-c", script], cwd=ROOT, env=shell, capture_output=True, text=True, timeout=30
                )
                if '"temperature":3' in line:
                    assert done.returncode != 0 and "InvalidArgument" in done.stderr, line
                    # The details decode (reflection serves google.rpc), as the README shows them.
                    assert '"reason":"VALIDATION_FAILED"' in done.stderr, done.stderr
                    assert '"field":"temperature"' in done.stderr, done.stderr
                    continue
                assert done.returncode == 0, f"{line}\n{done.stderr}"
                if " describe " in line:
                    # The contract's documentation, as written in the protos.
                    comments = [x for x in done.stdout.splitlines() if x.strip().startswith("// ")]
                    assert comments, f"{line}: no documentation\n{done.stdout}"
                if "/Stream" in line:
                    # Paced: the demo's stream arrives as several messages, not one.
                    assert done.stdout.count('"events"') >= 3, done.stdout
        finally:
            if proc.poll() is None:
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


def _alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for whichever process reaps orphans here."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_workers_share_the_port(fake: FakeUpstream) -> None:
    fake.reset()
    port = free_port()
    env = clean_env(OPENAI_API_KEY="sk-workers-test", OPENAI_BASE_URL=fake.base_url)
    async with gateway_process("--workers", "2", "--port", str(port), env=env) as proc:
        # One banner, from the supervisor, once both workers serve.
        assert len(_children(proc.pid)) == 2
        await asyncio.gather(*(list_models(port) for _ in range(20)))
        assert len(fake.requests) == 20


async def test_a_dead_worker_takes_the_gateway_down(fake: FakeUpstream) -> None:
    """kill -9 of one worker: the others stop serving (NOT_SERVING, in-flight calls drain) and
    the supervisor exits 128+9, so the kubelet restarts the pod whole."""
    from grpc_health.v1 import health_pb2  # noqa: PLC0415

    fake.reset()
    calls = 16  # on as many connections: SO_REUSEPORT puts some on each worker
    fake.script("GET /models", *[Step(delay_ms=3000)] * calls)
    port = free_port()
    env = clean_env(
        OPENAI_API_KEY="sk-workers-test", OPENAI_BASE_URL=fake.base_url, OPENAI_GRPC_GRACE_SECONDS="20"
    )
    proc = await spawn_gateway("--workers", "2", "--port", str(port), env=env)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert b"listening" in await asyncio.wait_for(proc.stdout.readline(), 30)
        workers = _children(proc.pid)
        assert len(workers) == 2
        assert await health_status(port) == health_pb2.HealthCheckResponse.SERVING
        in_flight = [asyncio.ensure_future(list_models(port)) for _ in range(calls)]
        for _ in range(1500):  # until every call waits on the slow upstream
            if fake.stats.requests >= calls:
                break
            await asyncio.sleep(0.02)
        os.kill(workers[0], signal.SIGKILL)
        # The survivor answers no probe with SERVING again, and soon refuses new calls.
        status: int = health_pb2.HealthCheckResponse.SERVING
        for _ in range(200):
            try:
                status = await health_status(port, wait=2)
            except grpc.aio.AioRpcError:
                status = health_pb2.HealthCheckResponse.NOT_SERVING
            if status != health_pb2.HealthCheckResponse.SERVING:
                break
            await asyncio.sleep(0.05)
        assert status != health_pb2.HealthCheckResponse.SERVING
        results = await asyncio.gather(*in_flight, return_exceptions=True)
        assert await asyncio.wait_for(proc.wait(), 40) == 128 + signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
    # Calls on the killed worker failed; those on the survivor were drained to their answer.
    assert any(r is None for r in results) and any(isinstance(r, grpc.aio.AioRpcError) for r in results)
    assert not any(_alive(pid) for pid in workers)
    with pytest.raises(grpc.aio.AioRpcError):
        await health_status(port, wait=2)
    logs = (await proc.stderr.read()).decode()
    died = [json.loads(line) for line in logs.splitlines() if '"worker exited' in line]
    assert died and died[0]["pid"] == workers[0] and died[0]["exit_code"] == 137


async def test_no_worker_says_serving_before_all_listen() -> None:
    """The supervisor is frozen (SIGSTOP) as soon as its first worker exists: that worker comes
    up and listens, but health stays NOT_SERVING until the supervisor has seen every worker."""
    from grpc_health.v1 import health_pb2  # noqa: PLC0415

    port = free_port()
    proc = await spawn_gateway(
        "--demo", "--workers", "2", "--port", str(port), env=clean_env(), stderr=asyncio.subprocess.DEVNULL
    )
    assert proc.stdout is not None
    try:
        for _ in range(3000):
            if _children(proc.pid):
                break
            await asyncio.sleep(0.002)
        # A worker needs far longer to import and listen than this takes to freeze its parent.
        proc.send_signal(signal.SIGSTOP)
        status = None
        for _ in range(600):  # until a worker answers
            try:
                status = await health_status(port, wait=2)
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.05)
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        proc.send_signal(signal.SIGCONT)
        assert b"grpcurl" in await asyncio.wait_for(proc.stdout.read(400), 30)
        for _ in range(4):  # new connections, each to either worker
            assert await health_status(port) == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            await proc.wait()


async def test_workers_stop_when_their_supervisor_is_killed() -> None:
    port = free_port()
    proc = await spawn_gateway(
        "--demo", "--workers", "2", "--port", str(port), env=clean_env(), stderr=asyncio.subprocess.DEVNULL
    )
    assert proc.stdout is not None
    assert b"grpcurl" in await asyncio.wait_for(proc.stdout.read(400), 30)
    workers = _children(proc.pid)
    assert len(workers) == 2
    proc.kill()
    await proc.wait()
    for _ in range(600):  # orphans would serve on, unwatched; they exit by themselves
        if not any(_alive(pid) for pid in workers):
            break
        await asyncio.sleep(0.05)
    assert not any(_alive(pid) for pid in workers)


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_second_gateway_on_the_port_exits_2(workers: str) -> None:
    """SO_REUSEPORT (for workers) must not let an unrelated gateway join the port."""
    port = free_port()
    async with gateway_process("--demo", "--port", str(port), "--workers", workers, env=clean_env()):
        for host in ("0.0.0.0", "127.0.0.1"):
            args = ("--demo", "--port", str(port), "--host", host, "--workers", workers)
            second = await asyncio.to_thread(run_server, *args, env=clean_env())
            assert second.returncode == 2
            assert f"port {port} on {host} is already in use" in _one_line(second)
        from grpc_health.v1 import health_pb2  # noqa: PLC0415

        assert await health_status(port) == health_pb2.HealthCheckResponse.SERVING  # the first serves on


def test_any_listener_on_the_port_is_a_conflict() -> None:
    with socket.socket() as other:  # even one that shares through SO_REUSEPORT itself
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        proc = run_server("--demo", "--host", "127.0.0.1", "--port", str(port), env=clean_env())
    assert proc.returncode == 2
    assert "already in use" in _one_line(proc)


@pytest.mark.skipif(sys.platform != "linux", reason="abstract Unix sockets are Linux's")
def test_a_gateway_starting_on_the_same_port_is_a_conflict() -> None:
    """Two gateways started at once both pass the bind probe; the claim still admits one."""
    port = free_port()
    with socket.socket(socket.AF_UNIX) as claim:
        claim.bind(f"\0openai-grpc-server/0.0.0.0:{port}")
        proc = run_server("--demo", "--port", str(port), env=clean_env())
    assert proc.returncode == 2
    assert f"port {port} on 0.0.0.0 is already claimed by another gateway" in _one_line(proc)


def test_version_comes_from_the_package_metadata() -> None:
    proc = run_server("--version", env=clean_env())
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"openai-grpc-server {importlib.metadata.version('openai-grpc')}"


def test_help_names_every_setting() -> None:
    from openai_grpc_server import config  # noqa: PLC0415

    proc = run_server("--help", env=clean_env())
    assert proc.returncode == 0
    text = proc.stdout
    for name, var, _ in config._SCALARS:
        assert re.search(rf"^\s+{name}\s+{var}$", text, re.M), name
    for section, _ in config._SECTIONS:
        assert f"{section}.<key>" in text and f"OPENAI_GRPC_{section.upper()}_<KEY>" in text
    assert "OPENAI_API_KEY" in text and "README.md" in text
    for flag in ("--config", "--port", "--log-level", "--workers", "--version", "--demo"):
        assert flag in text


def _time_wait_on(port: int) -> bool:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            if int(local.rsplit(":", 1)[1], 16) == port and state == "06":
                return True
    return False


async def test_connections_in_time_wait_on_the_port_are_no_conflict() -> None:
    """A restart (systemd, a supervisor) right after the previous gateway closed its connections:
    they linger in TIME_WAIT on its port, but they are no listener."""
    from grpc_health.v1 import health_pb2  # noqa: PLC0415

    with socket.socket() as previous:
        previous.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC's listeners do
        previous.bind(("127.0.0.1", 0))
        previous.listen()
        port = previous.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):
            accepted, _ = previous.accept()
            accepted.close()  # the server side closes first: it is the one left in TIME_WAIT
    for _ in range(200):
        if _time_wait_on(port):
            break
        await asyncio.sleep(0.01)
    assert _time_wait_on(port), "no TIME_WAIT connection: the test would prove nothing"
    async with gateway_process("--demo", "--host", "127.0.0.1", "--port", str(port), env=clean_env()):
        assert await health_status(port) == health_pb2.HealthCheckResponse.SERVING
