"""OpenTelemetry GenAI semantic-convention names, pinned to semconv 1.41.0 (the one place they live).

The GenAI conventions are still "development" and have been renamed between releases
(`gen_ai.system` became `gen_ai.provider.name` in 1.37): the gateway emits exactly the 1.41.0
names below, and a move to a newer release is a change to this module only.
"""

from __future__ import annotations

import functools
import re
from typing import Final

from openai_grpc_server import routes
from openai_grpc_server.routes import Route

VERSION: Final = "1.41.0"
SCHEMA_URL: Final = f"https://opentelemetry.io/schemas/{VERSION}"

# --- metrics ---------------------------------------------------------------------------------
OPERATION_DURATION: Final = "gen_ai.client.operation.duration"
TOKEN_USAGE: Final = "gen_ai.client.token.usage"
# Streaming calls only: from sending the request to the first chunk of the response stream.
TIME_TO_FIRST_CHUNK: Final = "gen_ai.client.operation.time_to_first_chunk"

# The explicit bucket boundaries the conventions recommend.
DURATION_BUCKETS: Final = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
TOKEN_BUCKETS: Final = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
# A time like the operation's duration: the same boundaries.
TIME_TO_FIRST_CHUNK_BUCKETS: Final = DURATION_BUCKETS

# --- attributes ------------------------------------------------------------------------------
OPERATION_NAME: Final = "gen_ai.operation.name"
PROVIDER_NAME: Final = "gen_ai.provider.name"
REQUEST_MODEL: Final = "gen_ai.request.model"
RESPONSE_MODEL: Final = "gen_ai.response.model"
RESPONSE_ID: Final = "gen_ai.response.id"
TOKEN_TYPE: Final = "gen_ai.token.type"
USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
ERROR_TYPE: Final = "error.type"

PROVIDER_OPENAI: Final = "openai"
TOKEN_INPUT: Final = "input"
TOKEN_OUTPUT: Final = "output"

# Well-known `gen_ai.operation.name` values for the REST endpoints they describe. Every other
# RPC uses a custom value (which the conventions allow): its method name in snake case.
_OPERATIONS: Final = {
    "POST /chat/completions": "chat",
    "POST /responses": "chat",
    "POST /completions": "text_completion",
    "POST /embeddings": "embeddings",
    "POST /assistants": "create_agent",
    "POST /threads/runs": "invoke_agent",
    "POST /threads/{thread_id}/runs": "invoke_agent",
}
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def operation_name(route: Route) -> str:
    """`gen_ai.operation.name` of a route: `chat`, `embeddings`, ..., or e.g. `list_models`."""
    known = _OPERATIONS.get(route.endpoint)
    if known is not None:
        return known
    # A streaming RPC is the same operation as the unary one on its endpoint (StreamImage is
    # create_image).
    name = _unary_names().get(route.endpoint, route.name)
    return _CAMEL.sub("_", name).lower()


@functools.cache
def _unary_names() -> dict[str, str]:
    return {r.endpoint: r.name for r in routes.load_routes() if r.kind is routes.Kind.UNARY}
