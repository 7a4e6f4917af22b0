"""The descriptor-driven proto <-> OpenAI JSON codec (codec.py, rules in protos/STYLE.md) and the
REST request built from a request message (routes.build_request).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message
from openai_grpc.v1 import (
    chat_pb2,
    common_pb2,
    embeddings_pb2,
    models_pb2,
    responses_pb2,
    vector_stores_pb2,
)
from openai_grpc_server import codec, routes

MessageClass = Callable[[], Message]


def roundtrip(value: Any, cls: MessageClass) -> tuple[Message, Any]:
    msg = codec.from_json(value, cls)
    return msg, codec.encode(msg)


def extra_of(msg: Message) -> dict[str, Any]:
    extra = msg.extra  # type: ignore[attr-defined]
    assert isinstance(extra, struct_pb2.Struct)
    return dict(codec._ints(json_format.MessageToDict(extra)))


# --- unions: the member is chosen by the JSON type -------------------------------------------

PART_LIST = [
    {"type": "text", "text": "What is in this image?"},
    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
]

UNIONS: list[tuple[str, MessageClass, dict[str, Any], str, str]] = [
    # (id, message, JSON, oneof, expected member)
    (
        "content-string",
        chat_pb2.ChatCompletionRequestMessage,
        {"role": "user", "content": "hi"},
        "content",
        "content_text",
    ),
    (
        "content-parts",
        chat_pb2.ChatCompletionRequestMessage,
        {"role": "user", "content": PART_LIST},
        "content",
        "content_parts",
    ),
    (
        "content-empty-string",
        chat_pb2.ChatCompletionRequestMessage,
        {"role": "user", "content": ""},
        "content",
        "content_text",
    ),
    (
        "content-empty-list",
        chat_pb2.ChatCompletionRequestMessage,
        {"role": "user", "content": []},
        "content",
        "content_parts",
    ),
    (
        "stop-string",
        chat_pb2.CreateChatCompletionRequest,
        {"model": "m", "stop": "\n"},
        "stop",
        "stop_sequence",
    ),
    (
        "stop-list",
        chat_pb2.CreateChatCompletionRequest,
        {"model": "m", "stop": ["END", "STOP"]},
        "stop",
        "stop_sequences",
    ),
    (
        "tool-choice-string",
        chat_pb2.CreateChatCompletionRequest,
        {"model": "m", "tool_choice": "required"},
        "tool_choice",
        "tool_choice_mode",
    ),
    (
        "tool-choice-object",
        chat_pb2.CreateChatCompletionRequest,
        {"model": "m", "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        "tool_choice",
        "tool_choice_object",
    ),
    (
        "tool-choice-empty-object",
        chat_pb2.CreateChatCompletionRequest,
        {"model": "m", "tool_choice": {}},
        "tool_choice",
        "tool_choice_object",
    ),
    (
        "input-string",
        embeddings_pb2.CreateEmbeddingRequest,
        {"model": "m", "input": "hello"},
        "input",
        "text",
    ),
    (
        "input-strings",
        embeddings_pb2.CreateEmbeddingRequest,
        {"model": "m", "input": ["a", "b"]},
        "input",
        "texts",
    ),
    (
        "input-ints",
        embeddings_pb2.CreateEmbeddingRequest,
        {"model": "m", "input": [1, 2, 3]},
        "input",
        "tokens",
    ),
    (
        "input-lists",
        embeddings_pb2.CreateEmbeddingRequest,
        {"model": "m", "input": [[1, 2], [3]]},
        "input",
        "token_lists",
    ),
    (
        "input-list-of-empty-list",
        embeddings_pb2.CreateEmbeddingRequest,
        {"model": "m", "input": [[]]},
        "input",
        "token_lists",
    ),
    (
        "embedding-floats",
        embeddings_pb2.Embedding,
        {"index": 0, "object": "embedding", "embedding": [0.25, -1.5]},
        "embedding",
        "floats",
    ),
    (
        "embedding-base64",
        embeddings_pb2.Embedding,
        {"index": 0, "object": "embedding", "embedding": "AAAAPw=="},
        "embedding",
        "base64",
    ),
    (
        "filter-string",
        vector_stores_pb2.VectorStoreSearchFilter,
        {"type": "eq", "key": "k", "value": "x"},
        "value",
        "string_value",
    ),
    (
        "filter-number",
        vector_stores_pb2.VectorStoreSearchFilter,
        {"type": "gt", "key": "k", "value": 2.5},
        "value",
        "number_value",
    ),
    (
        "filter-bool",
        vector_stores_pb2.VectorStoreSearchFilter,
        {"type": "eq", "key": "k", "value": False},
        "value",
        "bool_value",
    ),
    (
        "filter-list",
        vector_stores_pb2.VectorStoreSearchFilter,
        {"type": "in", "key": "k", "value": ["a", 1.5]},
        "value",
        "list_value",
    ),
]


@pytest.mark.parametrize(
    ("cls", "value", "oneof", "member"), [u[1:] for u in UNIONS], ids=[u[0] for u in UNIONS]
)
def test_union_member_chosen_by_json_type(
    cls: MessageClass, value: dict[str, Any], oneof: str, member: str
) -> None:
    msg, back = roundtrip(value, cls)
    assert msg.WhichOneof(oneof) == member
    assert not msg.HasField("extra")
    assert back == value


def test_content_parts_are_typed() -> None:
    msg = codec.from_json({"role": "user", "content": PART_LIST}, chat_pb2.ChatCompletionRequestMessage)
    assert isinstance(msg, chat_pb2.ChatCompletionRequestMessage)
    parts = msg.content_parts.values
    assert [p.type for p in parts] == ["text", "image_url"]
    assert parts[0].text == "What is in this image?"
    assert parts[1].image_url.url == "https://example.com/cat.png"


def test_embedding_input_members_encode_from_proto() -> None:
    E = embeddings_pb2.CreateEmbeddingRequest
    assert codec.encode(E(model="m", text="hi")) == {"model": "m", "input": "hi"}
    assert codec.encode(E(model="m", texts=common_pb2.StringList(values=["a"]))) == {
        "model": "m",
        "input": ["a"],
    }
    assert codec.encode(E(model="m", tokens=common_pb2.IntList(values=[5]))) == {"model": "m", "input": [5]}
    lists = common_pb2.IntListList(values=[common_pb2.IntList(values=[1, 2]), common_pb2.IntList()])
    assert codec.encode(E(model="m", token_lists=lists)) == {"model": "m", "input": [[1, 2], []]}
    assert codec.encode(E(model="m")) == {"model": "m"}


def test_request_with_every_union_round_trips() -> None:
    body = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": PART_LIST},
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        ],
        "stop": ["\n\n"],
        "tool_choice": "auto",
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "f",
                    "parameters": {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0}}},
                    "strict": True,
                },
            }
        ],
    }
    _, back = roundtrip(body, chat_pb2.CreateChatCompletionRequest)
    assert back == body


# --- list wrappers are bare arrays -----------------------------------------------------------


def test_list_wrappers_encode_as_bare_arrays() -> None:
    assert codec.encode(common_pb2.StringList(values=["a", "b"])) == ["a", "b"]
    assert codec.encode(common_pb2.IntList(values=[1, 2])) == [1, 2]
    assert codec.encode(common_pb2.DoubleList(values=[0.5])) == [0.5]
    assert codec.encode(common_pb2.StringList()) == []
    nested = common_pb2.IntListList(
        values=[common_pb2.IntList(values=[1]), common_pb2.IntList(values=[2, 3])]
    )
    assert codec.encode(nested) == [[1], [2, 3]]


def test_list_wrappers_decode_from_bare_arrays() -> None:
    msg = codec.from_json([[1], [2, 3]], common_pb2.IntListList)
    assert isinstance(msg, common_pb2.IntListList)
    assert [list(v.values) for v in msg.values] == [[1], [2, 3]]


def test_list_wrapper_detection() -> None:
    assert codec.is_list_wrapper(common_pb2.StringList.DESCRIPTOR)
    assert codec.is_list_wrapper(chat_pb2.ChatCompletionContentPartList.DESCRIPTOR)
    assert not codec.is_list_wrapper(struct_pb2.ListValue.DESCRIPTOR)
    assert not codec.is_list_wrapper(models_pb2.ListModelsResponse.DESCRIPTOR)


# --- unknown keys travel through `extra` -----------------------------------------------------


def test_unknown_keys_go_to_extra_and_come_back() -> None:
    body = {
        "model": "m",
        "brand_new_flag": True,
        "brand_new_object": {"depth": {"n": 2, "xs": [1, "a", None, 2.5]}},
        "brand_new_number": 7,
    }
    msg, back = roundtrip(body, chat_pb2.CreateChatCompletionRequest)
    assert extra_of(msg) == {k: v for k, v in body.items() if k != "model"}
    assert back == body


def test_unknown_keys_in_nested_messages_stay_where_they_were() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi", "cache_control": {"type": "ephemeral"}}],
    }
    msg, back = roundtrip(body, chat_pb2.CreateChatCompletionRequest)
    assert isinstance(msg, chat_pb2.CreateChatCompletionRequest)
    assert not msg.HasField("extra")
    assert extra_of(msg.messages[0]) == {"cache_control": {"type": "ephemeral"}}
    assert back == body


def test_unknown_response_keys_are_kept() -> None:
    body = {"id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system", "tier": "pro"}
    msg, back = roundtrip(body, models_pb2.Model)
    assert extra_of(msg) == {"tier": "pro"}
    assert back == body


def test_extra_set_on_the_proto_is_merged_into_the_body() -> None:
    req = chat_pb2.CreateChatCompletionRequest(model="m")
    req.extra.update({"reasoning": {"effort": "low"}, "n": 3})
    assert codec.encode(req) == {"model": "m", "reasoning": {"effort": "low"}, "n": 3}


def test_messages_without_extra_drop_unknown_keys() -> None:
    _, back = roundtrip({"content_type": "audio/mpeg", "unknown": 1}, common_pb2.BinaryChunk)
    assert back == {"content_type": "audio/mpeg"}


# --- null is absent --------------------------------------------------------------------------


def test_null_equals_absent() -> None:
    body = {
        "model": "m",
        "temperature": None,
        "messages": None,
        "metadata": None,
        "tool_choice": None,
        "stop": None,
        "response_format": None,
        "logit_bias": None,
        "brand_new": None,
    }
    msg = codec.from_json(body, chat_pb2.CreateChatCompletionRequest)
    assert msg == codec.from_json({"model": "m"}, chat_pb2.CreateChatCompletionRequest)
    assert not msg.HasField("extra")
    assert codec.encode(msg) == {"model": "m"}


def test_null_map_values_are_absent() -> None:
    msg = codec.from_json(
        {"model": "m", "metadata": {"a": None, "b": "c"}}, chat_pb2.CreateChatCompletionRequest
    )
    assert codec.encode(msg) == {"model": "m", "metadata": {"b": "c"}}


# --- presence --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 0.0),
        ("top_p", 0.0),
        ("n", 0),
        ("seed", 0),
        ("store", False),
        ("logprobs", False),
        ("user", ""),
        ("max_completion_tokens", 0),
    ],
)
def test_optional_scalars_keep_presence(field: str, value: Any) -> None:
    zero = chat_pb2.CreateChatCompletionRequest(model="m", **{field: value})
    assert codec.encode(zero) == {"model": "m", field: value}
    assert type(codec.encode(zero)[field]) is type(value)
    unset = chat_pb2.CreateChatCompletionRequest(model="m")
    assert field not in codec.encode(unset)
    decoded = codec.from_json({"model": "m", field: value}, chat_pb2.CreateChatCompletionRequest)
    assert decoded.HasField(field)
    assert codec.encode(decoded) == {"model": "m", field: value}


def test_required_zero_and_false_are_written() -> None:
    usage = chat_pb2.CompletionUsage()
    assert codec.encode(usage) == {"completion_tokens": 0, "prompt_tokens": 0, "total_tokens": 0}
    deleted = models_pb2.DeleteModelResponse(id="ft:x", object="model")
    assert codec.encode(deleted) == {"id": "ft:x", "object": "model", "deleted": False}
    choice = chat_pb2.ChatCompletionChoice(finish_reason="stop")
    assert codec.encode(choice)["index"] == 0


def test_required_empty_string_is_not_set() -> None:
    assert codec.encode(models_pb2.DeleteModelResponse()) == {"deleted": False}


def test_required_repeated_is_written_empty() -> None:
    assert codec.encode(models_pb2.ListModelsResponse(object="list")) == {"object": "list", "data": []}


def test_empty_object_is_present() -> None:
    msg, back = roundtrip({"model": "m", "web_search_options": {}}, chat_pb2.CreateChatCompletionRequest)
    assert msg.HasField("web_search_options")
    assert back == {"model": "m", "web_search_options": {}}


# --- numbers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("created", [0, 1715367049, 2**53 + 1, 2**63 - 1, -(2**63)])
def test_int64_stays_an_integer(created: int) -> None:
    _, back = roundtrip({"id": "m", "object": "model", "created": created, "owned_by": "o"}, models_pb2.Model)
    assert back["created"] == created
    assert type(back["created"]) is int
    assert f'"created":{created}'.encode() in orjson.dumps(back)  # a JSON number, not a string


def test_integral_float_for_int64_is_an_integer() -> None:
    msg = codec.from_json({"created": 1715367049.0}, models_pb2.Model)
    assert isinstance(msg, models_pb2.Model)
    assert msg.created == 1715367049
    assert type(codec.encode(msg)["created"]) is int


def test_double_accepts_an_integer() -> None:
    msg = codec.from_json({"model": "m", "temperature": 1}, chat_pb2.CreateChatCompletionRequest)
    assert isinstance(msg, chat_pb2.CreateChatCompletionRequest)
    assert msg.temperature == 1.0


def test_repeated_int64_and_map_of_int64() -> None:
    body = {"model": "m", "logit_bias": {"50256": -100, "1": 2**40}}
    _, back = roundtrip(body, chat_pb2.CreateChatCompletionRequest)
    assert back == body
    assert all(type(v) is int for v in back["logit_bias"].values())
    lp = {"token": "a", "logprob": -0.5, "bytes": [97, 2**40]}
    assert roundtrip(lp, chat_pb2.ChatCompletionTokenLogprob)[1] == lp


# --- Struct and Value ------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {
        "location": {"type": "string", "description": "City"},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
        "ratio": {"type": "number", "default": 0.5},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 0},
    },
    "required": ["location"],
    "additionalProperties": False,
    "nullable_thing": None,
}


def test_struct_round_trips_with_integers_kept() -> None:
    body = {"name": "get_weather", "description": "Weather", "parameters": SCHEMA, "strict": True}
    msg, back = roundtrip(body, common_pb2.FunctionObject)
    assert isinstance(msg, common_pb2.FunctionObject)
    assert msg.parameters["type"] == "object"
    assert back == body
    assert type(back["parameters"]["properties"]["days"]["minimum"]) is int


def test_empty_struct_is_present() -> None:
    msg, back = roundtrip({"name": "f", "parameters": {}}, common_pb2.FunctionObject)
    assert msg.HasField("parameters")
    assert back == {"name": "f", "parameters": {}}


@pytest.mark.parametrize(
    "arguments",
    ['{"city":"Paris"}', {"query": "cats", "limit": 3}, 42, 2.5, True, ["a", 1], ""],
    ids=["string", "object", "int", "float", "bool", "list", "empty-string"],
)
def test_value_round_trips_any_json(arguments: Any) -> None:
    body = {"type": "function_call", "arguments": arguments}
    msg, back = roundtrip(body, responses_pb2.ResponseItem)
    assert msg.HasField("arguments")
    assert back == body
    assert type(back["arguments"]) is type(arguments)


def test_repeated_value_in_a_list_wrapper() -> None:
    assert roundtrip(["a", 1, 2.5, True], vector_stores_pb2.VectorStoreFilterValueList)[1] == [
        "a",
        1,
        2.5,
        True,
    ]


# --- maps ------------------------------------------------------------------------------------


def test_metadata_map_round_trips() -> None:
    body = {"model": "m", "metadata": {"user": "u-1", "empty": "", "unicode": "é世🎉"}}
    msg, back = roundtrip(body, chat_pb2.CreateChatCompletionRequest)
    assert isinstance(msg, chat_pb2.CreateChatCompletionRequest)
    assert dict(msg.metadata) == body["metadata"]
    assert back == body


def test_empty_map_is_not_written() -> None:
    assert codec.encode(chat_pb2.CreateChatCompletionRequest(model="m", metadata={})) == {"model": "m"}


def test_maps_of_messages_and_values() -> None:
    result = {
        "type": "moderation",
        "model": "omni-moderation-latest",
        "flagged": True,
        "categories": {"violence": True, "hate": False},
        "category_scores": {"violence": 0.9, "hate": 0.001},
        "category_applied_input_types": {"violence": ["text", "image"], "hate": []},
    }
    assert roundtrip(result, chat_pb2.ChatCompletionModerationResult)[1] == result
    attrs = {"author": "Ann", "year": 2024, "score": 0.5, "draft": False}
    _, back = roundtrip({"id": "f", "attributes": attrs}, vector_stores_pb2.VectorStoreFile)
    assert back["attributes"] == attrs
    assert type(back["attributes"]["year"]) is int


# --- JSON keys ---------------------------------------------------------------------------------


def test_default_json_key_is_the_snake_case_name() -> None:
    f = chat_pb2.CreateChatCompletionRequest.DESCRIPTOR.fields_by_name["max_completion_tokens"]
    assert codec.json_key(f) == "max_completion_tokens"


# --- envelope responses ----------------------------------------------------------------------

MODEL = {"id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system"}


def test_envelope_response_takes_the_whole_body() -> None:
    resp = models_pb2.GetModelResponse()
    codec.decode_response({**MODEL, "new_key": [1]}, resp)
    assert resp.model.id == "gpt-4o"
    assert resp.model.created == 1715367049
    assert codec.encode(resp.model) == {**MODEL, "new_key": [1]}


def test_envelope_detection() -> None:
    env = codec.envelope_field(models_pb2.GetModelResponse.DESCRIPTOR)
    assert env is not None
    assert env.name == "model"
    assert codec.envelope_field(chat_pb2.CreateChatCompletionResponse.DESCRIPTOR) is not None
    assert codec.envelope_field(models_pb2.ListModelsResponse.DESCRIPTOR) is None
    assert codec.envelope_field(models_pb2.ListModelsRequest.DESCRIPTOR) is None  # only `extra`
    assert codec.envelope_field(chat_pb2.StreamChatCompletionResponse.DESCRIPTOR) is None  # repeated


def test_non_envelope_response_maps_fields_directly() -> None:
    body = {"object": "list", "data": [MODEL, {**MODEL, "id": "o1"}]}
    resp = models_pb2.ListModelsResponse()
    codec.decode_response(body, resp)
    assert [m.id for m in resp.data] == ["gpt-4o", "o1"]
    assert codec.encode(resp) == body


def test_chat_completion_envelope() -> None:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1715367049,
        "model": "gpt-4o",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi", "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        "service_tier": "default",
        "system_fingerprint": "fp_1",
    }
    resp = chat_pb2.CreateChatCompletionResponse()
    codec.decode_response(body, resp)
    assert resp.chat_completion.choices[0].message.content == "Hi"
    assert resp.chat_completion.usage.total_tokens == 6
    back = codec.encode(resp.chat_completion)
    assert back["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": "Hi"},
        "finish_reason": "stop",
    }
    assert back["usage"] == body["usage"]


@pytest.mark.parametrize("body", ["oops", [1, 2], 5])
def test_envelope_with_a_non_object_body_is_a_codec_error(body: Any) -> None:
    with pytest.raises(codec.CodecError):
        codec.decode_response(body, models_pb2.GetModelResponse())


# --- a value of the wrong JSON type ----------------------------------------------------------

WRONG_TYPES: list[tuple[str, MessageClass, dict[str, Any], str]] = [
    # (id, message with `extra`, JSON, key whose value does not fit)
    (
        "string-for-double",
        chat_pb2.CreateChatCompletionRequest,
        {"model": "m", "temperature": "hot"},
        "temperature",
    ),
    ("bool-for-int", chat_pb2.CreateChatCompletionRequest, {"model": "m", "n": True}, "n"),
    ("fraction-for-int", chat_pb2.CreateChatCompletionRequest, {"model": "m", "n": 1.5}, "n"),
    ("number-for-bool", chat_pb2.CreateChatCompletionRequest, {"model": "m", "store": 1}, "store"),
    ("number-for-required-string", chat_pb2.CreateChatCompletionRequest, {"model": 5}, "model"),
    (
        "string-for-repeated",
        chat_pb2.CreateChatCompletionRequest,
        {"model": "m", "modalities": "text"},
        "modalities",
    ),
    (
        "mixed-repeated",
        chat_pb2.CreateChatCompletionRequest,
        {"model": "m", "modalities": ["text", 5]},
        "modalities",
    ),
    (
        "string-for-message",
        chat_pb2.CreateChatCompletionRequest,
        {"model": "m", "response_format": "auto"},
        "response_format",
    ),
    ("list-for-message", chat_pb2.CreateChatCompletionRequest, {"model": "m", "audio": []}, "audio"),
    ("string-for-map", chat_pb2.CreateChatCompletionRequest, {"model": "m", "metadata": "x"}, "metadata"),
    (
        "bad-map-value",
        chat_pb2.CreateChatCompletionRequest,
        {"model": "m", "metadata": {"a": "b", "c": 5}},
        "metadata",
    ),
    (
        "number-for-union",
        chat_pb2.CreateChatCompletionRequest,
        {"model": "m", "tool_choice": 5},
        "tool_choice",
    ),
    ("bool-for-union", embeddings_pb2.CreateEmbeddingRequest, {"model": "m", "input": True}, "input"),
    ("mixed-list-for-union", chat_pb2.CreateChatCompletionRequest, {"model": "m", "stop": ["a", 1]}, "stop"),
    (
        "mixed-tokens-for-union",
        embeddings_pb2.CreateEmbeddingRequest,
        {"model": "m", "input": [1, "a"]},
        "input",
    ),
    (
        "bad-part-in-content",
        chat_pb2.ChatCompletionRequestMessage,
        {"role": "user", "content": [{"type": "text", "text": "a"}, "bare"]},
        "content",
    ),
    ("string-for-struct", common_pb2.FunctionObject, {"name": "f", "parameters": "oops"}, "parameters"),
    ("list-for-struct", common_pb2.FunctionObject, {"name": "f", "parameters": [1]}, "parameters"),
    ("int64-overflow", models_pb2.Model, {"id": "m", "created": 2**63}, "created"),
    ("int64-overflow-float", models_pb2.Model, {"id": "m", "created": 1e30}, "created"),
]


@pytest.mark.parametrize(
    ("cls", "body", "key"), [w[1:] for w in WRONG_TYPES], ids=[w[0] for w in WRONG_TYPES]
)
def test_wrong_type_lands_in_extra(cls: MessageClass, body: dict[str, Any], key: str) -> None:
    """BUG (struct and int64-overflow rows): a non-object for a Struct field raises
    json_format.ParseError from codec._decode_wkt, and an integer outside int64 raises the
    ValueError of the protobuf setter; neither is a CodecError, so decode_into does not catch
    it, the value never reaches `extra`, and the gateway answers a generic INTERNAL instead of
    decoding the response (or CodecFailure).
    """
    msg = codec.from_json(body, cls)
    assert extra_of(msg)[key] == body[key]
    assert codec.encode(msg) == body  # nothing lost on the way back


# The struct and int64 rows already fail above (they raise instead of decoding at all).
DECODABLE_WRONG_TYPES = [w for w in WRONG_TYPES if "struct" not in w[0] and "overflow" not in w[0]]


@pytest.mark.parametrize(
    ("cls", "body", "key"),
    [w[1:] for w in DECODABLE_WRONG_TYPES],
    ids=[w[0] for w in DECODABLE_WRONG_TYPES],
)
def test_wrong_type_leaves_the_typed_field_unset(cls: MessageClass, body: dict[str, Any], key: str) -> None:
    """The value is in `extra` ONLY: no half-decoded copy in the typed field (or union member).

    BUG: decode_into falls back to `extra` after set_field has already written part of the
    value: `metadata: {"a": "b", "c": 5}` leaves metadata == {"a": "b"}, `stop: ["a", 1]`
    leaves the oneof on an empty `stop_sequences`, `content: [part, "bare"]` leaves one part.
    A caller reading the typed field sees data that is not what OpenAI sent.
    """
    msg = codec.from_json(body, cls)
    desc = msg.DESCRIPTOR
    oneof = desc.oneofs_by_name.get(key)
    if oneof is not None:
        assert msg.WhichOneof(key) is None
        return
    f = desc.fields_by_name[key]
    if f.is_repeated:
        assert len(getattr(msg, key)) == 0
    elif f.has_presence:
        assert not msg.HasField(key)
    else:
        assert getattr(msg, key) == f.default_value


NO_EXTRA: list[tuple[str, MessageClass, Any]] = [
    ("string-field", common_pb2.FileChunk, {"field": 5}),
    ("bytes-field", common_pb2.FileChunk, {"data": 5}),
    ("optional-string", common_pb2.BinaryChunk, {"content_type": ["a"]}),
    ("wrapper-element", common_pb2.StringList, ["a", 1]),
    ("wrapper-given-object", common_pb2.StringList, {"values": ["a"]}),
    ("nested-wrapper-element", common_pb2.IntListList, [[1, "x"]]),
    ("nested-wrapper-not-a-list", common_pb2.IntListList, [5]),
    ("object-given-array", common_pb2.FileChunk, ["a"]),
    ("object-given-string", chat_pb2.CreateChatCompletionRequest, "hello"),
    ("int64-overflow-in-wrapper", common_pb2.IntList, [2**63]),
]


@pytest.mark.parametrize(("cls", "body"), [n[1:] for n in NO_EXTRA], ids=[n[0] for n in NO_EXTRA])
def test_wrong_type_without_extra_is_a_codec_error(cls: MessageClass, body: Any) -> None:
    """BUG (int64-overflow row): the protobuf setter's ValueError escapes instead of CodecError."""
    with pytest.raises(codec.CodecError):
        codec.from_json(body, cls)


