"""The server-only install started as the rendered Deployment starts it: its command and args,
its ConfigMap and the example Secret's variables, and what Kubernetes injects into the pod
(service links of the Service `openai-grpc`, KUBERNETES_*), with service links as the manifest
sets them (off) and forced on; then called like a client in the cluster would call it."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from openai_grpc.v1 import models_pb2, models_pb2_grpc
from openai_grpc_server.fake_upstream import FakeUpstream

from tests.support.k8s import (
    KUSTOMIZE_BASE,
    KUSTOMIZE_OVERLAY,
    ROOT,
    Doc,
    container_env,
    helm_template,
    injected_env,
    kustomize_build,
    one,
    secret_example,
)
from tests.support.process import free_port

pytestmark = pytest.mark.slow

RENDERINGS: dict[str, Callable[[], list[Doc]]] = {
    "kustomize-base": lambda: kustomize_build(KUSTOMIZE_BASE),
    "kustomize-overlay": lambda: kustomize_build(KUSTOMIZE_OVERLAY),
    "helm-default": helm_template,
}
IGNORED_LINKS = "ignored Kubernetes service-link variables that share a setting's name"


def install_server_only(venv: Path) -> None:
    """`pip install ./client_stubs/python .` (the stubs, then the server) into a fresh venv,
    from the files the image build copies: the
    one place that says how the server is installed without the dev tools."""
    src = venv.parent / "src"
    for item in ("pyproject.toml", "README.md", "requirements", "client_stubs/python", "server"):
        target = src / item
        if (ROOT / item).is_dir():
            shutil.copytree(ROOT / item, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / item, target)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "-c", str(src / "requirements/constraints.txt"), str(src / "client_stubs/python"), str(src)],
        check=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def server_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    venv = tmp_path_factory.mktemp("server-only") / "venv"
    install_server_only(venv)
    # Really the server-only install: none of the dev tools came along.
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import pytest"], capture_output=True, timeout=60
    )
    assert probe.returncode != 0
    yield venv


def _with_free_ports(container: Doc) -> tuple[list[str], int, int]:
    """The Deployment's args with its two ports swapped for free loopback ports: the one change
    the test makes (the pod has its own network; this machine is shared)."""
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    args: list[str] = list(container["args"])
    grpc_port, metrics_port = free_port(), free_port()
    for flag, name, new in (("--port", "grpc", grpc_port), ("--metrics-port", "metrics", metrics_port)):
        i = args.index(flag) + 1
        assert int(args[i]) == ports[name]
        args[i] = str(new)
    return args, grpc_port, metrics_port


async def _wait_serving(channel: grpc.aio.Channel, proc: asyncio.subprocess.Process) -> None:
    stub = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]  # grpcio-health-checking is untyped
    for _ in range(300):
        if proc.returncode is not None:
            assert proc.stderr is not None
            stderr = (await proc.stderr.read()).decode()
            raise AssertionError(f"the gateway exited {proc.returncode} at start:\n{stderr}")
        try:
            answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.2)
            continue
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        return
    raise AssertionError("the gateway never answered its health check")


@pytest.mark.parametrize("links", ["as-in-manifest", "forced-on"])
@pytest.mark.parametrize("rendering", RENDERINGS)
async def test_the_deployment_starts_and_answers_in_a_pod_environment(
    server_venv: Path, clean_fake: FakeUpstream, tmp_path: Path, rendering: str, links: str
) -> None:
    docs = RENDERINGS[rendering]()
    deploy = one(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    container = pod["containers"][0]
    # Point the gateway at the fake upstream the way a user would: a ConfigMap variable.
    one(docs, "ConfigMap")["data"]["OPENAI_BASE_URL"] = clean_fake.base_url
    # The namespace's Services: the rendered ones and a Redis for the shared rate limiter whose
    # name lands its link variables under the rate_limit section's prefix.
    redis = {
        "metadata": {"name": "openai-grpc-rate-limit-redis"},
        "spec": {"ports": [{"name": "redis", "port": 6379, "protocol": "TCP"}]},
    }
    services = [*(d for d in docs if d["kind"] == "Service"), redis]
    injected = injected_env(pod, services, links=True if links == "forced-on" else None)
    env = container_env(container, [*docs, secret_example()], injected)
    assert env["KUBERNETES_PORT"] == "tcp://10.96.0.1:443"
    assert ("OPENAI_GRPC_PORT" in env) == (links == "forced-on")
    args, grpc_port, metrics_port = _with_free_ports(container)
    path = f"{server_venv / 'bin'}:/usr/local/bin:/usr/bin:/bin"
    command = shutil.which(container["command"][0], path=path)
    assert command == str(server_venv / "bin" / container["command"][0])

    proc = await asyncio.create_subprocess_exec(
        command,
        *container["command"][1:],
        *args,
        env={"PATH": path, **env},
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            await _wait_serving(channel, proc)
            models = await models_pb2_grpc.ModelsServiceStub(channel).ListModels(
                models_pb2.ListModelsRequest(), timeout=10
            )
            assert len(models.data) > 0
        seen = clean_fake.last_request("GET /models")
        assert seen is not None
        assert seen.headers["authorization"] == f"Bearer {secret_example()['stringData']['OPENAI_API_KEY']}"
        assert "openai-organization" not in seen.headers  # the example's empty optional keys
        scrape = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read()
        )
        assert b"openai_requests_total" in scrape
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 60)
        assert proc.stderr is not None
        logs = (await proc.stderr.read()).decode()
    assert code == 0, logs
    records = [json.loads(line) for line in logs.splitlines() if line.strip()]
    ignored = [r for r in records if r.get("msg") == IGNORED_LINKS]
    # The line is INFO: the overlay's log level (WARNING) hides it.
    if links == "forced-on" and env["OPENAI_GRPC_LOG_LEVEL"] == "INFO":
        assert len(ignored) == 1, logs
        assert {"OPENAI_GRPC_PORT", "OPENAI_GRPC_RATE_LIMIT_REDIS_PORT"} <= set(ignored[0]["variables"])
    else:
        assert ignored == [], logs
    assert "sk-replace-me" not in logs
