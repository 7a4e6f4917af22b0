"""Targets, plots (matplotlib) and the markdown report of one benchmark run."""

from __future__ import annotations

import os
import re
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
        for name in {f for f, _, func in frames if func not in _ROOT_FUNCS}:
            incl_c[name] += n

    def pct(c: Counter[str]) -> list[dict[str, Any]]:
        return (
            [{"frame": k, "pct": round(v / total * 100, 1)} for k, v in c.most_common(top)] if total else []
        )

    return {"samples": total, "self": pct(self_c), "inclusive": pct(incl_c), "by_package": pct(cat_c)}


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
        "How to run it: [bench/README.md](" + _rel(Path(__file__).parent / "README.md", md_path) + ")."
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
    # profile
    prof = result.get("profile") or {}
    add("## Where the gateway spends its CPU (unary chat, c=64)")
    add("")
    if "samples" not in prof:
        add(f"Not profiled: {prof.get('skipped', 'not run')}.")
    else:
        add(
            f"{prof['tool']}; {prof['samples']} samples of the gateway's Python threads while it served "
            f"{fmt(prof.get('rps_under_profiler'))} req/s. Native gRPC core threads are not sampled. "
            "Shares are of the samples taken. A coroutine resumed by the (C) event loop starts a new "
            "Python stack, so inclusive shares of async frames are lower bounds; the leaf columns are exact."
        )
        add("")
        add("| by package (leaf frame) | % | | self (leaf) frame | % | | inclusive frame | % |")
        add("|---|---|---|---|---|---|---|---|")
        rows = max(len(prof["by_package"]), len(prof["self"]), len(prof["inclusive"]))
        for i in range(min(rows, 15)):
            cells = []
            for col in ("by_package", "self", "inclusive"):
                item = dig(prof, col, i)
                cells.append(f"{item['frame']} | {item['pct']}" if item else " | ")
            add("| " + " | | ".join(cells) + " |")
    add("")
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
    add("* Benchmarks never gate CI; the smoke test only checks that a quick run produces every scenario.")
    add("")
    if result.get("notes"):
        add("## Notes")
        add("")
        for n in result["notes"]:
            add(f"* {n}")
        add("")
    return "\n".join(out)
