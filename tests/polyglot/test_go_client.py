"""The Go stubs as a Go module: a real Go client, built from go.mod and go.sum, against a real gateway."""

from __future__ import annotations

import asyncio
import json
import os
import re

from openai_grpc_server.fake_upstream import FakeUpstream

from tests.contract.protomodel import ROOT
from tests.integration.conftest import Gateway

GO = ROOT / "client_stubs" / "go"


def test_module_path_matches_go_package() -> None:
    module = re.search(r"^module (\S+)$", (GO / "go.mod").read_text(), re.M)
    assert module is not None
    packages = {
        m.group(1)
        for proto in (ROOT / "protos/openai_grpc/v1").glob("*.proto")
        for m in re.finditer(r'option go_package = "([^";]+)', proto.read_text())
    }
    assert packages == {f"{module.group(1)}/openai_grpc/v1"}


async def test_go_quickstart_calls_unary_stream_and_reads_error_details(
    gateway: Gateway, clean_fake: FakeUpstream
) -> None:
    # -mod=readonly: go.mod and go.sum must already say everything the build needs.
    env = {**os.environ, "GOFLAGS": "-mod=readonly"}
    proc = await asyncio.create_subprocess_exec(
        "go",
        "run",
        "./examples/quickstart",
        gateway.address,
        cwd=GO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode == 0, err.decode()
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["id"].startswith("chatcmpl")
    assert result["content"]
    assert result["frames"] >= 1 and len(result["streamed"]) > 10
    assert result["code"] == "InvalidArgument"
    assert result["reason"] == "VALIDATION_FAILED"
    assert result["badFields"] == ["temperature"]
    chat_calls = [r for r in clean_fake.requests if r.path == "/v1/chat/completions"]
    # The invalid request never left the gateway.
    assert len(chat_calls) == 2 and chat_calls[1].json["stream"] is True
