"""The manifests users apply, rendered by the pinned kustomize and helm: they validate against
the Kubernetes schemas of three releases, agree with the image and with the gateway's settings,
and keep the pod hardened. tests/integration/test_pod_env.py starts what they describe."""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import ValidationError
from openai_grpc_server import config

from tests.support.k8s import (
    CHART,
    CHART_FULL_VALUES,
    KUBE_VERSIONS,
    KUSTOMIZE_BASE,
    KUSTOMIZE_OVERLAY,
    ROOT,
    Doc,
    container_env,
    helm_lint,
    helm_template,
    injected_env,
    kustomize_build,
    one,
    secret_example,
)

RENDERINGS: dict[str, Callable[[str], list[Doc]]] = {
    "kustomize-base": lambda _v: kustomize_build(KUSTOMIZE_BASE),
    "kustomize-overlay": lambda _v: kustomize_build(KUSTOMIZE_OVERLAY),
    "helm-default": lambda v: helm_template(kube_version=v),
    "helm-full": lambda v: helm_template(CHART_FULL_VALUES, kube_version=v),
}
# The renderings whose Secret reference is the example Secret's (the full values name others).
WITH_EXAMPLE_SECRET = ("kustomize-base", "kustomize-overlay", "helm-default")


@functools.cache
def render(name: str, kube_version: str = KUBE_VERSIONS[-1]) -> list[Doc]:
    return RENDERINGS[name](kube_version)


