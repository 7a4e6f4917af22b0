"""CLI: `python -m openai_grpc_server.fake_upstream --host 127.0.0.1 --port 8089`.

Prints its base URL on one line, then serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from .app import FakeConfig, FakeUpstream, RateLimitHeaders


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="openai-grpc-fake-upstream", description="Fake OpenAI upstream.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8089, help="0 picks a free port")
    p.add_argument("--chunks", type=int, default=8, help="content chunks per SSE stream")
    p.add_argument("--gap-ms", type=float, default=0.0, help="pause between SSE events")
    p.add_argument("--speech-bytes", type=int, default=32 * 1024, help="size of /audio/speech bodies")
    p.add_argument("--file-bytes", type=int, default=1024, help="content size of unknown file ids")
    p.add_argument("--ratelimit-headers", action="store_true", help="send x-ratelimit-* headers")
    p.add_argument("--no-record", action="store_true", help="do not record requests (benchmarks)")
    p.add_argument(
        "--coalesce-streams",
        action="store_true",
        help="with --gap-ms 0, write each stream in one piece (benchmarks)",
    )
    return p.parse_args(argv)


async def _run(args: argparse.Namespace) -> None:
    config = FakeConfig(
        chunks=args.chunks,
        gap_ms=args.gap_ms,
        speech_bytes=args.speech_bytes,
        file_bytes=args.file_bytes,
        ratelimit=RateLimitHeaders() if args.ratelimit_headers else None,
        record=not args.no_record,
        coalesce_streams=args.coalesce_streams,
    )
    fake = FakeUpstream(args.host, args.port, config)
    await fake.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # Windows
            loop.add_signal_handler(sig, stop.set)
    print(fake.base_url, flush=True)
    try:
        await stop.wait()
    finally:
        await fake.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    with contextlib.suppress(KeyboardInterrupt):  # SIGINT before the handler is installed
        asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
