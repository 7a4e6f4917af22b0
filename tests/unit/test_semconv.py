"""The GenAI names the gateway emits are those of the pinned semantic-conventions release."""

from __future__ import annotations

from openai_grpc_server import routes, semconv
from opentelemetry.semconv._incubating.attributes import error_attributes, gen_ai_attributes
from opentelemetry.semconv._incubating.metrics import gen_ai_metrics


def test_names_match_the_semantic_conventions_package() -> None:
    assert semconv.OPERATION_DURATION == gen_ai_metrics.GEN_AI_CLIENT_OPERATION_DURATION
    assert semconv.TOKEN_USAGE == gen_ai_metrics.GEN_AI_CLIENT_TOKEN_USAGE
    assert semconv.TIME_TO_FIRST_CHUNK == gen_ai_metrics.GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK
    g = gen_ai_attributes
    assert semconv.OPERATION_NAME == g.GEN_AI_OPERATION_NAME
    assert semconv.PROVIDER_NAME == g.GEN_AI_PROVIDER_NAME  # not the older gen_ai.system
    assert semconv.REQUEST_MODEL == g.GEN_AI_REQUEST_MODEL
    assert semconv.RESPONSE_MODEL == g.GEN_AI_RESPONSE_MODEL
    assert semconv.RESPONSE_ID == g.GEN_AI_RESPONSE_ID
    assert semconv.TOKEN_TYPE == g.GEN_AI_TOKEN_TYPE
    assert semconv.USAGE_INPUT_TOKENS == g.GEN_AI_USAGE_INPUT_TOKENS
    assert semconv.USAGE_OUTPUT_TOKENS == g.GEN_AI_USAGE_OUTPUT_TOKENS
    assert semconv.ERROR_TYPE == error_attributes.ERROR_TYPE
    assert g.GenAiProviderNameValues.OPENAI.value == semconv.PROVIDER_OPENAI
    assert g.GenAiTokenTypeValues.INPUT.value == semconv.TOKEN_INPUT
    assert g.GenAiTokenTypeValues.OUTPUT.value == semconv.TOKEN_OUTPUT


def test_bucket_boundaries_are_the_recommended_ones() -> None:
    # Doubling from 10 ms to 81.92 s; powers of 4 from 1 to 4^13 tokens.
    assert tuple(round(0.01 * 2**i, 2) for i in range(14)) == semconv.DURATION_BUCKETS
    assert tuple(4**i for i in range(14)) == semconv.TOKEN_BUCKETS


def test_operation_names() -> None:
    table = {r.name: r for r in routes.load_routes()}
    well_known = {v.value for v in gen_ai_attributes.GenAiOperationNameValues}
    expected = {
        "CreateChatCompletion": "chat",
        "StreamChatCompletion": "chat",
        "CreateResponse": "chat",
        "CreateCompletion": "text_completion",
        "CreateEmbedding": "embeddings",
        "CreateAssistant": "create_agent",
        "StreamRun": "invoke_agent",
        "CreateThreadAndRun": "invoke_agent",
        "ListModels": "list_models",
        "CreateSpeech": "create_speech",
        "StreamImage": "create_image",
        "StreamSubmitToolOutputs": "submit_tool_outputs",
    }
    for name, op in expected.items():
        assert semconv.operation_name(table[name]) == op
    for op in {semconv.operation_name(r) for r in table.values()}:
        assert op in well_known or (op.islower() and " " not in op)
