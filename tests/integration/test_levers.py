"""The performance levers are settings: each alternative still serves correctly."""

from __future__ import annotations

import pytest
from openai_grpc_server import config, jsonlib
from openai_grpc_server.fake_upstream import FakeUpstream, Step

from tests.support.calls import chat
from tests.support.gateway import settings_for, start_gateway, stop_gateway


async def test_one_message_per_event_when_coalescing_is_off(fake: FakeUpstream) -> None:
    fake.reset()
    gw = await start_gateway(settings_for(fake.base_url, coalesce_events=False))
    try:
        fake.script("POST /chat/completions", Step(chunks=6))
        stream = gw.server_stream("StreamChatCompletion")
        req = gw.request("StreamChatCompletion", model="gpt-4o-mini")
        msg = req.messages.add()  # type: ignore[attr-defined]
        msg.role, msg.content_text = "user", "hi"
        frames = [frame async for frame in stream(req, timeout=10)]
        assert len(frames) >= 8 and all(len(f.events) == 1 for f in frames)
    finally:
        await stop_gateway(gw)


async def test_stdlib_json_serves_the_same_answer(fake: FakeUpstream) -> None:
    fake.reset()
    gw = await start_gateway(settings_for(fake.base_url, json_library="stdlib"))
    try:
        answer = await gw.unary("CreateChatCompletion")(chat(gw), timeout=10)
        assert answer.chat_completion.choices
        assert fake.requests[-1].json["model"] == "gpt-4o-mini"
    finally:
        await stop_gateway(gw)
        jsonlib.use("orjson")


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"OPENAI_GRPC_EVENT_LOOP": "trio"}, "event_loop"),
        ({"OPENAI_GRPC_JSON_LIBRARY": "simplejson"}, "json_library"),
        ({"OPENAI_GRPC_UPSTREAM_TRANSPORT": "requests"}, "upstream_transport"),
    ],
)
def test_lever_settings_are_validated(env: dict[str, str], needle: str) -> None:
    with pytest.raises(config.ConfigError, match=needle):
        config.load([], env={"OPENAI_API_KEY": "sk-x", **env})