# --- routes.build_request --------------------------------------------------------------------


@pytest.fixture(scope="module")
def route_table() -> dict[str, routes.Route]:
    return {r.name: r for r in routes.load_routes()}


def build(
    route_table: dict[str, routes.Route], name: str, body: dict[str, Any], *, stream: bool = False
) -> routes.UpstreamRequest:
    route = route_table[name]
    return routes.build_request(route, codec.from_json(body, route.input_cls), stream=stream)


@pytest.mark.parametrize(
    ("model", "path"),
    [
        ("gpt-4o", "/models/gpt-4o"),
        ("ft:gpt-4o-mini:org:custom:id1", "/models/ft%3Agpt-4o-mini%3Aorg%3Acustom%3Aid1"),
        ("a/b", "/models/a%2Fb"),
        ("../admin", "/models/..%2Fadmin"),
        ("x y?z#w&v=1", "/models/x%20y%3Fz%23w%26v%3D1"),
        ("é", "/models/%C3%A9"),
        ("100%", "/models/100%25"),
    ],
)
def test_path_params_are_url_escaped(route_table: dict[str, routes.Route], model: str, path: str) -> None:
    req = build(route_table, "GetModel", {"model": model})
    assert (req.method, req.path, req.query, req.body) == ("GET", path, [], None)


