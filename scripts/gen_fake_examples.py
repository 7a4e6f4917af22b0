#!/usr/bin/env python3
"""Extract one example response per endpoint from spec/openapi.yaml for the fake upstream.

Reads spec/endpoints.tsv and, for each (method, path), the operation's
`x-oaiMeta.examples` (a dict or a list of {title, request, response}; `response` is a
JSON string). The first response that parses as strict JSON wins; failing that, the first
that parses after a lenient repair (many spec examples are near-JSON: trailing commas,
`...` elisions, bare keys). Endpoints with neither get a small hand-made body.

Writes server/openai_grpc_server/fake_upstream/examples.json: compact, sorted keys, so
regenerating from the same spec gives identical bytes. The server never parses YAML.

Usage: python scripts/gen_fake_examples.py [--spec spec/openapi.yaml] [--endpoints ...] [--out ...]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = ROOT / "spec" / "openapi.yaml"
DEFAULT_ENDPOINTS = ROOT / "spec" / "endpoints.tsv"
DEFAULT_OUT = ROOT / "server" / "openai_grpc_server" / "fake_upstream" / "examples.json"

# Final path segments that name an action on the object identified by the preceding
# parameter (so that parameter is the returned object's id).
ACTION_SEGMENTS = frozenset({"cancel", "pause", "resume", "complete", "submit_tool_outputs"})

# Which path parameter becomes the body's `id`, where the generic rule gets it wrong.
# Deleting a conversation item returns the conversation; listing-style routes never set it.
ID_PARAM_OVERRIDES: dict[str, str | None] = {
    "DELETE /conversations/{conversation_id}/items/{item_id}": "conversation_id",
    "POST /vector_stores/{vector_store_id}/files/{file_id}": "file_id",
    "GET /vector_stores/{vector_store_id}/files/{file_id}/content": None,
}

# Hand-made bodies for endpoints whose spec has no usable JSON example.
FALLBACKS: dict[str, Any] = {
    # Binary endpoints: the server streams bytes; the body is only a placeholder.
    "POST /audio/speech": {"object": "audio.speech"},
    "GET /files/{file_id}/content": {"object": "file.content"},
    "POST /images/edits": {
        "created": 1713833628,
        "data": [{"b64_json": "iVBORw0KGgo="}],
        "usage": {
            "input_tokens": 50,
            "input_tokens_details": {"image_tokens": 40, "text_tokens": 10},
            "output_tokens": 50,
            "total_tokens": 100,
        },
    },
}

# Fields whose spec example is elided (`{...}`), filled so typed clients see a valid oneof.
PATCHES: dict[str, dict[str, Any]] = {
    "POST /vector_stores/{vector_store_id}/files/{file_id}": {
        "chunking_strategy": {
            "static": {"chunk_overlap_tokens": 400, "max_chunk_size_tokens": 800},
            "type": "static",
        }
    },
}

_ELLIPSIS_LINE = re.compile(r"(?m)^\s*(?:\{\s*)?\.{3,}[^\n]*?(?:\}\s*)?,?\s*$\n?")
_INLINE_ELLIPSIS_OBJ = re.compile(r"\{\s*\.{3,}\s*\}")
_INLINE_ELLIPSIS_ARR = re.compile(r"\[\s*\.{3,}\s*\]")
_BARE_KEY = re.compile(r"(?m)^(\s*)([A-Za-z_][A-Za-z0-9_]*)\s*:")
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")


def lenient_json(text: str) -> Any:
    """Parse near-JSON as found in spec examples; raises ValueError when still not JSON."""
    # Whole-line elisions (`...`, `{ ... },`) go first so they drop an item, not leave `{}`.
    fixed = _ELLIPSIS_LINE.sub("", text)
    fixed = _INLINE_ELLIPSIS_OBJ.sub("{}", fixed)
    fixed = _INLINE_ELLIPSIS_ARR.sub("[]", fixed)
    fixed = _BARE_KEY.sub(r'\1"\2":', fixed)
    fixed = _TRAILING_COMMA.sub(r"\1", fixed)
    return json.loads(fixed)


def read_endpoints(path: Path) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        rows.append((fields[1].upper(), fields[2]))
    return rows


def example_responses(op: dict[str, Any]) -> list[str]:
    examples = (op.get("x-oaiMeta") or {}).get("examples")
    if isinstance(examples, dict):
        examples = [examples]
    if not isinstance(examples, list):
        return []
    return [e["response"] for e in examples if isinstance(e, dict) and isinstance(e.get("response"), str)]


def pick_example(responses: list[str]) -> tuple[Any, str] | None:
    for text in responses:
        try:
            return json.loads(text), "spec"
        except ValueError:
            pass
    for text in responses:
        try:
            return lenient_json(text), "spec-lenient"
        except ValueError:
            pass
    return None


def id_param_for(key: str, path: str) -> str | None:
    if key in ID_PARAM_OVERRIDES:
        return ID_PARAM_OVERRIDES[key]
    segments = path.strip("/").split("/")
    last = segments[-1]
    if last.startswith("{"):
        return last[1:-1]
    if last in ACTION_SEGMENTS and len(segments) >= 2 and segments[-2].startswith("{"):
        return segments[-2][1:-1]
    return None


def build(spec: dict[str, Any], endpoints: list[tuple[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for method, path in endpoints:
        key = f"{method} {path}"
        op = (spec.get("paths", {}).get(path) or {}).get(method.lower())
        if op is None:
            raise SystemExit(f"{key}: not in the spec")
        picked = pick_example(example_responses(op))
        if key in FALLBACKS and (picked is None or not isinstance(picked[0], dict)):
            picked = (FALLBACKS[key], "fallback")
        if picked is None:
            raise SystemExit(f"{key}: no JSON example and no fallback; add one to FALLBACKS")
        body, source = picked
        if key in PATCHES and isinstance(body, dict):
            body = {**body, **PATCHES[key]}
        out[key] = {"body": body, "id_param": id_param_for(key, path), "source": source}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    parser.add_argument("--endpoints", type=Path, default=DEFAULT_ENDPOINTS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    with args.spec.open("rb") as fh:
        spec = yaml.load(fh, Loader=yaml.CSafeLoader)
    data = build(spec, read_endpoints(args.endpoints))
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"
    args.out.write_text(text, encoding="utf-8")
    sources: dict[str, int] = {}
    for entry in data.values():
        sources[entry["source"]] = sources.get(entry["source"], 0) + 1
    print(f"wrote {args.out} ({len(data)} endpoints: {sources})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
