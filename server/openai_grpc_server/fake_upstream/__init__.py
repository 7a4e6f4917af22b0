"""A fake OpenAI upstream for `--demo`, tests and benchmarks.

Example::

    fake = FakeUpstream(host="127.0.0.1", port=0)
    await fake.start()
    fake.script("POST /chat/completions", Step(status=429, headers={"retry-after-ms": "200"}), Step())
    ...  # point the gateway at fake.base_url
    await fake.stop()
"""

from .app import (
    FakeConfig,
    FakeStats,
    FakeUpstream,
    MultipartPart,
    RateLimitHeaders,
    RecordedRequest,
    UploadedFile,
    openai_error,
)
from .bodies import STREAM_KINDS, STREAM_WORDS, stream_pieces, stream_text
from .patterns import BLOCK_SIZE, iter_pattern, pattern_bytes, pattern_sha256
from .routes import Endpoint, Router, load_endpoints
from .steps import Step, normalize_route

__all__ = [
    "BLOCK_SIZE",
    "STREAM_KINDS",
    "STREAM_WORDS",
    "Endpoint",
    "FakeConfig",
    "FakeStats",
    "FakeUpstream",
    "MultipartPart",
    "RateLimitHeaders",
    "RecordedRequest",
    "Router",
    "Step",
    "UploadedFile",
    "iter_pattern",
    "load_endpoints",
    "normalize_route",
    "openai_error",
    "pattern_bytes",
    "pattern_sha256",
    "stream_pieces",
    "stream_text",
]