def test_several_path_params_and_no_leak_into_query(route_table: dict[str, routes.Route]) -> None:
    req = build(route_table, "GetRunStep", {"thread_id": "t 1", "run_id": "r/2", "step_id": "s?3"})
    assert req.path == "/threads/t%201/runs/r%2F2/steps/s%3F3"
    assert req.query == []
    assert req.body is None


def test_get_fields_become_the_query(route_table: dict[str, routes.Route]) -> None:
    req = build(
        route_table,
        "ListChatCompletions",
        {"model": "gpt-4o", "limit": 20, "order": "asc", "metadata": {"user": "u 1", "team": "a&b"}},
    )
    assert req.method == "GET"
    assert req.path == "/chat/completions"
    assert req.body is None
    assert sorted(req.query) == sorted(
        [
            ("model", "gpt-4o"),
            ("limit", "20"),
            ("order", "asc"),
            ("metadata[user]", "u 1"),
            ("metadata[team]", "a&b"),
        ]
    )


def test_get_query_leaves_out_unset_fields_but_keeps_set_zeros(route_table: dict[str, routes.Route]) -> None:
    assert build(route_table, "ListChatCompletions", {}).query == []
    assert build(route_table, "ListChatCompletions", {"limit": 0}).query == [("limit", "0")]


