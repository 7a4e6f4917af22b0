"""The Kubernetes manifests agree with the gateway: its config loads, probes and drain fit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from openai_grpc_server import config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"


def _docs() -> dict[str, dict[str, Any]]:
    return {p.stem: yaml.safe_load(p.read_text()) for p in DEPLOY.glob("*.yaml")}


def test_manifests_parse_and_are_labelled() -> None:
    docs = _docs()
    assert {"deployment", "service", "pdb", "hpa", "configmap", "secret.example"} <= set(docs)
    for doc in docs.values():
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "openai-grpc"


def test_configmap_settings_load(tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(_docs()["configmap"]["data"]["gateway.yaml"])
    settings = config.load(["--config", str(cfg)], env={"OPENAI_API_KEY": "sk-example"})
    assert settings.port == 50051 and settings.metrics_port == 9464
    assert settings.rate_limit.requests_per_minute == 3000


def test_drain_fits_the_termination_grace_and_probes_use_grpc_health() -> None:
    docs = _docs()
    grace = yaml.safe_load(docs["configmap"]["data"]["gateway.yaml"])["grace_seconds"]
    pod = docs["deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["terminationGracePeriodSeconds"] > grace + 5  # preStop sleep + drain
    assert container["livenessProbe"]["grpc"]["port"] == 50051
    assert container["readinessProbe"]["grpc"]["port"] == 50051
    assert docs["service"]["spec"]["ports"][0]["port"] == 50051
