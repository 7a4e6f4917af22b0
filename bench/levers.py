"""The `levers` group: each gateway performance setting measured both ways, same load, same pinning.

For every lever the gateway runs once with the chosen value (the gateway's default, read from
`openai_grpc_server.config.Settings`) and once with the alternative, each in a fresh process
pinned like the main gateway and warmed up the same way. The baseline process (every lever at
its chosen value) is measured once for all loads and shared by the levers; at the end it is
measured again under unary c=64, and the difference between the two baseline figures is the
noise band the verdicts use. The codec's JSON path is an in-process micro-benchmark
(`bench.codec_lever`), run pinned to the core of the process under test while nothing else runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from bench.run import Bench


@dataclasses.dataclass(frozen=True)
class Lever:
    key: str
    title: str
    env: str
    setting: str  # attribute of openai_grpc_server.config.Settings
    values: tuple[str, str]  # the two values, as the environment variable takes them
    labels: tuple[tuple[str, str], ...]
    loads: tuple[str, ...]  # the first is the primary load (the summary row)
    kind: str = "choice"  # "cost": the alternative adds a feature; the question is its price

    def label(self, value: str) -> str:
        return dict(self.labels).get(value, value)


LEVERS: tuple[Lever, ...] = (
    Lever(
        "upstream_transport",
        "Upstream HTTP transport",
        "OPENAI_GRPC_UPSTREAM_TRANSPORT",
        "upstream_transport",
        ("aiohttp", "httpx"),
        (
            ("aiohttp", "the gateway's httpx transport over aiohttp's pool"),
            ("httpx", "httpx's default transport (httpcore)"),
        ),
        ("unary_c64", "unary_c1"),
    ),
    Lever(
        "event_loop",
        "Event loop",
        "OPENAI_GRPC_EVENT_LOOP",
        "event_loop",
        ("uvloop", "asyncio"),
        (("uvloop", "uvloop"), ("asyncio", "asyncio's own loop")),
        ("unary_c64", "unary_c1"),
    ),
    Lever(
        "json_library",
        "JSON library",
        "OPENAI_GRPC_JSON_LIBRARY",
        "json_library",
        ("orjson", "stdlib"),
        (("orjson", "orjson"), ("stdlib", "json (standard library)")),
        ("unary_c64", "unary_c1"),
    ),
    Lever(
        "embeddings_base64",
        "Embeddings as base64 upstream",
        "OPENAI_GRPC_EMBEDDINGS_BASE64",
        "embeddings_base64",
        ("true", "false"),
        (
            ("true", "ask for base64, decode into packed floats"),
            ("false", "float JSON, as the caller asked"),
        ),
        ("embeddings_c16",),
    ),
    Lever(
        "coalesce_events",
        "Several stream events per gRPC message",
        "OPENAI_GRPC_COALESCE_EVENTS",
        "coalesce_events",
        ("true", "false"),
        (("true", "events of one upstream read in one message"), ("false", "one message per SSE event")),
        ("stream64_c64", "cadence_64"),
    ),
    Lever(
        "tracing",
        "OpenTelemetry tracing",
        "OPENAI_GRPC_TRACING",
        "tracing",
        ("false", "true"),
        (("false", "off"), ("true", "on: server interceptor + spans (no exporter configured)")),
        ("unary_c64", "unary_c1"),
        kind="cost",
    ),
)
REPO = Path(__file__).resolve().parent.parent
CODEC_KEY = "codec_json_path"
LIMITER_KEY = "shared_rate_limit"
LIMITER_TARGET_US = 150.0  # the shared limiter may add at most this much CPU per call
KEYS: tuple[str, ...] = (*(lv.key for lv in LEVERS), CODEC_KEY, LIMITER_KEY)
# Every gateway runs its loads in this order (after the same warm-up), so each is in the same state.
LOAD_ORDER = ("unary_c1", "unary_c64", "embeddings_c16", "stream64_c64", "cadence_64")


@dataclasses.dataclass(frozen=True)
class Load:
    mode: str  # loadgen mode, or "cadence"
    metric: str  # the figure a lever is judged by
    what: str


def loads_for(plan: Any) -> dict[str, Load]:
    return {
        "unary_c1": Load("unary", "cpu_us_per_req", f"unary chat, closed loop, c={plan.c_low}"),
        "unary_c64": Load("unary", "cpu_us_per_req", f"unary chat, closed loop, c={plan.c_high}"),
        "embeddings_c16": Load(
            "embed",
            "cpu_us_per_req",
            f"embeddings, {plan.embed_inputs} inputs x {plan.embed_dims} dims, c={plan.embed_c} "
            "(the fake sizes the answer and honours encoding_format)",
        ),
        "stream64_c64": Load(
            "stream",
            "cpu_us_per_event",
            f"chat stream of {plan.stream_events} events, no gaps, c={plan.c_high}",
        ),
        "cadence_64": Load(
            "cadence",
            "cpu_us_per_event",
            f"{plan.lever_cadence_streams} streams of {plan.cadence_events} events, one per "
            f"{plan.cadence_gap_ms:g} ms",
        ),
    }


def gateway_defaults() -> dict[str, str]:
    """The gateway's default for each lever's setting, spelled as its env var takes it."""
    from openai_grpc_server.config import Settings  # noqa: PLC0415 - the gateway's own defaults

    fields = {f.name: f.default for f in dataclasses.fields(Settings)}
    out: dict[str, str] = {}
    for lv in LEVERS:
        value = fields.get(lv.setting, dataclasses.MISSING)
        if value is dataclasses.MISSING:
            continue
        out[lv.key] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


def summarize(point: dict[str, Any], mode: str) -> dict[str, Any]:
    lg, d, pr = point["loadgen"], point.get("derived", {}), point.get("processes", {})
    lat = lg.get("latency_ms") or {}
    out: dict[str, Any] = {
        "cpu_us_per_req": d.get("middle_cpu_us_per_req"),
        "rps": lg.get("rps"),
        "p50_ms": lat.get("p50"),
        "p99_ms": lat.get("p99"),
        "errors": lg.get("errors"),
        "middle_cpu_pct": (pr.get("middle") or {}).get("cpu_pct"),
        "upstream_cpu_pct": (pr.get("upstream") or {}).get("cpu_pct"),
        "other_processes_pct": pr.get("other_processes_pct"),
    }
    if mode == "stream":
        out["cpu_us_per_event"] = d.get("middle_cpu_us_per_event")
        out["events_per_s"] = lg.get("events_per_s")
        if lg.get("messages_per_s"):
            out["events_per_message"] = round(lg["events_per_s"] / lg["messages_per_s"], 2)
    return out


def summarize_step(step: dict[str, Any]) -> dict[str, Any]:
    if "gap_ms" not in step:
        return {"failed": step.get("failed", "no result")}
    return {
        "cpu_us_per_event": step.get("middle_cpu_us_per_event"),
        "events_per_s": step.get("events_per_s"),
        "expected_events_per_s": step.get("expected_events_per_s"),
        "gap_p99_ms": step["gap_ms"].get("p99"),
        "gap_max_ms": step["gap_ms"].get("max"),
        "gaps_over_40ms": step.get("gaps_over_40ms"),
        "pass": step.get("pass"),
        "errors": step.get("errors"),
        "middle_cpu_pct": (step.get("cpu_pct") or {}).get("middle"),
        "other_processes_pct": step.get("other_processes_pct"),
    }


class LeverRun:
    def __init__(self, bench: Bench) -> None:
        self.b = bench
        self.plan = bench.plan
        self.loads = loads_for(bench.plan)
        self.notes: list[str] = []

    async def last_encoding_format(self) -> str | None:
        """What the gateway last asked the fake for: proof of which embeddings path ran."""
        try:
            got = await self.b.fake_get("/_fake/requests?route=" + quote("POST /embeddings") + "&limit=1")
        except OSError:
            return None
        data = got.get("data") if isinstance(got, dict) else None
        if not data:
            return None
        body = data[-1].get("json") or {}
        return str(body.get("encoding_format", "absent (float)"))

    async def measure(self, path: str, load: str) -> dict[str, Any]:
        p, b = self.plan, self.b
        spec = self.loads[load]
        if spec.mode == "cadence":
            await b.fake_stream_config(p.cadence_events, p.cadence_gap_ms)
            step = await b.cadence_step(path, p.lever_cadence_streams, 1000.0 / p.cadence_gap_ms)
            return {"summary": summarize_step(step), "step": step}
        if spec.mode == "stream":
            await b.fake_stream_config(p.stream_events, 0.0)
        c = {"unary_c1": p.c_low, "unary_c64": p.c_high, "embeddings_c16": p.embed_c}.get(load, p.c_high)
        r = await b.point(
            path, f"lever-{load}", spec.mode, concurrency=c, warmup=p.lever_warmup, duration=p.lever_duration
        )
        if "failed" in r:
            return {"failed": r["failed"], "summary": {}}
        summary = summarize(r, spec.mode)
        if spec.mode == "embed":
            summary["upstream_encoding_format"] = await self.last_encoding_format()
        return {"summary": summary, "point": r}

    async def gateway(self, name: str, settings: dict[str, str], loads: list[str]) -> dict[str, Any]:
        """Start a gateway with `settings`, warm it, run `loads`; leaves it running (paused
        by the next select) so the caller decides when to stop it."""
        b, p = self.b, self.plan
        print(f"[bench] levers: gateway {name} with {settings}", flush=True)
        await b.launch_gateway(name, settings, f"gateway-{name}.log")
        if p.lever_gateway_warmup > 0:
            await b.point(
                name,
                "lever-warm-up",
                "unary",
                concurrency=p.c_high,
                warmup=p.lever_gateway_warmup,
                duration=0.2,
            )
        return {load: await self.measure(name, load) for load in loads}

    async def codec(self) -> dict[str, Any]:
        p = self.plan
        return await self.in_process(
            "bench.codec_lever",
            "codec JSON path",
            "--repeat",
            str(p.codec_repeat),
            "--min-time",
            str(p.codec_min_time),
            "--inputs",
            str(p.embed_inputs),
            "--dims",
            str(p.embed_dims),
        )

    async def limiter(self) -> dict[str, Any]:
        p = self.plan
        return await self.in_process(
            "bench.limiter_lever",
            "rate limiter in process / on Redis",
            "--calls",
            str(p.limiter_calls),
            "--concurrency",
            str(p.c_high),
        )

    async def in_process(self, module: str, what: str, *args: str) -> dict[str, Any]:
        """An in-process micro-benchmark, pinned to the core of the process under test while
        no middle process runs; its JSON output."""
        b = self.b
        b.select("upstream")  # no middle process runs
        await b.wait_quiet()
        argv = [b.py, "-m", module, *args]
        if b.cpu_mid is not None:
            argv = ["taskset", "-c", b.cpu_mid, *argv]
        print(f"[bench] levers: {what} (in process)", flush=True)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(REPO),
            env=b.clean_env(),
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 600)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return {"failed": f"{module} did not finish within 600 s"}
        if proc.returncode != 0:
            tail = err.decode(errors="replace")[-600:]
            return {"failed": f"{module} exited {proc.returncode}: {tail}"}
        data: dict[str, Any] = json.loads(out)
        data["pinned_cpus"] = b.cpu_mid
        return data

    async def run(self) -> dict[str, Any]:
        b, p = self.b, self.plan
        t0 = time.monotonic()
        defaults = gateway_defaults()
        chosen: dict[str, str] = {}
        alternative: dict[str, str] = {}
        for lv in LEVERS:
            d = defaults.get(lv.key)
            if d in lv.values:
                chosen[lv.key] = d
            else:
                chosen[lv.key] = lv.values[0]
                self.notes.append(
                    f"the gateway's default for `{lv.setting}` is {d!r}, not one of {lv.values}: "
                    f"measured {lv.values[0]!r} as the chosen value"
                )
            alternative[lv.key] = next(v for v in lv.values if v != chosen[lv.key])
        base_env = {lv.env: chosen[lv.key] for lv in LEVERS}
        overridden = sorted(set(b.gateway_env) & set(base_env))
        if overridden:
            self.notes.append(
                f"--gateway-env set {', '.join(overridden)}; the levers group sets every lever itself"
            )
        wanted = {lv.key: list(lv.loads if p.lever_all_loads else lv.loads[:1]) for lv in LEVERS}
        base_loads = [ld for ld in LOAD_ORDER if any(ld in v for v in wanted.values())]
        if b.embed_mode.startswith("scripted"):
            self.notes.append(
                "the fake upstream does not size embeddings answers itself, so every answer is a scripted "
                "float body and the base64 lever cannot be measured"
            )
            wanted["embeddings_base64"] = []
            base_loads = [ld for ld in base_loads if ld != "embeddings_c16"]

        result: dict[str, Any] = {
            "params": {
                "warmup_s": p.lever_warmup,
                "duration_s": p.lever_duration,
                "gateway_warmup_s": p.lever_gateway_warmup,
                "gateway_workers": b.gateway_workers,
                "pinned_cpus": b.cpu_mid if b.gateway_workers == 1 else None,
                "loads": {k: dataclasses.asdict(v) for k, v in self.loads.items() if k in base_loads},
                "order": "codec micro-benchmark; baseline gateway (every lever at its chosen value): "
                "all loads; then one gateway per alternative: that lever's loads; then the baseline "
                "again under unary c=64 (noise band)",
            },
            "items": {},
        }
        result["items"][CODEC_KEY] = {
            "title": "Codec JSON path",
            "env": None,
            "chosen": "codec",
            "alternative": "json_format",
            "chosen_label": "direct mapping (openai_grpc_server.codec)",
            "alternative_label": "google.protobuf.json_format",
            "kind": "choice",
            "in_process": True,
            "codec": await self.codec(),
        }
        result["items"][LIMITER_KEY] = {
            "title": "Rate limits shared on Redis",
            "env": "OPENAI_GRPC_RATE_LIMIT_REDIS_URL",
            "chosen": "in process",
            "alternative": "redis",
            "chosen_label": "per-process buckets (no `rate_limit.redis_url`)",
            "alternative_label": "buckets shared on Redis (redis-server on loopback)",
            "kind": "cost",
            "in_process": True,
            "target_us": LIMITER_TARGET_US,
            "limiter": await self.limiter(),
        }

        baseline: dict[str, Any] = {"settings": base_env, "points": {}}
        try:
            baseline["points"] = await self.gateway("lever-baseline", base_env, base_loads)
        except RuntimeError as exc:
            baseline["failed"] = f"baseline gateway did not start: {str(exc)[:400]}"
        result["baseline"] = baseline

        for lv in LEVERS:
            item: dict[str, Any] = {
                "title": lv.title,
                "env": lv.env,
                "setting": lv.setting,
                "chosen": chosen[lv.key],
                "alternative": alternative[lv.key],
                "chosen_label": lv.label(chosen[lv.key]),
                "alternative_label": lv.label(alternative[lv.key]),
                "kind": lv.kind,
                "gateway_default": defaults.get(lv.key),
                "loads": {},
            }
            result["items"][lv.key] = item
            if not wanted[lv.key]:
                item["skipped"] = "not measurable here (see the notes)"
                continue
            if "failed" in baseline:
                item["failed"] = baseline["failed"]
                continue
            name = f"lever-{lv.key}"
            try:
                points = await self.gateway(name, {**base_env, lv.env: alternative[lv.key]}, wanted[lv.key])
            except RuntimeError as exc:
                item["failed"] = (
                    f"gateway with {lv.env}={alternative[lv.key]} did not start: {str(exc)[:400]}"
                )
                continue
            finally:
                b.stop_middle(name)
            item["alternative_points"] = points
            for load in wanted[lv.key]:
                metric = self.loads[load].metric
                c = baseline["points"].get(load, {}).get("summary", {})
                a = points.get(load, {}).get("summary", {})
                entry: dict[str, Any] = {"metric": metric, "chosen": c, "alternative": a}
                if c.get(metric) and a.get(metric):
                    entry["ratio"] = round(a[metric] / c[metric], 3)
                    entry["delta"] = round(a[metric] - c[metric], 2)
                item["loads"][load] = entry
            item["primary_load"] = wanted[lv.key][0]

        if p.lever_repeat and "failed" not in baseline and "unary_c64" in baseline["points"]:
            again = await self.measure("lever-baseline", "unary_c64")
            first = baseline["points"]["unary_c64"].get("summary", {}).get("cpu_us_per_req")
            second = again.get("summary", {}).get("cpu_us_per_req")
            baseline["repeat_unary_c64"] = again
            if first and second:
                result["noise"] = {
                    "what": "the baseline gateway measured again under unary c=64 after all alternatives",
                    "first_cpu_us_per_req": first,
                    "again_cpu_us_per_req": second,
                    "drift_pct": round(abs(second - first) / first * 100, 1),
                    "first_rps": baseline["points"]["unary_c64"]["summary"].get("rps"),
                    "again_rps": again["summary"].get("rps"),
                }
        b.stop_middle("lever-baseline")
        result["elapsed_s"] = round(time.monotonic() - t0, 1)
        result["notes"] = self.notes
        print(f"[bench] levers: done in {result['elapsed_s']} s", flush=True)
        return result


async def run_levers(bench: Bench) -> dict[str, Any]:
    return await LeverRun(bench).run()
