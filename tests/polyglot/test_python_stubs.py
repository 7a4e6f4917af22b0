"""The Python stubs as their own distribution, installed alone into fresh venvs at the lowest, a
6.x and the highest supported protobuf, running the README's Python snippet against a real gateway
with warnings as errors."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from openai_grpc_server.fake_upstream import FakeUpstream

from tests.support.gateway import Gateway
from tests.support.protomodel import ROOT

STUBS = ROOT / "client_stubs" / "python"
LEVELS = {
    "lowest": (ROOT / "requirements/stubs-lowest.txt", "5.29.0"),
    "protobuf6": (ROOT / "requirements/stubs-protobuf6.txt", "6.33.6"),
    "highest": (ROOT / "requirements/constraints.txt", "7.36.2"),
}
# What a caller gets: the stubs and the four packages they need (typing-extensions comes with grpcio).
ALLOWED = {
    "openai-grpc-stubs",
    "grpcio",
    "grpcio-status",
    "protobuf",
    "googleapis-common-protos",
    "typing-extensions",
    "pip",
    "setuptools",
}


def readme_python_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    blocks: list[str] = re.findall(r"```python\n(.*?)```", text, re.S)
    return next(b for b in blocks if "rpc_status.from_call" in b)


def _pinned(constraints: Path, name: str) -> str:
    match = re.search(rf"^{re.escape(name)}==(\S+)$", constraints.read_text(), re.M)
    assert match is not None, name
    return match.group(1)


@pytest.fixture(scope="module", params=sorted(LEVELS))
def venv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    constraints, protobuf = LEVELS[request.param]
    assert _pinned(constraints, "protobuf") == protobuf
    path = tmp_path_factory.mktemp(f"stubs-{request.param}") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    pip = subprocess.run(
        [
            str(path / "bin/pip"),
            "install",
            "-q",
            "--disable-pip-version-check",
            "-c",
            str(constraints),
            str(STUBS),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert pip.returncode == 0, pip.stderr
    listed = subprocess.run(
        [str(path / "bin/pip"), "list", "--format=freeze"], capture_output=True, text=True
    )
    versions = dict(line.split("==") for line in listed.stdout.split())
    names = {n.lower().replace("_", "-") for n in versions}
    assert names <= ALLOWED, names - ALLOWED
    assert versions["protobuf"] == protobuf
    return path


async def test_readme_snippet_runs_on_the_stubs_alone(
    venv: Path, gateway: Gateway, clean_fake: FakeUpstream, tmp_path: Path
) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(readme_python_snippet())
    env = {**os.environ, "OPENAI_GRPC_TARGET": gateway.address, "PYTHONWARNINGS": "error"}
    env.pop("PYTHONPATH", None)
    # -I: nothing from this checkout or the test venv, only what the stubs' install brought.
    proc = await asyncio.create_subprocess_exec(
        str(venv / "bin/python"),
        "-I",
        str(script),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert len(lines) == 4, lines
    assert lines[0]  # the unary reply
    assert len(lines[1]) > 10  # the streamed text
    assert lines[2] == "INVALID_ARGUMENT VALIDATION_FAILED"
    assert lines[3] == "['temperature']"
    chat_calls = [r for r in clean_fake.requests if r.path == "/v1/chat/completions"]
    assert len(chat_calls) == 2 and chat_calls[1].json["stream"] is True
