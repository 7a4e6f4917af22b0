"""Limits that hold across replicas: real gateway processes sharing one real Redis, loaded in
parallel through gRPC, the fake upstream counting what reaches it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf import json_format
from google.rpc import error_details_pb2
from openai_grpc_server import routes
from openai_grpc_server.fake_upstream import FakeUpstream, Step
from openai_grpc_server.resilience.shared_limit import KEY_PREFIX

from tests.support.process import clean_env, free_port, read_in_background, spawn_gateway
from tests.support.redis_server import RedisServer, needs_redis
from tests.support.rich_status import details_of

pytestmark = [
    pytest.mark.slow,
    needs_redis,
]

ROUTES = {r.name: r for r in routes.load_routes()}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content_text": "hi"}]}
STEADY_FROM, STEADY_TO = 2.0, 12.0  # the measured window, seconds after the load starts


@dataclasses.dataclass
class Replica:
    proc: asyncio.subprocess.Process
    port: int
    channel: grpc.aio.Channel
    stderr: asyncio.Task[bytes]  # read all along (read_in_background)
    logs: str = ""  # its stderr, once it has exited

    def call(self, rpc: str, body: dict[str, Any], token: str | None = None, timeout: float = 20) -> Any:
        route = ROUTES[rpc]
        request = json_format.ParseDict(body, route.input_cls())
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        if rpc.startswith("Stream"):
            stub: Any = self.channel.unary_stream(
                route.full_method, route.input_cls.SerializeToString, route.output_cls.FromString
            )
        else:
            stub = self.channel.unary_unary(
                route.full_method, route.input_cls.SerializeToString, route.output_cls.FromString
            )
        return stub(request, timeout=timeout, metadata=metadata)


@contextlib.asynccontextmanager
async def replicas(n: int, fake: FakeUpstream, **env: str) -> AsyncIterator[list[Replica]]:
    """n gateway processes (`python -m openai_grpc_server`), as a Deployment would run them."""
    started: list[Replica] = []
    try:
        for _ in range(n):
            port = free_port()
            proc = await spawn_gateway(
                env=clean_env(
                    OPENAI_API_KEY="sk-shared-limits-0123456789",
                    OPENAI_BASE_URL=fake.base_url,
                    OPENAI_GRPC_HOST="127.0.0.1",
                    OPENAI_GRPC_PORT=str(port),
                    OPENAI_GRPC_RETRY_MAX_RETRIES="0",
                    **env,
                )
            )
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert b"listening" in line, line
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            started.append(Replica(proc, port, channel, read_in_background(proc.stderr)))
        yield started
    finally:
        for r in started:
            await r.channel.close(None)
            r.proc.send_signal(signal.SIGTERM)
        for r in started:
            _, err = await asyncio.wait_for(asyncio.gather(r.proc.wait(), r.stderr), 30)
            r.logs = err.decode()


def error_reason(err: grpc.aio.AioRpcError) -> str | None:
    info = details_of(err).get("ErrorInfo")
    return info.reason if isinstance(info, error_details_pb2.ErrorInfo) else None


@dataclasses.dataclass
class Load:
    ok: int = 0
    failures: list[tuple[str, str | None]] = dataclasses.field(default_factory=list)
    tokens_per_call: int = 0


async def load(reps: list[Replica], seconds: float, workers: int, rpc: str, body: dict[str, Any]) -> Load:
    """`workers` concurrent callers per replica, each calling in a loop for `seconds`."""
    result = Load()
    end = time.monotonic() + seconds

    async def worker(replica: Replica) -> None:
        while time.monotonic() < end:
            try:
                if rpc.startswith("Stream"):
                    async for message in replica.call(rpc, body):
                        for event in message.events:
                            if event.HasField("usage"):
                                result.tokens_per_call = event.usage.total_tokens
                else:
                    await replica.call(rpc, body)
                result.ok += 1
            except grpc.aio.AioRpcError as err:
                result.failures.append((err.code().name, error_reason(err)))
                await asyncio.sleep(0.05)

    await asyncio.gather(*(worker(r) for r in reps for _ in range(workers)))
    return result


def admitted_per_second(fake: FakeUpstream, started: float) -> float:
    """Requests that reached the upstream per second in the steady window (after the burst)."""
    times = [r.time - started for r in fake.requests if r.path.endswith("/chat/completions")]
    inside = [t for t in times if STEADY_FROM <= t < STEADY_TO]
    return len(inside) / (STEADY_TO - STEADY_FROM)


async def drain(replica: Replica, fake: FakeUpstream, header: str, body: dict[str, Any]) -> None:
    """The upstream says the key's bucket is empty: the shared bucket starts empty for every
    replica (its initial burst is a whole minute of capacity, far too long to wait out here)."""
    fake.script("POST /chat/completions", Step(headers={header: "0"}))
    await replica.call("CreateChatCompletion", body)
    await asyncio.sleep(0.3)  # the correction rides with the settle, just after the answer


@pytest.mark.parametrize("n", [2, 3])
async def test_replicas_share_the_requests_per_minute(
    n: int, fake: FakeUpstream, redis_server: RedisServer, store: aioredis.Redis
) -> None:
    rpm = 3000  # 50 per second for the whole cluster, whatever the number of replicas
    fake.reset()
    env = {
        "OPENAI_GRPC_RATE_LIMIT_REDIS_URL": redis_server.url,
        "OPENAI_GRPC_RATE_LIMIT_REQUESTS_PER_MINUTE": str(rpm),
    }
    async with replicas(n, fake, **env) as reps:
        await drain(reps[0], fake, "x-ratelimit-remaining-requests", CHAT)
        fake.reset()
        started = time.time()
        result = await load(reps, STEADY_TO + 0.5, 24 // n, "CreateChatCompletion", CHAT)
        rate = admitted_per_second(fake, started)
    print(f"{n} replicas: {rate:.1f} requests/s admitted, limit {rpm / 60:.1f}/s")
    assert result.failures == []
    assert rpm / 60 * 0.9 <= rate <= rpm / 60 * 1.1, f"{rate:.1f} requests/s admitted, limit {rpm / 60:.1f}/s"


@pytest.mark.parametrize("n", [2, 3])
async def test_replicas_share_the_tokens_per_minute_settled_with_real_usage(
    n: int, fake: FakeUpstream, redis_server: RedisServer, store: aioredis.Redis
) -> None:
    tpm = 24_000  # 400 tokens per second for the whole cluster
    body = {**CHAT, "max_completion_tokens": 200, "stream_options": {"include_usage": True}}
    fake.reset()
    env = {
        "OPENAI_GRPC_RATE_LIMIT_REDIS_URL": redis_server.url,
        "OPENAI_GRPC_RATE_LIMIT_TOKENS_PER_MINUTE": str(tpm),
    }
    async with replicas(n, fake, **env) as reps:
        await drain(reps[0], fake, "x-ratelimit-remaining-tokens", CHAT)
        fake.reset()
        started = time.time()
        result = await load(reps, STEADY_TO + 0.5, 24 // n, "StreamChatCompletion", body)
        calls = admitted_per_second(fake, started)
    assert result.failures == []
    # Each call reserves ~200 tokens but uses far fewer; the limit holds on real usage.
    assert 0 < result.tokens_per_call < 100
    rate = calls * result.tokens_per_call
    print(
        f"{n} replicas: {rate:.0f} tokens/s admitted ({result.tokens_per_call}/call), limit {tpm / 60:.0f}/s"
    )
    assert tpm / 60 * 0.9 <= rate <= tpm / 60 * 1.1, f"{rate:.0f} tokens/s admitted, limit {tpm / 60:.0f}/s"


async def test_redis_restart_with_local_fallback_fails_no_call(
    fake: FakeUpstream, redis_server: RedisServer, store: aioredis.Redis
) -> None:
    fake.reset()
    env = {
        "OPENAI_GRPC_RATE_LIMIT_REDIS_URL": redis_server.url,
        "OPENAI_GRPC_RATE_LIMIT_REQUESTS_PER_MINUTE": "6000",
        "OPENAI_GRPC_RATE_LIMIT_REPLICAS_HINT": "2",
    }
    async with replicas(2, fake, **env) as reps:
        running = asyncio.ensure_future(load(reps, 8.0, 4, "CreateChatCompletion", CHAT))
        await asyncio.sleep(2.0)
        redis_server.stop()
        await asyncio.sleep(2.0)
        redis_server.start()
        result = await running
        await store.connection_pool.disconnect()  # the test's own client: from before the restart
        keys = [k async for k in store.scan_iter(match=f"{KEY_PREFIX}*")]
    logs = [r.logs for r in reps]
    assert result.failures == [] and result.ok > 0
    assert keys, "the replicas went back to the shared buckets"
    for text in logs:
        warnings = [json.loads(line) for line in text.splitlines() if '"WARNING"' in line]
        messages = [w["msg"] for w in warnings]
        assert any("unreachable" in m for m in messages), text[-2000:]
        assert any("reachable again" in m for m in messages), text[-2000:]


async def test_redis_down_with_closed_fails_unavailable_then_recovers(
    fake: FakeUpstream, redis_server: RedisServer, store: aioredis.Redis
) -> None:
    fake.reset()
    env = {
        "OPENAI_GRPC_RATE_LIMIT_REDIS_URL": redis_server.url,
        "OPENAI_GRPC_RATE_LIMIT_REQUESTS_PER_MINUTE": "6000",
        "OPENAI_GRPC_RATE_LIMIT_REDIS_FAILURE": "closed",
    }
    async with replicas(2, fake, **env) as reps:
        for r in reps:
            await r.call("CreateChatCompletion", CHAT)
        redis_server.stop()
        for r in reps:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await r.call("CreateChatCompletion", CHAT)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert error_reason(caught.value) == "RATE_LIMITER_UNAVAILABLE"
        redis_server.start()
        deadline = time.monotonic() + 20
        recovered = 0
        while recovered < len(reps) and time.monotonic() < deadline:
            recovered = 0
            for r in reps:
                try:
                    await r.call("CreateChatCompletion", CHAT)
                    recovered += 1
                except grpc.aio.AioRpcError as err:
                    assert error_reason(err) == "RATE_LIMITER_UNAVAILABLE"
            await asyncio.sleep(0.2)
        assert recovered == len(reps)


async def test_tenants_have_their_own_buckets_and_nothing_secret_reaches_redis(
    fake: FakeUpstream, redis_server: RedisServer, store: aioredis.Redis, tmp_path: Path
) -> None:
    fake.reset()
    tenants: dict[str, list[dict[str, Any]]] = {
        "tenants": [
            {
                "name": "team-a",
                "token": "tok-team-a-5f1e2d3c4b5a6978",
                "api_key": "sk-team-a-a1b2c3d4e5f60718",
                "limits": {"requests_per_minute": 3},
            },
            {
                "name": "team-b",
                "token": "tok-team-b-0f9e8d7c6b5a4938",
                "api_key": "sk-team-b-f1e2d3c4b5a69788",
                "limits": {"requests_per_minute": 5, "tokens_per_minute": 100_000},
            },
        ]
    }
    path = tmp_path / "tenants.json"
    path.write_text(json.dumps(tenants))
    env = {
        "OPENAI_GRPC_RATE_LIMIT_REDIS_URL": redis_server.url,
        "OPENAI_GRPC_RATE_LIMIT_QUEUE_REQUESTS": "false",
        "OPENAI_GRPC_AUTH_MODE": "tokens",
        "OPENAI_GRPC_TENANTS_FILE": str(path),
    }
    async with replicas(2, fake, **env) as reps:
        outcomes: dict[str, list[str]] = {"team-a": [], "team-b": []}
        for tenant in tenants["tenants"]:
            for i in range(8):
                try:
                    await reps[i % 2].call("CreateChatCompletion", CHAT, token=tenant["token"])
                    outcomes[tenant["name"]].append("ok")
                except grpc.aio.AioRpcError as err:
                    outcomes[tenant["name"]].append(str(error_reason(err)))
        await asyncio.sleep(0.3)  # settles are sent just after the answers
        keys = sorted([k async for k in store.scan_iter(match="*")])
        dump = b""
        for k in keys:
            dump += k + b"".join(f + v for f, v in (await store.hgetall(k)).items())  # type: ignore[operator,misc]
    # Across both replicas, each tenant got exactly its own limit.
    assert outcomes["team-a"].count("ok") == 3 and outcomes["team-a"].count("RATE_LIMITED") == 5
    assert outcomes["team-b"].count("ok") == 5 and outcomes["team-b"].count("RATE_LIMITED") == 3
    assert keys == [f"{KEY_PREFIX}{{team-a}}".encode(), f"{KEY_PREFIX}{{team-b}}".encode()]
    for tenant in tenants["tenants"]:
        for secret in (tenant["token"], tenant["api_key"]):
            assert secret.encode() not in dump
            assert secret[-12:].encode() not in dump
    assert b"sk-" not in dump and b"tok-" not in dump