def test_get_query_bools_are_lower_case_and_lists_use_brackets(route_table: dict[str, routes.Route]) -> None:
    route = route_table["ListModels"]
    msg = models_pb2.ListModelsRequest()
    msg.extra.update({"yes": True, "no": False, "ids": ["a", "b"], "n": 3, "f": 0.5})
    req = routes.build_request(route, msg)
    assert sorted(req.query) == sorted(
        [("yes", "true"), ("no", "false"), ("ids[]", "a"), ("ids[]", "b"), ("n", "3"), ("f", "0.5")]
    )


@pytest.mark.parametrize(
    ("name", "body", "path"),
    [
        ("ListRunSteps", {"thread_id": "t", "run_id": "r"}, "/threads/t/runs/r/steps"),
        ("GetRunStep", {"thread_id": "t", "run_id": "r", "step_id": "s"}, "/threads/t/runs/r/steps/s"),
        ("GetResponse", {"response_id": "resp_1"}, "/responses/resp_1"),
        ("ListConversationItems", {"conversation_id": "c"}, "/conversations/c/items"),
    ],
)
def test_get_lists_are_sent_with_brackets(
    route_table: dict[str, routes.Route], name: str, body: dict[str, Any], path: str
) -> None:
    """`include[]=a&include[]=b`, as the official SDK sends every query array."""
    req = build(route_table, name, {**body, "include": ["a", "b"]})
    assert req.path == path
    assert req.query == [("include[]", "a"), ("include[]", "b")]


