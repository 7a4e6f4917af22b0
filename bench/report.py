"""Targets, plots (matplotlib) and the markdown report of one benchmark run."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

PATH_LABELS = {"gateway": "gateway (gRPC)", "direct": "direct (HTTP)", "litellm": "LiteLLM proxy"}
COLORS = {"gateway": "#1f77b4", "direct": "#7f7f7f", "litellm": "#d62728"}
NA = "\u2013"  # shown for a value that does not apply
BASIC = ("unary_c1", "unary_c64", "embeddings_c1", "embeddings_c16", "stream64_c1", "stream64_c64")


def dig(d: Any, *keys: Any) -> Any:
    for k in keys:
        if (isinstance(d, dict) and k in d) or (
            isinstance(d, list) and isinstance(k, int) and -len(d) <= k < len(d)
        ):
            d = d[k]
        else:
            return None
    return d


def fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return NA
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.1f}" if digits > 1 else f"{v:.0f}"
        return f"{v:.{digits}f}"
    return str(v)


# -- targets -----------------------------------------------------------------------------------


def _target(
    name: str, op: str, goal: float, unit: str, value: float | None, source: str, note: str = ""
) -> dict[str, Any]:
    t: dict[str, Any] = {
        "name": name,
        "op": op,
        "target": goal,
        "unit": unit,
        "measured": value,
        "source": source,
        "note": note,
        "target_text": f"{op} {fmt(goal)} {unit}".strip(),
    }
    if value is None:
        t.update(verdict="n/a", measured_text="not measured", miss="")
        return t
    t["measured_text"] = f"{fmt(value)} {unit}".strip()
    met = value <= goal if op == "<=" else value >= goal
    t["verdict"] = "met" if met else "missed"
    if met:
        t["miss"] = ""
    elif op == "<=":
        t["miss"] = f"+{fmt(value - goal)} {unit} over ({fmt(value / goal if goal else 0.0)}x the target)"
    else:
        t["miss"] = f"{fmt(goal - value)} {unit} short ({fmt(value / goal * 100, 0)}% of the target)"
    return t


def evaluate_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    s = result["scenarios"]
    workers = dig(result, "gateway", "workers") or 1
    gw1 = dig(s, "unary_c1", "paths", "gateway", "loadgen", "latency_ms")
    d1 = dig(s, "unary_c1", "paths", "direct", "loadgen", "latency_ms")
    added50 = added99 = None
    if gw1 and d1 and gw1.get("p50") is not None and d1.get("p50") is not None:
        added50 = round(gw1["p50"] - d1["p50"], 3)
        added99 = round(gw1["p99"] - d1["p99"], 3)
    cpu_req = dig(s, "unary_c64", "paths", "gateway", "derived", "middle_cpu_us_per_req")
    cpu_ev = dig(s, "stream64_c64", "paths", "gateway", "derived", "middle_cpu_us_per_event")
    streams = dig(s, "cadence_max_streams", "paths", "gateway", "max_stall_free")
    rss = dig(s, "rss_per_stream", "paths", "gateway", "derived", "rss_per_stream_kib")
    gw_rps = dig(s, "unary_c64", "paths", "gateway", "loadgen", "rps")
    lt_rps = dig(s, "unary_c64", "paths", "litellm", "loadgen", "rps")
    ratio = round(gw_rps / workers / lt_rps, 2) if gw_rps and lt_rps else None
    last_step = dig(s, "cadence_max_streams", "paths", "gateway", "steps", -1)
    cadence_note = ""
    if last_step and not last_step.get("pass"):
        sat = ", ".join(last_step.get("saturated") or []) or "nothing at 90%+"
        cadence_note = f"first failing step {last_step['streams']} streams; CPU-saturated there: {sat}"
    return [
        _target(
            "Added latency p50, unary chat at c=1 (gateway - direct)", "<=", 0.5, "ms", added50, "unary_c1"
        ),
        _target(
            "Added latency p99, unary chat at c=1 (gateway - direct)", "<=", 1.0, "ms", added99, "unary_c1"
        ),
        _target("Gateway CPU per unary chat completion (c=64)", "<=", 400.0, "µs", cpu_req, "unary_c64"),
        _target(
            "Gateway CPU per streamed event (64-event stream, c=64)", "<=", 40.0, "µs", cpu_ev, "stream64_c64"
        ),
        _target(
            "Stall-free concurrent streams at a 20 ms cadence (no gap > 40 ms)",
            ">=",
            500,
            "streams",
            streams,
            "cadence_max_streams",
            cadence_note,
        ),
        _target("RSS per open stream", "<=", 50.0, "KiB", rss, "rss_per_stream"),
        _target(
            "Throughput vs LiteLLM (unary c=64, per process)",
            ">=",
            20.0,
            "x",
            ratio,
            "unary_c64",
            "" if ratio is not None else "LiteLLM was not measured",
        ),
    ]


# -- profile -----------------------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::\d+)?\)$")
# Frames under which everything runs (interpreter start, the loop, thread bootstrap): left out of
# the inclusive list, where they would only say 100 %.
_ROOT_FUNCS = frozenset(
    {
        "<module>",
        "_run_code",
        "_run_module_as_main",
        "main",
        "run",
        "Runner.run",
        "Thread._bootstrap",
        "Thread._bootstrap_inner",
        "Thread.run",
    }
)


def _short_file(path: str) -> str:
    for marker in ("site-packages/", "server/", "client_stubs/python/"):
        i = path.rfind(marker)
        if i >= 0:
            return path[i + len(marker) :]
    return path.rsplit("lib/python3", 1)[-1].split("/", 1)[-1] if "lib/python3" in path else path


def _category(path: str, func: str) -> str:
    if func == "Runner.run" and path.endswith("asyncio/runners.py"):
        # The loop's own frame as leaf: time in C under the event loop (uvloop, grpc's Cython core).
        return "native code under the event loop (uvloop, grpc cygrpc)"  # same text as _NATIVE
    if func == "Thread.run" and path.endswith("threading.py"):
        return "native code in helper threads (grpc.aio poller)"
    short = _short_file(path)
    if "openai_grpc_server/" in path:
        return "gateway code (openai_grpc_server)"
    if "site-packages/" in path:
        return short.split("/", 1)[0]
    if "lib/python3" in path:
        return "stdlib " + short.split("/", 1)[0].removesuffix(".py")
    return short


def summarize_collapsed(text: str, top: int = 15) -> dict[str, Any]:
    """Top self and inclusive costs from py-spy's collapsed ('raw') stacks."""
    self_c: Counter[str] = Counter()
    incl_c: Counter[str] = Counter()
    cat_c: Counter[str] = Counter()
    gw_self: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        n = int(count_s)
        total += n
        frames = []
        for raw in stack.split(";"):
            m = _FRAME.match(raw)
            if m is None:
                continue
            frames.append((f"{m['func']} ({_short_file(m['file'])})", m["file"], m["func"]))
        if not frames:
            continue
        leaf, leaf_file, leaf_func = frames[-1]
        category = _category(leaf_file, leaf_func)
        self_c[f"[{category}]" if category.startswith("native") else leaf] += n
        cat_c[category] += n
        if category.startswith("gateway code"):
            gw_self[leaf] += n
        for name in {f for f, _, func in frames if func not in _ROOT_FUNCS}:
            incl_c[name] += n

    def pct(c: Counter[str], n: int = top) -> list[dict[str, Any]]:
        return [{"frame": k, "pct": round(v / total * 100, 1)} for k, v in c.most_common(n)] if total else []

    return {
        "samples": total,
        "self": pct(self_c),
        "inclusive": pct(incl_c),
        "by_package": pct(cat_c, 100),  # every package: the "why" paragraphs sum them by family
        "gateway_self": pct(gw_self, 8),
    }


# -- plots -------------------------------------------------------------------------------------


