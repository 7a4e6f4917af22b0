"""The per-endpoint behaviour table (server/openai_grpc_server/endpoints.py): every row matches
the endpoints it is written for, and each kind of row agrees with OpenAI's contract."""

from __future__ import annotations

import dataclasses

import pytest
from openai_grpc_server import endpoints, routes
from openai_grpc_server.endpoints import Behaviour

from tests.support import specmodel

ROUTES = routes.load_routes()
ENDPOINTS = sorted({r.endpoint for r in ROUTES})


def matching(field: str) -> set[str]:
    """The contract's endpoints whose behaviour sets `field` away from the generic value."""
    default = getattr(endpoints.GENERIC, field)
    return {r.endpoint for r in ROUTES if getattr(r.behaviour, field) != default}


@pytest.mark.parametrize("row", endpoints.TABLE, ids=lambda row: row.pattern)
def test_every_row_matches_an_endpoint_of_the_contract(row: endpoints.Row) -> None:
    assert any(row.matches(e) for e in ENDPOINTS), f"{row.pattern} matches nothing: a dead row"
    assert row.why


def test_a_row_cannot_set_an_unknown_behaviour() -> None:
    with pytest.raises(TypeError, match="unknown behaviour"):
        endpoints._row("POST /x", "why", betta="typo")


def test_routes_carry_their_resolved_behaviour() -> None:
    for r in ROUTES:
        assert r.behaviour == endpoints.behaviour_for(r.endpoint)
    assert endpoints.behaviour_for("GET /models") is endpoints.GENERIC


def test_rows_combine_in_order() -> None:
    got = endpoints.behaviour_for("POST /threads/{thread_id}/runs/{run_id}/cancel")
    assert got == dataclasses.replace(
        Behaviour(), beta="assistants=v2", terminal_events=frozenset({"done"}), state_change=True
    )


def test_beta_header_exactly_on_the_assistants_family() -> None:
    family = ("/assistants", "/threads", "/vector_stores")
    expected = {e for e in ENDPOINTS if e.split(" ", 1)[1].startswith(family)}
    assert matching("beta") == expected
    assert {r.behaviour.beta for r in ROUTES if r.endpoint in expected} == {"assistants=v2"}


def test_embeddings_base64_only_where_openai_offers_encoding_format() -> None:
    assert matching("embeddings_base64") == {"POST /embeddings"}
    body = specmodel.request_body_schema(specmodel.operation("POST", "/embeddings"), "application/json")
    assert body is not None
    shape = specmodel.object_shape(body)
    assert shape is not None and "encoding_format" in shape[0]


def test_stream_usage_where_the_stream_request_has_include_usage() -> None:
    got = {r.endpoint for r in ROUTES if r.kind is routes.Kind.EVENTS and r.behaviour.stream_usage}
    assert got == {"POST /chat/completions", "POST /completions"}
    for r in ROUTES:
        if r.kind is routes.Kind.EVENTS and r.endpoint in got:
            options = r.input_desc.fields_by_name["stream_options"].message_type
            assert options is not None and "include_usage" in options.fields_by_name, r.full_method


def test_terminal_events_are_event_types_openai_defines() -> None:
    spec_text = specmodel.OPENAPI.read_text()
    for r in ROUTES:
        for event in r.behaviour.terminal_events:
            assert f"event: {event}" in spec_text or f"- {event}\n" in spec_text, event
    streams = {r.endpoint for r in ROUTES if r.kind is routes.Kind.EVENTS and r.behaviour.terminal_events}
    assert streams == {
        "POST /responses",
        "POST /images/generations",
        "POST /threads/{thread_id}/runs",
        "POST /threads/{thread_id}/runs/{run_id}/submit_tool_outputs",
        "POST /threads/runs",
    }


def test_upload_field_is_the_binary_part_of_the_multipart_body() -> None:
    uploads = [r for r in ROUTES if r.kind is routes.Kind.UPLOAD]
    assert {r.endpoint for r in uploads if r.behaviour.upload_field != "file"} == {
        "POST /images/edits",
        "POST /images/variations",
        "POST /uploads/{upload_id}/parts",
    }
    for r in uploads:
        body = specmodel.request_body_schema(
            specmodel.operation(r.http_method, r.path_template), "multipart/form-data"
        )
        assert body is not None, r.endpoint
        shape = specmodel.object_shape(body)
        assert shape is not None and r.behaviour.upload_field in shape[0], r.endpoint


def test_state_change_on_every_post_that_moves_a_resource() -> None:
    verbs = ("/cancel", "/pause", "/resume", "/complete", "/submit_tool_outputs")
    expected = {e for e in ENDPOINTS if e.startswith("POST ") and e.endswith(verbs)}
    assert len(expected) >= 8
    assert matching("state_change") == expected


def test_chat_rules_on_chat_completions_only() -> None:
    chat = {r.full_method for r in ROUTES if r.behaviour.chat_rules}
    assert chat == {
        "/openai_grpc.v1.ChatService/CreateChatCompletion",
        "/openai_grpc.v1.ChatService/StreamChatCompletion",
    }


def test_text_types_where_openai_answers_transcripts_as_text() -> None:
    assert matching("text_types") == {"POST /audio/transcriptions", "POST /audio/translations"}
    for r in ROUTES:
        if r.behaviour.text_types:
            types = specmodel.response_content_types(specmodel.operation(r.http_method, r.path_template))
            assert "text/plain" in types or "application/json" in types, r.endpoint
            assert "text" in r.output_desc.fields_by_name or any(
                "text" in f.message_type.fields_by_name for f in r.output_desc.fields if f.message_type
            ), r.endpoint