def test_get_query_objects_are_deep_objects(route_table: dict[str, routes.Route]) -> None:
    req = build(route_table, "ListFineTuningJobs", {"metadata": {"k": "v"}})
    assert req.query == [("metadata[k]", "v")]


def test_post_sends_a_json_body(route_table: dict[str, routes.Route]) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.0}
    req = build(route_table, "CreateChatCompletion", body)
    assert (req.method, req.path, req.query) == ("POST", "/chat/completions", [])
    assert req.body == body
    assert "stream" not in req.body


def test_stream_true_adds_stream_to_the_body(route_table: dict[str, routes.Route]) -> None:
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "hi"}],
        "stream_options": {"include_usage": True},
    }
    req = build(route_table, "StreamChatCompletion", body, stream=True)
    assert req.body == {**body, "stream": True}
    assert req.body is not None and req.body["stream"] is True


@pytest.mark.parametrize(
    ("name", "body", "path"),
    [
        ("CreateRun", {"thread_id": "thread/1", "assistant_id": "asst_1"}, "/threads/thread%2F1/runs"),
        ("CreateConversationItems", {"conversation_id": "conv_1"}, "/conversations/conv_1/items"),
    ],
)
def test_query_fields_stay_in_the_query_for_post(
    route_table: dict[str, routes.Route], name: str, body: dict[str, Any], path: str
) -> None:
    """Fields marked `(openai_grpc.v1.query)` go in the query even next to a JSON body."""
    route = route_table[name]
    assert route.query_keys == ("include",)
    req = build(route_table, name, {**body, "include": ["x", "y"], "temperature": 0.0})
    assert req.method == "POST"
    assert req.path == path
    assert req.query == [("include[]", "x"), ("include[]", "y")]
    rest = {k: v for k, v in body.items() if not k.endswith("_id") or k == "assistant_id"}
    assert req.body == {**rest, "temperature": 0.0}


def test_streamed_runs_keep_include_in_the_query(route_table: dict[str, routes.Route]) -> None:
    body = {"thread_id": "t", "assistant_id": "asst_1", "include": ["x"]}
    streamed = build(route_table, "StreamRun", body, stream=True)
    assert streamed.query == [("include[]", "x")]
    assert streamed.body == {"assistant_id": "asst_1", "stream": True}


def test_bodiless_post_and_delete_send_no_body(route_table: dict[str, routes.Route]) -> None:
    cancel = build(route_table, "CancelRun", {"thread_id": "t", "run_id": "r"})
    assert (cancel.method, cancel.path, cancel.query, cancel.body) == (
        "POST",
        "/threads/t/runs/r/cancel",
        [],
        None,
    )
    delete = build(route_table, "DeleteModel", {"model": "ft:a"})
    assert (delete.method, delete.path, delete.query, delete.body) == ("DELETE", "/models/ft%3Aa", [], None)


def test_post_body_carries_extra(route_table: dict[str, routes.Route]) -> None:
    req = build(route_table, "CreateEmbedding", {"model": "m", "input": "hi", "new_option": {"a": 1}})
    assert req.body == {"model": "m", "input": "hi", "new_option": {"a": 1}}
