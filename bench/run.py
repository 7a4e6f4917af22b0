"""The benchmark: `.venv/bin/python -m bench.run [--quick]` (see bench/README.md).

Starts the fake upstream, the gateway and (in its own venv) LiteLLM's proxy as separate
processes on 127.0.0.1, drives each scenario through three paths side by side:

* gateway: load generator --gRPC--> gateway --HTTP--> fake upstream
* direct:  load generator --HTTP--> fake upstream
* litellm: load generator --HTTP--> LiteLLM proxy --HTTP--> fake upstream

and writes bench/results/<date>.json, PNG plots and docs/benchmarks.md. CPU is read from
/proc/<pid>/stat (utime+stime) of each process tree at the start and end of every measured
window; RSS from /proc/<pid>/status. Only the process under test runs: the other middle
process is SIGSTOPped while a path is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import driver, levers, litellm_env, procs, report, upstream_fixtures
from bench.procs import Proc

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
CHAT_MODEL = "gpt-4o-mini"
EMBED_MODEL = "text-embedding-3-small"
GATEWAY_KEY = "sk-bench-placeholder-not-a-key"
PATHS = ("gateway", "direct", "litellm")
# Load generator modes the Go driver runs (upload stays on bench.loadgen: one big stream, never
# the harness's ceiling).
GO_MODES = frozenset({"unary", "embed", "stream", "hold", "cancel", "rate"})
SCENARIOS = (
    "unary_c1",
    "unary_c64",
    "echo_floor",
    "max_rps",
    "workers_scaling",
    "embeddings_c1",
    "embeddings_c16",
    "stream64_c1",
    "stream64_c64",
    "cadence_max_streams",
    "rss_per_stream",
    "upload_256mib",
    "cancellations_1000",
)
PackageNames = ("grpcio", "protobuf", "aiohttp", "httpx", "uvloop", "orjson", "matplotlib", "py-spy")


@dataclasses.dataclass(frozen=True)
class Plan:
    """Loads and durations; the scenario keys stay the same in quick mode."""

    warmup: float = 2.0
    duration: float = 8.0
    c_low: int = 1
    c_high: int = 64
    embed_c: int = 16
    embed_inputs: int = 16
    embed_dims: int = 1536
    stream_events: int = 64
    cadence_events: int = 100
    cadence_gap_ms: float = 20.0
    # Stepping stops at the first failing step, so 768 and 1024 run only when 512 passed.
    cadence_steps: tuple[int, ...] = (64, 128, 256, 384, 512, 768, 1024)
    cadence_step_down: int = 3  # if the first step fails: try 1/2, 1/4, 1/8 of it
    cadence_stagger: float = 2.0
    cadence_duration: float = 8.0
    hold_streams: int = 512
    hold_gap_ms: float = 1000.0
    upload_bytes: int = 256 << 20
    chunk_bytes: int = 1 << 20
    cancels: int = 1000
    cancel_c: int = 16
    cancel_gap_ms: float = 20.0
    litellm_warmup: float = 4.0
    gateway_warmup: float = 10.0
    profile_seconds: float = 8.0
    settle: float = 1.0  # pauses around marks; the fake gets 2x this to see disconnects
    # Levers: one fresh gateway per setting value, warmed like the main one but shorter.
    lever_gateway_warmup: float = 8.0
    lever_warmup: float = 2.0  # per point: the same as `warmup` / `duration` in a full run
    lever_duration: float = 8.0
    lever_repeat: bool = True  # the baseline measured again at the end: the noise band
    lever_all_loads: bool = True  # quick: only each lever's primary load
    lever_cadence_streams: int = 64
    codec_repeat: int = 5
    codec_min_time: float = 0.2
    limiter_calls: int = 20_000  # bench.limiter_lever: acquire+settle cycles per limiter
    # max_rps: open loop, offered rate x rate_factor per step from rate_start_share x the closed-loop
    # c=64 throughput, until a step has p99 >= 1 s or >= 0.1 % errors.
    rate_start_share: float = 0.5
    rate_factor: float = 1.15
    rate_step_s: float = 4.0
    rate_warmup: float = 2.0
    rate_max_steps: int = 24
    workers_warmup: float = 8.0  # the --workers 2 gateway, before its unary c=64 point


FULL = Plan()
QUICK = Plan(
    warmup=0.2,
    duration=0.6,
    c_high=8,
    embed_c=4,
    cadence_steps=(16, 32),
    cadence_step_down=1,
    cadence_stagger=0.3,
    cadence_duration=1.0,
    hold_streams=32,
    upload_bytes=8 << 20,
    cancels=50,
    cancel_c=8,
    litellm_warmup=1.0,
    gateway_warmup=0.5,
    profile_seconds=0.0,
    settle=0.25,
    lever_gateway_warmup=0.0,  # no warm-up point: each lever gateway goes straight to its load
    lever_warmup=0.1,
    lever_duration=0.3,
    lever_repeat=False,
    lever_all_loads=False,
    lever_cadence_streams=16,
    codec_repeat=2,
    codec_min_time=0.01,
    limiter_calls=1_000,
    rate_factor=1.6,
    rate_step_s=0.4,
    rate_warmup=0.2,
    rate_max_steps=3,
    workers_warmup=0.0,
)


def embedding_body(inputs: int, dims: int, seed: int = 7) -> str:
    """An OpenAI embeddings answer of `inputs` vectors of `dims` floats, as the API formats them."""
    rng = random.Random(seed)
    data = [
        {"object": "embedding", "index": i, "embedding": [round(rng.gauss(0, 0.03), 9) for _ in range(dims)]}
        for i in range(inputs)
    ]
    usage = {"prompt_tokens": 12 * inputs, "total_tokens": 12 * inputs}
    return json.dumps({"object": "list", "data": data, "model": EMBED_MODEL, "usage": usage})


def system_busy_s() -> float:
    """Busy CPU time of the whole machine (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return (sum(parts[:8]) - idle) / procs.CLK_TCK


def wait_serving(target: str, within: float) -> None:
    """Until the gRPC health service at `target` says SERVING (RuntimeError after `within` s)."""
    import grpc  # noqa: PLC0415
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

    deadline = time.monotonic() + within
    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)  # type: ignore[no-untyped-call]
        while True:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == 1:  # SERVING
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{target} did not say SERVING within {within:.0f} s")
            time.sleep(0.1)


def dig_rps(s: dict[str, Any], key: str, nested: bool = True) -> float | None:
    """Closed-loop unary c=64 requests/s of a path (nested: in scenario unary_c64)."""
    r = report.dig(s, "unary_c64", "paths", key) if nested else s.get(key)
    v = report.dig(r, "loadgen", "rps")
    return float(v) if v else None


