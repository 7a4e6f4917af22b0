"""The gRPC service config shipped with the stubs: well formed, the same in every language, and
applied by a real channel (deadlines; retries of idempotent reads on UNAVAILABLE, never of writes)."""

from __future__ import annotations

import json
import re
from typing import Any

import grpc
from openai_grpc.v1 import chat_pb2, chat_pb2_grpc, models_pb2, models_pb2_grpc

from tests.support.flaky_servicers import FlakyModels, UnavailableChat
from tests.support.protomodel import PACKAGE, ROOT, load_model

PY_CONFIG = ROOT / "client_stubs/python/openai_grpc/v1/service_config.json"
GO_CONFIG = ROOT / "client_stubs/go/openai_grpc/v1/service_config.json"
TS_CONFIG = ROOT / "client_stubs/typescript/src/gen/service_config.ts"


def _config() -> dict[str, Any]:
    config: dict[str, Any] = json.loads(PY_CONFIG.read_text())
    return config


def test_every_language_ships_the_same_config() -> None:
    assert json.loads(GO_CONFIG.read_text()) == _config()
    ts = re.search(r"export const serviceConfig = (\{.*\});", TS_CONFIG.read_text(), re.S)
    assert ts is not None and json.loads(ts.group(1)) == _config()


def test_only_idempotent_unary_reads_are_retried() -> None:
    methods = {(f"{PACKAGE}.{rpc.service}", rpc.name): rpc for rpc in load_model().rpcs}
    retried: set[tuple[str, str]] = set()
    for entry in _config()["methodConfig"]:
        assert re.fullmatch(r"\d+(\.\d+)?s", entry["timeout"])
        for name in entry["name"]:
            if "method" in name:
                assert (name["service"], name["method"]) in methods, name
            if "retryPolicy" in entry:
                assert entry["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
                retried.add((name["service"], name["method"]))
    assert retried
    for key in retried:
        method = methods[key]
        assert not method.client_streaming and not method.server_streaming, key
        assert key[1].startswith(("Get", "List", "Retrieve")), key
    reads = {
        k
        for k, m in methods.items()
        if k[1].startswith(("Get", "List", "Retrieve")) and not (m.client_streaming or m.server_streaming)
    }
    assert retried == reads


async def test_a_real_channel_applies_the_config() -> None:
    models, chat = FlakyModels(), UnavailableChat()  # type: ignore[abstract]  # only the RPCs under test
    server = grpc.aio.server()
    models_pb2_grpc.add_ModelsServiceServicer_to_server(models, server)
    chat_pb2_grpc.add_ChatServiceServicer_to_server(chat, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    options = [("grpc.service_config", PY_CONFIG.read_text())]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            got = await models_pb2_grpc.ModelsServiceStub(channel).GetModel(
                models_pb2.GetModelRequest(model="gpt-4o-mini")
            )
            assert got.model.id == "gpt-4o-mini"
            assert models.attempts == 2  # retried once on UNAVAILABLE
            try:
                await chat_pb2_grpc.ChatServiceStub(channel).CreateChatCompletion(
                    chat_pb2.CreateChatCompletionRequest(model="gpt-4o-mini")
                )
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE
            else:
                raise AssertionError("CreateChatCompletion should have failed")
            assert chat.attempts == 1  # a create is never retried by the channel
    finally:
        await server.stop(0)


async def test_the_channel_enforces_the_configured_deadline() -> None:
    """The same config with the reads' deadline shortened: a stalled read ends DEADLINE_EXCEEDED."""
    config = _config()
    reads = next(e for e in config["methodConfig"] if "retryPolicy" in e)
    reads["timeout"] = "0.2s"
    models = FlakyModels()  # type: ignore[abstract]  # only the RPCs under test
    models.stall = True
    server = grpc.aio.server()
    models_pb2_grpc.add_ModelsServiceServicer_to_server(models, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    options = [("grpc.service_config", json.dumps(config))]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            try:
                await models_pb2_grpc.ModelsServiceStub(channel).GetModel(
                    models_pb2.GetModelRequest(model="gpt-4o-mini")
                )
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            else:
                raise AssertionError("GetModel should have run out of time")
    finally:
        await server.stop(0)
