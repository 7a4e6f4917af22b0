"""The Go stubs as a Go module: a real Go client, built from go.mod and go.sum, against a real gateway."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
from pathlib import Path

from openai_grpc_server.fake_upstream import FakeUpstream

from tests.support.gateway import Gateway
from tests.support.protomodel import ROOT

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


async def _go(*args: str, cwd: Path, env: dict[str, str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        "go", *args, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode == 0, f"go {' '.join(args)}\n{err.decode()}"
    return out.decode()


def _readme_go_setup() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```sh\n(.*?)```", text, re.S) if "go mod edit" in b)
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


async def test_go_quickstart_in_the_module(gateway: Gateway, clean_fake: FakeUpstream) -> None:
    # -mod=readonly: go.mod and go.sum must already say everything the build needs.
    env = {**os.environ, "GOFLAGS": "-mod=readonly"}
    out = await _go("run", "./examples/quickstart", gateway.address, cwd=GO, env=env)
    _check(out, clean_fake)


async def test_go_caller_module_uses_the_stubs_as_the_readme_says(
    gateway: Gateway, clean_fake: FakeUpstream, tmp_path: Path
) -> None:
    """A caller's own module, set up with the README's commands against a checkout."""
    checkout = tmp_path / "openai-grpc"
    checkout.mkdir()
    (checkout / "client_stubs").mkdir()
    (checkout / "client_stubs/go").symlink_to(GO)
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(GO / "examples/quickstart/main.go", app / "main.go")
    env = {**os.environ, "GOFLAGS": "-mod=mod"}
    await _go("mod", "init", "example.com/app", cwd=app, env=env)
    for argv in _readme_go_setup():
        assert argv[0] == "go"
        await _go(*argv[1:], cwd=app, env=env)
    out = await _go("run", ".", gateway.address, cwd=app, env=env)
    _check(out, clean_fake)


def _check(out: str, fake: FakeUpstream) -> None:
    result = json.loads(out.strip().splitlines()[-1])
    assert result["id"].startswith("chatcmpl")
    assert result["content"]
    assert result["frames"] >= 1 and len(result["streamed"]) > 10
    assert result["code"] == "InvalidArgument"
    assert result["reason"] == "VALIDATION_FAILED"
    assert result["badFields"] == ["temperature"]
    chat_calls = [r for r in fake.requests if r.path == "/v1/chat/completions"]
    # The invalid request never left the gateway.
    assert len(chat_calls) == 2 and chat_calls[1].json["stream"] is True
