"""Issue 9 cases that need the gateway as an operator runs it (a separate process): secrets in
configuration errors, and SIGHUP reloading the tenants file and the key file while calls are
in flight."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from openai_grpc_server import routes

from tests.support import faulty_upstream as F
from tests.support.process import clean_env, free_port, run_server
from tests.support.rich_status import error_info

SECRET = "sk-proj-Zr8Vq2LmN4xT7wY1cB5dF9gH3jK6pQ0s"
PLAIN_SECRET = "plainsecret-5b7d9f1a3c5e7a9b"


# --- configuration errors never print a secret ------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (("--api-key", SECRET), {"OPENAI_API_KEY": PLAIN_SECRET}),
        ((f"--api-key={SECRET}",), {}),
        (("--api-k", SECRET), {}),
        (("--api-key-file", SECRET), {}),
        (("--port", SECRET), {}),
        ((), {"OPENAI_API_KEY": PLAIN_SECRET, "OPENAI_GRPC_PORT": SECRET}),
        ((), {"OPENAI_API_KEY": PLAIN_SECRET, "OPENAI_GRPC_MAX_EVENT_BYTES": PLAIN_SECRET}),
    ],
    ids=[
        "api-key-flag",
        "api-key-equals",
        "abbreviation",
        "key-as-key-file",
        "flag-value",
        "env-value",
        "env-int",
    ],
)
def test_configuration_errors_never_print_a_secret(args: tuple[str, ...], env: dict[str, str]) -> None:
    proc = run_server(*args, env=clean_env(**env))
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for secret in (SECRET, PLAIN_SECRET, SECRET[:20]):
        assert secret not in proc.stderr + proc.stdout


def test_a_broken_config_file_holding_the_key_is_not_quoted(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(f"api_key: {PLAIN_SECRET}\nport: [8080\n")
    proc = run_server("--config", str(config), env=clean_env())
    assert proc.returncode == 2
    assert "is not valid YAML" in proc.stderr
    assert PLAIN_SECRET not in proc.stderr + proc.stdout


# --- SIGHUP -----------------------------------------------------------------------------------

ROUTES = {r.name: r for r in routes.load_routes()}
TOKEN_A, KEY_A = "token-alpha-0123456789", "upkey-alpha-0123456789"
TOKEN_B, KEY_B = "token-bravo-0123456789", "upkey-bravo-0123456789"


def _tenants(*tenants: tuple[str, str, str]) -> str:
    return json.dumps({"tenants": [{"name": n, "token": t, "api_key": k} for n, t, k in tenants]})


@pytest.fixture
async def upstream() -> AsyncIterator[F.FaultyUpstream]:
    up = F.FaultyUpstream()
    await up.start()
    yield up
    await up.stop()


class Process:
    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.port = free_port()
        env = {**env, "OPENAI_GRPC_HOST": "127.0.0.1", "OPENAI_GRPC_PORT": str(self.port)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "openai_grpc_server", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the banner, once the port is open
        assert "listening" in line, line + self._finish()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")

    def _finish(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=30)
        return err

    async def close(self) -> str:
        await self.channel.close(None)
        return await asyncio.to_thread(self._finish)

    def stub(self, name: str) -> Any:
        r = ROUTES[name]
        make = self.channel.unary_stream if r.kind is routes.Kind.EVENTS else self.channel.unary_unary
        return make(r.full_method, r.input_cls.SerializeToString, r.output_cls.FromString)


def _chat(name: str) -> Any:
    req = ROUTES[name].input_cls(model="gpt-4o-mini")
    m = req.messages.add()  # type: ignore[attr-defined]
    m.role, m.content_text = "user", "hi"
    return req


def _reason(err: grpc.aio.AioRpcError) -> str:
    return error_info(err).reason


async def _models(p: Process, token: str | None = None) -> grpc.StatusCode | str:
    metadata = [("authorization", f"Bearer {token}")] if token else None
    try:
        await p.stub("ListModels")(ROUTES["ListModels"].input_cls(), timeout=10, metadata=metadata)
    except grpc.aio.AioRpcError as err:
        return _reason(err)
    return grpc.StatusCode.OK


async def _until(check: Any, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "the reload never took effect"
        await asyncio.sleep(0.05)


def _slow_then_list(upstream: F.FaultyUpstream) -> F.Behaviour:
    """Streams trickle (a call in flight across the reload); everything else answers a list."""
    trickle = F.stream(
        [F.sse_events(F.chat_chunk(str(i)), done=False) for i in range(20)] + [b"data: [DONE]\n\n"],
        delay=0.05,
    )
    listing = F.reply(200, {"object": "list", "data": []})

    async def behave(req: F.Received, w: F.Writer) -> None:
        await (trickle if b'"stream":true' in req.body.replace(b" ", b"") else listing)(req, w)

    return behave


async def test_sighup_reloads_tenants_without_dropping_calls(
    upstream: F.FaultyUpstream, tmp_path: Path
) -> None:
    tenants = tmp_path / "tenants.json"
    tenants.write_text(_tenants(("a", TOKEN_A, KEY_A)))
    upstream.reset(_slow_then_list(upstream))
    env = clean_env(
        OPENAI_BASE_URL=upstream.base_url,
        OPENAI_GRPC_AUTH_MODE="tokens",
        OPENAI_GRPC_TENANTS_FILE=str(tenants),
        OPENAI_GRPC_RETRY_MAX_RETRIES="0",
    )
    p = Process([], env)
    stderr = ""
    try:
        assert await _models(p, TOKEN_A) == grpc.StatusCode.OK
        stream = p.stub("StreamChatCompletion")(
            _chat("StreamChatCompletion"), timeout=20, metadata=[("authorization", f"Bearer {TOKEN_A}")]
        )
        first = await stream.read()
        assert first.events

        tenants.write_text(_tenants(("b", TOKEN_B, KEY_B)))
        p.proc.send_signal(signal.SIGHUP)

        async def b_works() -> bool:
            return await _models(p, TOKEN_B) == grpc.StatusCode.OK

        await _until(b_works)
        assert await _models(p, TOKEN_A) == "CALLER_FORBIDDEN"
        assert upstream.received[-1].headers["authorization"] == f"Bearer {KEY_B}"

        # The stream that started before the reload finishes normally, with its own key.
        rest = []
        while (message := await stream.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]  # missing from grpc-stubs
            rest.append(message)
        text = "".join(c.delta.content for m in [first, *rest] for e in m.events for c in e.choices)
        assert text == "".join(str(i) for i in range(20))
        assert await stream.code() == grpc.StatusCode.OK
        streamed = [r for r in upstream.received if b"stream" in r.body]
        assert streamed[0].headers["authorization"] == f"Bearer {KEY_A}"

        # A broken file: the previous tenants stay, one line says why.
        tenants.write_text('{"tenants": [{"name": "c", "token": ')
        p.proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        assert await _models(p, TOKEN_B) == grpc.StatusCode.OK
        assert p.proc.poll() is None, "SIGHUP stopped the gateway"
    finally:
        stderr = await p.close()
    failures = [line for line in stderr.splitlines() if "reload failed" in line]
    assert len(failures) == 1, stderr
    assert str(tenants) in failures[0]
    for secret in (TOKEN_A, TOKEN_B, KEY_A, KEY_B):
        assert secret not in stderr


async def test_sighup_rereads_the_key_file(upstream: F.FaultyUpstream, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY_A + "\n")
    upstream.reset(F.reply(200, {"object": "list", "data": []}))
    p = Process(["--api-key-file", str(key_file)], clean_env(OPENAI_BASE_URL=upstream.base_url))
    try:
        assert await _models(p) == grpc.StatusCode.OK
        assert upstream.received[-1].headers["authorization"] == f"Bearer {KEY_A}"
        key_file.write_text(KEY_B)
        os.kill(p.proc.pid, signal.SIGHUP)

        async def b_used() -> bool:
            await _models(p)
            return upstream.received[-1].headers["authorization"] == f"Bearer {KEY_B}"

        await _until(b_used)
        key_file.unlink()  # unreadable now: the key in use stays
        p.proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.3)
        assert await _models(p) == grpc.StatusCode.OK
        assert upstream.received[-1].headers["authorization"] == f"Bearer {KEY_B}"
    finally:
        stderr = await p.close()
    assert sum("reload failed" in line for line in stderr.splitlines()) == 1, stderr
    assert KEY_A not in stderr and KEY_B not in stderr
