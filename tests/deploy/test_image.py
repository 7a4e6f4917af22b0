"""The container image: the Dockerfile's promises, then scripts/image.sh for real with podman.

The real build uses the local Debian base by default (Docker Hub is out of reach here);
OPENAI_GRPC_TEST_BASE_IMAGE=python:3.11-slim (or any base) overrides it. Under CI=true a
missing podman fails the run instead of skipping.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
TAG = "localhost/openai-grpc:pytest"


def instructions() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per Dockerfile instruction, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    return out


def final_stage() -> list[tuple[str, str]]:
    ins = instructions()
    last_from = max(i for i, (k, _) in enumerate(ins) if k == "FROM")
    return ins[last_from:]


def test_both_stages_build_on_the_base_image_argument() -> None:
    ins = instructions()
    assert ins[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")
    froms = [args for k, args in ins if k == "FROM"]
    assert len(froms) == 2
    assert all(f.split()[0] == "${BASE_IMAGE}" for f in froms)


def test_runs_as_a_numeric_non_root_user_that_the_manifests_expect() -> None:
    users = [args for k, args in final_stage() if k == "USER"]
    assert len(users) == 1
    match = re.fullmatch(r"(\d+):(\d+)", users[0])
    assert match, f"USER {users[0]} is not numeric uid:gid (runAsNonRoot needs a number)"
    uid = int(match[1])
    assert uid != 0 and int(match[2]) != 0
    # Whatever shape deploy/ has (kustomize, Helm), every runAsUser it sets is this user.
    manifests = "\n".join(p.read_text() for p in (ROOT / "deploy").rglob("*.yaml"))
    assert {int(u) for u in re.findall(r"runAsUser:\s*(\d+)", manifests)} <= {uid}


def test_exposes_the_ports_the_manifests_use() -> None:
    exposed = {int(p) for k, args in final_stage() if k == "EXPOSE" for p in args.split()}
    assert {50051, 9464} <= exposed  # gRPC, Prometheus /metrics
    manifests = "\n".join(p.read_text() for p in (ROOT / "deploy").rglob("*.yaml"))
    assert {int(p) for p in re.findall(r"containerPort:\s*(\d+)", manifests)} <= exposed


def test_no_healthcheck_and_oci_labels() -> None:
    ins = instructions()
    assert not [k for k, _ in ins if k == "HEALTHCHECK"], "Kubernetes probes use grpc.health.v1"
    labels = dict(
        token.split("=", 1) for k, args in final_stage() if k == "LABEL" for token in shlex.split(args)
    )
    for key in ("title", "description", "licenses", "version", "revision", "created", "base.name"):
        assert f"org.opencontainers.image.{key}" in labels
    assert labels["org.opencontainers.image.licenses"] == PROJECT["license"]


def test_server_install_only_and_nothing_written_at_start() -> None:
    runs = " ".join(args for k, args in instructions() if k == "RUN")
    assert "./client_stubs/python ." in runs and "[dev" not in runs and "dev]" not in runs
    env = " ".join(args for k, args in final_stage() if k == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env


def test_build_context_is_only_what_the_dockerfile_copies() -> None:
    patterns = [
        p.strip()
        for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    # Everything is excluded (.git, .venv, node_modules, bench results...), then re-included.
    assert patterns[0] == "*"
    included = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    sources = [
        src
        for k, args in instructions()
        if k == "COPY" and "--from=" not in args
        for src in args.split()[:-1]
    ]
    assert sources
    for src in sources:
        path = src.rstrip("/")
        assert any(path == inc or path.startswith(inc + "/") for inc in included), src
        assert (ROOT / path).exists(), src


@pytest.mark.slow
def test_image_builds_and_passes_its_smoke_test() -> None:
    if shutil.which("podman") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("podman is missing: scripts/bootstrap.sh installs it")
        pytest.skip("podman is not installed")
    env = {
        **os.environ,
        "CONTAINER_ENGINE": "podman",
        "BASE_IMAGE": os.environ.get("OPENAI_GRPC_TEST_BASE_IMAGE", "debian"),
        "IMAGE": TAG,
        "GRPCURL": str(Path(sys.executable).parent / "grpcurl"),
    }
    proc = subprocess.run(
        ["scripts/image.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    oks = [line.removeprefix("image: ok: ") for line in proc.stderr.splitlines() if "image: ok: " in line]
    for check in (
        "health SERVING",
        "unary ChatService/CreateChatCompletion",
        "stream ChatService/StreamChatCompletion",
        "runs as uid",
        "read-only root filesystem",
        "server install only",
        "SIGTERM drained and exited 0",
    ):
        assert any(ok.startswith(check) for ok in oks), (check, oks)

    inspect = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{json .Labels}}", TAG],
        capture_output=True,
        text=True,
        check=True,
    )
    labels = json.loads(inspect.stdout)
    assert labels["org.opencontainers.image.version"] == PROJECT["version"]
    assert labels["org.opencontainers.image.licenses"] == "MIT"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode == 0:
        assert labels["org.opencontainers.image.revision"] == head.stdout.strip()
