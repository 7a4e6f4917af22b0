"""The reviewed differences between the gateway's upstream requests and the official SDK's.

tests/integration/test_sdk_parity.py sends every operation once through the pinned `openai`
SDK and once through the gateway and compares the two HTTP requests. A difference fails that
test unless it is listed here, keyed by (RPC, aspect), with the reason the gateway differs on
purpose. An entry that no longer matches a difference fails the test too, so the list stays
exactly as long as it must be. Aspects: method, path, query, content-type, body, and the
header names authorization, openai-organization, openai-project, openai-beta, accept.
"""

from __future__ import annotations

_USAGE = (
    "the gateway asks for `stream_options.include_usage` on every Chat and Completions stream so "
    "the token limiter and metrics see real usage; the usage-only chunk is dropped before it "
    "reaches a caller who did not ask (services/streams.py). Responses streams are not touched."
)

ALLOWED: dict[tuple[str, str], str] = {
    ("StreamChatCompletion", "body"): _USAGE,
    ("StreamCompletion", "body"): _USAGE,
}
