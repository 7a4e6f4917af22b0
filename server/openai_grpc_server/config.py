"""Settings: command-line flags beat environment variables, which beat the config file.

Everything is validated once at start; a bad setting stops the process with one clear line
(`ConfigError`), never with a traceback or a half-started server.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import ssl
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import yaml

from openai_grpc_server import __version__
from openai_grpc_server.auth import Authenticator, Credential, Secret, tenants_from_mapping
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
    organization: str | None = None
    project: str | None = None
    connect_timeout: float = 5.0
    request_timeout: float = 600.0
    max_connections: int = 1000
    max_concurrent_rpcs: int = 2000
    max_message_bytes: int = 16 * 1024 * 1024
    grace_seconds: float = 20.0
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

    def upstream(self) -> UpstreamSettings:
        return UpstreamSettings(
            base_url=self.base_url,
            connect_timeout=self.connect_timeout,
            request_timeout=self.request_timeout,
            max_connections=self.max_connections,
            max_keepalive=self.max_connections,
            transport=self.upstream_transport,
            trust_env=self.trust_env,
        )

    def authenticator(self) -> Authenticator:
        default = Credential("default", self.api_key, self.organization, self.project)
        if self.auth_mode == "tokens":
            assert self.tenants_file is not None
            data = _read_file(Path(self.tenants_file))
            try:
                return Authenticator("tokens", default, tenants_from_mapping(data, Path(self.tenants_file)))
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
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
    ("grace_seconds", "OPENAI_GRPC_GRACE_SECONDS", float),
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
_SECTIONS: tuple[tuple[str, type[Any]], ...] = (
    ("retry", RetryConfig),
    ("rate_limit", RateLimitConfig),
    ("breaker", BreakerConfig),
)


def _read_file(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}"
        ) from exc


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
        raise ConfigError(f"setting {name!r}: {raw!r} is not a valid {kind.__name__}") from exc


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)  # one line, like every other bad setting


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
        if env.get(var):
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
    if args.api_key_file:
        key_file = args.api_key_file
    if key_file:
        try:
            key = Path(str(key_file)).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read the API key file {key_file}: {exc.strerror or exc}") from exc
    key = key.strip()
    if any(c.isspace() or ord(c) < 32 for c in key):
        raise ConfigError(
            "the OpenAI API key contains whitespace or control characters; check how it was set"
        )
    values["api_key"] = Secret(key)

    for section, cls in _SECTIONS:
        merged: dict[str, Any] = dict(file_data.get(section) or {})
        prefix = f"OPENAI_GRPC_{section.upper()}_"
        for var, raw in env.items():
            if var.startswith(prefix):
                merged[var[len(prefix) :].lower()] = raw
        try:
            values[section] = cls.from_mapping(merged)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
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
        raise ConfigError(f"log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not {s.log_level!r}")
    if s.grace_seconds < 0:
        raise ConfigError("grace_seconds must not be negative")
    return s
