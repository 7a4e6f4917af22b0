"""What users apply and what the kubelet does with it: render the kustomize and Helm manifests
with the pinned tools (scripts/k8s_tools.sh), build a container's environment the way the
kubelet does (service links, envFrom, env, secretKeyRef), for tests of the deployment."""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE_BASE = ROOT / "deploy" / "kubernetes" / "base"
KUSTOMIZE_OVERLAY = ROOT / "deploy" / "kubernetes" / "overlays" / "example"
SECRET_EXAMPLE = ROOT / "deploy" / "kubernetes" / "examples" / "secret.example.yaml"
CHART = ROOT / "deploy" / "helm" / "openai-grpc"
# Non-default values that switch on every optional part of the chart.
CHART_FULL_VALUES = CHART / "ci" / "full-values.yaml"

Doc = dict[str, Any]

# The Service every pod sees (KUBERNETES_*), even with `enableServiceLinks: false`.
KUBERNETES_SERVICE: Doc = {
    "metadata": {"name": "kubernetes"},
    "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]},
}


def tool(name: str) -> str:
    """kustomize or helm as scripts/k8s_tools.sh installs them (.venv/bin), else from PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed: run scripts/k8s_tools.sh (scripts/bootstrap.sh does)")
    return found


def _run(argv: list[str]) -> list[Doc]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stderr}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def kustomize_build(path: Path) -> list[Doc]:
    return _run([tool("kustomize"), "build", str(path)])


# The Kubernetes releases the output is validated against (kubernetes-validate ships their schemas).
KUBE_VERSIONS = ("1.35.0", "1.36.0", "1.37.0")


def helm_template(
    *values_files: Path,
    release: str = "openai-grpc",
    set_values: Iterable[str] = (),
    kube_version: str = KUBE_VERSIONS[-1],
) -> list[Doc]:
    # Capabilities.KubeVersion: helm built with `go install` would otherwise assume 1.20.
    argv = [tool("helm"), "template", release, str(CHART), "--kube-version", kube_version]
    for f in values_files:
        argv += ["--values", str(f)]
    for s in set_values:
        argv += ["--set", s]
    return _run(argv)


def helm_lint(*values_files: Path) -> subprocess.CompletedProcess[str]:
    argv = [tool("helm"), "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSIONS[-1]]
    for f in values_files:
        argv += ["--values", str(f)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def secret_example() -> Doc:
    doc: Doc = yaml.safe_load(SECRET_EXAMPLE.read_text())
    return doc


def _env_name(service_name: str) -> str:
    return service_name.upper().replace("-", "_")


def service_link_env(service: Doc, cluster_ip: str) -> dict[str, str]:
    """The variables the kubelet injects for `service` (pkg/kubelet/envvars: FromServices)."""
    prefix = _env_name(service["metadata"]["name"])
    ports = service["spec"]["ports"]
    host = f"[{cluster_ip}]" if ":" in cluster_ip else cluster_ip
    env = {f"{prefix}_SERVICE_HOST": cluster_ip, f"{prefix}_SERVICE_PORT": str(ports[0]["port"])}
    for i, p in enumerate(ports):
        port, proto = str(p["port"]), p.get("protocol", "TCP")
        if p.get("name"):
            env[f"{prefix}_SERVICE_PORT_{_env_name(p['name'])}"] = port
        url = f"{proto.lower()}://{host}:{port}"
        if i == 0:
            env[f"{prefix}_PORT"] = url
        link = f"{prefix}_PORT_{port}_{proto.upper()}"
        env.update(
            {link: url, f"{link}_PROTO": proto.lower(), f"{link}_PORT": port, f"{link}_ADDR": cluster_ip}
        )
    return env


def injected_env(pod_spec: Doc, services: Iterable[Doc], *, links: bool | None = None) -> dict[str, str]:
    """What the kubelet adds for the pod: the `kubernetes` Service always, the namespace's other
    Services (with a cluster IP) only when service links are on. `links=None` follows the pod's
    own `enableServiceLinks` (default true); True or False overrides it."""
    enabled = pod_spec.get("enableServiceLinks", True) if links is None else links
    env = {"HOSTNAME": "openai-grpc-6c9f7d8b5-x2x7q", **service_link_env(KUBERNETES_SERVICE, "10.96.0.1")}
    if enabled:
        for i, svc in enumerate(services):
            if svc["spec"].get("clusterIP") != "None":
                env.update(service_link_env(svc, f"10.96.0.{12 + i}"))
    return env


def container_env(container: Doc, objects: list[Doc], injected: Mapping[str, str]) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom, then env (later wins), then
    the injected service variables where no explicit variable has that name."""
    by_ref = {(d["kind"], d["metadata"]["name"]): d for d in objects}

    def source(kind: str, name: str) -> Mapping[str, str] | None:
        doc = by_ref.get((kind, name))
        if doc is None:
            return None
        data: dict[str, str] = dict(doc.get("data") or {})
        if kind == "Secret":  # data is base64; stringData is plain and wins
            data = {k: base64.b64decode(v).decode() for k, v in data.items()}
            data.update(doc.get("stringData") or {})
        return data

    env: dict[str, str] = {}
    for ref in container.get("envFrom", []):
        kind = "ConfigMap" if "configMapRef" in ref else "Secret"
        body = ref["configMapRef" if kind == "ConfigMap" else "secretRef"]
        data = source(kind, body["name"])
        if data is None:
            assert body.get("optional"), f"{kind} {body['name']} is missing"
            continue
        env.update({ref.get("prefix", "") + k: v for k, v in data.items()})
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        frm = var["valueFrom"]
        kind = "ConfigMap" if "configMapKeyRef" in frm else "Secret"
        body = frm["configMapKeyRef" if kind == "ConfigMap" else "secretKeyRef"]
        data = source(kind, body["name"])
        if data is None or body["key"] not in data:
            assert body.get("optional"), f"{kind} {body['name']} key {body['key']} is missing"
            continue
        env[var["name"]] = data[body["key"]]
    for name, value in injected.items():
        env.setdefault(name, value)
    return env
