"""The codec's JSON path lever, in process: `python -m bench.codec_lever [--repeat N]`.

Times, on the same parsed dicts, the gateway's descriptor-driven mapping
(`openai_grpc_server.codec.decode_response` / `codec.encode`) against protobuf's generic
`json_format.ParseDict(..., ignore_unknown_fields=True)` / `json_format.MessageToDict(...,
preserving_proto_field_name=True)` for

* a chat completion response (the fake upstream's example body) into
  `chat_pb2.CreateChatCompletionResponse`, and
* a 16 x 1536 float embeddings response (the fake's own real-sized answer) into
  `embeddings_pb2.CreateEmbeddingResponse`.

json_format cannot read OpenAI's JSON as it comes: the chat response message is an envelope
(`chat_completion`) and an embedding's `embedding` is a oneof union (`floats` / `base64`), so
its input dict is adapted first (timed separately, `adapt_us`). It also drops keys the proto
does not know (the codec keeps them in `extra`) and writes int64 as strings; each case says
whether the two outputs agree.

Prints one JSON object on stdout. µs per conversion are the best of `--repeat` timeit repeats.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import timeit
from collections.abc import Callable
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import Message
from openai_grpc.v1 import chat_pb2, embeddings_pb2
from openai_grpc_server import codec
from openai_grpc_server.fake_upstream import bodies
from openai_grpc_server.fake_upstream.routes import load_endpoints

CHAT_ROUTE = "POST /chat/completions"


def chat_response() -> dict[str, Any]:
    """The fake upstream's example chat completion (the body every unary benchmark call gets)."""
    for ep in load_endpoints():
        if ep.key == CHAT_ROUTE:
            return copy.deepcopy(ep.body)
    raise SystemExit(f"the fake upstream has no {CHAT_ROUTE} example")


def embeddings_response(inputs: int, dims: int) -> dict[str, Any]:
    """The fake's float-JSON answer to `inputs` inputs of `dims` dimensions."""
    body = bodies.embeddings_body(
        {"input": [f"input {i}" for i in range(inputs)], "dimensions": dims}, "text-embedding-3-small"
    )
    if body is None:
        raise SystemExit("the fake upstream did not build an embeddings answer")
    parsed: dict[str, Any] = orjson.loads(body)
    return parsed


# -- what json_format needs instead of OpenAI's JSON -------------------------------------------


