"""The rate limiter's own cost per call: in-process buckets against the buckets shared on Redis.

In process, with uvloop like the gateway: `concurrency` tasks loop acquire (reserve 1 request +
an estimate) -> settle (real usage), the limits set high enough never to bind, so every call
costs exactly one reserve and one settle. For each limiter it reports the CPU per call of this
process (the gateway's side: `time.process_time`, the background settles included), of
redis-server (from /proc), and the acquire latency. Redis runs on loopback (a real
redis-server started here, no persistence); with hiredis installed, redis-py's pure-Python
reply parser is measured too. A second pass at concurrency 1 gives the latency a call adds
when the event loop is not saturated.

    python -m bench.limiter_lever [--calls N] [--concurrency C]   # prints JSON
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

from openai_grpc_server.resilience import Operation, RateLimitConfig, RateLimiter
from openai_grpc_server.resilience.shared_limit import SharedRateLimiter

from bench.procs import cpu_seconds
from tests.support.redis_server import RedisServer

_HIGH = 10**12  # limits that never bind: the numbers are the limiter's bookkeeping alone


async def _run(limiter: Any, calls: int, concurrency: int) -> dict[str, Any]:
    latencies: list[float] = []
    ops = [Operation("POST /chat/completions", f"tenant-{i % 4}", token_estimate=120) for i in range(16)]
    left = calls

    async def worker(n: int) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            t0 = time.perf_counter()
            reservation = await limiter.acquire(ops[n % len(ops)])
            latencies.append(time.perf_counter() - t0)
            await asyncio.sleep(0)  # the upstream call would be here
            reservation.settle(80)

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    tasks = getattr(limiter, "_tasks", None)
    while tasks:
        await asyncio.wait(set(tasks))  # the settles in flight belong to these calls
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    latencies.sort()
    return {
        "calls": calls,
        "cpu_us_per_call": round(cpu / calls * 1e6, 1),
        "calls_per_s": round(calls / wall),
        "acquire_p50_us": round(statistics.median(latencies) * 1e6, 1),
        "acquire_p99_us": round(latencies[int(len(latencies) * 0.99)] * 1e6, 1),
    }


def _latency(case: dict[str, Any]) -> dict[str, Any]:
    """At concurrency 1 the acquire latency is the round trip itself, not event-loop queueing."""
    return {k: case[k] for k in ("acquire_p50_us", "acquire_p99_us", "cpu_us_per_call")}


async def measure(calls: int, concurrency: int) -> dict[str, Any]:
    config = RateLimitConfig(requests_per_minute=_HIGH, tokens_per_minute=_HIGH)
    out: dict[str, Any] = {"concurrency": concurrency, "calls": calls, "cases": {}}
    local = RateLimiter(config)
    await _run(local, max(100, calls // 10), concurrency)  # warm-up
    out["cases"]["in_process"] = await _run(local, calls, concurrency)
    out["cases"]["in_process"]["c1"] = _latency(await _run(local, max(100, calls // 20), 1))
    server = RedisServer()
    server.start()
    try:
        parsers: list[tuple[str, dict[str, Any]]] = [("redis", {})]
        try:
            from redis.asyncio.connection import _AsyncRESP2Parser  # type: ignore[attr-defined]  # noqa: PLC0415
            from redis.utils import HIREDIS_AVAILABLE  # noqa: PLC0415

            if HIREDIS_AVAILABLE:
                parsers = [
                    ("redis_hiredis", {}),
                    ("redis_python_parser", {"parser_class": _AsyncRESP2Parser}),
                ]
        except ImportError:
            pass
        for name, kwargs in parsers:
            import redis.asyncio as aioredis  # noqa: PLC0415

            client = aioredis.Redis.from_url(server.url, driver_info=None, **kwargs)
            shared = SharedRateLimiter(
                RateLimitConfig(requests_per_minute=_HIGH, tokens_per_minute=_HIGH, redis_url=server.url),
                client=client,
            )
            await shared.start()
            await _run(shared, max(100, calls // 10), concurrency)
            redis_cpu0 = cpu_seconds([server.pid])
            case = await _run(shared, calls, concurrency)
            case["c1"] = _latency(await _run(shared, max(100, calls // 20), 1))
            case["redis_server_cpu_us_per_call"] = round(
                (cpu_seconds([server.pid]) - redis_cpu0) / calls * 1e6, 1
            )
            case["added_cpu_us_per_call"] = round(
                case["cpu_us_per_call"] - out["cases"]["in_process"]["cpu_us_per_call"], 1
            )
            if not shared.shared:
                case["failed"] = "the limiter fell back to in-process buckets: the numbers are not Redis's"
            out["cases"][name] = case
            await shared.aclose()
    finally:
        server.close()
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.limiter_lever")
    p.add_argument("--calls", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=64)
    args = p.parse_args(argv)
    try:
        import uvloop  # noqa: PLC0415

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    json.dump(runner(measure(args.calls, args.concurrency)), sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
