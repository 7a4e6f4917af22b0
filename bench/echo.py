"""The floor: a bare grpc.aio server answering the gateway's chat RPCs with fixed bytes.

`python -m bench.echo --port N --answers FILE` serves `openai_grpc.v1.ChatService/
CreateChatCompletion` (one precomputed serialized response) and `StreamChatCompletion` (the
precomputed messages of one stream, in order) through a generic handler with no
(de)serializers: the request bytes are not even parsed. uvloop as the gateway uses it, the same
message-size options. FILE is JSON `{"unary": base64, "stream": [base64, ...]}`, taken by the
orchestrator from a real gateway answer to the benchmark's requests (bench.run `capture`), so the
load generator receives the same bytes from both and the gateway's CPU per call over this
server's is what the gateway itself adds to grpc.aio.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

SERVICE = "openai_grpc.v1.ChatService"


def handler(unary: bytes, stream: list[bytes]) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
    async def create(request: bytes, context: Any) -> bytes:
        return unary

    async def stream_chat(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for msg in stream:
            yield msg

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "CreateChatCompletion": grpc.unary_unary_rpc_method_handler(create),
            "StreamChatCompletion": grpc.unary_stream_rpc_method_handler(stream_chat),
        },
    )


async def serve(port: int, answers: dict[str, Any]) -> None:
    unary = base64.b64decode(answers["unary"])
    stream = [base64.b64decode(m) for m in answers.get("stream") or []]
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.so_reuseport", 1),
        ]
    )
    server.add_generic_rpc_handlers((handler(unary, stream),))
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise OSError(f"cannot listen on 127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"echo listening on 127.0.0.1:{port} ({type(loop).__module__})", flush=True)
    await stop.wait()
    await server.stop(None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.echo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--answers", type=Path, required=True, help='JSON {"unary": b64, "stream": [b64...]}')
    args = ap.parse_args(argv)
    answers = json.loads(args.answers.read_text())
    with contextlib.suppress(KeyboardInterrupt):
        try:
            import uvloop  # noqa: PLC0415

            uvloop.run(serve(args.port, answers))
        except ImportError:  # pragma: no cover - uvloop is in the server extra
            asyncio.run(serve(args.port, answers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
