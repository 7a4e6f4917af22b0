"""Embeddings travel as base64 upstream, whatever the caller asked for.

A float vector as JSON text costs about 20 bytes and a float parse per dimension; OpenAI's
base64 form is 4 bytes each and decodes in C straight into packed float32. When the caller
wants floats (the default), the gateway asks for base64 and unpacks the vectors itself; a
caller that asked for base64 gets OpenAI's string untouched.
"""

from __future__ import annotations

import array
import base64
import sys
from typing import Any


def prepare(body: dict[str, Any]) -> bool:
    """Switch the request to base64; True when the answer must be turned back into floats."""
    if body.get("encoding_format", "float") != "float":
        return False
    body["encoding_format"] = "base64"
    return True


def restore(answer: Any) -> None:
    """Replace each base64 embedding in the answer by its list of floats, in place."""
    data = answer.get("data") if isinstance(answer, dict) else None
    for item in data if isinstance(data, list) else ():
        encoded = item.get("embedding") if isinstance(item, dict) else None
        if isinstance(encoded, str):
            values = array.array("f")
            values.frombytes(base64.b64decode(encoded))
            if sys.byteorder != "little":  # OpenAI sends little-endian float32
                values.byteswap()
            item["embedding"] = values.tolist()
