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


# The targets of issue 14, per gateway process on one core, ratios taken in one run: "now" is
# where the gateway stood when the issue was written, "this issue" the verdict's goal.
TARGETS: tuple[dict[str, Any], ...] = (
    {
        "key": "echo_ratio",
        "name": "Unary CPU per call, gateway / bare grpc.aio echo (c=64)",
        "op": "<=", "goal": 2.5, "moonshot": 1.6, "unit": "x", "now": "~4.4x", "source": "echo_floor",
    },
    {
        "key": "added_latency",
        "name": "Added latency at c=1, p50 / p99 (gateway - direct)",
        "op": "<=", "goal": (0.8, 1.5), "moonshot": (0.5, 1.0), "unit": "ms", "now": "+1.3 / +2.6 ms",
        "source": "unary_c1",
    },
    {
        "key": "cadence_streams",
        "name": "Stall-free streams at a 20 ms cadence (no gap > 40 ms)",
        "op": ">=", "goal": 256, "moonshot": 512, "unit": "streams", "now": "64",
        "source": "cadence_max_streams",
    },
    {
        "key": "cpu_per_event",
        "name": "CPU per streamed event, burst (64-event stream, c=64)",
        "op": "<=", "goal": 40.0, "moonshot": 30.0, "unit": "µs", "now": "68 µs", "source": "stream64_c64",
    },
    {
        "key": "vs_litellm",
        "name": "Throughput vs LiteLLM, unary c=64 (per process)",
        "op": ">=", "goal": 25.0, "moonshot": 40.0, "unit": "x", "now": "12.5x", "source": "unary_c64",
    },
    {
        "key": "workers_2",
        "name": "`--workers 2` vs 1, unary c=64 throughput",
        "op": ">=", "goal": 1.8, "moonshot": 1.95, "unit": "x", "now": NA, "source": "workers_scaling",
    },
    {
        "key": "rss_per_stream",
        "name": "RSS per open stream (stays)",
        "op": "<=", "goal": 50.0, "moonshot": None, "unit": "KiB", "now": "≤ 50 KiB",
        "source": "rss_per_stream",
    },
    {
        "key": "cancellations",
        "name": "Cancellations that reach the upstream (stays)",
        "op": ">=", "goal": None, "moonshot": None, "unit": "", "now": "1,000 / 1,000",
        "source": "cancellations_1000",
    },
)  # fmt: skip


def _meets(op: str, value: float, goal: float) -> bool:
    return value <= goal if op == "<=" else value >= goal


def _miss(op: str, value: float, goal: float, unit: str) -> str:
    if op == "<=":
        return f"+{fmt(value - goal)} {unit} over ({fmt(value / goal if goal else 0.0)}x the target)"
    return f"{fmt(goal - value)} {unit} short ({fmt(value / goal * 100, 0)}% of the target)"


def _target(spec: dict[str, Any], value: Any, note: str = "", ceiling: str = "") -> dict[str, Any]:
    """One target's verdict against "this issue", and whether the moonshot is met too."""
    op, goal, moon, unit = spec["op"], spec["goal"], spec["moonshot"], spec["unit"]
    pair = isinstance(goal, tuple)

    def text(g: Any) -> str:
        if g is None:
            return NA
        if isinstance(g, tuple):
            return f"{op} {' / '.join(fmt(x) for x in g)} {unit}".strip()
        return f"{op} {fmt(g)} {unit}".strip()

    t: dict[str, Any] = {
        "key": spec["key"],
        "name": spec["name"],
        "op": op,
        "target": goal,
        "moonshot": moon,
        "unit": unit,
        "now": spec["now"],
        "measured": value,
        "source": spec["source"],
        "note": note,
        "ceiling": ceiling,
        "target_text": text(goal),
        "moonshot_text": text(moon),
    }
    if value is None or (pair and None in value):
        t.update(verdict="n/a", measured_text="not measured", miss="", moonshot_met=None)
        return t
    values, goals = (list(value), list(goal)) if pair else ([value], [goal])
    t["measured_text"] = f"{' / '.join(('+' if pair else '') + fmt(v) for v in values)} {unit}".strip()
    misses = [
        ("p50 " if pair and i == 0 else "p99 " if pair else "") + _miss(op, v, g, unit)
        for i, (v, g) in enumerate(zip(values, goals, strict=True))
        if not _meets(op, v, g)
    ]
    t["verdict"] = "missed" if misses else "met"
    t["miss"] = "; ".join(misses)
    if moon is None:
        t["moonshot_met"] = None
    else:
        moons = list(moon) if pair else [moon]
        t["moonshot_met"] = all(_meets(op, v, m) for v, m in zip(values, moons, strict=True))
    return t


