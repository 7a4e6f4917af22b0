"""`openai-grpc-server` / `python -m openai_grpc_server`."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

from openai_grpc_server import app, config, telemetry
from openai_grpc_server.auth import Secret
from openai_grpc_server.errors import redact

DEMO_GAP_MS = 40.0


def _demo_hint(port: int) -> str:
    data = '{"model":"gpt-4o-mini","messages":[{"role":"user","content_text":"hi"}]}'
    return (
        f"openai-grpc demo gateway on localhost:{port} (fake upstream, no key needed). Try:\n"
        f"  grpcurl -plaintext -d '{data}' localhost:{port} openai_grpc.v1.ChatService/CreateChatCompletion"
    )


async def _run(settings: config.Settings) -> None:
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
        if settings.demo:
            print(_demo_hint(running.port), flush=True)
        else:
            print(f"openai-grpc gateway listening on {settings.host}:{running.port}", flush=True)

    try:
        await app.serve(settings, on_ready=ready)
    finally:
        if fake is not None:
            await fake.stop()


def _supervise(settings: config.Settings, argv: Sequence[str] | None) -> int:
    """`--workers N`: N single-worker processes bound to the same port (SO_REUSEPORT).

    Each is a full gateway with its own event loop; the kernel spreads connections across them.
    SIGTERM and SIGINT are passed on, and the exit code is the worst of the workers'.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    env = {**os.environ, "OPENAI_GRPC_WORKERS": "1"}
    cmd = [sys.executable, "-m", "openai_grpc_server", *_without_workers(args)]
    children = [subprocess.Popen(cmd, env=env) for _ in range(settings.workers)]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward)  # each worker reloads its tenants and key file
    codes = [child.wait() for child in children]
    return max(codes, key=abs)


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


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = config.load(argv)
    except config.ConfigError as exc:
        # Redacted again: a secret that reached a message by an unforeseen path stays hidden.
        print(f"openai-grpc-server: {redact(str(exc))}", file=sys.stderr)
        return 2
    if settings.workers > 1:
        return _supervise(settings, argv)
    telemetry.setup_logging(settings.log_level)
    config.log_ignored_env(settings)
    telemetry.setup_metrics(settings.metrics_port)
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:  # pragma: no cover - uvloop is optional on other platforms
        uvloop = None  # type: ignore[assignment]
    try:
        if uvloop is not None and settings.event_loop == "uvloop":
            uvloop.run(_run(settings))
        else:
            asyncio.run(_run(settings))
    except config.ConfigError as exc:  # the tenants or key file, read when the server starts
        print(f"openai-grpc-server: {redact(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"openai-grpc-server: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
