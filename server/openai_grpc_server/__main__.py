"""`openai-grpc-server` / `python -m openai_grpc_server`."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from collections.abc import Sequence

from openai_grpc_server import app, config, processes, telemetry
from openai_grpc_server.auth import Secret
from openai_grpc_server.errors import redact

DEMO_GAP_MS = 40.0


def _demo_hint(port: int) -> str:
    data = '{"model":"gpt-4o-mini","messages":[{"role":"user","content_text":"hi"}]}'
    return (
        f"openai-grpc demo gateway on localhost:{port} (fake upstream, no key needed). Try:\n"
        f"  grpcurl -plaintext -d '{data}' localhost:{port} openai_grpc.v1.ChatService/CreateChatCompletion"
    )


def _banner(settings: config.Settings, port: int) -> str:
    if settings.demo:
        return _demo_hint(port)
    return f"openai-grpc gateway listening on {settings.host}:{port}"


async def _run(settings: config.Settings, supervisor_fd: int | None) -> None:
    fake = None
    if settings.demo:
        from openai_grpc_server.fake_upstream import FakeConfig, FakeUpstream  # noqa: PLC0415

        # Paced like a model generating tokens, so a stream looks like one (grpcurl prints each
        # message as it arrives); tests and benchmarks start their own, unpaced fake.
        fake = FakeUpstream(host="127.0.0.1", port=0, config=FakeConfig(gap_ms=DEMO_GAP_MS))
        await fake.start()
        # Never hand a real key to the fake, even when one is set in the environment.
        settings = dataclasses.replace(
            settings, base_url=fake.base_url, api_key=Secret("sk-demo-placeholder"), api_key_file=None
        )

    def ready(running: app.Running) -> None:
        print(_banner(settings, running.port), flush=True)

    try:
        # A worker's supervisor prints the one banner once every worker serves.
        await app.serve(settings, on_ready=None if supervisor_fd else ready, supervisor_fd=supervisor_fd)
    finally:
        if fake is not None:
            await fake.stop()


def _without_workers(args: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--workers":
            skip = True
            continue
        if not a.startswith("--workers="):
            out.append(a)
    return out


def _fail(message: object) -> int:
    # Redacted again: a secret that reached a message by an unforeseen path stays hidden.
    print(f"openai-grpc-server: {redact(str(message))}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = config.load(argv)
    except config.ConfigError as exc:
        return _fail(exc)
    fd = os.environ.pop(processes.SUPERVISOR_FD_ENV, None)
    supervisor_fd = int(fd) if fd else None
    telemetry.setup_logging(settings.log_level)
    config.log_ignored_env(settings)
    if supervisor_fd is None:  # a worker's port is its supervisor's claim
        try:
            claim = processes.claim_port(settings.host, settings.port)
        except processes.PortInUse as exc:
            return _fail(exc)
        if settings.workers > 1:
            args = _without_workers(list(sys.argv[1:] if argv is None else argv))
            cmd = [sys.executable, "-m", "openai_grpc_server", *args, "--port", str(claim.port)]
            return processes.supervise(
                cmd, settings.workers, lambda: print(_banner(settings, claim.port), flush=True)
            )
    try:
        telemetry.setup_metrics(settings.metrics_port)
    except OSError as exc:
        return _fail(f"cannot serve metrics on port {settings.metrics_port}: {exc.strerror or exc}")
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:  # pragma: no cover - uvloop is optional on other platforms
        uvloop = None  # type: ignore[assignment]
    try:
        if uvloop is not None and settings.event_loop == "uvloop":
            uvloop.run(_run(settings, supervisor_fd))
        else:
            asyncio.run(_run(settings, supervisor_fd))
    except config.ConfigError as exc:  # the tenants or key file, read when the server starts
        return _fail(exc)
    except OSError as exc:
        print(f"openai-grpc-server: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