def _near_ceiling(value: Any, ceiling: Any, share: float = 0.8) -> bool:
    return bool(value and ceiling and value >= share * ceiling)


def evaluate_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    s = result["scenarios"]
    specs = {t["key"]: t for t in TARGETS}
    workers = dig(result, "gateway", "workers") or 1

    def gw(key: str, *f: str | int) -> Any:
        return dig(s, key, "paths", "gateway", *f)

    def direct(key: str, *f: str | int) -> Any:
        return dig(s, key, "paths", "direct", *f)

    out = []
    # 1. CPU per call over the echo floor
    cpu_req = gw("unary_c64", "derived", "middle_cpu_us_per_req")
    echo_req = dig(s, "echo_floor", "loads", "unary_c64", "derived", "middle_cpu_us_per_req")
    ratio = round(cpu_req / echo_req, 2) if cpu_req and echo_req else None
    d_rps = direct("unary_c64", "loadgen", "rps")
    out.append(
        _target(
            specs["echo_ratio"],
            ratio,
            f"gateway {fmt(cpu_req, 0)} µs / echo {fmt(echo_req, 0)} µs per call" if ratio else "",
            f"direct {fmt(d_rps, 0)} req/s at c=64",
        )
    )
    # 2. added latency at c=1
    g1, d1 = gw("unary_c1", "loadgen", "latency_ms") or {}, direct("unary_c1", "loadgen", "latency_ms") or {}
    added: tuple[Any, Any] = (None, None)
    if g1.get("p50") is not None and d1.get("p50") is not None:
        added = (round(g1["p50"] - d1["p50"], 3), round(g1["p99"] - d1["p99"], 3))
    out.append(
        _target(
            specs["added_latency"],
            added,
            "",
            f"direct itself {fmt(d1.get('p50'), 3)} / {fmt(d1.get('p99'), 3)} ms",
        )
    )
    # 3. cadence
    streams = gw("cadence_max_streams", "max_stall_free")
    d_streams = direct("cadence_max_streams", "max_stall_free")
    d_steps = direct("cadence_max_streams", "steps") or []
    d_all = bool(d_steps) and all(st.get("pass") for st in d_steps)
    last_step = gw("cadence_max_streams", "steps", -1)
    note = ""
    if last_step and not last_step.get("pass"):
        sat = ", ".join(last_step.get("saturated") or []) or "nothing at 90%+"
        note = f"first failing step {last_step['streams']} streams; CPU-saturated there: {sat}"
    if (
        last_step
        and not last_step.get("pass")
        and any(str(x).startswith("CPU 0") for x in last_step.get("saturated") or [])
    ):
        note += "; **the driving side's core was saturated at that step: the verdict is the harness's**"
    if streams is not None and d_streams is not None and streams >= d_streams and not d_all:
        note += (
            "; " if note else ""
        ) + "**at the harness ceiling: this figure is the harness's, not the gateway's**"
    out.append(
        _target(
            specs["cadence_streams"],
            streams,
            note,
            f"direct {'≥ ' if d_all else ''}{fmt(d_streams)} streams",
        )
    )
    # 4. CPU per event, burst
    cpu_ev = gw("stream64_c64", "derived", "middle_cpu_us_per_event")
    d_eps = direct("stream64_c64", "loadgen", "events_per_s")
    g_eps = gw("stream64_c64", "loadgen", "events_per_s")
    out.append(
        _target(
            specs["cpu_per_event"],
            cpu_ev,
            "**within 80 % of the harness ceiling**" if _near_ceiling(g_eps, d_eps) else "",
            f"direct {fmt(d_eps, 0)} events/s",
        )
    )
    # 5. vs LiteLLM
    gw_rps = gw("unary_c64", "loadgen", "rps")
    lt_rps = dig(s, "unary_c64", "paths", "litellm", "loadgen", "rps")
    ratio_lt = round(gw_rps / workers / lt_rps, 2) if gw_rps and lt_rps else None
    out.append(
        _target(
            specs["vs_litellm"],
            ratio_lt,
            "" if ratio_lt is not None else "LiteLLM was not measured",
            f"direct {fmt(d_rps, 0)} req/s",
        )
    )
    # 6. --workers 2
    ws = s.get("workers_scaling") or {}
    w_ratio = ws.get("ratio")
    w_note = ws.get("skipped") or workers_note(ws)
    out.append(_target(specs["workers_2"], w_ratio, w_note, f"direct {fmt(d_rps, 0)} req/s"))
    # stays: RSS per stream, cancellations
    rss = gw("rss_per_stream", "derived", "rss_per_stream_kib")
    out.append(_target(specs["rss_per_stream"], rss))
    cn = gw("cancellations_1000") or {}
    count = dig(s, "cancellations_1000", "params", "count")
    reached = dig(cn, "derived", "upstream_disconnects")
    errors = dig(cn, "loadgen", "errors")
    value = reached if reached is None or not errors else min(reached, count - errors)
    spec = {**specs["cancellations"], "goal": count, "unit": f"of {fmt(count)}"}
    out.append(
        _target(
            spec,
            value,
            f"{fmt(dig(cn, 'loadgen', 'cancelled'))} cancelled, {fmt(errors)} errors, "
            f"{fmt(dig(cn, 'derived', 'upstream_open_streams_after'))} upstream streams left open"
            if cn
            else "",
            f"direct: {fmt(direct('cancellations_1000', 'derived', 'upstream_disconnects'))}",
        )
    )
    return out