def adapt_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The response message wraps the completion in its `chat_completion` field (an envelope)."""
    return {"chat_completion": body}


def adapt_embeddings(body: dict[str, Any]) -> dict[str, Any]:
    """`embedding` is a oneof union in the proto: json_format wants the member, `floats.values`."""
    out = dict(body)
    data = []
    for raw in body.get("data", ()):
        item = dict(raw)
        vec = item.pop("embedding", None)
        if isinstance(vec, str):
            item["base64"] = vec
        elif vec is not None:
            item["floats"] = {"values": vec}
        data.append(item)
    out["data"] = data
    return out


# -- comparing outputs -----------------------------------------------------------------------


def _without_extra(msg: Message) -> Message:
    out = type(msg)()
    out.CopyFrom(msg)

    def strip(m: Message) -> None:
        if "extra" in m.DESCRIPTOR.fields_by_name:
            m.ClearField("extra")
        for f, v in m.ListFields():
            if f.message_type is None or f.message_type.GetOptions().map_entry:
                continue
            for sub in v if f.is_repeated else [v]:
                strip(sub)

    strip(out)
    return out


def _no_nulls(v: Any) -> Any:
    """null and [] count as absent (the codec writes neither; OpenAI sends both)."""
    if isinstance(v, dict):
        return {k: _no_nulls(x) for k, x in v.items() if x is not None and x != []}
    if isinstance(v, list):
        return [_no_nulls(x) for x in v]
    return v


def differences(a: Any, b: Any, path: str = "$", limit: int = 8) -> list[str]:
    """Up to `limit` places where two JSON values differ (a: expected, b: got)."""
    out: list[str] = []

    def walk(x: Any, y: Any, p: str) -> None:
        if len(out) >= limit:
            return
        if isinstance(x, dict) and isinstance(y, dict):
            for k in x.keys() - y.keys():
                if len(out) < limit:
                    out.append(f"{p}.{k} missing")
            for k in y.keys() - x.keys():
                if len(out) < limit:
                    out.append(f"{p}.{k} unexpected")
            for k in x.keys() & y.keys():
                walk(x[k], y[k], f"{p}.{k}")
        elif isinstance(x, list) and isinstance(y, list):
            if len(x) != len(y):
                out.append(f"{p}: {len(x)} items, got {len(y)}")
                return
            for i, (xi, yi) in enumerate(zip(x, y, strict=True)):
                walk(xi, yi, f"{p}[{i}]")
                if len(out) >= limit:
                    return
        elif type(x) is not type(y) and not (isinstance(x, float) and isinstance(y, float)):
            out.append(f"{p}: {type(x).__name__} {str(x)[:24]!r}, got {type(y).__name__} {str(y)[:24]!r}")
        elif x != y:
            out.append(f"{p}: {str(x)[:24]!r}, got {str(y)[:24]!r}")

    walk(a, b, path)
    return sorted(out)


def _lost_keys(msg_codec: Message) -> list[str]:
    """OpenAI keys the codec kept in `extra`: json_format (ignore_unknown_fields) drops them."""
    extra_codec = json.loads(json_format.MessageToJson(msg_codec, preserving_proto_field_name=True))
    found: list[str] = []

    def walk(v: Any, p: str) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                if k == "extra" and isinstance(x, dict):
                    found.extend(f"{p}.{kk}" for kk in x)
                else:
                    walk(x, f"{p}.{k}")
        elif isinstance(v, list) and v:
            walk(v[0], f"{p}[0]")

    walk(extra_codec, "$")
    return sorted(found)


# -- timing ------------------------------------------------------------------------------------


def best_us(fn: Callable[[], object], repeat: int, min_time: float) -> tuple[float, int]:
    """Best of `repeat` timeit runs, µs per call, with the number of calls chosen so one run
    lasts at least `min_time` seconds."""
    timer = timeit.Timer(fn)
    number = 1
    while True:
        t = timer.timeit(number)
        if t >= min_time:
            break
        number = max(number * 2, int(number * min_time / max(t, 1e-9) * 1.1))
    runs = timer.repeat(repeat=repeat, number=number)
    return round(min(runs) / number * 1e6, 2), number


def case(
    name: str,
    body: dict[str, Any],
    cls: Callable[[], Message],
    adapt: Callable[[dict[str, Any]], dict[str, Any]],
    unwrap: Callable[[Any], Any],
    repeat: int,
    min_time: float,
) -> dict[str, Any]:
    adapted = adapt(body)
    msg_codec = cls()
    codec.decode_response(body, msg_codec)
    msg_jf = cls()
    json_format.ParseDict(adapted, msg_jf, ignore_unknown_fields=True)

    def dec_codec() -> None:
        codec.decode_response(body, cls())

    def dec_jf() -> None:
        json_format.ParseDict(adapted, cls(), ignore_unknown_fields=True)

    def enc_codec() -> Any:
        return codec.encode(msg_codec)

    def enc_jf() -> Any:
        return json_format.MessageToDict(msg_codec, preserving_proto_field_name=True)

    d_codec, n1 = best_us(dec_codec, repeat, min_time)
    d_jf, n2 = best_us(dec_jf, repeat, min_time)
    d_adapt, n3 = best_us(lambda: adapt(body), repeat, min_time)
    e_codec, n4 = best_us(enc_codec, repeat, min_time)
    e_jf, n5 = best_us(enc_jf, repeat, min_time)
    expected = _no_nulls(body)
    out_codec = _no_nulls(unwrap(codec.encode(msg_codec)))
    out_jf = _no_nulls(unwrap(json_format.MessageToDict(msg_codec, preserving_proto_field_name=True)))
    codec_diffs = differences(expected, out_codec)
    same = _without_extra(msg_codec) == _without_extra(msg_jf)
    return {
        "name": name,
        "json_bytes": len(orjson.dumps(body)),
        "decode": {
            "codec_us": d_codec,
            "json_format_us": d_jf,
            "adapt_us": d_adapt,
            "ratio_json_format_vs_codec": round(d_jf / d_codec, 2) if d_codec else None,
            "numbers": [n1, n2, n3],
            "same_message_apart_from_extra": same,
            "json_format_dropped": _lost_keys(msg_codec),
        },
        "encode": {
            "codec_us": e_codec,
            "json_format_us": e_jf,
            "ratio_json_format_vs_codec": round(e_jf / e_codec, 2) if e_codec else None,
            "numbers": [n4, n5],
            "codec_gives_openai_json": not codec_diffs,
            "codec_differences": codec_diffs,
            "json_format_differences": differences(expected, out_jf),
        },
    }


def run(repeat: int, min_time: float, inputs: int, dims: int) -> dict[str, Any]:
    from google.protobuf.internal import api_implementation  # noqa: PLC0415

    chat = chat_response()
    emb = embeddings_response(inputs, dims)
    cases = {
        "chat_response": case(
            "chat completion response (fake's example) -> CreateChatCompletionResponse",
            chat,
            chat_pb2.CreateChatCompletionResponse,
            adapt_chat,
            lambda v: v.get("chat_completion", v) if isinstance(v, dict) else v,
            repeat,
            min_time,
        ),
        "embeddings_response": case(
            f"embeddings response {inputs} x {dims} floats -> CreateEmbeddingResponse",
            emb,
            embeddings_pb2.CreateEmbeddingResponse,
            adapt_embeddings,
            lambda v: v,
            repeat,
            min_time,
        ),
    }
    return {
        "tool": f"timeit, best of {repeat} repeats of >= {min_time} s each",
        "protobuf_backend": api_implementation.Type(),
        "python": sys.version.split()[0],
        "cases": cases,
        "adaptation": "json_format needs the proto's shape: the chat response is wrapped in its "
        "`chat_completion` envelope field and each embedding's `embedding` array is moved to the "
        "oneof member `floats: {values: [...]}`; json_format cannot read OpenAI's JSON as-is",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.codec_lever", description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.2, help="seconds per timeit run")
    ap.add_argument("--inputs", type=int, default=16)
    ap.add_argument("--dims", type=int, default=1536)
    args = ap.parse_args(argv)
    print(json.dumps(run(args.repeat, args.min_time, args.inputs, args.dims)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
