"""The gateway as a process (`python -m openai_grpc_server`), for tests that run it as operators do."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator

import grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# Variables the gateway reads besides its own: the runner's proxies or CAs must not reach it.
_AMBIENT = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR")


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "GRPC_")) and k.upper() not in _AMBIENT
    }
    env.update(extra)
    return env


def read_in_background(stream: asyncio.StreamReader | None) -> asyncio.Task[bytes]:
    """Read a child's pipe to its end in the background. A gateway logs a line per call: an unread
    stderr pipe fills up (64 KiB) and its next log write blocks the gateway's event loop."""
    assert stream is not None

    async def read_all() -> bytes:
        return await stream.read()

    return asyncio.ensure_future(read_all())


async def spawn_gateway(
    *args: str, env: dict[str, str], stderr: int = asyncio.subprocess.PIPE
) -> asyncio.subprocess.Process:
    """`python -m openai_grpc_server ARGS` with its stdout piped, and its stderr too unless the
    caller discards it (`asyncio.subprocess.DEVNULL`: nobody reads the access log then)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "openai_grpc_server",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
    )


@contextlib.asynccontextmanager
async def gateway_process(*args: str, env: dict[str, str]) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python -m openai_grpc_server ARGS` until its banner; SIGTERM and exit 0 afterwards."""
    proc = await spawn_gateway(*args, env=env)
    assert proc.stdout is not None
    stderr = read_in_background(proc.stderr)
    try:
        banner = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert banner, (await stderr).decode()
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(asyncio.gather(proc.wait(), stderr), 30)
    assert proc.returncode == 0, err.decode()


def run_server(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "openai_grpc_server", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def new_connection(port: int) -> grpc.aio.Channel:
    # Channels share one connection by default; a probe (like the kubelet's) opens its own.
    return grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])


async def health_status(port: int, wait: float = 5) -> int:
    """The overall health status one new connection reports (UNAVAILABLE raises)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

    async with new_connection(port) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[no-untyped-call]  # grpcio-health-checking is untyped
            health_pb2.HealthCheckRequest(), timeout=wait
        )
        return int(answer.status)


async def list_models(port: int) -> None:
    from openai_grpc.v1 import models_pb2, models_pb2_grpc  # noqa: PLC0415

    async with new_connection(port) as channel:
        stub = models_pb2_grpc.ModelsServiceStub(channel)
        await stub.ListModels(models_pb2.ListModelsRequest(), timeout=20)