def make_plots(result: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return {}
    out_dir.mkdir(parents=True, exist_ok=True)
    s = result["scenarios"]
    plots: dict[str, Path] = {}

    def save(fig: Any, name: str) -> None:
        path = out_dir / f"{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        plots[name] = path

    # 1. latency percentiles
    fig, axes = plt.subplots(1, len(BASIC), figsize=(3.0 * len(BASIC), 3.8), sharey=False)
    for ax, key in zip(axes, BASIC, strict=True):
        labels, vals = [], []
        for path in ("gateway", "direct", "litellm"):
            lat = dig(s, key, "paths", path, "loadgen", "latency_ms")
            if lat and lat.get("p50") is not None:
                labels.append(path)
                vals.append((lat["p50"], lat["p90"], lat["p99"]))
        width = 0.25
        for i, (pname, v) in enumerate(zip(labels, vals, strict=True)):
            ax.bar([j + (i - 1) * width for j in range(3)], v, width, label=pname, color=COLORS[pname])
        ax.set_xticks(range(3), ["p50", "p90", "p99"])
        ax.set_yscale("log")
        ax.set_title(key, fontsize=9)
        ax.set_ylabel("ms" if key == BASIC[0] else "")
        ax.grid(axis="y", alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.suptitle("Latency percentiles per request (stream: whole stream), log scale", fontsize=10)
    save(fig, "latency")

    # 2. CPU per request / event of the process in the middle
    items: list[tuple[str, str, str]] = [
        ("unary_c1", "middle_cpu_us_per_req", "unary c1 /req"),
        ("unary_c64", "middle_cpu_us_per_req", "unary c64 /req"),
        ("embeddings_c16", "middle_cpu_us_per_req", "embed c16 /req"),
        ("stream64_c1", "middle_cpu_us_per_event", "stream c1 /event"),
        ("stream64_c64", "middle_cpu_us_per_event", "stream c64 /event"),
    ]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for i, path in enumerate(("gateway", "litellm")):
        cpu_vals = [dig(s, k, "paths", path, "derived", f) or 0 for k, f, _ in items]
        xs = [j + (i - 0.5) * 0.38 for j in range(len(items))]
        bars = ax.bar(xs, cpu_vals, 0.38, label=PATH_LABELS[path], color=COLORS[path])
        for b, cv in zip(bars, cpu_vals, strict=True):
            if cv:
                ax.annotate(
                    f"{cv:.0f}", (b.get_x() + b.get_width() / 2, cv), ha="center", va="bottom", fontsize=7
                )
    ax.axhline(400, color="#1f77b4", ls=":", lw=1)
    ax.axhline(40, color="#1f77b4", ls="--", lw=1)
    ax.text(len(items) - 0.5, 400, "target 400 µs/req", fontsize=7, va="bottom", ha="right")
    ax.text(len(items) - 0.5, 40, "target 40 µs/event", fontsize=7, va="bottom", ha="right")
    ax.set_xticks(range(len(items)), [lbl for _, _, lbl in items], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("CPU µs (process under test)")
    ax.set_title("CPU of the process in the middle, per request or per streamed event", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3, which="both")
    save(fig, "cpu")

    # 3. cadence
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for path in ("gateway", "direct", "litellm"):
        steps = dig(s, "cadence_max_streams", "paths", path, "steps") or []
        xs = [st["streams"] for st in steps if "gap_ms" in st]
        if not xs:
            continue
        a1.plot(
            xs,
            [st["gap_ms"]["max"] or 0 for st in steps if "gap_ms" in st],
            "o-",
            label=path,
            color=COLORS[path],
        )
        a1.plot(xs, [st["gap_ms"]["p99"] or 0 for st in steps if "gap_ms" in st], "x:", color=COLORS[path])
        cpu = [
            st["cpu_pct"].get("middle") if path != "direct" else st["cpu_pct"].get("upstream")
            for st in steps
            if "gap_ms" in st
        ]
        a2.plot(
            xs,
            [c or 0 for c in cpu],
            "o-",
            label=f"{path} ({'upstream' if path == 'direct' else 'middle'})",
            color=COLORS[path],
        )
    a1.axhline(40, color="black", ls="--", lw=1)
    a1.set_xlabel("concurrent streams (20 ms cadence)")
    a1.set_ylabel("inter-message gap ms (o max, x p99)")
    a1.set_yscale("log")
    a1.legend(fontsize=8)
    a1.grid(alpha=0.3, which="both")
    a2.set_xlabel("concurrent streams (20 ms cadence)")
    a2.set_ylabel("CPU % of one core")
    a2.legend(fontsize=8)
    a2.grid(alpha=0.3)
    fig.suptitle("Holding streams at a 20 ms event cadence", fontsize=10)
    save(fig, "cadence")

    # 4. RSS per stream and throughput ratio
    fig, (b1, b2) = plt.subplots(1, 2, figsize=(9, 3.6))
    names, vals, cols = [], [], []
    for path in ("gateway", "litellm"):
        v = dig(s, "rss_per_stream", "paths", path, "derived", "rss_per_stream_kib")
        if v is not None:
            names.append(PATH_LABELS[path])
            vals.append(v)
            cols.append(COLORS[path])
    b1.bar(names, vals, color=cols)
    b1.axhline(50, color="black", ls="--", lw=1)
    b1.set_ylabel("KiB of RSS per open stream")
    b1.set_title("RSS per open stream (target ≤ 50 KiB)", fontsize=9)
    names, vals, cols = [], [], []
    for path in ("gateway", "direct", "litellm"):
        v = dig(s, "unary_c64", "paths", path, "loadgen", "rps")
        if v:
            names.append(path)
            vals.append(v)
            cols.append(COLORS[path])
    b2.bar(names, vals, color=cols)
    b2.set_yscale("log")
    b2.set_ylabel("requests/s")
    b2.set_title("Unary chat throughput at c=64 (one process each)", fontsize=9)
    for i, v in enumerate(vals):
        b2.annotate(f"{v:,.0f}", (i, v), ha="center", va="bottom", fontsize=8)
    save(fig, "rss_throughput")
    return plots


# -- levers ------------------------------------------------------------------------------------

LEVER_ORDER = (
    "upstream_transport",
    "event_loop",
    "json_library",
    "codec_json_path",
    "embeddings_base64",
    "coalesce_events",
    "tracing",
    "shared_rate_limit",
)
MIN_MARGIN_PCT = 3.0  # never call a difference smaller than this real
_UNITS = {"cpu_us_per_req": "request", "cpu_us_per_event": "event"}
_LOAD_LABELS = {
    "unary_c1": "unary c=1",
    "unary_c64": "unary c=64",
    "embeddings_c16": "embeddings c=16",
    "stream64_c64": "64-event stream c=64",
    "cadence_64": "20 ms cadence",
}


def _pct(r: float) -> str:
    return f"{abs(r - 1) * 100:.0f}%"


def lever_margin(levers: dict[str, Any]) -> tuple[float, str]:
    """The noise band (percent) a lever's difference must exceed, and where it comes from."""
    noise = levers.get("noise") or {}
    drift = noise.get("drift_pct")
    if drift is None:
        return 5.0, "no repeat of the baseline was measured: a 5 % band is assumed"
    m = max(MIN_MARGIN_PCT, float(drift))
    return m, (
        f"the baseline gateway measured twice under unary c=64 ({fmt(noise['first_cpu_us_per_req'], 0)} "
        f"and {fmt(noise['again_cpu_us_per_req'], 0)} µs per request) drifted {fmt(float(drift), 1)} %; "
        f"band ±{fmt(m, 1)} % (at least {MIN_MARGIN_PCT:.0f} %)"
    )


def _secondary(load: str, entry: dict[str, Any]) -> str:
    c, a = entry.get("chosen") or {}, entry.get("alternative") or {}
    if load == "unary_c1" and c.get("p50_ms") is not None and a.get("p50_ms") is not None:
        cpu = f"{fmt(entry['ratio'])}x CPU, " if entry.get("ratio") is not None else ""
        return f"c=1: {cpu}p50 {fmt(c['p50_ms'], 3)} → {fmt(a['p50_ms'], 3)} ms"
    if entry.get("ratio") is not None:
        return f"{_LOAD_LABELS.get(load, load)}: {fmt(entry['ratio'])}x CPU per {_UNITS[entry['metric']]}"
    return ""


def _speed(r: float | None, what: str) -> str:
    """'json_format is 3.1x slower at X' / '1.6x faster at X' from json_format time / codec time."""
    if r is None:
        return f"{what}: not measured"
    if r >= 1:
        return f"{fmt(r)}x slower at {what}"
    return f"{fmt(1 / r)}x faster at {what}"


def _judge_codec(item: dict[str, Any]) -> tuple[str, str]:
    cases = dig(item, "codec", "cases") or {}
    chat, emb = cases.get("chat_response") or {}, cases.get("embeddings_response") or {}
    rc = dig(chat, "decode", "ratio_json_format_vs_codec")
    if rc is None:
        return "n/a", "not measured"
    speeds = ", ".join(
        _speed(dig(c, op, "ratio_json_format_vs_codec"), f"{op[:-1]}ing {label}")
        for c, label in ((chat, "the chat response"), (emb, "embeddings"))
        for op in ("decode", "encode")
    )
    dropped = sum(len(dig(c, "decode", "json_format_dropped") or []) for c in (chat, emb))
    enc_wrong = [k for k, c in cases.items() if dig(c, "encode", "json_format_differences")]
    faults = ["reads OpenAI's JSON only after hand adaptation (envelope, oneof unions)"]
    if dropped:
        faults.append(f"dropped {dropped} key(s) the codec keeps in `extra`")
    if enc_wrong:
        faults.append("writes int64 as strings and unions as their member names")
    faster_somewhere = any(
        (dig(c, op, "ratio_json_format_vs_codec") or 2) < 1
        for c in (chat, emb)
        for op in ("decode", "encode")
    )
    head = (
        "keep the codec; where json_format is faster its output is not the gateway's mapping"
        if faster_somewhere
        else "keep the codec"
    )
    return "keep", f"{head}: json_format is {speeds}; it {'; '.join(faults)}"


def _limiter_cases(item: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    """The in-process case and the Redis cases of `bench.limiter_lever`."""
    cases = dig(item, "limiter", "cases") or {}
    redis = [(k, v) for k, v in cases.items() if k.startswith("redis") and "added_cpu_us_per_call" in v]
    return cases.get("in_process") or {}, redis


def _judge_limiter(item: dict[str, Any]) -> tuple[str, str]:
    local, redis = _limiter_cases(item)
    if not local or not redis:
        return "n/a", dig(item, "limiter", "failed") or "not measured"
    target = item.get("target_us", 150.0)
    name, best = min(redis, key=lambda kv: kv[1]["added_cpu_us_per_call"])
    added = best["added_cpu_us_per_call"]
    verdict = "met" if added <= target else "**missed**"
    fell_back = [k for k, v in redis if v.get("failed")]
    text = (
        f"Redis ({name}) adds {fmt(added, 1)} µs of gateway CPU per call (reserve + settle) to the "
        f"{fmt(local.get('cpu_us_per_call'), 1)} µs of the in-process buckets, target "
        f"≤ +{fmt(target, 0)} µs: {verdict}; redis-server spends "
        f"{fmt(best.get('redis_server_cpu_us_per_call'), 1)} µs per call. Keep in-process buckets as "
        "the default; set `rate_limit.redis_url` when limits must hold across replicas"
    )
    if fell_back:
        text += f"; **{', '.join(fell_back)} fell back to in-process buckets during the run**"
    return "keep", text


def judge_levers(result: dict[str, Any]) -> None:
    """Give each lever its primary figure, ratio and one-line verdict (in place)."""
    levers = result.get("levers") or {}
    items = levers.get("items") or {}
    if not items:
        return
    margin, why = lever_margin(levers)
    levers["margin_pct"] = margin
    levers["margin_source"] = why
    for key, item in items.items():
        if key == "codec_json_path":
            item["verdict_kind"], item["verdict"] = _judge_codec(item)
            continue
        if key == "shared_rate_limit":
            item["verdict_kind"], item["verdict"] = _judge_limiter(item)
            continue
        if "skipped" in item or "failed" in item:
            item["verdict_kind"], item["verdict"] = "n/a", item.get("skipped") or item.get("failed", "")
            continue
        load = item.get("primary_load")
        entry = (item.get("loads") or {}).get(load or "", {})
        r, delta, metric = entry.get("ratio"), entry.get("delta"), entry.get("metric", "cpu_us_per_req")
        unit = _UNITS.get(metric, "request")
        if r is None:
            item["verdict_kind"], item["verdict"] = "n/a", "no figure for one of the two values"
            continue
        chosen, alt = item["chosen"], item["alternative"]
        d_txt = f"{'+' if delta >= 0 else '-'}{fmt(abs(delta), 1)} µs"
        if item.get("kind") == "cost":
            if r >= 1 + margin / 100:
                kind, text = (
                    "keep",
                    (
                        f"{item['env']}={alt} costs {d_txt} per {unit} (+{_pct(r)}): keep {chosen} as "
                        "the default"
                    ),
                )
            else:
                kind, text = "noise", f"{alt} costs nothing measurable (within ±{fmt(margin, 1)} %)"
        elif r >= 1 + margin / 100:
            kind, text = "keep", f"keep {chosen}: {alt} costs {_pct(r)} more CPU per {unit} ({d_txt})"
        elif r <= 1 - margin / 100:
            kind, text = (
                "reconsider",
                (f"**reconsider**: {alt} costs {_pct(r)} less CPU per {unit} ({d_txt}) than {chosen}"),
            )
        else:
            kind, text = "noise", f"no difference beyond the noise band (±{fmt(margin, 1)} %): keep {chosen}"
        extras = [
            _secondary(ld, e)
            for ld, e in (item.get("loads") or {}).items()
            if ld != load and _secondary(ld, e)
        ]
        c_sum = entry.get("chosen") or {}
        if key == "embeddings_base64":
            fmt_c = c_sum.get("upstream_encoding_format")
            fmt_a = (entry.get("alternative") or {}).get("upstream_encoding_format")
            if fmt_c != "base64" or (fmt_a or "").startswith("base64"):
                extras.append(f"**upstream saw encoding_format {fmt_c} / {fmt_a}: the lever did not switch**")
        if key == "coalesce_events" and (c_sum.get("events_per_message") or 0) < 1.2:
            extras.append("events came one per upstream read: nothing to coalesce")
        if extras:
            text += "; " + "; ".join(extras)
        item["verdict_kind"], item["verdict"] = kind, text


def _figure(summary: dict[str, Any], metric: str) -> str:
    v = summary.get(metric)
    return f"{fmt(v, 1)} µs" if v is not None else NA


def limiter_section(item: dict[str, Any]) -> list[str]:
    out = ["### Rate limits shared on Redis (in process, `shared_rate_limit`)", ""]
    lim = item.get("limiter") or {}
    if "cases" not in lim:
        return [*out, f"Not measured: {lim.get('failed', 'not run')}.", ""]
    out += [
        f"{lim['concurrency']} tasks loop reserve (1 request + 120 tokens) -> settle (80 tokens) for "
        f"{lim['calls']} calls per limiter, limits never binding, uvloop; redis-server on loopback, "
        f"pinned with the process (CPU {lim.get('pinned_cpus') or 'any'}). CPU of this process includes "
        "the background settles; acquire latency includes waiting for the event loop.",
        "",
        "| limiter | CPU µs per call | added µs | redis-server µs per call | calls/s | acquire p50 µs "
        "| acquire p99 µs | c=1: acquire p50 / p99 µs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, case in lim["cases"].items():
        out.append(
            f"| {name}{' (fell back)' if case.get('failed') else ''} "
            f"| {fmt(case.get('cpu_us_per_call'), 1)} | {fmt(case.get('added_cpu_us_per_call'), 1)} "
            f"| {fmt(case.get('redis_server_cpu_us_per_call'), 1)} "
            f"| {fmt(case.get('calls_per_s'), 0)} | {fmt(case.get('acquire_p50_us'), 1)} "
            f"| {fmt(case.get('acquire_p99_us'), 1)} "
            f"| {fmt(dig(case, 'c1', 'acquire_p50_us'), 1)} / {fmt(dig(case, 'c1', 'acquire_p99_us'), 1)} |"
        )
    return [*out, ""]


def lever_rows(result: dict[str, Any]) -> list[str]:
    levers = result.get("levers") or {}
    items = levers.get("items") or {}
    out = [
        "| lever | setting | chosen | alternative | load | figure | chosen | alternative "
        "| alternative / chosen | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in LEVER_ORDER:
        item = items.get(key)
        if item is None:
            continue
        title = f"{item['title']} (`{key}`)"
        if key == "codec_json_path":
            dec = dig(item, "codec", "cases", "chat_response", "decode") or {}
            if not dec:
                out.append(
                    f"| {title} | in process | | | | {item.get('codec', {}).get('failed', 'not run')} "
                    "| | | | |"
                )
                continue
            out.append(
                f"| {title} | in process (`bench/codec_lever.py`) | {item['chosen_label']} "
                f"| {item['alternative_label']} | decode the chat response | µs per conversion "
                f"| {fmt(dec['codec_us'], 1)} µs | {fmt(dec['json_format_us'], 1)} µs "
                f"| {fmt(dec.get('ratio_json_format_vs_codec'))}x | {item.get('verdict', '')} |"
            )
            continue
        if key == "shared_rate_limit":
            local, redis = _limiter_cases(item)
            best = min((v for _, v in redis), key=lambda v: v["cpu_us_per_call"], default={})
            ratio = best["cpu_us_per_call"] / local["cpu_us_per_call"] if best and local else None
            out.append(
                f"| {title} | in process (`bench/limiter_lever.py`), `{item['env']}` "
                f"| {item['chosen_label']} "
                f"| {item['alternative_label']} | acquire + settle, c={dig(item, 'limiter', 'concurrency')} "
                f"| CPU per call | {_figure(local, 'cpu_us_per_call')} | {_figure(best, 'cpu_us_per_call')} "
                f"| {fmt(ratio)}x | {item.get('verdict', '')} |"
            )
            continue
        setting = f"`{item['env']}`"
        chosen = f"`{item['chosen']}`: {item['chosen_label']}"
        alt = f"`{item['alternative']}`: {item['alternative_label']}"
        if "skipped" in item or "failed" in item:
            out.append(f"| {title} | {setting} | {chosen} | {alt} | | | | | | {item.get('verdict', '')} |")
            continue
        load = item.get("primary_load", "")
        e = (item.get("loads") or {}).get(load, {})
        metric = e.get("metric", "cpu_us_per_req")
        out.append(
            f"| {title} | {setting} | {chosen} | {alt} | {_LOAD_LABELS.get(load, load)} "
            f"| gateway CPU per {_UNITS.get(metric, 'request')} | {_figure(e.get('chosen') or {}, metric)} "
            f"| {_figure(e.get('alternative') or {}, metric)} | {fmt(e.get('ratio'))}x "
            f"| {item.get('verdict', '')} |"
        )
    return out


def lever_detail_rows(result: dict[str, Any]) -> list[str]:
    items = dig(result, "levers", "items") or {}
    out = [
        "| lever | load | value | gateway CPU µs per req (event) | throughput | p50 / p99 ms "
        "| events per message | gateway CPU % | other processes % | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in LEVER_ORDER:
        item = items.get(key) or {}
        for load, e in (item.get("loads") or {}).items():
            for side in ("chosen", "alternative"):
                sm = e.get(side) or {}
                value = f"`{item[side]}`" + (" (chosen)" if side == "chosen" else "")
                if not sm or "failed" in sm:
                    out.append(f"| `{key}` | {load} | {value} | {sm.get('failed', 'not run')} | | | | | | |")
                    continue
                per = fmt(sm.get("cpu_us_per_req"), 0)
                if sm.get("cpu_us_per_event") is not None:
                    per = f"{per} ({fmt(sm['cpu_us_per_event'], 1)})"
                if load == "cadence_64":
                    thr = f"{fmt(sm.get('events_per_s'))} ev/s of {fmt(sm.get('expected_events_per_s'))}"
                    lat = (
                        f"gap p99 {fmt(sm.get('gap_p99_ms'))} / max {fmt(sm.get('gap_max_ms'))}"
                        f"{'' if sm.get('pass') else ' (**fails** the step rule)'}"
                    )
                elif sm.get("events_per_s") is not None:
                    thr = f"{fmt(sm.get('rps'))} streams/s, {fmt(sm.get('events_per_s'))} ev/s"
                    lat = f"{fmt(sm.get('p50_ms'), 3)} / {fmt(sm.get('p99_ms'), 3)}"
                else:
                    thr = f"{fmt(sm.get('rps'))} req/s"
                    lat = f"{fmt(sm.get('p50_ms'), 3)} / {fmt(sm.get('p99_ms'), 3)}"
                    if sm.get("upstream_encoding_format"):
                        thr += f"; upstream encoding_format: {sm['upstream_encoding_format']}"
                out.append(
                    f"| `{key}` | {load} | {value} | {per} | {thr} | {lat} | "
                    f"{fmt(sm.get('events_per_message'))} "
                    f"| {fmt(sm.get('middle_cpu_pct'), 0)} | {fmt(sm.get('other_processes_pct'), 0)} "
                    f"| {sm.get('errors')} |"
                )
    return out


def codec_rows(item: dict[str, Any]) -> list[str]:
    cases = dig(item, "codec", "cases") or {}
    out = [
        "| conversion | codec µs | json_format µs | json_format / codec | what json_format needed or "
        "got wrong |",
        "|---|---|---|---|---|",
    ]
    for key, c in cases.items():
        dec, enc = c["decode"], c["encode"]
        dropped = dec.get("json_format_dropped") or []
        note = f"input adapted first ({fmt(dec['adapt_us'], 1)} µs, not counted)"
        if dropped:
            note += f"; dropped {len(dropped)} key(s) the codec keeps in `extra`: {', '.join(dropped[:4])}"
        if not dec.get("same_message_apart_from_extra"):
            note += "; **the two messages differ beyond `extra`**"
        out.append(
            f"| decode: {c['name']} | {fmt(dec['codec_us'], 1)} | {fmt(dec['json_format_us'], 1)} "
            f"| {fmt(dec.get('ratio_json_format_vs_codec'))}x | {note} |"
        )
        diffs = enc.get("json_format_differences") or []
        enote = "output is not OpenAI's JSON: " + "; ".join(f"`{d}`" for d in diffs[:3]) if diffs else "same"
        if not enc.get("codec_gives_openai_json"):
            enote += "; (the codec's own output also differs from the input)"
        out.append(
            f"| encode: {key.replace('_', ' ')} message → dict | {fmt(enc['codec_us'], 1)} "
            f"| {fmt(enc['json_format_us'], 1)} | {fmt(enc.get('ratio_json_format_vs_codec'))}x | {enote} |"
        )
    return out


# -- why a target was missed ---------------------------------------------------------------------

_CLIENT = {
    "aiohttp", "httpx", "httpx_aiohttp", "httpcore", "h11", "anyio", "yarl", "multidict",
    "aiohappyeyeballs", "sniffio", "idna", "propcache", "frozenlist", "aiosignal",
}  # fmt: skip
FAMILIES: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("gRPC core and event loop (native)", lambda c: c.startswith("native") or c in ("grpc", "<string>")),
    ("upstream HTTP client (aiohttp, httpx, httpx-aiohttp)", lambda c: c in _CLIENT),
    ("gateway code", lambda c: c.startswith("gateway code")),
    ("telemetry (OpenTelemetry, logging)", lambda c: c in ("opentelemetry", "stdlib logging")),
    ("protobuf and JSON", lambda c: c in ("google", "orjson", "stdlib json")),
    ("asyncio and other stdlib", lambda c: c.startswith("stdlib")),
)
_NEXT = {
    "gRPC core and event loop (native)": "it is grpc's C core and the loop, a fixed cost per RPC and per "
    "message: Python changes do not reach it; fewer messages per call (coalescing, trailers-only "
    "answers) or more processes (`--workers`) do",
    "upstream HTTP client (aiohttp, httpx, httpx-aiohttp)": "call aiohttp directly on the hot paths "
    "(httpx's request/response objects and the httpx-aiohttp adapter are pure overhead there) and "
    "build each credential's headers once",
    "gateway code": "work through its top self frames ({frames}); per-route work that does not "
    "depend on the request (plans, header sets, attribute dicts) can be computed once",
    "telemetry (OpenTelemetry, logging)": "record metrics with pre-built attribute sets per "
    "route/model, or count in plain integers and let the metric reader collect them",
    "protobuf and JSON": "keep message building in C (extend repeated fields in one call, "
    "avoid per-field setattr on hot messages)",
    "asyncio and other stdlib": "fewer tasks, futures and context managers per call",
    "other": "look at the raw stacks in the log directory",
}


def families(prof: dict[str, Any]) -> list[tuple[str, float]]:
    sums: dict[str, float] = {}
    for item in prof.get("by_package") or []:
        cat = item["frame"]
        name = next((n for n, test in FAMILIES if test(cat)), "other")
        sums[name] = sums.get(name, 0.0) + item["pct"]
    return sorted(sums.items(), key=lambda kv: -kv[1])


def _slices(prof: dict[str, Any], per: float | None, unit: str) -> str:
    parts = []
    for name, pct in families(prof)[:5]:
        us = f" ≈ {fmt(per * pct / 100, 0 if per * pct / 100 >= 10 else 1)} µs" if per else ""
        parts.append(f"{name} {fmt(pct, 1)} %{us}")
    return "; ".join(parts) + (f" (share of samples x CPU per {unit})" if per else "")


def _next_from_profile(prof: dict[str, Any], per: float | None, unit: str) -> str:
    """The largest slice the gateway can change, with the action for it."""
    fams = families(prof)
    if not fams:
        return ""
    top_native = next(((n, p) for n, p in fams if n.startswith("gRPC core")), None)
    ours = [(n, p) for n, p in fams if not n.startswith("gRPC core") and n != "other"]
    frames = ", ".join(f"`{f['frame']}` {fmt(f['pct'], 1)} %" for f in (prof.get("gateway_self") or [])[:3])
    txt = ""
    if ours:
        n, p = ours[0]
        us = f" (≈ {fmt(per * p / 100, 0)} µs per {unit})" if per else ""
        action = _NEXT[n].format(frames=frames)
        txt = f"the largest slice the gateway controls is {n} at {fmt(p, 1)} %{us}: {action}"
        if len(ours) > 1:
            n2, p2 = ours[1]
            txt += f"; then {n2} at {fmt(p2, 1)} %: {_NEXT[n2].format(frames=frames)}"
    if top_native:
        n, p = top_native
        txt += f". The native part ({fmt(p, 1)} %) stays: {_NEXT[n]}"
    return txt


def _lever_fig(result: dict[str, Any], key: str, load: str) -> dict[str, Any]:
    return dig(result, "levers", "items", key, "loads", load) or {}


def _lever_savings(result: dict[str, Any], load: str, metric_unit: str) -> str:
    """What the chosen lever values save against their alternatives, under `load`."""
    parts = []
    for key in LEVER_ORDER:
        e = _lever_fig(result, key, load)
        if e.get("delta") is None:
            continue
        item = dig(result, "levers", "items", key)
        parts.append(
            f"{item['env']}={item['alternative']} {'+' if e['delta'] >= 0 else '-'}"
            f"{fmt(abs(e['delta']), 1)} µs ({fmt(e['ratio'])}x)"
        )
    if not parts:
        return ""
    return (
        f"Switching one lever to its alternative changes CPU per {metric_unit} by: " + ", ".join(parts) + "."
    )


class _Why:
    """The "why and next step" paragraph of each missed target, from this run's numbers."""

    def __init__(self, result: dict[str, Any]) -> None:
        self.r = result
        self.s = result["scenarios"]
        self.prof = result.get("profile") or {}
        self.prof_s = result.get("profile_stream") or {}
        self.cpu64 = self.val("unary_c64", "gateway", "derived", "middle_cpu_us_per_req")
        self.ev64 = self.val("stream64_c64", "gateway", "derived", "middle_cpu_us_per_event")

    def val(self, key: str, path: str, *f: str) -> Any:
        return dig(self.s, key, "paths", path, *f)

    def next_unary(self) -> str:
        if not self.prof.get("samples"):
            return "profile the unary load (this run has no profile)"
        return _next_from_profile(self.prof, self.cpu64, "request")

    def latency(self, t: dict[str, Any]) -> str:
        q = "p50" if "p50" in t["name"] else "p99"
        g = self.val("unary_c1", "gateway", "loadgen", "latency_ms") or {}
        d = self.val("unary_c1", "direct", "loadgen", "latency_ms") or {}
        cpu1 = self.val("unary_c1", "gateway", "derived", "middle_cpu_us_per_req")
        lg_g = self.val("unary_c1", "gateway", "derived", "loadgen_cpu_us_per_req")
        lg_d = self.val("unary_c1", "direct", "derived", "loadgen_cpu_us_per_req")
        added = t["measured"]
        txt = (
            f"A c=1 call takes {fmt(g.get(q), 3)} ms at {q} through the gateway against "
            f"{fmt(d.get(q), 3)} ms "
            f"direct. The gateway spends {fmt(cpu1, 0)} µs of CPU per call at c=1"
        )
        if cpu1 and added:
            txt += f", {fmt(min(100.0, cpu1 / 10 / added), 0)} % of the {fmt(added, 3)} ms added"
        if lg_g and lg_d:
            txt += (
                f"; the load generator's gRPC client costs {fmt(lg_g, 0)} µs per call against "
                f"{fmt(lg_d, 0)} µs "
                "for the direct aiohttp client; the rest is the second loopback hop and its wake-ups"
            )
        txt += "."
        if q == "p99" and g.get("p99") and d.get("p99"):
            txt += (
                f" The tail (p99 - p50) is {fmt(g['p99'] - g['p50'], 3)} ms through the gateway against "
                f"{fmt(d['p99'] - d['p50'], 3)} ms direct."
            )
        lat = []
        for key in ("upstream_transport", "event_loop", "json_library", "tracing"):
            e = _lever_fig(self.r, key, "unary_c1")
            c, a = e.get("chosen") or {}, e.get("alternative") or {}
            if c.get(f"{q}_ms") is not None and a.get(f"{q}_ms") is not None:
                item = dig(self.r, "levers", "items", key)
                diff = a[f"{q}_ms"] - c[f"{q}_ms"]
                lat.append(
                    f"{item['env']}={item['alternative']} {'+' if diff >= 0 else '-'}{fmt(abs(diff), 3)} ms"
                )
        if lat:
            txt += (
                f" Levers at c=1 ({q} with the alternative minus with the chosen value): "
                + ", ".join(lat)
                + "."
            )
        goal_us = t["target"] * 1000
        if cpu1 and cpu1 > goal_us:
            nxt = (
                f"the gateway's own CPU per call ({fmt(cpu1, 0)} µs) is already over the "
                f"{fmt(goal_us, 0)} µs "
                f"budget, so cutting CPU per call comes first: {self.next_unary()}"
            )
        else:
            nxt = (
                "the gateway's CPU fits the budget: the rest is the hop itself (client stub, loopback, "
                "wake-ups); a Unix socket between client and gateway would show how much of it is TCP"
            )
        return f"{txt} **Next step:** {nxt}."

    def cpu(self, t: dict[str, Any]) -> str:
        rps = self.val("unary_c64", "gateway", "loadgen", "rps")
        cpu_pct = self.val("unary_c64", "gateway", "processes", "middle", "cpu_pct")
        txt = (
            f"At c=64 the gateway serves {fmt(rps, 0)} req/s at {fmt(cpu_pct, 0)} % of its core, "
            f"{fmt(self.cpu64, 0)} µs per call; the target needs {fmt(t['measured'] - t['target'], 0)} µs "
            f"({fmt((1 - t['target'] / t['measured']) * 100, 0)} %) less."
        )
        if self.prof.get("samples"):
            txt += (
                f" The py-spy profile of this load ({self.prof['samples']} samples) splits it: "
                f"{_slices(self.prof, self.cpu64, 'request')}."
            )
        sav = _lever_savings(self.r, "unary_c64", "request")
        if sav:
            txt += " " + sav
        return f"{txt} **Next step:** {self.next_unary()}."

    def stream(self, t: dict[str, Any]) -> str:
        eps = self.val("stream64_c64", "gateway", "loadgen", "events_per_s")
        mps = self.val("stream64_c64", "gateway", "loadgen", "messages_per_s")
        cpu_pct = self.val("stream64_c64", "gateway", "processes", "middle", "cpu_pct")
        txt = (
            f"At c=64 the gateway relays {fmt(eps, 0)} events/s at {fmt(cpu_pct, 0)} % of its core"
            + (f", {fmt(eps / mps)} events per gRPC message" if eps and mps else "")
            + f": {fmt(self.ev64, 1)} µs per event."
        )
        e = _lever_fig(self.r, "coalesce_events", "stream64_c64")
        if e.get("ratio"):
            txt += (
                f" One message per event costs {_figure(e['alternative'], 'cpu_us_per_event')} per event "
                f"({fmt(e['ratio'])}x the coalesced figure)."
            )
        if self.prof_s.get("samples"):
            txt += (
                f" The py-spy profile of this load ({self.prof_s['samples']} samples) splits it: "
                f"{_slices(self.prof_s, self.ev64, 'event')}."
            )
            nxt = _next_from_profile(self.prof_s, self.ev64, "event")
        else:
            nxt = "profile the stream load (this run has no stream profile)"
        return f"{txt} **Next step:** {nxt}."

    def cadence(self, t: dict[str, Any]) -> str:
        steps = self.val("cadence_max_streams", "gateway", "steps") or []
        fail = next((st for st in steps if not st.get("pass") and "gap_ms" in st), None)
        ok = [st for st in steps if st.get("pass")]
        per_stream = 1000.0 / (dig(self.s, "cadence_max_streams", "params", "gap_ms") or 20.0)
        ref = fail or (ok[-1] if ok else None)
        us = ref.get("middle_cpu_us_per_event") if ref else None
        txt = ""
        if fail:
            txt = (
                f"At {fail['streams']} streams ({fmt(fail['expected_events_per_s'], 0)} events/s "
                "nominal) the "
                f"gateway delivered {fmt(fail['events_per_s'], 0)} events/s with "
                f"{fmt(fail['cpu_pct'].get('middle'), 0)} % of its core, gap p99 "
                f"{fmt(fail['gap_ms']['p99'])} ms, "
                f"max {fmt(fail['gap_ms']['max'])} ms; saturated: "
                f"{', '.join(fail.get('saturated') or []) or 'nothing at 90 %+'}."
            )
        if us:
            cap = 1e6 / (us * per_stream)
            need = 1e6 / (t["target"] * per_stream)
            txt += (
                f" At this cadence every event travels alone ({fmt(us, 1)} µs of gateway CPU per "
                "event), so one "
                f"core holds at most ≈ {fmt(cap, 0)} streams; {fmt(t['target'], 0)} streams need ≤ "
                f"{fmt(need, 1)} µs per event."
            )
        burst = _lever_fig(self.r, "coalesce_events", "stream64_c64")
        alone = (burst.get("alternative") or {}).get("cpu_us_per_event")
        if us and self.ev64:
            txt += (
                f" That is {fmt(us / self.ev64, 1)}x the burst figure "
                f"({fmt(self.ev64, 1)} µs per event coalesced"
                + (f", {fmt(alone, 1)} µs with one message per event" if alone else "")
                + "): at a 20 ms cadence each upstream read, SSE parse, gRPC message and loop wake-up "
                "carries a single event."
            )
        e = _lever_fig(self.r, "coalesce_events", "cadence_64")
        if e.get("ratio"):
            txt += (
                f" Coalescing cannot help here: the lever measured {fmt(e['ratio'])}x at the 20 ms cadence."
            )
        if self.prof_s.get("samples"):
            txt += (
                " Where per-event time goes under the burst stream load (the profiled one): "
                f"{_slices(self.prof_s, None, 'event')}."
            )
            nxt = _next_from_profile(self.prof_s, None, "event")
        else:
            nxt = "profile the stream load (this run has no stream profile)"
        if us and (dig(self.r, "gateway", "workers") or 1) == 1:
            nxt += (
                f"; meanwhile `--workers N` multiplies the capacity (≈ {fmt(1e6 / (us * per_stream), 0)} "
                "streams per worker process and core)"
            )
        return f"{txt.strip()} **Next step:** {nxt}."

    def rss(self, t: dict[str, Any]) -> str:
        dd = self.val("rss_per_stream", "gateway", "derived") or {}
        txt = (
            f"With {fmt(self.val('rss_per_stream', 'gateway', 'loadgen', 'opened'))} streams open RSS "
            "grew from "
            f"{fmt((dd.get('rss_base_kb') or 0) / 1024, 1)} to "
            f"{fmt((dd.get('rss_held_kb') or 0) / 1024, 1)} MiB "
            f"({fmt(dd.get('rss_per_stream_kib'), 1)} KiB each)."
        )
        return (
            f"{txt} **Next step:** find the per-stream buffers (upstream read size, grpc's per-call buffers) "
            "with a heap snapshot while the streams are held."
        )

    def litellm(self, t: dict[str, Any]) -> str:
        g_rps = self.val("unary_c64", "gateway", "loadgen", "rps")
        l_rps = self.val("unary_c64", "litellm", "loadgen", "rps")
        g_cpu = self.val("unary_c64", "gateway", "processes", "middle", "cpu_pct")
        l_cpu = self.val("unary_c64", "litellm", "processes", "middle", "cpu_pct")
        l_us = self.val("unary_c64", "litellm", "derived", "middle_cpu_us_per_req")
        ratio = l_us / self.cpu64 if l_us and self.cpu64 else None
        txt = (
            f"Both are one process at c=64: the gateway at {fmt(g_cpu, 0)} % of its core ({fmt(g_rps, 0)} "
            f"req/s), LiteLLM at {fmt(l_cpu, 0)} % ({fmt(l_rps, 0)} req/s). Both are CPU-bound, so "
            "throughput "
            f"follows CPU per call: LiteLLM {fmt(l_us, 0)} µs / gateway {fmt(self.cpu64, 0)} µs = "
            f"{fmt(ratio)}x (measured throughput ratio {fmt(t['measured'])}x)."
        )
        nxt = "the CPU-per-call work"
        if l_us:
            nxt = (
                f"{fmt(t['target'], 0)}x needs the gateway at ≤ {fmt(l_us / t['target'], 0)} µs per "
                "call; the "
                f"400 µs CPU target alone would give ≈ {fmt(l_us / 400, 1)}x. It is the CPU-per-call work: "
                f"{self.next_unary()}"
            )
        return f"{txt} **Next step:** {nxt}."

    def paragraph(self, t: dict[str, Any]) -> str:
        src, name = t["source"], t["name"]
        if "LiteLLM" in name:
            return self.litellm(t)
        handler = {
            "unary_c1": self.latency,
            "unary_c64": self.cpu,
            "stream64_c64": self.stream,
            "cadence_max_streams": self.cadence,
            "rss_per_stream": self.rss,
        }.get(src)
        return handler(t) if handler else ""


def why_next(result: dict[str, Any]) -> list[tuple[str, str]]:
    """For each missed target: why (from this run's numbers and the profiles) and the next step."""
    why = _Why(result)
    out = []
    for t in result.get("targets") or []:
        if t.get("verdict") == "missed":
            text = why.paragraph(t)
            if text:
                out.append((t["name"], text))
    return out


# -- markdown ----------------------------------------------------------------------------------


def _rel(target: Path, md_path: Path) -> str:
    return os.path.relpath(target.resolve(), md_path.resolve().parent)


def _basic_rows(s: dict[str, Any]) -> list[str]:
    rows = [
        "| scenario | path | throughput | p50 ms | p90 ms | p99 ms | CPU % middle / upstream / loadgen "
        "| middle CPU per req (event) µs | errors | p50 vs direct | throughput vs LiteLLM |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in BASIC:
        scen = s.get(key, {})
        paths = scen.get("paths", {})
        stream = key.startswith("stream")
        direct_p50 = dig(paths, "direct", "loadgen", "latency_ms", "p50")
        lt_rate = dig(paths, "litellm", "loadgen", "events_per_s" if stream else "rps")
        for path in ("gateway", "direct", "litellm"):
            r = paths.get(path, {})
            if "loadgen" not in r:
                why = r.get("skipped") or r.get("failed") or "not run"
                rows.append(f"| {key} | {path} | {why} | | | | | | | | |")
                continue
            lg, pr, d = r["loadgen"], r["processes"], r.get("derived", {})
            lat = lg["latency_ms"]
            rate = lg.get("events_per_s") if stream else lg.get("rps")
            thr = f"{fmt(lg.get('rps'))} streams/s, {fmt(rate)} ev/s" if stream else f"{fmt(rate)} req/s"
            cpu = " / ".join(fmt(dig(pr, w, "cpu_pct"), 0) for w in ("middle", "upstream", "loadgen"))
            per = d.get("middle_cpu_us_per_req")
            per_txt = fmt(per, 0)
            if stream and d.get("middle_cpu_us_per_event") is not None:
                per_txt += f" ({fmt(d['middle_cpu_us_per_event'], 1)})"
            vs_direct = NA
            if path != "direct" and direct_p50 and lat.get("p50") is not None:
                vs_direct = f"+{fmt(lat['p50'] - direct_p50, 3)} ms ({fmt(lat['p50'] / direct_p50, 1)}x)"
            vs_lt = NA
            if path != "litellm" and lt_rate and rate:
                vs_lt = f"{fmt(rate / lt_rate, 1)}x"
            rows.append(
                f"| {key} | {path} | {thr} | {fmt(lat['p50'], 3)} | {fmt(lat['p90'], 3)} "
                f"| {fmt(lat['p99'], 3)} | {cpu} | {per_txt if path != 'direct' else NA} | {lg['errors']} "
                f"| {vs_direct} | {vs_lt} |"
            )
    return rows


def _primary_rows(result: dict[str, Any]) -> list[str]:
    """The headline figures, gateway against LiteLLM (and direct where it applies)."""
    s = result["scenarios"]
    workers = dig(result, "gateway", "workers") or 1

    def val(key: str, path: str, *field: str) -> Any:
        return dig(s, key, "paths", path, *field)

    def ratio(a: Any, b: Any) -> str:
        return f"{fmt(a / b, 1)}x" if a and b else NA

    rows = [
        "## Primary figures",
        "",
        "| figure | gateway | LiteLLM | direct | LiteLLM / gateway |",
        "|---|---|---|---|---|",
    ]
    for key, label in (("unary_c1", "c=1"), ("unary_c64", "c=64")):
        g = val(key, "gateway", "derived", "middle_cpu_us_per_req")
        lt = val(key, "litellm", "derived", "middle_cpu_us_per_req")
        rows.append(
            f"| CPU µs per unary chat completion, {label} | {fmt(g, 0)} | {fmt(lt, 0)} | {NA} "
            f"| {ratio(lt, g)} |"
        )
    for key, label in (("stream64_c1", "c=1"), ("stream64_c64", "c=64")):
        g = val(key, "gateway", "derived", "middle_cpu_us_per_event")
        lt = val(key, "litellm", "derived", "middle_cpu_us_per_event")
        rows.append(
            f"| CPU µs per streamed event (64-event stream), {label} | {fmt(g, 1)} | {fmt(lt, 1)} "
            f"| {NA} | {ratio(lt, g)} |"
        )
    g = val("embeddings_c16", "gateway", "derived", "middle_cpu_us_per_req")
    lt = val("embeddings_c16", "litellm", "derived", "middle_cpu_us_per_req")
    rows.append(
        f"| CPU µs per embeddings request (16 x 1536), c=16 | {fmt(g, 0)} | {fmt(lt, 0)} | {NA} "
        f"| {ratio(lt, g)} |"
    )
    d = val("unary_c1", "direct", "loadgen", "latency_ms") or {}
    for q in ("p50", "p99"):
        cells = []
        for path in ("gateway", "litellm"):
            lat = val("unary_c1", path, "loadgen", "latency_ms") or {}
            if lat.get(q) is not None and d.get(q) is not None:
                cells.append(f"+{fmt(lat[q] - d[q], 3)} ms")
            else:
                cells.append(NA)
        rows.append(
            f"| added latency {q} vs direct, unary c=1 | {cells[0]} | {cells[1]} "
            f"| {fmt(d.get(q), 3)} ms (itself) | {NA} |"
        )
    g = val("unary_c64", "gateway", "loadgen", "rps")
    lt = val("unary_c64", "litellm", "loadgen", "rps")
    dr = val("unary_c64", "direct", "loadgen", "rps")
    gp = g / workers if g else None
    rows.append(
        f"| unary chat requests/s per process, c=64 | {fmt(gp, 0)} | {fmt(lt, 0)} | {fmt(dr, 0)} (no "
        f"middle process) | gateway is {ratio(gp, lt)} |"
    )
    g = val("stream64_c64", "gateway", "loadgen", "events_per_s")
    lt = val("stream64_c64", "litellm", "loadgen", "events_per_s")
    dr = val("stream64_c64", "direct", "loadgen", "events_per_s")
    gp = g / workers if g else None
    rows.append(
        f"| streamed events/s per process, c=64 | {fmt(gp, 0)} | {fmt(lt, 0)} | {fmt(dr, 0)} "
        f"| gateway is {ratio(gp, lt)} |"
    )
    return rows


def _profile_section(prof: dict[str, Any], title: str) -> list[str]:
    out = [f"## Where the gateway spends its CPU ({title})", ""]
    if "samples" not in prof:
        return [*out, f"Not profiled: {prof.get('skipped', 'not run')}.", ""]
    rate = (
        f"{fmt(prof.get('events_per_s_under_profiler'))} events/s"
        if prof.get("events_per_s_under_profiler")
        else f"{fmt(prof.get('rps_under_profiler'))} req/s"
    )
    out.append(
        f"{prof['tool']}; {prof['samples']} samples of the gateway's Python threads while it served {rate} "
        f"at {fmt(prof.get('middle_cpu_pct_under_profiler'), 0)} % of its core. Native gRPC core threads are "
        "not sampled. Shares are of the samples taken. A coroutine resumed by the (C) event loop starts "
        "a new "
        "Python stack, so inclusive shares of async frames are lower bounds; the leaf columns are exact."
    )
    out.append("")
    fams = families(prof)
    if fams:
        out.append("By family (leaf frames): " + "; ".join(f"{n} {fmt(p, 1)} %" for n, p in fams) + ".")
        out.append("")
    out.append("| by package (leaf frame) | % | | self (leaf) frame | % | | inclusive frame | % |")
    out.append("|---|---|---|---|---|---|---|---|")
    rows = max(len(prof["by_package"]), len(prof["self"]), len(prof["inclusive"]))
    for i in range(min(rows, 15)):
        cells = []
        for col in ("by_package", "self", "inclusive"):
            item = dig(prof, col, i)
            cells.append(f"{item['frame']} | {item['pct']}" if item else " | ")
        out.append("| " + " | | ".join(cells) + " |")
    out.append("")
    return out


def _levers_section(result: dict[str, Any]) -> list[str]:
    lv = result.get("levers") or {}
    out = ["## Levers", ""]
    if "items" not in lv:
        out += [f"Not measured: {lv.get('skipped', 'not run')}.", ""]
    else:
        p = lv.get("params", {})
        out.append(
            'Each setting measured both ways, as "before/after" = chosen value (the gateway\'s default) '
            "against the alternative. Every value runs in a fresh gateway process, pinned like the main one "
            f"({'CPU ' + str(p['pinned_cpus']) if p.get('pinned_cpus') else 'not pinned'}), "
            + (
                f"warmed {fmt(p.get('gateway_warmup_s'), 1)} s under unary c=64"
                if p.get("gateway_warmup_s")
                else "not warmed up (quick mode)"
            )
            + ", then each load with the usual "
            f"{fmt(p.get('warmup_s'), 1)} s warm-up and {fmt(p.get('duration_s'), 1)} s window. The baseline "
            "process (every lever at its chosen value) is measured once and shared by the levers; "
            f"{lv.get('margin_source', '')}. Differences inside that band are called noise. "
            f"The group took {fmt(lv.get('elapsed_s'), 0)} s."
        )
        out.append("")
        out.extend(lever_rows(result))
        out.append("")
        out.append(
            "Loads: " + "; ".join(f"{k}: {v['what']}" for k, v in (p.get("loads") or {}).items()) + "."
        )
        out.append("")
        out.append("### Every lever point")
        out.append("")
        out.extend(lever_detail_rows(result))
        out.append("")
        codec_item = (lv.get("items") or {}).get("codec_json_path") or {}
        cd = codec_item.get("codec") or {}
        out.append("### Codec JSON path (in process, `codec_json_path`)")
        out.append("")
        if "cases" in cd:
            out.append(
                f"{cd['tool']}, protobuf backend `{cd['protobuf_backend']}`, pinned to CPU "
                f"{cd.get('pinned_cpus') or 'any'} with nothing else running. Both sides start from the same "
                f"parsed dicts. {cd['adaptation']}."
            )
            out.append("")
            out.extend(codec_rows(codec_item))
        else:
            out.append(f"Not measured: {cd.get('failed', 'not run')}.")
        out.append("")
        out.extend(limiter_section((lv.get("items") or {}).get("shared_rate_limit") or {}))
    whys = why_next(result)
    out.append("### Missed targets: why, and the next step")
    out.append("")
    if not whys:
        out.append("No target was missed in this run.")
        out.append("")
    for name, text in whys:
        out.append(f"**{name}.** {text}")
        out.append("")
    return out


def markdown(result: dict[str, Any], md_path: Path, json_path: Path, plots: dict[str, Path]) -> str:
    s = result["scenarios"]
    m = result["machine"]
    v = result["versions"]
    gv, lv = v.get("gateway_venv", {}), v.get("litellm_venv", {})
    lt = result.get("litellm") or {}
    pin = result["pinning"]
    out: list[str] = []
    add: Callable[..., None] = out.append
    add("# Benchmarks")
    add("")
    add(
        f"Generated by `{result['command']}` on {result['date']} ({result['elapsed_s']} s"
        f"{', QUICK mode: tiny loads, not meaningful numbers' if result['quick'] else ''}). "
        f"Do not edit by hand; raw data: [{json_path.name}]({_rel(json_path, md_path)}). "
        "How to run it: [bench/README.md]("
        + _rel(Path(__file__).parent / "README.md", md_path)
        + ")."
        + (
            f" The report text was rendered again from that JSON on {result['rendered']['at']} "
            f"(`{result['rendered']['by']}`); no number was measured again."
            if result.get("rendered")
            else ""
        )
    )
    add("")
    add(
        "Three paths carry the same load side by side, in the same run: **gateway** (load generator → gRPC → "
        "gateway → HTTP → fake upstream), **direct** (load generator → HTTP → fake upstream, aiohttp client) "
        'and **LiteLLM** (load generator → HTTP → LiteLLM proxy → fake upstream). "Middle" is the process '
        "under test (gateway or LiteLLM); CPU is utime+stime from /proc over the measured window."
    )
    add("")
    add("## Targets (per gateway process)")
    add("")
    add("| target | goal | measured | verdict | missed by |")
    add("|---|---|---|---|---|")
    for t in result["targets"]:
        verdict = {"met": "**met**", "missed": "**missed**"}.get(t["verdict"], t["verdict"])
        extra = f" — {t['note']}" if t.get("note") else ""
        add(f"| {t['name']} | {t['target_text']} | {t['measured_text']} | {verdict} | {t['miss']}{extra} |")
    add("")
    out.extend(_primary_rows(result))
    add("")
    out.extend(_levers_section(result))
    settings = ", ".join(f"{k}={x}" for k, x in (dig(result, "gateway", "settings_env") or {}).items())
    add("## Machine and set-up")
    add("")
    add("| | |")
    add("|---|---|")
    add(f"| CPU | {m['cpu_model']}, nproc {m['nproc']}, {m['mem_total_gib']} GiB RAM, kernel {m['kernel']} |")
    add(f"| load average before the run | {' '.join(m.get('loadavg_before', []))} |")
    add(f"| pinning | {pin['note']} ({pin['tool'] or 'none'}) |")
    add(
        f"| gateway | {result['gateway']['workers']} process(es); `--workers` flag supported: "
        f"{fmt(result['gateway']['supports_workers_flag'])}; "
        f"commit {str(dig(v, 'gateway_git', 'commit'))[:12]}"
        f"{' + uncommitted changes in server/' if dig(v, 'gateway_git', 'dirty') else ''}; settings: "
        f"{settings or 'defaults'} |"
    )
    add(f"| Python | {m['python']} |")
    add("| gateway venv | " + ", ".join(f"{k} {val}" for k, val in gv.items() if val) + " |")
    lt_txt = lt.get("status", "not run")
    if lv:
        lt_txt += "; " + ", ".join(f"{k} {val}" for k, val in lv.items() if val)
    add(f"| LiteLLM venv (bench/.venv-litellm) | {lt_txt}; 1 uvicorn worker, default access log |")
    plan = result["plan"]
    add(
        f"| loads | warm-up {plan['warmup']} s, measured window {plan['duration']} s per point, closed loop; "
        f"c={plan['c_low']} and c={plan['c_high']} |"
    )
    others = [
        dig(r, "processes", "other_processes_pct")
        for key in BASIC
        for r in s.get(key, {}).get("paths", {}).values()
        if isinstance(r, dict)
    ]
    others = [o for o in others if o is not None]
    if others:
        add(
            f"| CPU of processes outside the benchmark during windows | max {fmt(max(others), 0)} %, "
            f"median {fmt(sorted(others)[len(others) // 2], 0)} % of one core |"
        )
    add("")
    add("## Side by side (`unary_*`, `embeddings_*`, `stream64_*`)")
    add("")
    add(
        'Latency is per request (streams: whole stream). "CPU %" is the share of one core. '
        '"p50 vs direct" is the added latency; "throughput vs LiteLLM" compares requests/s '
        "(streams: events/s)."
    )
    add("")
    out.extend(_basic_rows(s))
    add("")
    for name, title in (
        ("latency", "Latency"),
        ("cpu", "CPU per request/event"),
        ("rss_throughput", "RSS per stream and throughput"),
        ("cadence", "20 ms cadence"),
    ):
        if name in plots:
            add(f"![{title}]({_rel(plots[name], md_path)})")
            add("")
    # cadence
    cad = s.get("cadence_max_streams", {})
    cp = cad.get("params", {})
    add(f"## Streams at a {fmt(cp.get('gap_ms'), 0)} ms cadence (`cadence_max_streams`)")
    add("")
    add(
        f"Each stream is {cp.get('events_per_stream')} events {fmt(cp.get('gap_ms'), 0)} ms apart, restarted "
        f"back to back; starts staggered over {cp.get('stagger_s')} s; {cp.get('duration_s')} s measured per "
        f"step. Pass: {cp.get('pass_rule')}. Stepping stops at the first failing step."
    )
    add("")
    add(
        "| path | streams | pass | events/s (expected) | gap p99 / max ms | gaps > 40 ms | TTFC p50 / p99 ms "
        "| CPU % middle / upstream / loadgen | middle µs/event | saturated (≥ 90 %) |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|")
    for path in ("gateway", "direct", "litellm"):
        pr = cad.get("paths", {}).get(path, {})
        if "steps" not in pr:
            add(f"| {path} | {pr.get('skipped', 'not run')} | | | | | | | | |")
            continue
        for st in pr["steps"]:
            if "gap_ms" not in st:
                add(f"| {path} | {st['streams']} | no | {st.get('failed', '')[:80]} | | | | | | |")
                continue
            cpu = " / ".join(fmt(st["cpu_pct"].get(w), 0) for w in ("middle", "upstream", "loadgen"))
            add(
                f"| {path} | {st['streams']} | {'yes' if st['pass'] else '**no**'} | "
                f"{fmt(st['events_per_s'])} ({fmt(st['expected_events_per_s'])}) | "
                f"{fmt(st['gap_ms']['p99'])} / {fmt(st['gap_ms']['max'])} | {st['gaps_over_40ms']} | "
                f"{fmt(st['ttfc_ms']['p50'])} / {fmt(st['ttfc_ms']['p99'])} | {cpu} | "
                f"{fmt(st.get('middle_cpu_us_per_event'), 1)} | {', '.join(st['saturated']) or NA} |"
            )
        add(f"| **{path}** | **max stall-free: {pr['max_stall_free']}** | | | | | | | | |")
    add("")
    add(
        "On two cores the load generator (gRPC client, ~1 core at 25k messages/s) and the fake share CPU 0; "
        "when the *loadgen* or *upstream* column saturates, a failing step says more about the machine "
        "than about the path under test."
    )
    add("")
    # rss
    rs = s.get("rss_per_stream", {})
    add("## RSS per open stream (`rss_per_stream`)")
    add("")
    add(
        f"{rs.get('params', {}).get('method', '')}; {rs.get('params', {}).get('streams')} streams, "
        f"one event per {fmt(rs.get('params', {}).get('event_gap_ms'), 0)} ms."
    )
    add("")
    add(
        "| path | streams open | RSS before | RSS with streams open | RSS after closing | per stream | "
        "opened in | threads | errors |"
    )
    add("|---|---|---|---|---|---|---|---|---|")
    for path in ("gateway", "litellm", "direct"):
        r = rs.get("paths", {}).get(path, {})
        d = r.get("derived")
        if not d:
            add(f"| {path} | {r.get('skipped') or r.get('failed') or 'not run'} | | | | | | | |")
            continue
        lg = r["loadgen"]
        add(
            f"| {path} | {lg['opened']} / {lg['streams']} | {d['rss_base_kb'] / 1024:.1f} MiB | "
            f"{d['rss_held_kb'] / 1024:.1f} MiB | {d['rss_after_close_kb'] / 1024:.1f} MiB | "
            f"**{fmt(d['rss_per_stream_kib'], 1)} KiB** | {fmt(lg['open_s'])} s | {d.get('threads')} | "
            f"{lg['errors']} |"
        )
    add("")
    # upload
    up = s.get("upload_256mib", {})
    add(
        f"## Upload of {up.get('params', {}).get('bytes', 0) / (1 << 20):.0f} MiB "
        f"({up.get('params', {}).get('chunk_bytes', 0) / (1 << 20):.0f} MiB chunks, `upload_256mib`)"
    )
    add("")
    add(
        "gateway: client-streaming `FilesService/UploadFile` (metadata, then `FileChunk`s with the filename "
        "on the first chunk only, as the proto documents); direct: one streamed multipart POST /v1/files."
    )
    add("")
    add(
        "| path | MiB/s | seconds | middle CPU ms per MiB | middle RSS growth | upstream CPU ms per MiB "
        "| size the upstream recorded | errors |"
    )
    add("|---|---|---|---|---|---|---|---|")
    for path in ("gateway", "direct", "litellm"):
        r = up.get("paths", {}).get(path, {})
        if "loadgen" not in r:
            add(f"| {path} | {r.get('skipped') or r.get('failed') or 'not run'} | | | | | | |")
            continue
        lg, d = r["loadgen"], r.get("derived", {})
        growth = d.get("middle_rss_growth_kib")
        sizes = lg.get("server_reported_bytes") or []
        size_txt = ", ".join(f"{b:,} B" for b in sizes)
        if sizes and not lg.get("size_verified"):
            size_txt += " (**differs from the bytes sent**)"
        add(
            f"| {path} | {fmt(lg['mib_per_s'], 1)} | {', '.join(fmt(x) for x in lg['seconds'])} | "
            f"{fmt(d.get('middle_cpu_ms_per_mib'), 2)} | "
            f"{NA if growth is None else f'{growth / 1024:.1f} MiB'} | "
            f"{fmt(d.get('upstream_cpu_ms_per_mib'), 2)} | "
            f"{size_txt} | {lg['errors']} |"
        )
    add("")
    # cancellations
    cn = s.get("cancellations_1000", {})
    cpp = cn.get("params", {})
    add(f"## {fmt(cpp.get('count'))} cancellations (`cancellations_1000`)")
    add("")
    add(
        f"{cpp.get('what', '')}; {cpp.get('concurrency')} at a time; each stream would run "
        f'{cpp.get("events_per_stream")} events {fmt(cpp.get("gap_ms"), 0)} ms apart. "Upstream disconnects" '
        "is what the fake upstream saw: a cancel that reaches it closes the upstream request at once."
    )
    add("")
    add(
        "| path | cancelled | per s | first message p50 / p99 ms | middle CPU µs per cancel | upstream "
        f"disconnects | upstream streams still open {fmt(cpp.get('settle_s'), 1)} s later | middle RSS "
        "before → after | errors |"
    )
    add("|---|---|---|---|---|---|---|---|---|")
    for path in ("gateway", "direct", "litellm"):
        r = cn.get("paths", {}).get(path, {})
        if "loadgen" not in r:
            add(f"| {path} | {r.get('skipped') or r.get('failed') or 'not run'} | | | | | | | |")
            continue
        lg, d = r["loadgen"], r.get("derived", {})
        rss_txt = NA
        if d.get("middle_rss_before_kb"):
            rss_txt = f"{d['middle_rss_before_kb'] / 1024:.1f} → {d['middle_rss_after_kb'] / 1024:.1f} MiB"
        add(
            f"| {path} | {lg['cancelled']} | {fmt(lg['per_s'])} | {fmt(lg['first_message_ms']['p50'])} / "
            f"{fmt(lg['first_message_ms']['p99'])} | {fmt(d.get('middle_cpu_us_per_cancel'), 0)} | "
            f"{d.get('upstream_disconnects')} | {d.get('upstream_open_streams_after')} | {rss_txt} | "
            f"{lg['errors']} |"
        )
    add("")
    # profiles
    for key, title in (("profile", "unary chat, c=64"), ("profile_stream", "64-event chat stream, c=64")):
        out.extend(_profile_section(result.get(key) or {}, title))
    add("## How it was measured")
    add("")
    add(
        "* Separate processes on 127.0.0.1: the fake upstream "
        "(`python -m openai_grpc_server.fake_upstream`), the gateway (`python -m openai_grpc_server`), "
        "LiteLLM's proxy (`litellm --config ...`, `LITELLM_LOCAL_MODEL_COST_MAP=True`, a master key, models "
        "routed to the fake's base URL) and one load generator process per point "
        "(`python -m bench.loadgen`, uvloop; grpc.aio with the generated stubs on one channel, or one "
        "aiohttp session)."
    )
    add(
        "* Closed loop: N workers each send the next request when the previous one ends. After the warm-up "
        "the generator marks START and END; only requests that start and end inside the window are "
        "counted, and only stream messages received inside it. Stream gaps are measured between "
        "consecutive messages."
    )
    add(
        "* The orchestrator reads utime+stime (/proc/<pid>/stat) of each process tree at START and END; "
        "CPU per request = CPU seconds / (requests/s x window). RSS is VmRSS of /proc/<pid>/status."
    )
    add("* While one path is measured the other middle process is paused (SIGSTOP), so it takes no CPU.")
    add(
        "* Benchmarks never gate CI; the smoke test only checks that a quick run produces every scenario "
        "and every lever."
    )
    add("")
    lever_notes = dig(result, "levers", "notes") or []
    if result.get("notes") or lever_notes:
        add("## Notes")
        add("")
        for n in result.get("notes") or []:
            add(f"* {n}")
        for n in lever_notes:
            add(f"* Levers: {n}")
        add("")
    return "\n".join(out)


def rerender(json_path: Path, md_path: Path) -> None:
    """Verdicts and markdown again from a results JSON (after a change to this file): the
    measured numbers are left as they are."""
    result = json.loads(json_path.read_text())
    result["targets"] = evaluate_targets(result)
    judge_levers(result)
    result["rendered"] = {
        "by": "python -m bench.report",
        "at": dt.datetime.now().isoformat(timespec="seconds"),
    }
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    plots = {k: Path(v) for k, v in (result.get("plots") or {}).items()}
    md_path.write_text(markdown(result, md_path, json_path, plots))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.report", description="Render the report again from a results JSON."
    )
    ap.add_argument("json_path", type=Path, help="bench/results/<date>.json")
    ap.add_argument(
        "--docs-out", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
    )
    args = ap.parse_args(argv)
    rerender(args.json_path, args.docs_out)
    print(f"[bench] rendered {args.docs_out} from {args.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
