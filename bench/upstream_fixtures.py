"""Precomputed answers for the Go fake upstream (`benchdriver fake --fixtures FILE`).

Rendered with the Python fake's own functions (openai_grpc_server.fake_upstream.bodies), so
the Go fake answers the benchmark's requests with exactly the bytes the Python fake would: the
gateway does the same work behind either. `same_bytes()` checks that against a running Python
fake (the smoke test uses it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from openai_grpc_server.fake_upstream.bodies import cached_stream, embeddings_body, render_json
from openai_grpc_server.fake_upstream.routes import load_endpoints


def _endpoint(key: str) -> Any:
    return next(ep for ep in load_endpoints() if ep.key == key)


def build(
    chat_models: Iterable[str],
    chunk_counts: Iterable[int],
    embeddings: Iterable[tuple[str, int, int]],
) -> dict[str, Any]:
    """chat bodies per model; chat streams per (model, content chunks, include_usage); embeddings
    answers per (model, inputs, dims), as float JSON and as base64."""
    chat_ep = _endpoint("POST /chat/completions")
    models = list(dict.fromkeys(chat_models))
    out: dict[str, Any] = {"chat": {}, "streams": [], "embeddings": []}
    for model in models:
        out["chat"][model] = render_json(chat_ep, {}, model).decode()
        for n in sorted(set(chunk_counts)):
            for usage in (False, True):
                plan = cached_stream(
                    "chat", chat_ep, params=(), model=model, n=n, include_usage=usage, thread_endpoint=None
                )
                out["streams"].append(
                    {
                        "model": model,
                        "chunks": n,
                        "include_usage": usage,
                        "events": [e.decode() for e in plan.events],
                        "done": (plan.done or b"").decode(),
                    }
                )
    for model, count, dims in embeddings:
        for b64 in (False, True):
            req: dict[str, Any] = {"input": [f"x{i}" for i in range(count)], "dimensions": dims}
            if b64:
                req["encoding_format"] = "base64"
            body = embeddings_body(req, model)
            assert body is not None
            out["embeddings"].append(
                {"model": model, "count": count, "dims": dims, "base64": b64, "body": body.decode()}
            )
    return out


def write(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path
