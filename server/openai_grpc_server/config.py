"""Settings: command-line flags beat environment variables, which beat the config file.

Everything is validated once at start; a bad setting stops the process with one clear line
(`ConfigError`), never with a traceback or a half-started server.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import logging
import os
import re
import ssl
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import yaml

from openai_grpc_server import __version__, coerce
from openai_grpc_server.auth import Authenticator, Credential, Secret, tenants_from_mapping
from openai_grpc_server.errors import register_secrets
from openai_grpc_server.resilience import BreakerConfig, RateLimitConfig, RetryConfig
from openai_grpc_server.upstream.client import UpstreamSettings

DEFAULT_BASE_URL = "https://api.openai.com/v1"


class ConfigError(Exception):
    """A setting is missing or wrong; the message is the one line shown to the operator."""


@dataclasses.dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 50051
    demo: bool = False
    base_url: str = DEFAULT_BASE_URL
    api_key: Secret = dataclasses.field(default_factory=lambda: Secret(""))
    api_key_file: str | None = None  # re-read on SIGHUP
    organization: str | None = None
    project: str | None = None
    connect_timeout: float = 5.0
    request_timeout: float = 600.0
    max_connections: int = 1000
    max_concurrent_rpcs: int = 2000
    max_message_bytes: int = 16 * 1024 * 1024
    # Callers waiting for one of the max_concurrent_rpcs slots, and for how long, before
    # RESOURCE_EXHAUSTED with RetryInfo (a burst is shed, never left to time out or be cancelled).
    max_queued_rpcs: int = 2000
    queue_wait_seconds: float = 10.0
    # Largest upstream stream event and unary answer; beyond: UPSTREAM_BAD_RESPONSE, read no further.
    max_event_bytes: int = 16 * 1024 * 1024
    max_response_bytes: int = 64 * 1024 * 1024
    grace_seconds: float = 20.0
    # A gRPC client keeps one HTTP/2 connection, so behind a ClusterIP Service it sticks to one
    # pod: after this age the server sends GOAWAY and the client reconnects, through the Service,
    # to any pod (scale-out rebalances). 0 turns it off. In-flight calls get the grace to finish;
    # unset, the grace is request_timeout so that no call the gateway allows is cut.
    max_connection_age_seconds: float = 300.0
    max_connection_age_grace_seconds: float | None = None
    workers: int = 1
    # httpx's API over aiohttp's connection pool: about half the CPU per call of httpx's own
    # pool here (docs/benchmarks.md); "httpx" keeps httpx's pool.
    upstream_transport: str = "aiohttp"
    reflection: bool = True
    auth_mode: str = "none"
    tenants_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    metrics_port: int | None = None
    tracing: bool = False
    # Performance levers, each measured in docs/benchmarks.md; the defaults are the winners.
    event_loop: str = "uvloop"
    json_library: str = "orjson"
    embeddings_base64: bool = True
    coalesce_events: bool = True
    log_level: str = "INFO"
    # Proxies (HTTP(S)_PROXY, NO_PROXY) and CAs (SSL_CERT_FILE/_DIR) from the environment, as the SDK.
    trust_env: bool = True
    retry: RetryConfig = dataclasses.field(default_factory=RetryConfig)
    rate_limit: RateLimitConfig = dataclasses.field(default_factory=RateLimitConfig)
    breaker: BreakerConfig = dataclasses.field(default_factory=BreakerConfig)
    # Kubernetes service-link variables that share a setting's name and were ignored (names only).
    ignored_env: tuple[str, ...] = ()

    def connection_age_grace(self) -> float:
        if self.max_connection_age_grace_seconds is None:
            return self.request_timeout
        return self.max_connection_age_grace_seconds

    def upstream(self) -> UpstreamSettings:
        return UpstreamSettings(
            base_url=self.base_url,
            connect_timeout=self.connect_timeout,
            request_timeout=self.request_timeout,
            max_connections=self.max_connections,
            max_keepalive=self.max_connections,
            transport=self.upstream_transport,
            max_response_bytes=self.max_response_bytes,
            trust_env=self.trust_env,
        )

    def authenticator(self) -> Authenticator:
        """Callers and their upstream keys, read now (at start, and again on SIGHUP: the tenants
        file and the key file). Raises ConfigError with one line that never holds a secret."""
        key = read_api_key(self.api_key_file) if self.api_key_file else self.api_key
        default = Credential("default", key, self.organization, self.project)
        if self.auth_mode == "tokens":
            assert self.tenants_file is not None
            data = _read_file(Path(self.tenants_file))
            try:
                tenants = tenants_from_mapping(data, Path(self.tenants_file))
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
            return Authenticator("tokens", default, tenants)
        return Authenticator("none", default)


# (setting, env var, type). The config file uses the setting names as keys.
_SCALARS: tuple[tuple[str, str, type], ...] = (
    ("host", "OPENAI_GRPC_HOST", str),
    ("port", "OPENAI_GRPC_PORT", int),
    ("base_url", "OPENAI_BASE_URL", str),
    ("organization", "OPENAI_ORG_ID", str),
    ("project", "OPENAI_PROJECT_ID", str),
    ("connect_timeout", "OPENAI_GRPC_CONNECT_TIMEOUT", float),
    ("request_timeout", "OPENAI_GRPC_REQUEST_TIMEOUT", float),
    ("max_connections", "OPENAI_GRPC_MAX_CONNECTIONS", int),
    ("max_concurrent_rpcs", "OPENAI_GRPC_MAX_CONCURRENT_RPCS", int),
    ("max_message_bytes", "OPENAI_GRPC_MAX_MESSAGE_BYTES", int),
    ("max_queued_rpcs", "OPENAI_GRPC_MAX_QUEUED_RPCS", int),
    ("queue_wait_seconds", "OPENAI_GRPC_QUEUE_WAIT_SECONDS", float),
    ("max_event_bytes", "OPENAI_GRPC_MAX_EVENT_BYTES", int),
    ("max_response_bytes", "OPENAI_GRPC_MAX_RESPONSE_BYTES", int),
    ("grace_seconds", "OPENAI_GRPC_GRACE_SECONDS", float),
    ("max_connection_age_seconds", "OPENAI_GRPC_MAX_CONNECTION_AGE_SECONDS", float),
    ("max_connection_age_grace_seconds", "OPENAI_GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS", float),
    ("workers", "OPENAI_GRPC_WORKERS", int),
    ("upstream_transport", "OPENAI_GRPC_UPSTREAM_TRANSPORT", str),
    ("reflection", "OPENAI_GRPC_REFLECTION", bool),
    ("auth_mode", "OPENAI_GRPC_AUTH_MODE", str),
    ("tenants_file", "OPENAI_GRPC_TENANTS_FILE", str),
    ("tls_cert", "OPENAI_GRPC_TLS_CERT", str),
    ("tls_key", "OPENAI_GRPC_TLS_KEY", str),
    ("tls_client_ca", "OPENAI_GRPC_TLS_CLIENT_CA", str),
    ("metrics_port", "OPENAI_GRPC_METRICS_PORT", int),
    ("tracing", "OPENAI_GRPC_TRACING", bool),
    ("event_loop", "OPENAI_GRPC_EVENT_LOOP", str),
    ("json_library", "OPENAI_GRPC_JSON_LIBRARY", str),
    ("embeddings_base64", "OPENAI_GRPC_EMBEDDINGS_BASE64", bool),
    ("coalesce_events", "OPENAI_GRPC_COALESCE_EVENTS", bool),
    ("log_level", "OPENAI_GRPC_LOG_LEVEL", str),
    ("trust_env", "OPENAI_GRPC_TRUST_ENV", bool),
)
# Resilience sections: env OPENAI_GRPC_<SECTION>_<KEY>, file `<section>: {key: value}`.
# Each key's reader turns the file's or environment's value into the dataclass field's type.
_SECTION_KEYS: dict[str, dict[str, Callable[[str, str, Any], Any]]] = {
    "retry": {
        "max_retries": coerce.coerce_int,
        "initial_backoff": coerce.coerce_seconds,
        "max_backoff": coerce.coerce_seconds,
        "backoff_multiplier": coerce.coerce_float,
        "jitter": coerce.coerce_float,
        "retryable_status_codes": coerce.coerce_status_codes,
    },
    "rate_limit": {
        "requests_per_minute": coerce.coerce_optional_int,
        "tokens_per_minute": coerce.coerce_optional_int,
        "requests_per_day": coerce.coerce_optional_int,
        "tokens_per_day": coerce.coerce_optional_int,
        "auto_adjust": coerce.coerce_bool,
        "queue_requests": coerce.coerce_bool,
        "max_queue_size": coerce.coerce_int,
        "redis_url": coerce.coerce_optional_str,
        "redis_failure": coerce.coerce_lower,
        "redis_timeout": coerce.coerce_seconds,
        "replicas_hint": coerce.coerce_int,
    },
    "breaker": {
        "failure_threshold": coerce.coerce_int,
        "success_threshold": coerce.coerce_int,
        "failure_window": coerce.coerce_seconds,
        "recovery_timeout": coerce.coerce_seconds,
        "per_endpoint": coerce.coerce_bool,
    },
}
_SECTIONS: tuple[tuple[str, type[Any]], ...] = (
    ("retry", RetryConfig),
    ("rate_limit", RateLimitConfig),
    ("breaker", BreakerConfig),
)


def section_config(section: str, data: Mapping[str, Any]) -> Any:
    """A resilience section's dataclass from file / env values; a bad or unknown key raises
    ValueError naming it (a typo must not silently do nothing)."""
    cls = dict(_SECTIONS)[section]
    return cls(**coerce.coerce_mapping(section, cls, data, _SECTION_KEYS[section]))


def retry_config(data: Mapping[str, Any]) -> RetryConfig:
    """`retry:` values: numbers or strings ("0.5", "500ms", "408,429,500")."""
    config: RetryConfig = section_config("retry", data)
    return config


def rate_limit_config(data: Mapping[str, Any]) -> RateLimitConfig:
    """`rate_limit:` values; "", "none" or "unlimited" leave a limit off."""
    config: RateLimitConfig = section_config("rate_limit", data)
    return config


def breaker_config(data: Mapping[str, Any]) -> BreakerConfig:
    """`breaker:` values: numbers or strings ("5", "30s", "true")."""
    config: BreakerConfig = section_config("breaker", data)
    return config


# Kubernetes injects, for every Service `NAME` in the pod's namespace (unless the pod sets
# `enableServiceLinks: false`), Docker-link-style variables: NAME_SERVICE_HOST, NAME_SERVICE_PORT,
# NAME_SERVICE_PORT_<PORTNAME>, NAME_PORT=tcp://ip:port and NAME_PORT_<port>_<PROTO>[_PROTO|_PORT|
# _ADDR]. A Service named `openai-grpc` thus sets OPENAI_GRPC_PORT, this gateway's port variable;
# `openai-grpc-metrics` sets OPENAI_GRPC_METRICS_PORT, `openai-grpc-rate-limit-redis` lands under
# the rate_limit section's prefix. Those variables are recognised by name *and* value shape and
# ignored, so a value the operator set (OPENAI_GRPC_PORT=50051) is never mistaken for one.
_LINK_URL = re.compile(r"(?:tcp|udp|sctp)://(?:\[[0-9A-Fa-f:.]+\]|[0-9A-Za-z.-]+):\d{1,5}")
_LINK_PORT = r"_PORT_\d{1,5}_(?:TCP|UDP|SCTP)"


def _is_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


# (name suffix after the Service's prefix, what its injected value looks like)
_LINK_VARS: tuple[tuple[re.Pattern[str], Callable[[str], bool]], ...] = (
    (re.compile(rf"_PORT|{_LINK_PORT}"), lambda v: _LINK_URL.fullmatch(v) is not None),
    (re.compile(rf"{_LINK_PORT}_PROTO"), lambda v: v in ("tcp", "udp", "sctp")),
    (re.compile(rf"{_LINK_PORT}_PORT|_SERVICE_PORT(?:_[A-Z0-9_]+)?"), str.isdigit),
    (re.compile(rf"{_LINK_PORT}_ADDR|_SERVICE_HOST"), _is_address),
)

log = logging.getLogger("openai_grpc.config")


def service_links(env: Mapping[str, str]) -> frozenset[str]:
    """The names in `env` that Kubernetes (or a Docker link) injected for a Service."""
    services = [name[: -len("_SERVICE_HOST")] for name in env if name.endswith("_SERVICE_HOST")]

    def injected(name: str, value: str) -> bool:
        if name.endswith("_PORT") and _LINK_URL.fullmatch(value):
            return True  # NAME_PORT=tcp://10.96.0.12:50051 is never a port number, whoever set it
        return any(
            name.startswith(service) and pattern.fullmatch(name, len(service)) is not None and looks(value)
            for service in services
            for pattern, looks in _LINK_VARS
        )

    return frozenset(name for name, value in env.items() if injected(name, value))


def env_names() -> frozenset[str]:
    """Every environment variable a setting is read from (manifests are checked against it)."""
    names = {var for _, var, _ in _SCALARS} | {"OPENAI_API_KEY"}
    for section, cls in _SECTIONS:
        names |= {f"OPENAI_GRPC_{section.upper()}_{f.name.upper()}" for f in dataclasses.fields(cls)}
    return frozenset(names)


def log_ignored_env(settings: Settings) -> None:
    """One structured line naming the service-link variables that were not read as settings."""
    if settings.ignored_env:
        log.info(
            "ignored Kubernetes service-link variables that share a setting's name",
            extra={"variables": list(settings.ignored_env)},
        )


def _read_file(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        # Never the parser's message: it quotes the offending line, which may hold a key.
        where = getattr(exc, "lineno", None) or getattr(getattr(exc, "problem_mark", None), "line", None)
        at = f" (near line {where + (0 if hasattr(exc, 'lineno') else 1)})" if where is not None else ""
        raise ConfigError(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}{at}") from exc


def read_api_key(path: str) -> Secret:
    try:
        key = Path(path).read_text().strip()
    except OSError as exc:
        # The path is not echoed: a key pasted where the path belongs would be printed.
        why = exc.strerror or type(exc).__name__
        raise ConfigError(f"cannot read the API key file (--api-key-file): {why}") from None
    if any(c.isspace() or ord(c) < 32 for c in key):
        raise ConfigError(
            "the OpenAI API key contains whitespace or control characters; check how it was set"
        )
    return Secret(key)


class _Parser(argparse.ArgumentParser):
    """argparse that never abbreviates (`--api-key` is not `--api-key-file`) and whose errors
    never echo a value (a key pasted after an unknown or misspelled flag)."""

    def error(self, message: str) -> NoReturn:
        head, sep, rest = message.partition("unrecognized arguments:")
        if sep:
            flags = [a.split("=")[0] for a in rest.split() if a.startswith("-")]
            message = f"{head}unrecognized arguments: {' '.join(flags) or '(values not shown)'}"
        message = re.sub(r"'[^']*'", "(value not shown)", message)
        raise ConfigError(message)


def _convert(name: str, kind: type, raw: Any) -> Any:
    if raw is None:
        return None
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        return kind(raw)
    except (TypeError, ValueError) as exc:
        # The value is not echoed: it may be a key set in the wrong variable.
        raise ConfigError(f"setting {name!r} is not a valid {kind.__name__}") from exc


def _version() -> str:
    try:
        return metadata.version("openai-grpc")
    except metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
        return __version__


def _settings_help() -> str:
    width = max(len(n) for n, _, _ in _SCALARS) + 2
    rows = [f"  {n:<{width}}{var}" for n, var, _ in _SCALARS]
    rows.append(f"  {'api_key':<{width}}OPENAI_API_KEY (or api_key_file / --api-key-file)")
    rows += [f"  {f'{n}.<key>':<{width}}OPENAI_GRPC_{n.upper()}_<KEY>" for n, _ in _SECTIONS]
    return (
        "settings (config-file key, then environment variable; flags above win over both, the\n"
        "environment over the file); README.md 'Configuration' gives each one's meaning and default:\n"
        + "\n".join(rows)
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = _Parser(
        prog="openai-grpc-server",
        description="gRPC gateway for the OpenAI API",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    p.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, help="port to listen on (default 50051)")
    p.add_argument("--demo", action="store_true", help="serve from the embedded fake upstream; no key needed")
    p.add_argument("--config", help="YAML or JSON settings file")
    p.add_argument("--base-url", help=f"OpenAI base URL (default {DEFAULT_BASE_URL})")
    p.add_argument("--api-key-file", help="read the OpenAI API key from this file")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")
    p.add_argument("--workers", type=int, help="gateway processes sharing the port (SO_REUSEPORT); default 1")
    return p.parse_args(argv)


def load(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    args = parse_args(argv)
    env = os.environ if env is None else env
    links = service_links(env)
    ignored: set[str] = set()
    values: dict[str, Any] = {}
    file_data: dict[str, Any] = {}
    if args.config:
        data = _read_file(Path(args.config))
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{args.config}: expected a mapping of settings at the top level")
        file_data = data
        known = {n for n, _, _ in _SCALARS} | {n for n, _ in _SECTIONS} | {"api_key", "api_key_file", "demo"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{args.config}: unknown setting(s) {', '.join(unknown)}")
    # File, then env, then flags: later sources win.
    for name, var, kind in _SCALARS:
        if name in file_data:
            values[name] = _convert(name, kind, file_data[name])
        if var in links:
            ignored.add(var)
        elif env.get(var):
            values[name] = _convert(var, kind, env[var])
    for flag in ("host", "port", "base_url", "metrics_port", "log_level", "workers"):
        v = getattr(args, flag)
        if v is not None:
            values[flag] = v
    values["demo"] = bool(args.demo or file_data.get("demo"))

    key = str(file_data.get("api_key") or "")
    key_file = file_data.get("api_key_file")
    if env.get("OPENAI_API_KEY"):
        key = env["OPENAI_API_KEY"]
    key = key.strip()
    register_secrets([key])  # before anything else can fail and print it
    if args.api_key_file:
        key_file = args.api_key_file
    if key_file:
        secret = read_api_key(str(key_file))
        values["api_key_file"] = str(key_file)
    else:
        if any(c.isspace() or ord(c) < 32 for c in key):
            raise ConfigError(
                "the OpenAI API key contains whitespace or control characters; check how it was set"
            )
        secret = Secret(key)
    values["api_key"] = secret

    for section, _ in _SECTIONS:
        merged: dict[str, Any] = dict(file_data.get(section) or {})
        prefix = f"OPENAI_GRPC_{section.upper()}_"
        for var, raw in env.items():
            if var.startswith(prefix):
                if var in links:
                    ignored.add(var)
                else:
                    merged[var[len(prefix) :].lower()] = raw
        try:
            values[section] = section_config(section, merged)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    values["ignored_env"] = tuple(sorted(ignored))
    return validate(Settings(**values))


def validate(s: Settings) -> Settings:
    if not s.demo:
        parts = urlsplit(s.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"OPENAI_BASE_URL {s.base_url!r} is not an http(s) URL such as {DEFAULT_BASE_URL}"
            )
        if s.auth_mode == "none" and not s.api_key:
            raise ConfigError(
                "no OpenAI API key: set OPENAI_API_KEY (or --api-key-file), or start with --demo to try the "
                "gateway against its built-in fake upstream"
            )
    if not 0 < s.port < 65536:
        raise ConfigError(f"port {s.port} is outside 1..65535")
    if s.auth_mode not in ("none", "tokens"):
        raise ConfigError(f"auth_mode must be 'none' or 'tokens', not {s.auth_mode!r}")
    if s.auth_mode == "tokens" and not s.tenants_file:
        raise ConfigError("auth_mode 'tokens' needs tenants_file (OPENAI_GRPC_TENANTS_FILE)")
    if bool(s.tls_cert) != bool(s.tls_key):
        raise ConfigError("TLS needs both tls_cert and tls_key")
    for path in (s.tls_cert, s.tls_key, s.tls_client_ca, s.tenants_file):
        if path and not os.access(path, os.R_OK):
            raise ConfigError(f"cannot read {path}")
    if s.request_timeout <= 0 or s.connect_timeout <= 0:
        raise ConfigError("timeouts must be positive")
    if s.event_loop not in ("uvloop", "asyncio"):
        raise ConfigError(f"event_loop must be 'uvloop' or 'asyncio', not {s.event_loop!r}")
    if s.json_library not in ("orjson", "stdlib"):
        raise ConfigError(f"json_library must be 'orjson' or 'stdlib', not {s.json_library!r}")
    if s.upstream_transport not in ("httpx", "aiohttp"):
        raise ConfigError(f"upstream_transport must be 'httpx' or 'aiohttp', not {s.upstream_transport!r}")
    if not 1 <= s.workers <= 64:
        raise ConfigError(f"workers must be between 1 and 64, not {s.workers}")
    if s.workers > 1 and s.metrics_port:
        raise ConfigError(
            "with several workers, scrape each pod's metrics through OTLP, not one metrics_port"
        )
    if s.auth_mode == "tokens":
        s.authenticator()  # a bad tenants file is a bad setting too
    if s.tls_cert and s.tls_key:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:  # what gRPC would only report as "failed to bind"; an encrypted key never prompts
            ctx.load_cert_chain(s.tls_cert, s.tls_key, password="")
            if s.tls_client_ca:
                ctx.load_verify_locations(s.tls_client_ca)
        except ssl.SSLError as exc:
            raise ConfigError(f"tls_cert, tls_key or tls_client_ca cannot be loaded: {exc}") from exc
    if s.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError("log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    if s.grace_seconds < 0:
        raise ConfigError("grace_seconds must not be negative")
    if s.max_connection_age_seconds < 0 or s.connection_age_grace() < 0:
        raise ConfigError("max_connection_age_seconds and its grace must not be negative (0: no maximum age)")
    for name in ("max_event_bytes", "max_response_bytes", "max_concurrent_rpcs"):
        if getattr(s, name) < 1:
            raise ConfigError(f"{name} must be at least 1")
    if s.max_queued_rpcs < 0 or s.queue_wait_seconds < 0:
        raise ConfigError("max_queued_rpcs and queue_wait_seconds must not be negative")
    return s