def workers_note(ws: dict[str, Any]) -> str:
    """Each process's CPU under --workers 2, and whether the machine leaves room for 2x."""
    p1 = dig(ws, "points", "workers_1", "processes") or {}
    p2 = dig(ws, "points", "workers_2", "processes") or {}
    if not p2:
        return str(dig(ws, "points", "workers_2", "failed") or "")
    each = p2.get("middle_each_cpu_pct") or {}
    busy = sorted((v for v in each.values() if v and v >= 1), reverse=True)
    side = sum(dig(p2, w, "cpu_pct") or 0 for w in ("upstream", "loadgen", "orchestrator"))
    m1 = dig(p1, "middle", "cpu_pct")
    txt = (
        f"2 workers: {' + '.join(fmt(v, 0) for v in busy) or fmt(dig(p2, 'middle', 'cpu_pct'), 0)} % CPU "
        f"(1 worker: {fmt(m1, 0)} %); driver + fake + orchestrator {fmt(side, 0)} % of a core"
    )
    nproc = os.cpu_count() or 2
    if m1 and nproc <= 2 and max(0.0, nproc * 100 - side) / m1 < 2:
        room = max(0.0, nproc * 100 - side)
        txt += (
            f"; on {nproc} cores at most {fmt(room, 0)} % is left for the workers: the ratio cannot exceed "
            f"≈ {fmt(room / m1)}x on this machine"
        )
    other = p2.get("other_processes_pct")
    if other is not None and other >= 25:
        txt += f"; processes outside the benchmark took {fmt(other, 0)} % of a core meanwhile"
    return txt


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
    echo_us = dig(s, "echo_floor", "loads", "unary_c64", "derived", "middle_cpu_us_per_req")
    if echo_us:
        ax.axhline(2.5 * echo_us, color="#1f77b4", ls=":", lw=1)
        ax.text(len(items) - 0.5, 2.5 * echo_us, "target 2.5x echo /req", fontsize=7, va="bottom", ha="right")
    ax.axhline(40, color="#1f77b4", ls="--", lw=1)
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
    "aiohttp", "httpx", "httpcore", "h11", "anyio", "yarl", "multidict",
    "aiohappyeyeballs", "sniffio", "idna", "propcache", "frozenlist", "aiosignal",
}  # fmt: skip
FAMILIES: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("gRPC core and event loop (native)", lambda c: c.startswith("native") or c in ("grpc", "<string>")),
    ("upstream HTTP client (aiohttp, httpx)", lambda c: c in _CLIENT),
    ("gateway code", lambda c: c.startswith("gateway code")),
    ("telemetry (OpenTelemetry, logging)", lambda c: c in ("opentelemetry", "stdlib logging")),
    ("protobuf and JSON", lambda c: c in ("google", "orjson", "stdlib json")),
    ("asyncio and other stdlib", lambda c: c.startswith("stdlib")),
)
_NEXT = {
    "gRPC core and event loop (native)": "it is grpc's C core and the loop, a fixed cost per RPC and per "
    "message: Python changes do not reach it; fewer messages per call (coalescing, trailers-only "
    "answers) or more processes (`--workers`) do",
    "upstream HTTP client (aiohttp, httpx)": "requests already go straight to the gateway's own "
    "aiohttp transport with URLs and headers built once; what remains is aiohttp's own request "
    "machinery (request object, payload, a writer task per request) and httpx's Request and "
    "Response objects (about 40 µs a call): an HTTP/1.1 client on the loop's protocol API, "
    "behind the same httpx transport interface, would cut most of it",
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
                "for the direct HTTP client; the rest is the second loopback hop and its wake-ups"
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
        echo = dig(self.s, "echo_floor", "loads", "unary_c64")
        echo_us = dig(echo, "derived", "middle_cpu_us_per_req")
        txt = (
            f"At c=64 the gateway serves {fmt(rps, 0)} req/s at {fmt(cpu_pct, 0)} % of its core, "
            f"{fmt(self.cpu64, 0)} µs per call"
        )
        if echo_us and self.cpu64:
            budget = echo_us * t["target"]
            txt += (
                "; the bare grpc.aio echo answering the same bytes serves "
                f"{fmt(dig(echo, 'loadgen', 'rps'), 0)} req/s at "
                f"{fmt(echo_us, 0)} µs per call, so grpc.aio alone is {fmt(echo_us, 0)} µs and the "
                f"gateway adds {fmt(self.cpu64 - echo_us, 0)} µs. {fmt(t['target'])}x the echo is "
                f"{fmt(budget, 0)} µs: {fmt(self.cpu64 - budget, 0)} µs "
                f"({fmt((1 - budget / self.cpu64) * 100, 0)} %) less than now"
            )
        txt += "."
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
        echo_us = dig(self.s, "echo_floor", "loads", "unary_c64", "derived", "middle_cpu_us_per_req")
        if l_us:
            nxt = f"{fmt(t['target'], 0)}x needs the gateway at ≤ {fmt(l_us / t['target'], 0)} µs per call"
            if echo_us:
                nxt += (
                    f"; the 2.5x-echo CPU target ({fmt(2.5 * echo_us, 0)} µs) alone would give "
                    f"≈ {fmt(l_us / (2.5 * echo_us), 1)}x"
                )
            nxt += f". It is the CPU-per-call work: {self.next_unary()}"
        return f"{txt} **Next step:** {nxt}."

    def latency_pair(self, t: dict[str, Any]) -> str:
        """Added latency p50 / p99: a paragraph for each quantile that missed."""
        parts = []
        for i, q in enumerate(("p50", "p99")):
            value, goal = t["measured"][i], t["target"][i]
            if value is not None and value > goal:
                parts.append(f"*{q}:* " + self.latency({"name": q, "measured": value, "target": goal}))
        return " ".join(parts)

    def workers(self, t: dict[str, Any]) -> str:
        ws = self.s.get("workers_scaling") or {}
        r1 = dig(ws, "points", "workers_1", "loadgen", "rps")
        r2 = dig(ws, "points", "workers_2", "loadgen", "rps")
        ceiling = self.val("unary_c64", "direct", "loadgen", "rps")
        txt = (
            f"One worker served {fmt(r1, 0)} req/s, two {fmt(r2, 0)} req/s ({fmt(t['measured'])}x); "
            f"{t.get('note') or ''}. The harness alone (direct path) reached {fmt(ceiling, 0)} req/s."
        )
        nproc = os.cpu_count() or 2
        p2 = dig(ws, "points", "workers_2", "processes") or {}
        used = dig(p2, "middle", "cpu_pct") or 0.0
        side = sum(dig(p2, w, "cpu_pct") or 0 for w in ("upstream", "loadgen", "orchestrator"))
        other = p2.get("other_processes_pct") or 0.0
        room = max(0.0, nproc * 100 - side)
        if used < 0.85 * room and other >= 25:
            nxt = (
                f"the workers used {fmt(used, 0)} % of the {fmt(room, 0)} % the driving side left while "
                f"processes outside the benchmark took {fmt(other, 0)} %: measure again on a quiet machine"
            )
        elif nproc <= 2:
            nxt = (
                "on this 2-core machine the driving side takes CPU from the second worker: measure the "
                "ratio on a machine with a core per worker plus one for the driver and the fake"
            )
        else:
            nxt = (
                "look at per-worker CPU: a worker below 90 % means connections are not spread evenly "
                "(SO_REUSEPORT spreads connections, not calls)"
            )
        return f"{txt} **Next step:** {nxt}."

    def cancellations(self, t: dict[str, Any]) -> str:
        return (
            f"{t.get('note') or ''}. **Next step:** look at the gateway log for cancellations that "
            "did not close the upstream request."
        )

    def paragraph(self, t: dict[str, Any]) -> str:
        handler = {
            "echo_ratio": self.cpu,
            "added_latency": self.latency_pair,
            "cadence_streams": self.cadence,
            "cpu_per_event": self.stream,
            "vs_litellm": self.litellm,
            "workers_2": self.workers,
            "rss_per_stream": self.rss,
            "cancellations": self.cancellations,
        }.get(t.get("key", ""))
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


# GetBusbar "On the Bench" (GetBusbar/benchmarking, results/reports/all/README.md, July 2026):
# each gateway pinned to 4 Graviton3 cores; quoted from /work/shared/reference/field-2026.md.
FIELD: tuple[tuple[str, float, int, int], ...] = (
    ("LiteLLM, Rust gateway", 0.11, 46_668, 512),
    ("Busbar 1.4.1", 0.13, 45_383, 256),
    ("GoModel 0.1.55", 0.29, 16_705, 512),
    ("Helicone ai-gateway", 0.55, 9_867, 0),
    ("Bifrost 1.6.4", 0.95, 5_743, 32),
    ("Kong 3.8", 1.29, 14_818, 0),
    ("Portkey 1.15.2", 3.4, 853, 32),
    ("LiteLLM, Python 1.93", 7.4, 640, 1),
)
FIELD_CORES = 4


def harness_lines(result: dict[str, Any]) -> list[str]:
    h = result.get("harness") or {}
    c = h.get("ceiling") or {}
    if not h:
        return [
            "**Harness:** the Python driving side (`bench.loadgen`, the Python fake upstream); this run "
            "predates the Go driver and the harness-ceiling record: the direct path's figures below are "
            "its ceiling.",
            "",
        ]
    side = c.get("unary_c64_side_cpu_pct") or {}
    return [
        f"**Harness:** load generator {h.get('load_generator')}, fake upstream {h.get('fake_upstream')}"
        f"{' (' + h['go'] + ')' if h.get('go') else ''}. **Its ceiling in this run** (direct path, no "
        f"middle process): {fmt(c.get('unary_rps_c64'), 0)} req/s closed loop at c=64 (fake "
        f"{fmt(side.get('upstream'), 0)} % + load generator {fmt(side.get('loadgen'), 0)} % of a core), "
        f"{fmt(c.get('max_rps'), 0)} req/s open-loop max, {fmt(c.get('stream_events_per_s_c64'), 0)} "
        f"streamed events/s at c=64, {fmt(c.get('cadence_max_streams'))} stall-free cadence streams"
        + (
            " (its highest step)"
            if c.get("cadence_max_streams") and c.get("cadence_max_streams") == c.get("cadence_last_step")
            else ""
        )
        + ".",
        "",
    ]


def _max_rps(s: dict[str, Any], path: str) -> Any:
    return dig(s, "max_rps", "paths", path, "loadgen", "max_rps")


def _max_rps_text(s: dict[str, Any], path: str) -> str:
    lg = dig(s, "max_rps", "paths", path, "loadgen") or {}
    return ("≥ " if lg.get("lower_bound") else "") + fmt(lg.get("max_rps"), 0)


def busbar_section(result: dict[str, Any]) -> list[str]:
    """The GetBusbar harness's three figures for our paths, with the field's beside them."""
    s = result["scenarios"]
    d = dig(s, "unary_c1", "paths", "direct", "loadgen", "latency_ms") or {}
    out = [
        "## In the field's language (GetBusbar-comparable)",
        "",
        "GetBusbar's definitions: added latency = gateway p99 minus direct p99 at concurrency 1; max RPS = "
        "highest sustained rate with p99 < 1 s and < 0.1 % errors (here: open loop, the offered rate "
        "stepped up until a step fails); stall-free SSE streams = streams held with no stalled chunk "
        "(here: 20 ms cadence, no gap > 40 ms). **Ours: one process on one core** (the gateway, LiteLLM) of "
        f"a {result['machine'].get('nproc')}-vCPU {result['machine'].get('cpu_model')}; the direct "
        "column is the harness's ceiling.",
        "",
        "| figure | gateway (gRPC) | LiteLLM proxy | direct (harness ceiling) |",
        "|---|---|---|---|",
    ]
    cells = []
    for path in ("gateway", "litellm"):
        lat = dig(s, "unary_c1", "paths", path, "loadgen", "latency_ms") or {}
        cells.append(
            f"+{fmt(lat['p99'] - d['p99'], 3)} ms" if lat.get("p99") is not None and d.get("p99") else NA
        )
    out.append(f"| added p99 at c=1 | {cells[0]} | {cells[1]} | p99 itself {fmt(d.get('p99'), 3)} ms |")
    out.append(
        f"| max RPS (p99 < 1 s, < 0.1 % errors), one core | {_max_rps_text(s, 'gateway')} "
        f"| {_max_rps_text(s, 'litellm')} | {_max_rps_text(s, 'direct')} |"
    )
    cad = [
        dig(s, "cadence_max_streams", "paths", p, "max_stall_free") for p in ("gateway", "litellm", "direct")
    ]
    out.append(f"| stall-free SSE streams (20 ms cadence), one core | {' | '.join(fmt(v) for v in cad)} |")
    out += [
        "",
        f"Their harness, quoted (GetBusbar/benchmarking, July 2026: each gateway pinned to {FIELD_CORES} "
        'Graviton3 cores, vendor-run; "per core" divides by the 4 cores, an inference):',
        "",
        "| gateway (their harness, 4 cores) | added p99 at c=1 | max RPS (4 cores) | max RPS per core "
        "| stall-free streams (4 cores) |",
        "|---|---|---|---|---|",
    ]
    for name, p99, rps, streams in FIELD:
        out.append(f"| {name} | {fmt(p99)} ms | {fmt(rps)} | {fmt(rps / FIELD_CORES, 0)} | {fmt(streams)} |")
    return [*out, ""]


def echo_section(result: dict[str, Any]) -> list[str]:
    s = result["scenarios"]
    ef = s.get("echo_floor") or {}
    out = ["## The floor: bare grpc.aio echo (`echo_floor`)", ""]
    if not ef.get("loads"):
        return [*out, f"Not measured: {ef.get('skipped', 'not run')}.", ""]
    pr = ef.get("params") or {}
    out += [
        f"{pr.get('what', '')} (`bench/echo.py`): {fmt(pr.get('unary_response_bytes'))} bytes per unary "
        f"answer, {fmt(pr.get('stream_messages'))} messages carrying {fmt(pr.get('stream_events'))} events "
        "per stream.",
        "",
        "| load | echo CPU µs per call (event) | gateway CPU µs per call (event) | gateway / echo "
        "| echo throughput | gateway throughput | harness ceiling (direct) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, metric in (
        ("unary_c1", "middle_cpu_us_per_req"),
        ("unary_c64", "middle_cpu_us_per_req"),
        ("stream64_c64", "middle_cpu_us_per_event"),
    ):
        e = (ef.get("loads") or {}).get(key) or {}
        ev, gv = dig(e, "derived", metric), dig(s, key, "paths", "gateway", "derived", metric)
        rate = "events_per_s" if key.startswith("stream") else "rps"
        unit = "ev/s" if key.startswith("stream") else "req/s"
        out.append(
            f"| {key} | {fmt(ev, 1)} | {fmt(gv, 1)} | {fmt(gv / ev) + 'x' if ev and gv else NA} "
            f"| {fmt(dig(e, 'loadgen', rate), 0)} {unit} "
            f"| {fmt(dig(s, key, 'paths', 'gateway', 'loadgen', rate), 0)} "
            f"{unit} | {fmt(dig(s, key, 'paths', 'direct', 'loadgen', rate), 0)} {unit} |"
        )
    return [*out, ""]


def max_rps_section(result: dict[str, Any]) -> list[str]:
    s = result["scenarios"]
    mr = s.get("max_rps") or {}
    out = ["## Highest sustained rate (`max_rps`)", ""]
    if not mr.get("paths"):
        return [*out, "Not measured.", ""]
    rule = next((dig(r, "loadgen", "rule") for r in mr["paths"].values() if dig(r, "loadgen", "rule")), "")
    out += [
        f"Unary chat, {rule}; the first step starts at {dig(mr, 'params', 'start')}.",
        "",
        "| path | max RPS | stopped by | steps (rate: p99 ms, errors %) | load generator CPU % at the max "
        "| harness ceiling (direct) |",
        "|---|---|---|---|---|---|",
    ]
    ceiling = _max_rps(s, "direct")
    for path in ("gateway", "direct", "litellm"):
        r = mr["paths"].get(path) or {}
        lg = r.get("loadgen")
        if not lg:
            out.append(f"| {path} | {r.get('skipped') or r.get('failed') or 'not run'} | | | | |")
            continue
        steps = ", ".join(
            f"{fmt(st['rate'], 0)}: {fmt(dig(st, 'latency_ms', 'p99'), 1)}, {fmt(st['error_pct'], 2)}"
            for st in lg.get("steps") or []
        )
        out.append(
            f"| {path} | **{'≥ ' if lg.get('lower_bound') else ''}{fmt(lg.get('max_rps'), 0)}** "
            f"| {lg.get('stop')} | {steps} "
            f"| {fmt(dig(lg, 'best_step', 'loadgen_cpu_pct'), 0)} | {fmt(ceiling, 0)} |"
        )
    return [*out, ""]


def workers_section(result: dict[str, Any]) -> list[str]:
    ws = result["scenarios"].get("workers_scaling") or {}
    out = ["## `--workers 2` against 1 (`workers_scaling`)", ""]
    if not ws.get("points"):
        return [*out, f"Not measured: {ws.get('skipped', 'not run')}.", ""]
    out += [
        f"{dig(ws, 'params', 'load')}; {dig(ws, 'params', 'channels') or 'one gRPC channel'}; "
        f"{dig(ws, 'params', 'note')}.",
        "",
        "| workers | req/s | p50 / p99 ms | gateway CPU % (per process) | fake % | load generator % "
        "| other processes % | harness ceiling (direct) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ceiling = dig(result["scenarios"], "unary_c64", "paths", "direct", "loadgen", "rps")
    for key, n in (("workers_1", 1), ("workers_2", 2)):
        r = ws["points"].get(key) or {}
        if "loadgen" not in r:
            out.append(f"| {n} | {r.get('failed', 'not run')} | | | | | | |")
            continue
        lg, pr = r["loadgen"], r.get("processes") or {}
        each = pr.get("middle_each_cpu_pct") or {}
        per = " + ".join(fmt(v, 0) for v in sorted(each.values(), reverse=True) if v >= 1)
        lat = lg.get("latency_ms") or {}
        out.append(
            f"| {n} | {fmt(lg.get('rps'), 0)} | {fmt(lat.get('p50'), 2)} / {fmt(lat.get('p99'), 2)} "
            f"| {fmt(dig(pr, 'middle', 'cpu_pct'), 0)}{' (' + per + ')' if per else ''} "
            f"| {fmt(dig(pr, 'upstream', 'cpu_pct'), 0)} | {fmt(dig(pr, 'loadgen', 'cpu_pct'), 0)} "
            f"| {fmt(pr.get('other_processes_pct'), 0)} | {fmt(ceiling, 0)} req/s |"
        )
    out += ["", f"Ratio 2 / 1: **{fmt(ws.get('ratio'))}x**. {workers_note(ws)}.", ""]
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
        "gateway → HTTP → fake upstream), **direct** (load generator → HTTP → fake upstream: the floor, and "
        "the harness's ceiling) "
        'and **LiteLLM** (load generator → HTTP → LiteLLM proxy → fake upstream). "Middle" is the process '
        "under test (gateway, echo floor or LiteLLM); CPU is utime+stime from /proc over the measured window."
    )
    add("")
    out.extend(harness_lines(result))
    add("## Targets (per gateway process on one core, ratios in one run)")
    add("")
    add(
        '"This issue" is the goal the verdict is against; the moonshot column says whether the stretch '
        "goal is met too. The last column is the harness's own figure (the direct path: load generator → "
        "fake upstream, no middle process), so no verdict is the harness's."
    )
    add("")
    add(
        "| figure | now | this issue | moonshot | measured | verdict | missed by | moonshot met "
        "| harness ceiling |"
    )
    add("|---|---|---|---|---|---|---|---|---|")
    for t in result["targets"]:
        verdict = {"met": "**met**", "missed": "**missed**"}.get(t["verdict"], t["verdict"])
        extra = f" — {t['note']}" if t.get("note") else ""
        moon = NA if t.get("moonshot_met") is None else ("yes" if t["moonshot_met"] else "no")
        add(
            f"| {t['name']} | {t.get('now', NA)} | {t['target_text']} | {t.get('moonshot_text', NA)} "
            f"| {t['measured_text']} | {verdict} | {t['miss']}{extra} | {moon} | {t.get('ceiling') or NA} |"
        )
    add("")
    out.extend(busbar_section(result))
    out.extend(_primary_rows(result))
    add("")
    out.extend(echo_section(result))
    out.extend(max_rps_section(result))
    out.extend(workers_section(result))
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
        "On two cores the load generator and the fake share CPU 0; "
        "when the *loadgen* or *upstream* column saturates, a failing step says more about the machine "
        "than about the path under test. The direct rows are the harness's own ceiling: a gateway step that "
        "fails where the direct path also fails is not the gateway's verdict."
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
    h = result.get("harness") or {}
    if h.get("driver", "python") == "go":
        add(
            "* Separate processes on 127.0.0.1: the fake upstream (`benchdriver fake`, Go, answering with "
            "bytes rendered by the Python fake's own code), the gateway (`python -m openai_grpc_server`), "
            "the echo floor (`python -m bench.echo`), LiteLLM's proxy (`litellm --config ...`, "
            "`LITELLM_LOCAL_MODEL_COST_MAP=True`, a master key, models routed to the fake's base URL) and "
            "one load generator process per point (`benchdriver load`, Go: grpc-go with the generated stubs "
            "on one channel, or net/http with a pool sized to the concurrency; the upload point uses "
            "`python -m bench.loadgen`)."
        )
    else:
        add(
            "* Separate processes on 127.0.0.1: the fake upstream "
            "(`python -m openai_grpc_server.fake_upstream`), the gateway (`python -m openai_grpc_server`), "
            "LiteLLM's proxy (`litellm --config ...`, `LITELLM_LOCAL_MODEL_COST_MAP=True`, a master key, "
            "models routed to the fake's base URL) and one load generator process per point "
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
        "* Open loop (`max_rps`): request i of a step is due at the step's start + i / rate and its latency "
        "counts from then, so a queue building up shows in p99 (no coordinated omission)."
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