@dataclasses.dataclass
class PathInfo:
    name: str
    transport: str
    target: str
    api_key: str
    proc: Proc | None  # the middle process, None for direct


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick: bool = args.quick
        self.plan = QUICK if args.quick else FULL
        self.py = sys.executable
        self.stamp = dt.datetime.now().strftime("%Y-%m-%d")
        suffix = "-quick" if self.quick else ""
        self.results_dir: Path = args.results_dir
        self.json_path = self.results_dir / f"{self.stamp}{suffix}.json"
        self.plots_dir = self.results_dir / f"{self.stamp}{suffix}"
        self.md_path: Path = args.docs_out or (
            self.results_dir / f"{self.stamp}-quick.md" if self.quick else REPO / "docs" / "benchmarks.md"
        )
        self.log_dir: Path = args.log_dir or (BENCH / ".logs" / f"{self.stamp}{suffix}")
        nproc = os.cpu_count() or 1
        self.pin = bool(args.pin and nproc >= 2 and procs.have_taskset())
        self.cpu_side = "0" if self.pin else None  # upstream, load generator, orchestrator
        self.cpu_mid = "1" if self.pin else None  # the process under test
        self.cpu_all = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))  # before pinning ourselves
        self.procs: dict[str, Proc] = {}
        self.paths: dict[str, PathInfo] = {}
        self.notes: list[str] = []
        self.litellm: litellm_env.LitellmEnv | None = None
        self.gateway_flags: dict[str, Any] = {}
        self.results: dict[str, Any] = {}
        self.point_seq = 0
        self.embed_body_bytes = 0
        self.embed_mode = ""
        self.busy_points = 0
        self.quiet_budget = float(args.quiet_budget)
        self.gateway_env: dict[str, str] = {}
        self.driver: str = args.driver
        self.go_bin: Path | None = None
        self.echo_answers: dict[str, Any] = {}
        for item in args.gateway_env:
            key, sep, value = item.partition("=")
            if not sep or not key.startswith("OPENAI_GRPC_"):
                raise SystemExit(f"--gateway-env wants OPENAI_GRPC_NAME=value, not {item!r}")
            self.gateway_env[key] = value

    # -- processes -----------------------------------------------------------------------------

    def launch(
        self,
        name: str,
        argv: list[str],
        *,
        cpus: str | None,
        env: dict[str, str] | None = None,
        log_name: str | None = None,
        cwd: Path = REPO,
    ) -> Proc:
        """Start one process of the run as `name` (stopped with the run), logging to the log directory."""
        proc = Proc(
            name,
            argv,
            env=self.clean_env() if env is None else env,
            cpus=cpus,
            log_path=self.log_dir / (log_name or f"{name}.log"),
            cwd=cwd,
        )
        proc.start()
        self.procs[name] = proc
        return proc

    def clean_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LITELLM_"))}
        env["PYTHONPATH"] = str(REPO)
        return env

    def build_driver(self) -> None:
        """The Go driving side (load generator and fake upstream), built on first use."""
        if self.driver != "go":
            return
        print("[bench] building the Go driver (bench/driver) ...", flush=True)
        self.go_bin = driver.ensure(self.log_dir / "driver_build.log")

    def fixtures(self) -> Path:
        """The Go fake's precomputed answers, rendered by the Python fake's own code."""
        p = self.plan
        data = upstream_fixtures.build(
            [CHAT_MODEL],
            [p.stream_events - 2, p.cadence_events - 2],
            [(EMBED_MODEL, p.embed_inputs, p.embed_dims)],
        )
        return upstream_fixtures.write(self.log_dir / "fake_fixtures.json", data)

    async def start_fake(self) -> None:
        port = procs.free_port()
        if self.go_bin is not None:
            argv = [str(self.go_bin), "fake", "--host", "127.0.0.1", "--port", str(port)]
            argv += ["--fixtures", str(self.fixtures()), "--chunks", str(self.plan.stream_events - 2)]
        else:
            argv = [self.py, "-m", "openai_grpc_server.fake_upstream", "--host", "127.0.0.1"]
            argv += ["--port", str(port), "--chunks", str(self.plan.stream_events - 2)]
        fake = self.launch("upstream", argv, cpus=self.cpu_side, log_name="fake_upstream.log")
        await procs.wait_port(port, fake, 30)
        self.fake_root = f"http://127.0.0.1:{port}"
        self.fake_base = self.fake_root + "/v1"
        await self.setup_embeddings()
        self.paths["direct"] = PathInfo("direct", "http", self.fake_base, "sk-fake-direct", None)

    async def setup_embeddings(self) -> None:
        """Make the fake answer inputs x dims embeddings: natively when it sizes its answer from
        the request (input count, `dimensions`), else through a script for every request."""
        p = self.plan
        probe = {
            "model": EMBED_MODEL,
            "input": [f"probe {i}" for i in range(p.embed_inputs)],
            "dimensions": p.embed_dims,
        }
        answer = await self.fake_post("/v1/embeddings", probe)
        data = answer.get("data") if isinstance(answer, dict) else None
        native = (
            isinstance(data, list)
            and len(data) == p.embed_inputs
            and len(data[0].get("embedding") or ()) == p.embed_dims
        )
        if native:
            self.embed_body_bytes = len(json.dumps(answer))
            self.embed_mode = "native: the fake sizes its answer from the request"
            return
        body = embedding_body(p.embed_inputs, p.embed_dims)
        await self.fake_post(
            "/_fake/script",
            {
                "route": "POST /embeddings",
                "raw_body": body,
                "content_type": "application/json",
                "for_seconds": 1e9,
            },
        )
        self.embed_body_bytes = len(body)
        self.embed_mode = "scripted: the fake has no size knob; every answer comes from /_fake/script"

    def gateway_supports(self) -> dict[str, Any]:
        try:
            out = subprocess.run(
                [self.py, "-m", "openai_grpc_server", "--help"],
                capture_output=True,
                text=True,
                timeout=60,
                env=self.clean_env(),
                cwd=REPO,
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        return {"workers": "--workers" in out}

    async def start_gateway(self) -> None:
        self.gateway_flags = self.gateway_supports()
        workers = int(self.args.gateway_workers)
        if not self.gateway_flags["workers"] and workers > 1:
            self.notes.append(
                f"--gateway-workers {workers} was asked for, but the gateway has no --workers flag yet: "
                "ran one gateway process."
            )
            workers = 1
        self.gateway_workers = workers
        await self.launch_gateway("gateway", {}, "gateway.log")

    async def launch_gateway(
        self, name: str, settings: dict[str, str], log_name: str, workers: int | None = None
    ) -> Proc:
        """Start a gateway process as path `name` (pinned like the main one), with the
        --gateway-env settings and then `settings` on top."""
        workers = self.gateway_workers if workers is None else workers
        port = procs.free_port()
        argv = [self.py, "-m", "openai_grpc_server", "--port", str(port)]
        if self.gateway_flags["workers"]:
            argv += ["--workers", str(workers)]  # explicit, so a changed default cannot skew the figures
        env = self.clean_env()
        env.update(self.gateway_env)
        env.update(settings)
        env.update(
            OPENAI_API_KEY=GATEWAY_KEY,
            OPENAI_BASE_URL=self.fake_base,
            OPENAI_GRPC_HOST="127.0.0.1",
            OPENAI_GRPC_PORT=str(port),
        )
        # More than one worker process cannot live on one pinned core. "Unpinned" must be said
        # explicitly: children inherit the orchestrator's own affinity (CPU 0 when pinning).
        cpus = self.cpu_mid if workers == 1 else (self.cpu_all if self.pin else None)
        gw = self.launch(name, argv, cpus=cpus, env=env, log_name=log_name)
        try:
            await procs.wait_port(port, gw, 60)
            if workers > 1:
                # The port accepts as soon as the first worker listens; connections made before the
                # others listen would all land on it. SERVING comes once every worker listens.
                await asyncio.to_thread(wait_serving, f"127.0.0.1:{port}", 60.0)
        except RuntimeError:
            self.stop_middle(name)
            raise
        self.paths[name] = PathInfo(name, "grpc", f"127.0.0.1:{port}", "", gw)
        return gw

    def stop_middle(self, name: str) -> None:
        """Stop a middle process started after the others (a lever's gateway) and forget it."""
        proc = self.procs.pop(name, None)
        self.paths.pop(name, None)
        if proc is not None:
            proc.stop()

    async def start_litellm(self) -> None:
        if self.args.no_litellm:
            self.litellm = litellm_env.LitellmEnv(self.args.litellm_venv, None, "skipped: --no-litellm")
            return
        print(f"[bench] LiteLLM venv {self.args.litellm_venv} ...", flush=True)
        self.litellm = await asyncio.to_thread(
            litellm_env.ensure,
            self.args.litellm_venv,
            version=self.args.litellm_version,
            allow_install=not self.quick,
            log=self.log_dir / "litellm_install.log",
        )
        print(f"[bench] LiteLLM: {self.litellm.status} {self.litellm.version or ''}", flush=True)
        if not self.litellm.ok:
            return
        port = procs.free_port()
        cfg = self.log_dir / "litellm_config.yaml"
        litellm_env.write_config(cfg, self.fake_base, CHAT_MODEL, EMBED_MODEL)
        env = litellm_env.environment(self.clean_env())
        lt = self.launch(
            "litellm",
            litellm_env.command(self.litellm, cfg, port),
            cpus=self.cpu_mid,
            env=env,
            cwd=self.log_dir,
        )
        try:
            await procs.wait_port(port, lt, 180)
            await self.wait_http(f"http://127.0.0.1:{port}/health/liveliness", lt, 120)
        except RuntimeError as exc:
            self.litellm.status = f"failed: proxy did not start: {str(exc)[:300]}"
            lt.stop()
            del self.procs["litellm"]
            return
        self.paths["litellm"] = PathInfo(
            "litellm", "http", f"http://127.0.0.1:{port}/v1", litellm_env.MASTER_KEY, lt
        )

    async def wait_http(self, url: str, proc: Proc, within: float) -> None:
        deadline = time.monotonic() + within
        while True:
            try:
                await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=2).read())
                return
            except OSError:
                if not proc.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"{url} not answering:\n{proc.log_tail()}") from None
                await asyncio.sleep(0.5)

    def stop_all(self) -> None:
        for p in reversed(list(self.procs.values())):
            p.stop()

    async def fake_post(self, path: str, payload: Any) -> Any:
        def call() -> Any:
            req = urllib.request.Request(
                self.fake_root + path,
                data=json.dumps(payload).encode(),
                headers={"content-type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read())

        return await asyncio.to_thread(call)

    async def fake_get(self, path: str) -> Any:
        def call() -> Any:
            with urllib.request.urlopen(self.fake_root + path, timeout=10) as r:
                return json.loads(r.read())

        return await asyncio.to_thread(call)

    async def fake_stream_config(self, events: int, gap_ms: float) -> None:
        await self.fake_post("/_fake/config", {"chunks": events - 2, "gap_ms": gap_ms})

    def select(self, path: str) -> None:
        """Only the middle process of `path` runs; the others are paused."""
        for name, p in self.procs.items():
            if name == "upstream":
                continue
            if name == path:
                p.resume()
            else:
                p.pause()

    def our_pids(self) -> list[int]:
        pids = [os.getpid()]
        for p in self.procs.values():
            pids += p.tree()
        return pids

    async def wait_quiet(self) -> float | None:
        """Wait (bounded) until processes outside the benchmark use < quiet_pct of one core.

        Other work on this 2-core machine (a test suite, a build) skews every figure; each point
        records what it saw, and this keeps the worst of it out of the measured windows.
        """
        limit = float(self.args.quiet_pct)
        if self.quick or limit <= 0:
            return None
        started = time.monotonic()
        wait = min(float(self.args.quiet_wait), max(0.0, self.quiet_budget))
        deadline = started + wait
        seen = 0.0
        while True:
            pids = self.our_pids()
            b0, c0, t0 = system_busy_s(), procs.cpu_seconds(pids), time.monotonic()
            await asyncio.sleep(0.5)
            b1, c1, t1 = system_busy_s(), procs.cpu_seconds(pids), time.monotonic()
            seen = max(0.0, (b1 - b0) - (c1 - c0)) / (t1 - t0) * 100
            if seen < limit or time.monotonic() > deadline:
                self.quiet_budget -= time.monotonic() - started
                if seen >= limit:
                    self.busy_points += 1
                return round(seen, 1)

    # -- one measured point ------------------------------------------------------------------

    async def point(
        self,
        path: str,
        label: str,
        mode: str,
        *,
        hooks: dict[str, Callable[[], Awaitable[Any]]] | None = None,
        sample_rss: bool = False,
        **spec: Any,
    ) -> dict[str, Any]:
        info = self.paths[path]
        self.select(path)
        other_before = await self.wait_quiet()
        full = {
            "transport": info.transport,
            "target": info.target,
            "mode": mode,
            "api_key": info.api_key,
            "model": CHAT_MODEL,
            "settle": self.plan.settle,
            "embed_model": EMBED_MODEL,
            "embed_inputs": self.plan.embed_inputs,
            "embed_dims": self.plan.embed_dims,
            "chunk_bytes": self.plan.chunk_bytes,
            **spec,
        }
        if self.go_bin is not None and mode in GO_MODES:
            argv = [str(self.go_bin), "load", json.dumps(full)]
        else:
            full.pop("channels", None)  # Go only: bench.loadgen always uses one channel
            argv = [self.py, "-m", "bench.loadgen", json.dumps(full)]
        if self.cpu_side is not None:
            argv = ["taskset", "-c", self.cpu_side, *argv]
        self.point_seq += 1
        log_path = self.log_dir / f"loadgen-{self.point_seq:03d}-{label}-{path}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        print(
            f"[bench] {label:<22} {path:<8} {mode:<6} "
            + " ".join(f"{k}={v}" for k, v in spec.items() if k in ("concurrency", "count", "upload_bytes")),
            flush=True,
        )
        mid = info.proc
        mid_pids = mid.tree() if mid is not None else []
        up = self.procs["upstream"]
        up_pids = up.tree()
        me = os.getpid()
        marks: dict[str, dict[str, Any]] = {}
        result: dict[str, Any] | None = None
        rss_peak = {"kb": 0}
        sampler: asyncio.Task[None] | None = None

        async def sample() -> None:
            while True:
                rss_peak["kb"] = max(rss_peak["kb"], procs.memory_kb(mid_pids)[0])
                await asyncio.sleep(0.05)

        with open(log_path, "wb") as errlog:  # noqa: ASYNC230 - opened once per point, before the load
            lg = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=errlog,
                cwd=REPO,
                env=self.clean_env(),
            )
            assert lg.stdout is not None and lg.stdin is not None
            timeout = spec.get("warmup", 0) + spec.get("duration", 0) + 300
            timeout += 2 * spec.get("rate_step_s", 0) * spec.get("rate_max_steps", 0)
            try:
                async with asyncio.timeout(timeout):
                    while line := await lg.stdout.readline():
                        text = line.decode(errors="replace").rstrip("\n")
                        if text.startswith("@MARK "):
                            name = text[6:]
                            snap: dict[str, Any] = {
                                "t": time.monotonic(),
                                "sys_busy_s": system_busy_s(),
                                "upstream": dataclasses.asdict(up.snapshot(up_pids)),
                                "loadgen": dataclasses.asdict(procs.snapshot([lg.pid])),
                                "orchestrator": dataclasses.asdict(procs.snapshot([me])),
                            }
                            if mid is not None:
                                snap["middle"] = dataclasses.asdict(mid.snapshot(mid_pids))
                                if len(mid_pids) > 1:
                                    snap["middle_each"] = {str(q): procs.cpu_seconds([q]) for q in mid_pids}
                            if hooks and name in hooks:
                                snap["hook"] = await hooks[name]()
                            marks[name] = snap
                            if sample_rss and mid is not None:
                                if name == "START":
                                    rss_peak["kb"] = snap["middle"]["rss_kb"]
                                    sampler = asyncio.create_task(sample())
                                elif name == "END" and sampler is not None:
                                    sampler.cancel()
                            lg.stdin.write(b"ok\n")
                            await lg.stdin.drain()
                        elif text.startswith("@RESULT "):
                            result = json.loads(text[8:])
                    await lg.wait()
            except TimeoutError:
                lg.kill()
                await lg.wait()
            finally:
                if sampler is not None:
                    sampler.cancel()
                if lg.returncode is None:  # failure or Ctrl-C: never leave a load generator behind
                    with contextlib.suppress(ProcessLookupError):
                        lg.kill()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(asyncio.shield(lg.wait()), 5)
        if result is None:
            tail = log_path.read_text(errors="replace")[-800:]
            return {"failed": f"load generator gave no result (exit {lg.returncode}): {tail}"}
        out: dict[str, Any] = {"loadgen": result, "spec": {k: v for k, v in full.items() if k != "api_key"}}
        out["processes"] = self.window_cpu(marks, "START", "END", mid is not None)
        out["processes"]["other_processes_pct_before"] = other_before
        out["marks"] = {k: {kk: vv for kk, vv in v.items() if kk != "t"} for k, v in marks.items()}
        if sample_rss and mid is not None and "START" in marks:
            out["rss_peak_kb"] = rss_peak["kb"]
            out["rss_start_kb"] = marks["START"]["middle"]["rss_kb"]
        self.derive(out, mode)
        return out

    def window_cpu(self, marks: dict[str, dict[str, Any]], a: str, b: str, has_mid: bool) -> dict[str, Any]:
        if a not in marks or b not in marks:
            return {}
        s, e = marks[a], marks[b]
        wall = e["t"] - s["t"]
        out: dict[str, Any] = {"wall_s": round(wall, 4)}
        ours = 0.0
        for name in ("middle", "upstream", "loadgen", "orchestrator"):
            if name not in s or name not in e:
                continue
            cpu = e[name]["cpu_s"] - s[name]["cpu_s"]
            ours += cpu
            out[name] = {
                "cpu_s": round(cpu, 4),
                "cpu_pct": round(cpu / wall * 100, 1) if wall > 0 else None,
                "rss_kb": e[name]["rss_kb"],
                "hwm_kb": e[name]["hwm_kb"],
            }
        if "middle_each" in s and "middle_each" in e and wall > 0:
            out["middle_each_cpu_pct"] = {
                pid: round((e["middle_each"].get(pid, 0.0) - v) / wall * 100, 1)
                for pid, v in s["middle_each"].items()
            }
        busy = e["sys_busy_s"] - s["sys_busy_s"]
        out["machine_busy_pct"] = round(busy / wall * 100, 1) if wall > 0 else None
        out["other_processes_pct"] = round(max(0.0, busy - ours) / wall * 100, 1) if wall > 0 else None
        return out

    @staticmethod
    def derive(out: dict[str, Any], mode: str) -> None:
        """CPU per request / per event of the middle process and the upstream."""
        lg, pr = out["loadgen"], out["processes"]
        wall = pr.get("wall_s") or 0.0
        d: dict[str, Any] = {}
        if mode in ("unary", "embed", "stream") and wall > 0:
            rate = lg.get("rps") or 0.0
            ev_rate = lg.get("events_per_s") or 0.0
            per_stream: dict[str, int] = lg.get("events_per_stream") or {}
            # Streams longer than a good part of the window complete rarely inside it: per stream,
            # use CPU per event x the usual number of events in a stream.
            events_each = int(max(per_stream.items(), key=lambda kv: kv[1])[0]) if per_stream else 0
            for who in ("middle", "upstream", "loadgen"):
                if who not in pr:
                    continue
                cpu = pr[who]["cpu_s"]
                if mode == "stream" and ev_rate:
                    per_event = cpu / (ev_rate * wall) * 1e6
                    d[f"{who}_cpu_us_per_event"] = round(per_event, 2)
                    if events_each:
                        d[f"{who}_cpu_us_per_req"] = round(per_event * events_each, 1)
                elif rate:
                    d[f"{who}_cpu_us_per_req"] = round(cpu / (rate * wall) * 1e6, 1)
        out["derived"] = d

    # -- scenarios -----------------------------------------------------------------------------

    def available(self, wanted: tuple[str, ...] = PATHS) -> list[str]:
        return [p for p in wanted if p in self.paths]

    def skipped(self, path: str) -> dict[str, Any]:
        if path == "litellm" and self.litellm is not None and not self.litellm.ok:
            return {"skipped": f"LiteLLM {self.litellm.status}"}
        return {"skipped": "not available"}

    async def simple(self, key: str, mode: str, concurrency: int, **extra: Any) -> dict[str, Any]:
        p = self.plan
        scen: dict[str, Any] = {
            "params": {
                "mode": mode,
                "concurrency": concurrency,
                "warmup_s": p.warmup,
                "duration_s": p.duration,
                **extra,
            },
            "paths": {},
        }
        for path in PATHS:
            if path not in self.paths:
                scen["paths"][path] = self.skipped(path)
                continue
            scen["paths"][path] = await self.point(
                path, key, mode, concurrency=concurrency, warmup=p.warmup, duration=p.duration
            )
        return scen

    async def cadence(self) -> dict[str, Any]:
        p = self.plan
        await self.fake_stream_config(p.cadence_events, p.cadence_gap_ms)
        per_stream_rate = 1000.0 / p.cadence_gap_ms
        scen: dict[str, Any] = {
            "params": {
                "events_per_stream": p.cadence_events,
                "gap_ms": p.cadence_gap_ms,
                "steps": list(p.cadence_steps),
                "stagger_s": p.cadence_stagger,
                "duration_s": p.cadence_duration,
                "stall_threshold_ms": 40.0,
                "pass_rule": "no error, no inter-message gap > 40 ms, and >= 80% of the nominal event rate "
                "(the fake's own timer slack and reconnects cost ~5-10%)",
            },
            "paths": {},
        }
        for path in PATHS:
            if path not in self.paths:
                scen["paths"][path] = self.skipped(path)
                continue
            steps: list[dict[str, Any]] = []
            best = 0
            for n in p.cadence_steps:
                step = await self.cadence_step(path, n, per_stream_rate)
                steps.append(step)
                if not step["pass"]:
                    break
                best = n
            if best == 0 and p.cadence_steps:
                # Even the first step failed: halve until one passes, so the figure is not just "0".
                n = p.cadence_steps[0] // 2
                for _ in range(p.cadence_step_down):
                    if n < 1:
                        break
                    step = await self.cadence_step(path, n, per_stream_rate)
                    steps.append(step)
                    if step["pass"]:
                        best = n
                        break
                    n //= 2
            scen["paths"][path] = {
                "steps": sorted(steps, key=lambda st: st["streams"]),
                "max_stall_free": best,
            }
        return scen

    async def cadence_step(self, path: str, n: int, per_stream_rate: float) -> dict[str, Any]:
        p = self.plan
        r = await self.point(
            path,
            "cadence",
            "stream",
            concurrency=n,
            stagger=p.cadence_stagger,
            warmup=p.cadence_stagger + 4 * p.settle,
            duration=p.cadence_duration,
            gap_threshold_ms=40.0,
        )
        if "failed" in r:
            return {"streams": n, "pass": False, "failed": r["failed"]}
        lg = r["loadgen"]
        expected = n * per_stream_rate
        rate_ok = (lg.get("events_per_s") or 0) >= 0.8 * expected
        ok = lg["errors"] == 0 and lg["gaps_over_threshold"] == 0 and rate_ok
        pr = r["processes"]
        cpu = {k: pr.get(k, {}).get("cpu_pct") for k in ("middle", "upstream", "loadgen")}
        limited = [k for k, v in cpu.items() if v is not None and v >= 90]
        if self.pin:
            side = sum((pr.get(k, {}).get("cpu_pct") or 0) for k in ("upstream", "loadgen", "orchestrator"))
            cpu["cpu0_shared"] = round(side, 1)
            if side >= 90:
                limited.append("CPU 0 (upstream + loadgen)")
        other = pr.get("other_processes_pct")
        if other is not None and other >= 50:
            limited.append(f"other processes ({other:.0f}%)")
        return {
            "streams": n,
            "pass": ok,
            "events_per_s": lg.get("events_per_s"),
            "expected_events_per_s": expected,
            "gaps_over_40ms": lg["gaps_over_threshold"],
            "gap_ms": lg["gap_ms"],
            "ttfc_ms": lg["ttfc_ms"],
            "errors": lg["errors"],
            "cpu_pct": cpu,
            "other_processes_pct": other,
            "saturated": limited,
            "middle_rss_kb": pr.get("middle", {}).get("rss_kb"),
            "middle_cpu_us_per_event": r["derived"].get("middle_cpu_us_per_event"),
        }

    async def rss_per_stream(self) -> dict[str, Any]:
        p = self.plan
        await self.fake_stream_config(p.stream_events, p.hold_gap_ms)
        scen: dict[str, Any] = {
            "params": {
                "streams": p.hold_streams,
                "event_gap_ms": p.hold_gap_ms,
                "method": "VmRSS of the middle process with N streams open "
                "minus before opening them, divided by N",
            },
            "paths": {"direct": {"skipped": "no process between client and upstream"}},
        }
        for path in ("gateway", "litellm"):
            if path not in self.paths:
                scen["paths"][path] = self.skipped(path)
                continue
            r = await self.point(path, "rss_per_stream", "hold", count=p.hold_streams, timeout=120.0)
            if "failed" not in r:
                m = r["marks"]
                base = m["BASE"]["middle"]["rss_kb"]
                held = m["HELD"]["middle"]["rss_kb"]
                after = m["AFTER"]["middle"]["rss_kb"]
                opened = r["loadgen"]["opened"] or 1
                r["derived"] = {
                    "rss_base_kb": base,
                    "rss_held_kb": held,
                    "rss_after_close_kb": after,
                    "rss_per_stream_kib": round((held - base) / opened, 2),
                    "threads": procs.thread_count(self.paths[path].proc.pid),  # type: ignore[union-attr]
                }
            scen["paths"][path] = r
        return scen

    async def upload(self) -> dict[str, Any]:
        p = self.plan
        scen: dict[str, Any] = {
            "params": {"bytes": p.upload_bytes, "chunk_bytes": p.chunk_bytes},
            "paths": {
                "litellm": {
                    "skipped": "LiteLLM's proxy needs per-provider files settings for /v1/files; not measured"
                }
            },
        }
        for path in ("gateway", "direct"):
            r = await self.point(
                path,
                "upload_256mib",
                "upload",
                upload_bytes=p.upload_bytes,
                uploads=1,
                timeout=600.0,
                sample_rss=True,
            )
            if "failed" not in r:
                lg, pr = r["loadgen"], r["processes"]
                mib = p.upload_bytes / (1 << 20) * max(1, lg["uploads"])
                d = {"mib_per_s": lg["mib_per_s"]}
                if "middle" in pr:
                    d["middle_cpu_ms_per_mib"] = round(pr["middle"]["cpu_s"] / mib * 1000, 3)
                    d["middle_rss_growth_kib"] = r["rss_peak_kb"] - r["rss_start_kb"]
                d["upstream_cpu_ms_per_mib"] = round(pr["upstream"]["cpu_s"] / mib * 1000, 3)
                r["derived"] = d
            scen["paths"][path] = r
        return scen

    async def cancellations(self) -> dict[str, Any]:
        p = self.plan
        await self.fake_stream_config(p.stream_events, p.cancel_gap_ms)
        scen: dict[str, Any] = {
            "params": {
                "count": p.cancels,
                "concurrency": p.cancel_c,
                "events_per_stream": p.stream_events,
                "gap_ms": p.cancel_gap_ms,
                "what": "open a stream, read the first message, cancel",
                "settle_s": 2 * p.settle,
            },
            "paths": {},
        }
        for path in PATHS:
            if path not in self.paths:
                scen["paths"][path] = self.skipped(path)
                continue

            async def stats() -> Any:
                return await self.fake_get("/_fake/stats")

            r = await self.point(
                path,
                "cancellations_1000",
                "cancel",
                count=p.cancels,
                concurrency=p.cancel_c,
                hooks={"START": stats},
                timeout=60.0,
            )
            if "failed" not in r:
                await asyncio.sleep(2 * p.settle)  # let disconnects reach the fake
                after = await self.fake_get("/_fake/stats")
                before = r["marks"]["START"]["hook"]
                lg, pr = r["loadgen"], r["processes"]
                n = lg["cancelled"] or 1
                d: dict[str, Any] = {
                    "upstream_disconnects": after["disconnects"] - before["disconnects"],
                    # Relative to START: streams LiteLLM left open upstream earlier are not counted.
                    "upstream_open_streams_after": after["open_streams"] - before["open_streams"],
                    "per_s": lg["per_s"],
                }
                if "middle" in pr:
                    d["middle_cpu_us_per_cancel"] = round(pr["middle"]["cpu_s"] / n * 1e6, 1)
                    mid = self.paths[path].proc
                    assert mid is not None
                    d["middle_rss_before_kb"] = r["marks"]["START"]["middle"]["rss_kb"]
                    d["middle_rss_after_kb"] = procs.memory_kb(mid.tree())[0]
                r["derived"] = d
            scen["paths"][path] = r
        return scen

    async def profile(self, mode: str = "unary", what: str = "unary-c64") -> dict[str, Any]:
        """py-spy on the gateway under the c=64 load of `mode` (collapsed stacks, top costs)."""
        p = self.plan
        spy = shutil.which("py-spy") or str(Path(self.py).parent / "py-spy")
        if not os.path.exists(spy):  # noqa: ASYNC240 - one stat before the point
            return {"skipped": "py-spy is not installed (pip install py-spy)"}
        gw = self.paths["gateway"].proc
        assert gw is not None
        out_file = self.log_dir / f"gateway-{what}.pyspy.txt"
        holder: dict[str, asyncio.subprocess.Process] = {}

        async def begin() -> Any:
            argv = [
                spy,
                "record",
                "--pid",
                str(gw.pid),
                "--duration",
                str(int(p.profile_seconds)),
                "--rate",
                "200",
                "--nonblocking",
                "--full-filenames",
                "--format",
                "raw",
                "--output",
                str(out_file),
            ]
            if self.cpu_side is not None:
                argv = ["taskset", "-c", self.cpu_side, *argv]
            holder["spy"] = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
            )
            return None

        r = await self.point(
            "gateway",
            f"profile-{what}",
            mode,
            concurrency=p.c_high,
            warmup=p.warmup,
            duration=p.profile_seconds + 1.5,
            hooks={"START": begin},
        )
        spy_proc = holder.get("spy")
        if spy_proc is None:
            return {"skipped": "py-spy did not start"}
        _, err = await spy_proc.communicate()
        if spy_proc.returncode != 0 or not out_file.exists():
            return {"skipped": f"py-spy failed: {err.decode(errors='replace')[-400:]}"}
        summary = report.summarize_collapsed(out_file.read_text())
        summary["load"] = f"{mode}, concurrency {p.c_high}"
        summary["rps_under_profiler"] = r.get("loadgen", {}).get("rps")
        summary["events_per_s_under_profiler"] = r.get("loadgen", {}).get("events_per_s")
        summary["middle_cpu_pct_under_profiler"] = r.get("processes", {}).get("middle", {}).get("cpu_pct")
        summary["raw_file"] = str(out_file)
        summary["tool"] = "py-spy record --rate 200 --nonblocking (Python frames only)"
        return summary

    async def warm(self) -> None:
        """Traffic through each middle process before anything is measured (the gateway's
        throughput still creeps up over its first tens of seconds)."""
        for path in ("gateway", "litellm"):
            if path in self.paths:
                secs = self.plan.litellm_warmup if path == "litellm" else self.plan.gateway_warmup
                await self.point(
                    path, "warm-up", "unary", concurrency=self.plan.c_high, warmup=secs, duration=0.2
                )

    # -- the floor, the open-loop maximum, --workers 2 -----------------------------------------

    def capture_answers(self) -> dict[str, Any]:
        """The gateway's own answers to the benchmark's chat requests, serialized: the echo
        floor replays them (the fake is set to the burst stream of stream_events)."""
        import base64  # noqa: PLC0415

        import grpc  # noqa: PLC0415
        from openai_grpc.v1 import chat_pb2, chat_pb2_grpc  # noqa: PLC0415

        msgs = [chat_pb2.ChatCompletionRequestMessage(role="user", content_text="hi")]
        with grpc.insecure_channel(self.paths["gateway"].target) as ch:
            stub = chat_pb2_grpc.ChatServiceStub(ch)
            unary = stub.CreateChatCompletion(
                chat_pb2.CreateChatCompletionRequest(model=CHAT_MODEL, messages=msgs), timeout=30
            )
            stream = list(
                stub.StreamChatCompletion(
                    chat_pb2.StreamChatCompletionRequest(model=CHAT_MODEL, messages=msgs), timeout=30
                )
            )
        return {
            "unary": base64.b64encode(unary.SerializeToString()).decode(),
            "stream": [base64.b64encode(m.SerializeToString()).decode() for m in stream],
            "stream_events": sum(len(m.events) for m in stream),
        }

    async def start_echo(self) -> None:
        """bench.echo, pinned like the gateway, answering with the gateway's captured bytes."""
        self.select("gateway")
        await self.fake_stream_config(self.plan.stream_events, 0.0)
        self.echo_answers = await asyncio.to_thread(self.capture_answers)
        answers = self.log_dir / "echo_answers.json"
        answers.write_text(json.dumps(self.echo_answers))
        port = procs.free_port()
        argv = [self.py, "-m", "bench.echo", "--port", str(port), "--answers", str(answers)]
        echo = self.launch("echo", argv, cpus=self.cpu_mid)
        await procs.wait_port(port, echo, 30)
        self.paths["echo"] = PathInfo("echo", "grpc", f"127.0.0.1:{port}", "", echo)

    async def echo_floor(self) -> dict[str, Any]:
        """The same unary and stream loads against bench.echo: what grpc.aio alone costs."""
        p = self.plan
        ans = self.echo_answers
        scen: dict[str, Any] = {
            "params": {
                "what": "bare grpc.aio server (uvloop, generic handler, no parsing) answering "
                "ChatService with the gateway's own serialized answers, pinned like the gateway",
                "unary_response_bytes": len(ans.get("unary", "")) * 3 // 4,
                "stream_messages": len(ans.get("stream") or []),
                "stream_events": ans.get("stream_events"),
            },
            "loads": {},
        }
        if "echo" not in self.paths:
            return {"skipped": "echo server did not start", **scen}
        for key, mode, c in (("unary_c1", "unary", p.c_low), ("unary_c64", "unary", p.c_high)):
            scen["loads"][key] = await self.point(
                "echo", f"echo-{key}", mode, concurrency=c, warmup=p.warmup, duration=p.duration
            )
        scen["loads"]["stream64_c64"] = await self.point(
            "echo", "echo-stream64_c64", "stream", concurrency=p.c_high, warmup=p.warmup, duration=p.duration
        )
        return scen

    async def max_rps(self, s: dict[str, Any]) -> dict[str, Any]:
        """Open loop: the highest offered rate each path sustains with p99 < 1 s and < 0.1 %
        errors (GetBusbar's "max RPS"); the direct path's figure is the harness's ceiling."""
        p = self.plan
        scen: dict[str, Any] = {
            "params": {
                "op": "unary chat",
                "start": f"{p.rate_start_share} x the path's closed-loop c={p.c_high} throughput",
                "factor": p.rate_factor,
                "step_s": p.rate_step_s,
                "p99_ms": 1000.0,
                "max_error_pct": 0.1,
                "connections": f"HTTP: a pool of {p.c_high} connections opened in the warm-up; "
                "gRPC: one channel",
            },
            "paths": {},
        }
        for path in PATHS:
            if path not in self.paths or self.go_bin is None:
                scen["paths"][path] = (
                    self.skipped(path) if path not in self.paths else {"skipped": "needs the Go driver"}
                )
                continue
            closed = dig_rps(s, path) or 50.0
            r = await self.point(
                path,
                "max_rps",
                "rate",
                concurrency=p.c_high,  # HTTP: the connection pool; gRPC: warm-up workers (one channel)
                warmup=p.rate_warmup,
                rate_start=max(5.0, round(closed * p.rate_start_share, 1)),
                rate_factor=p.rate_factor,
                rate_step_s=p.rate_step_s,
                rate_max_steps=p.rate_max_steps,
                rate_p99_ms=1000.0,
                rate_max_error_pct=0.1,
                timeout=10.0,
            )
            scen["paths"][path] = r
        return scen

    async def workers_point(self, path: str, label: str, *, warm: bool) -> dict[str, Any]:
        """Unary at c=64 over as many channels (a fresh gateway warmed first)."""
        p = self.plan
        if warm and p.workers_warmup > 0:
            await self.point(
                path, f"{label}-warm-up", "unary", concurrency=p.c_high,
                channels=p.c_high, warmup=p.workers_warmup, duration=0.2,
            )  # fmt: skip
        return await self.point(
            path,
            label,
            "unary",
            concurrency=p.c_high,
            channels=p.c_high,
            warmup=p.warmup,
            duration=p.duration,
        )

    async def workers_scaling(self, s: dict[str, Any]) -> dict[str, Any]:
        """The gateway with --workers 2 against 1 under unary c=64, both measured here."""
        p = self.plan
        scen: dict[str, Any] = {
            "params": {
                "load": f"unary chat, closed loop, c={p.c_high}",
                "channels": f"{p.c_high} gRPC channels (connections), calls round-robin over them, for "
                "both points: SO_REUSEPORT spreads connections, not calls, over the workers",
                "note": "the 2-worker gateway is unpinned (its workers need both cores); the load "
                "generator and the fake stay on CPU 0 when pinning, so they compete with one worker",
            },
            "points": {},
        }
        if not self.gateway_flags.get("workers"):
            return {"skipped": "the gateway has no --workers flag", **scen}
        if self.go_bin is None:
            scen["params"]["note"] += "; Python driver: the driving side may be the limit"
        one = "gateway"
        if self.gateway_workers != 1:  # the main gateway runs N workers: start a 1-worker one
            one = "gateway_w1"
            await self.launch_gateway(one, {}, "gateway-w1.log", workers=1)
        try:
            scen["points"]["workers_1"] = await self.workers_point(one, "workers-1", warm=one != "gateway")
        finally:
            if one != "gateway":
                self.stop_middle(one)
        try:
            await self.launch_gateway("gateway_w2", {}, "gateway-w2.log", workers=2)
        except RuntimeError as exc:
            scen["points"]["workers_2"] = {"failed": str(exc)[:400]}
            return scen
        try:
            scen["points"]["workers_2"] = await self.workers_point("gateway_w2", "workers-2", warm=True)
        finally:
            self.stop_middle("gateway_w2")
        r1 = dig_rps(scen["points"], "workers_1", nested=False)
        r2 = dig_rps(scen["points"], "workers_2", nested=False)
        scen["ratio"] = round(r2 / r1, 3) if r1 and r2 else None
        return scen

    def harness(self, s: dict[str, Any]) -> dict[str, Any]:
        """The driving side and its ceiling: what the direct path (load generator -> fake, no
        middle process) reached in this run. No gateway verdict above these is the harness's."""

        def direct(key: str, *f: str) -> Any:
            return report.dig(s, key, "paths", "direct", *f)

        return {
            "driver": self.driver,
            "load_generator": "bench/driver (Go, benchdriver load)"
            if self.go_bin
            else "bench.loadgen (Python)",
            "fake_upstream": "bench/driver (Go, benchdriver fake, precomputed bytes)"
            if self.go_bin
            else "openai_grpc_server.fake_upstream (Python)",
            "go": driver.version() if self.go_bin else None,
            "ceiling": {
                "unary_rps_c64": direct("unary_c64", "loadgen", "rps"),
                "max_rps": direct("max_rps", "loadgen", "max_rps"),
                "stream_events_per_s_c64": direct("stream64_c64", "loadgen", "events_per_s"),
                "cadence_max_streams": direct("cadence_max_streams", "max_stall_free"),
                "cadence_last_step": (direct("cadence_max_streams", "steps") or [{}])[-1].get("streams"),
                "unary_c64_side_cpu_pct": {
                    w: report.dig(s, "unary_c64", "paths", "direct", "processes", w, "cpu_pct")
                    for w in ("upstream", "loadgen")
                },
            },
        }

    # -- the run -----------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        p = self.plan
        t0 = time.monotonic()
        git = procs.git_revision(REPO)  # at start: the code the processes run
        if self.cpu_side is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, {int(self.cpu_side)})
        with open("/proc/loadavg") as f:  # noqa: ASYNC230 - /proc, instant
            loadavg_before = f.read().split()[:3]
        try:
            self.build_driver()
            await self.start_fake()
            await self.start_gateway()
            await self.start_litellm()
            await self.start_echo()
            await self.warm()
            s: dict[str, Any] = {}
            s["unary_c1"] = await self.simple("unary_c1", "unary", p.c_low)
            s["unary_c64"] = await self.simple("unary_c64", "unary", p.c_high)
            # Profile in the same state as unary_c64 (later scenarios leave hundreds of idle
            # upstream connections in the gateway's pool, which changes where its time goes).
            prof: dict[str, Any] = {"skipped": "quick mode"} if self.quick or self.args.no_profile else {}
            if not prof:
                prof = await self.profile()
            s["echo_floor"] = await self.echo_floor()
            self.stop_middle("echo")
            s["embeddings_c1"] = await self.simple(
                "embeddings_c1",
                "embed",
                p.c_low,
                inputs=p.embed_inputs,
                dims=p.embed_dims,
                response_bytes=self.embed_body_bytes,
                fake_answers=self.embed_mode,
            )
            s["embeddings_c16"] = await self.simple(
                "embeddings_c16",
                "embed",
                p.embed_c,
                inputs=p.embed_inputs,
                dims=p.embed_dims,
                response_bytes=self.embed_body_bytes,
                fake_answers=self.embed_mode,
            )
            await self.fake_stream_config(p.stream_events, 0.0)
            s["stream64_c1"] = await self.simple("stream64_c1", "stream", p.c_low, events=p.stream_events)
            s["stream64_c64"] = await self.simple("stream64_c64", "stream", p.c_high, events=p.stream_events)
            prof_stream: dict[str, Any] = (
                {"skipped": "quick mode"} if self.quick or self.args.no_profile else {}
            )
            if not prof_stream:
                prof_stream = await self.profile("stream", "stream64-c64")
            s["cadence_max_streams"] = await self.cadence()
            s["upload_256mib"] = await self.upload()
            s["cancellations_1000"] = await self.cancellations()
            s["max_rps"] = await self.max_rps(s)
            s["workers_scaling"] = (
                {"skipped": "--no-workers-scaling"}
                if self.args.no_workers_scaling
                else await self.workers_scaling(s)
            )
            # Before rss_per_stream: LiteLLM's held streams would keep the fake busy afterwards.
            levers_result: dict[str, Any] = (
                {"skipped": "--no-levers"} if self.args.no_levers else await levers.run_levers(self)
            )
            # Last: LiteLLM does not close upstream streams its client dropped, so its held streams
            # keep the fake busy for a minute afterwards.
            s["rss_per_stream"] = await self.rss_per_stream()
            gw_log_tail = self.procs["gateway"].log_tail(5)
        finally:
            self.stop_all()
        versions = procs.package_versions(PackageNames)
        litellm_versions: dict[str, str | None] = {}
        if self.litellm is not None and self.litellm.ok:
            litellm_versions = procs.package_versions(
                ("litellm", "uvicorn", "fastapi", "httpx", "aiohttp", "openai", "pydantic"),
                str(self.litellm.python),
            )
        if any(not v for v in (versions.get("matplotlib"),)):
            self.notes.append("matplotlib is not installed: no plots (pip install matplotlib).")
        self.notes.append(
            f"Embeddings answers of {p.embed_inputs} x {p.embed_dims} floats "
            f"({self.embed_body_bytes:,} bytes as float JSON) are {self.embed_mode}. The requests "
            f"carry {p.embed_inputs} inputs and `dimensions: {p.embed_dims}`."
        )
        result: dict[str, Any] = {
            "schema": 1,
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "quick": self.quick,
            "command": " ".join([".venv/bin/python -m bench.run", *sys.argv[1:]]),
            "elapsed_s": round(time.monotonic() - t0, 1),
            "machine": {**procs.machine_info(), "loadavg_before": loadavg_before},
            "versions": {
                "gateway_venv": versions,
                "litellm_venv": litellm_versions,
                "gateway_git": git,
            },
            "pinning": {
                "enabled": self.pin,
                "tool": "taskset -c" if self.pin else None,
                "middle_process_cpus": self.cpu_mid if self.gateway_workers == 1 else None,
                "upstream_cpus": self.cpu_side,
                "loadgen_cpus": self.cpu_side,
                "orchestrator_cpus": self.cpu_side,
                "note": "the process under test (gateway, echo floor or LiteLLM) alone on CPU 1; fake "
                "upstream, load generator and orchestrator share CPU 0"
                if self.pin
                else "no pinning",
            },
            "gateway": {
                "workers": self.gateway_workers,
                "supports_workers_flag": self.gateway_flags["workers"],
                "settings_env": self.gateway_env,
                "log_tail": gw_log_tail,
            },
            "litellm": dataclasses.asdict(self.litellm) if self.litellm else None,
            "harness": self.harness(s),
            "plan": dataclasses.asdict(p),
            "scenarios": s,
            "profile": prof,
            "profile_stream": prof_stream,
            "levers": levers_result,
            "notes": self.notes,
        }
        for path in ("venv",):
            if result["litellm"] and path in result["litellm"]:
                result["litellm"][path] = str(result["litellm"][path])
        if self.busy_points:
            self.notes.append(
                f"{self.busy_points} point(s) started while processes outside the benchmark still used more "
                f"than {self.args.quiet_pct:.0f}% of a core after waiting {self.args.quiet_wait:.0f} s; see "
                "`other_processes_pct` per point in the JSON."
            )
        result["targets"] = report.evaluate_targets(result)
        report.judge_levers(result)
        return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few seconds per path, tiny loads (smoke test)")
    ap.add_argument("--results-dir", type=Path, default=BENCH / "results", help="where <date>.json goes")
    ap.add_argument(
        "--docs-out",
        type=Path,
        default=None,
        help="markdown report (default docs/benchmarks.md; quick: results dir)",
    )
    ap.add_argument("--log-dir", type=Path, default=None, help="process logs (default bench/.logs/<date>)")
    ap.add_argument(
        "--gateway-workers",
        type=int,
        default=1,
        help="gateway worker processes; passed as --workers when the gateway supports it",
    )
    ap.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="OPENAI_GRPC_X=V",
        help="gateway setting as an env var, e.g. OPENAI_GRPC_UPSTREAM_TRANSPORT=aiohttp (repeatable)",
    )
    ap.add_argument("--no-pin", dest="pin", action="store_false", help="no taskset pinning")
    ap.add_argument(
        "--driver",
        choices=("go", "python"),
        default="go",
        help="driving side: go = bench/driver load generator + fake upstream (default); python = "
        "bench.loadgen + openai_grpc_server.fake_upstream (the old harness)",
    )
    ap.add_argument("--no-workers-scaling", action="store_true", help="skip the --workers 2 vs 1 comparison")
    ap.add_argument("--no-litellm", action="store_true", help="skip LiteLLM")
    ap.add_argument("--litellm-venv", type=Path, default=BENCH / ".venv-litellm")
    ap.add_argument("--litellm-version", default=litellm_env.DEFAULT_VERSION)
    ap.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles of the gateway")
    ap.add_argument(
        "--no-levers", action="store_true", help="skip the levers group (one gateway per setting value)"
    )
    ap.add_argument(
        "--quiet-pct",
        type=float,
        default=25.0,
        help="before each point wait until other processes use less than this %% of a core "
        "(0: never wait; quick mode never waits)",
    )
    ap.add_argument("--quiet-wait", type=float, default=20.0, help="longest wait for quiet, per point (s)")
    ap.add_argument("--quiet-budget", type=float, default=150.0, help="longest wait for quiet, in all (s)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    result = asyncio.run(bench.run())
    bench.results_dir.mkdir(parents=True, exist_ok=True)
    plots = report.make_plots(result, bench.plots_dir)
    result["plots"] = {k: str(v) for k, v in plots.items()}
    bench.json_path.write_text(json.dumps(result, indent=1) + "\n")
    bench.md_path.parent.mkdir(parents=True, exist_ok=True)
    bench.md_path.write_text(report.markdown(result, bench.md_path, bench.json_path, plots))
    print(f"[bench] wrote {bench.json_path} and {bench.md_path} in {result['elapsed_s']} s", flush=True)
    for t in result["targets"]:
        moon = {True: "; moonshot met", False: "; moonshot not met"}.get(t.get("moonshot_met"), "")
        ceiling = f"; harness ceiling: {t['ceiling']}" if t.get("ceiling") else ""
        print(
            f"[bench] {t['verdict']:<7} {t['name']}: {t['measured_text']} (target {t['target_text']}{moon})"
            f"{ceiling}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
