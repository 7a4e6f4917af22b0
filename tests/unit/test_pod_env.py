"""Settings in the environment Kubernetes gives a pod: service links never become settings."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai_grpc_server import app, config

from tests.support.k8s import KUBERNETES_SERVICE, service_link_env

KEY = {"OPENAI_API_KEY": "sk-pod-env"}


def service(name: str, *ports: tuple[str, int], protocol: str = "TCP") -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"ports": [{"name": n, "port": p, "protocol": protocol} for n, p in ports]},
    }


GATEWAY = service("openai-grpc", ("grpc", 50051), ("metrics", 9464))
# Neighbours whose names land on settings: a Service for scraping, Redis for the rate limiter,
# and names under the retry and breaker sections' prefixes.
NEIGHBOURS = (
    service("openai-grpc-metrics", ("http", 9464)),
    service("openai-grpc-rate-limit-redis", ("redis", 6379)),
    service("openai-grpc-retry", ("", 8080)),
    service("openai-grpc-breaker", ("dns", 53), protocol="UDP"),
)


def pod_env(*services: dict[str, Any], ip: str = "10.96.0.12") -> dict[str, str]:
    env = dict(service_link_env(KUBERNETES_SERVICE, "10.96.0.1"))
    for svc in services:
        env.update(service_link_env(svc, ip))
    return env


def test_the_gateway_service_links_are_what_the_issue_reported() -> None:
    env = pod_env(GATEWAY)
    assert env["OPENAI_GRPC_PORT"] == "tcp://10.96.0.12:50051"
    assert env["OPENAI_GRPC_SERVICE_PORT_GRPC"] == "50051"
    assert env["OPENAI_GRPC_PORT_9464_TCP_ADDR"] == "10.96.0.12"


@pytest.mark.parametrize("ip", ["10.96.0.12", "fd00:10:96::c"])
def test_service_links_are_ignored_and_named(ip: str) -> None:
    s = config.load([], env={**pod_env(GATEWAY, *NEIGHBOURS, ip=ip), **KEY})
    assert s.port == 50051 and s.metrics_port is None
    assert s.rate_limit == config.Settings().rate_limit
    assert s.retry == config.Settings().retry and s.breaker == config.Settings().breaker
    # Only the names that share a setting's name or section prefix are reported.
    assert "OPENAI_GRPC_PORT" in s.ignored_env and "OPENAI_GRPC_METRICS_PORT" in s.ignored_env
    assert "OPENAI_GRPC_RATE_LIMIT_REDIS_SERVICE_HOST" in s.ignored_env
    assert "OPENAI_GRPC_BREAKER_PORT_53_UDP_PROTO" in s.ignored_env
    assert not [n for n in s.ignored_env if n.startswith(("KUBERNETES_", "OPENAI_GRPC_SERVICE_"))]


def test_without_service_links_nothing_is_ignored() -> None:
    s = config.load([], env={**pod_env(), **KEY})
    assert s.ignored_env == () and s.port == 50051


def test_values_the_operator_sets_win_over_links_of_the_same_service() -> None:
    # The kubelet lets an explicit variable replace the injected one of the same name.
    env = {**pod_env(GATEWAY, *NEIGHBOURS), **KEY}
    env |= {"OPENAI_GRPC_PORT": "6000", "OPENAI_GRPC_METRICS_PORT": "9000"}
    env["OPENAI_GRPC_RATE_LIMIT_REQUESTS_PER_MINUTE"] = "60"
    s = config.load([], env=env)
    assert (s.port, s.metrics_port, s.rate_limit.requests_per_minute) == (6000, 9000, 60)
    assert "OPENAI_GRPC_PORT" not in s.ignored_env


def test_flags_beat_links() -> None:
    s = config.load(["--port", "7000", "--metrics-port", "7001"], env={**pod_env(GATEWAY), **KEY})
    assert (s.port, s.metrics_port) == (7000, 7001)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"OPENAI_GRPC_PORT": "http"}, "OPENAI_GRPC_PORT"),
        # Near-misses of the link shapes are still read as settings, and refused.
        ({"OPENAI_GRPC_PORT": "tcp://10.96.0.12"}, "OPENAI_GRPC_PORT"),
        ({"OPENAI_GRPC_RETRY_MAX_RETRIE": "5"}, "retry.max_retrie"),
        ({"OPENAI_GRPC_RATE_LIMIT_REDIS_SERVICE_PORT": "redis"}, "rate_limit.redis_service_port"),
    ],
)
def test_anything_else_is_still_checked(extra: dict[str, str], needle: str) -> None:
    with pytest.raises(config.ConfigError, match=needle.replace(".", r"\.")):
        config.load([], env={**pod_env(GATEWAY, *NEIGHBOURS), **KEY, **extra})


def test_a_link_section_variable_needs_its_service_host() -> None:
    # Without OPENAI_GRPC_RETRY_SERVICE_HOST, OPENAI_GRPC_RETRY_SERVICE_PORT is no link: a typo.
    with pytest.raises(config.ConfigError, match=r"retry\.service_port"):
        config.load([], env={**KEY, "OPENAI_GRPC_RETRY_SERVICE_PORT": "8080"})


def test_ignored_links_are_one_structured_log_line(caplog: pytest.LogCaptureFixture) -> None:
    s = config.load([], env={**pod_env(GATEWAY), **KEY})
    with caplog.at_level(logging.INFO, logger="openai_grpc.config"):
        config.log_ignored_env(s)
    [record] = caplog.records
    assert record.variables == ["OPENAI_GRPC_PORT"]  # type: ignore[attr-defined]
    caplog.clear()
    config.log_ignored_env(config.load([], env=KEY))
    assert caplog.records == []


_label = st.from_regex(r"[a-z]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)


@settings(max_examples=100, deadline=None)
@given(
    names=st.lists(_label, min_size=1, max_size=4),
    ports=st.lists(
        st.tuples(_label, st.integers(1, 65535), st.sampled_from(["TCP", "UDP", "SCTP"])),
        min_size=1,
        max_size=3,
    ),
    ip=st.ip_addresses().map(str),
)
def test_any_service_named_openai_grpc_something_leaves_the_settings_alone(
    names: list[str], ports: list[tuple[str, int, str]], ip: str
) -> None:
    env = dict(KEY)
    for name in names:
        svc = {
            "metadata": {"name": f"openai-grpc-{name}"},
            "spec": {"ports": [{"name": n, "port": p, "protocol": pr} for n, p, pr in ports]},
        }
        env.update(service_link_env(svc, ip))
    env.update(service_link_env(GATEWAY, ip))
    s = config.load([], env=env)
    defaults = config.Settings()
    assert (s.port, s.metrics_port, s.host) == (defaults.port, defaults.metrics_port, defaults.host)
    assert (s.retry, s.rate_limit, s.breaker) == (defaults.retry, defaults.rate_limit, defaults.breaker)


def test_connection_age_settings() -> None:
    s = config.load([], env=KEY)
    assert s.max_connection_age_seconds == 300
    # Unset, the grace lets every call the gateway allows finish.
    assert s.connection_age_grace() == s.request_timeout
    assert app.connection_age_options(s) == [
        ("grpc.max_connection_age_ms", 300_000),
        ("grpc.max_connection_age_grace_ms", 600_000),
    ]
    env = {
        **KEY,
        "OPENAI_GRPC_MAX_CONNECTION_AGE_SECONDS": "60",
        "OPENAI_GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS": "15",
    }
    s = config.load([], env=env)
    assert app.connection_age_options(s) == [
        ("grpc.max_connection_age_ms", 60_000),
        ("grpc.max_connection_age_grace_ms", 15_000),
    ]
    s = config.load([], env={**KEY, "OPENAI_GRPC_MAX_CONNECTION_AGE_SECONDS": "0"})
    assert app.connection_age_options(s) == []
    with pytest.raises(config.ConfigError, match="max_connection_age"):
        config.load([], env={**KEY, "OPENAI_GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS": "-1"})
