"""A real Node.js client, compiled from the generated TypeScript stubs, against a real gateway."""

from __future__ import annotations

import asyncio
import json

from openai_grpc_server.fake_upstream import FakeUpstream

from tests.contract.protomodel import ROOT
from tests.integration.conftest import Gateway

TS = ROOT / "client_stubs" / "typescript"


async def _run(*cmd: str, cwd: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_node_client_calls_unary_and_stream(gateway: Gateway, clean_fake: FakeUpstream) -> None:
    rc, out, err = await _run(str(TS / "node_modules/.bin/tsc"), "-p", "tsconfig.json", cwd=str(TS))
    assert rc == 0, out + err
    rc, out, err = await _run("node", "dist/test/client.js", gateway.address, cwd=str(TS))
    assert rc == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["id"].startswith("chatcmpl")
    assert result["content"]
    # Events one upstream read delivered share a message: at least one frame, all the text.
    assert result["frames"] >= 1 and len(result["streamed"]) > 10
    assert result["models"] > 0
    assert result["errorCode"] == "3"  # INVALID_ARGUMENT from local validation
    chat_calls = [r for r in clean_fake.requests if r.path == "/v1/chat/completions"]
    assert len(chat_calls) == 2 and chat_calls[1].json["stream"] is True