def deployment(docs: list[Doc]) -> tuple[Doc, Doc, Doc]:
    deploy = one(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    return deploy, pod, pod["containers"][0]


def ports(container: Doc) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def flag(container: Doc, name: str) -> str:
    args: list[str] = container["args"]
    return args[args.index(name) + 1]


def configmap_env(docs: list[Doc]) -> dict[str, str]:
    data: dict[str, str] = one(docs, "ConfigMap")["data"]
    return data


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("rendering", RENDERINGS)
def test_output_validates_against_the_kubernetes_schemas(rendering: str, version: str) -> None:
    docs = render(rendering, version)
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            # A Prometheus Operator CRD, not part of Kubernetes' schemas: its wiring is checked
            # in test_service_monitor_scrapes_the_metrics_port.
            continue
        # Strict: an unknown field (a typo) fails. The answer names the schema release used.
        assert kubernetes_validate.validate(doc, version, strict=True) == version.rsplit(".", 1)[0]


@pytest.mark.parametrize(
    "mistake",
    [
        lambda c: c.update(imagePullPolice="Always"),
        lambda c: c["ports"][0].update(containerPort="grpc-port"),
        lambda c: c["readinessProbe"]["grpc"].update(port=None),
    ],
    ids=["unknown-field", "wrong-type", "null-port"],
)
def test_the_validator_rejects_mistakes(mistake: Callable[[Doc], None]) -> None:
    docs = copy.deepcopy(render("helm-default"))
    deploy, _, container = deployment(docs)
    mistake(container)
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(deploy, KUBE_VERSIONS[0], strict=True)


def _dockerfile() -> dict[str, Any]:
    text = (ROOT / "Dockerfile").read_text()
    entrypoint = re.findall(r"^ENTRYPOINT\s+(\[.*\])", text, re.M)[-1]
    user = re.findall(r"^USER\s+(\S+)", text, re.M)[-1]
    expose = {int(p) for line in re.findall(r"^EXPOSE\s+(.*)$", text, re.M) for p in line.split()}
    return {"entrypoint": json.loads(entrypoint), "user": user, "expose": expose}


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_the_pod_runs_the_image_as_built(rendering: str) -> None:
    image = _dockerfile()
    _, pod, container = deployment(render(rendering))
    assert container["command"] == image["entrypoint"]
    uid, _, gid = image["user"].partition(":")
    assert str(pod["securityContext"]["runAsUser"]) == uid
    if gid:
        assert str(pod["securityContext"]["runAsGroup"]) == gid
    if rendering != "helm-full":  # the full values move the ports on purpose
        assert set(ports(container).values()) == image["expose"]


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_ports_flags_probes_and_service_agree(rendering: str) -> None:
    docs = render(rendering)
    deploy, _, container = deployment(docs)
    named = ports(container)
    assert int(flag(container, "--port")) == named["grpc"]
    assert int(flag(container, "--metrics-port")) == named["metrics"]
    assert container["livenessProbe"]["grpc"]["port"] == named["grpc"]
    assert container["readinessProbe"]["grpc"]["port"] == named["grpc"]
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= labels.items()
    annotations = deploy["spec"]["template"]["metadata"].get("annotations", {})
    if "prometheus.io/port" in annotations:
        assert int(annotations["prometheus.io/port"]) == named["metrics"]
    for svc in (d for d in docs if d["kind"] == "Service"):
        assert svc["spec"]["selector"].items() <= labels.items()
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in named
    service = one(docs, "Service", deploy["metadata"]["name"])
    [grpc_port] = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert grpc_port["appProtocol"] == "kubernetes.io/h2c"
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for hpa in (d for d in docs if d["kind"] == "HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] == deploy["metadata"]["name"]
        assert "replicas" not in deploy["spec"] or rendering.startswith("kustomize")


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_the_pod_meets_pod_security_restricted(rendering: str) -> None:
    _, pod, container = deployment(render(rendering))
    assert pod["enableServiceLinks"] is False
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not any(v.get("hostPath") for v in pod.get("volumes", []))
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert "privileged" not in sc and "hostNetwork" not in pod


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_the_drain_fits_the_termination_grace(rendering: str) -> None:
    docs = render(rendering)
    _, pod, container = deployment(docs)
    grace = float(configmap_env(docs).get("OPENAI_GRPC_GRACE_SECONDS", config.Settings().grace_seconds))
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + grace


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_the_configmap_names_only_settings_the_gateway_reads(rendering: str) -> None:
    env = configmap_env(render(rendering))
    assert set(env) <= config.env_names()
    settings = config.load([], env={**env, "OPENAI_API_KEY": "sk-example"})
    assert settings.max_connection_age_seconds > 0


@pytest.mark.parametrize("rendering", WITH_EXAMPLE_SECRET)
def test_the_container_environment_loads_with_service_links_on(rendering: str) -> None:
    """The settings the pod would start with, even if a cluster policy turned service links on."""
    docs = render(rendering)
    _, pod, container = deployment(docs)
    services = [d for d in docs if d["kind"] == "Service"]
    env = container_env(container, [*docs, secret_example()], injected_env(pod, services, links=True))
    assert env["OPENAI_GRPC_PORT"].startswith("tcp://")  # the collision is really there
    settings = config.load(container["args"], env=env)
    assert (settings.port, settings.metrics_port) == (ports(container)["grpc"], ports(container)["metrics"])
    assert settings.api_key.reveal() == secret_example()["stringData"]["OPENAI_API_KEY"]
    assert settings.organization is None and settings.project is None  # empty optional keys
    assert "OPENAI_GRPC_PORT" in settings.ignored_env


def test_no_rendering_holds_a_secret() -> None:
    for name in RENDERINGS:
        assert not [d for d in render(name) if d["kind"] == "Secret"], name


def test_the_overlay_sets_image_replicas_config_and_the_redis_url() -> None:
    docs = render("kustomize-overlay")
    deploy, _, container = deployment(docs)
    assert container["image"] == "registry.example.com/platform/openai-grpc:0.1.0"
    assert deploy["spec"]["replicas"] == 3
    assert one(docs, "HorizontalPodAutoscaler")["spec"]["minReplicas"] == 3
    assert configmap_env(docs)["OPENAI_GRPC_LOG_LEVEL"] == "WARNING"
    redis = next(e for e in container["env"] if e["name"] == "OPENAI_GRPC_RATE_LIMIT_REDIS_URL")
    ref = {"name": "openai-grpc-redis", "key": "redis-url", "optional": True}
    assert redis["valueFrom"]["secretKeyRef"] == ref
    # The generated ConfigMap's name carries a hash of its data, so a change rolls the pods.
    base_cm = one(render("kustomize-base"), "ConfigMap")["metadata"]["name"]
    overlay_cm = one(docs, "ConfigMap")["metadata"]["name"]
    assert base_cm != overlay_cm and overlay_cm.startswith("openai-grpc-")
    assert container["envFrom"] == [{"configMapRef": {"name": overlay_cm}}]


def test_helm_defaults() -> None:
    docs = render("helm-default")
    deploy, _, container = deployment(docs)
    assert container["image"] == "openai-grpc:0.1.0"  # the chart's appVersion
    assert "replicas" not in deploy["spec"]  # the HPA owns it
    assert one(docs, "HorizontalPodAutoscaler")["spec"]["minReplicas"] == 2
    assert not [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Service"] == ["openai-grpc"]
    assert {e["name"] for e in container["env"]} == {"OPENAI_API_KEY", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"}


def test_helm_full_values() -> None:
    docs = render("helm-full")
    deploy, pod, container = deployment(docs)
    assert deploy["metadata"]["name"] == "gateway" and deploy["spec"]["replicas"] == 4
    assert container["image"] == "registry.example.com/platform/openai-grpc:0.1.0-rc1"
    assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 2
    headless = one(docs, "Service", "gateway-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert [p["port"] for p in headless["spec"]["ports"]] == [ports(container)["grpc"]]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert env == {
        "OPENAI_API_KEY": {"name": "team-openai", "key": "api-key"},
        "OPENAI_PROJECT_ID": {"name": "team-openai", "key": "project", "optional": True},
        "OPENAI_GRPC_RATE_LIMIT_REDIS_URL": {"name": "gateway-redis", "key": "url"},
    }
    cm = configmap_env(docs)
    assert cm["OPENAI_BASE_URL"] == "http://openai-proxy.egress.svc:8080/v1"
    assert cm["OPENAI_GRPC_RATE_LIMIT_TOKENS_PER_DAY"] == "50000000"  # not 5e+07
    assert pod["terminationGracePeriodSeconds"] == 10 + 45 + 5


def test_service_monitor_scrapes_the_metrics_port() -> None:
    docs = render("helm-full")
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service", "gateway")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    assert "metrics" in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


def _checksum(*set_values: str) -> str:
    docs = helm_template(set_values=set_values)
    value: str = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    return value


def test_the_config_checksum_follows_the_config_only() -> None:
    default = _checksum()
    assert _checksum("config.log_level=DEBUG") != default
    assert _checksum("replicaCount=7", "image.tag=other") == default


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("config.port=8080", r"config\.port: set ports"),
        ("config.api_key=sk-x", r"config\.api_key: set openai\.existingSecret"),
        ("replicaCounts=3", "additional properties 'replicaCounts' not allowed"),  # values.schema.json
        ("service.headless=yes", "headless"),
    ],
)
def test_helm_refuses_wrong_values(value: str, needle: str) -> None:
    with pytest.raises(RuntimeError, match=needle):
        helm_template(set_values=[value])


@pytest.mark.parametrize("values", [(), (CHART_FULL_VALUES,)], ids=["default", "full"])
def test_helm_lint(values: tuple[Path, ...]) -> None:
    proc = helm_lint(*values)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _readme_deploy_section() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("## Deploying to Kubernetes", 1)[1].split("\n## ", 1)[0]


def test_the_readme_names_what_exists() -> None:
    section = _readme_deploy_section()
    for path in set(re.findall(r"(?:deploy|tests|scripts)/[\w./-]*\w", section)):
        assert (ROOT / path).exists(), path
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    named = [k for k in re.findall(r"\b[a-zA-Z]+(?:\.[a-zA-Z_]+)+", section) if k.split(".")[0] in values]
    assert "service.headless" in named and "rateLimit.redis.existingSecret" in named
    for key in named:
        node = values
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"README names {key}, values.yaml lacks it"
            node = node[part]
