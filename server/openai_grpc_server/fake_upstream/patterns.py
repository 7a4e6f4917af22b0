"""Deterministic byte patterns for fake file contents and audio.

The content of a fake file is a pure function of (seed, offset), so a test can check a
256 MiB download by hashing it as it arrives and comparing with `pattern_sha256`, and the
server can stream any size without holding it. The stream is made of 64 KiB blocks: a
per-seed random block whose first 8 bytes are replaced by the block index, so reordered,
repeated or dropped blocks change the hash.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator

BLOCK_SIZE = 64 * 1024
_INDEX_BYTES = 8


@functools.lru_cache(maxsize=64)
def _base_block(seed: str) -> bytes:
    return hashlib.shake_256(b"openai-grpc-fake:" + seed.encode()).digest(BLOCK_SIZE)


def _block(seed: str, index: int) -> bytes:
    return index.to_bytes(_INDEX_BYTES, "big") + _base_block(seed)[_INDEX_BYTES:]


def iter_pattern(seed: str, size: int, offset: int = 0, chunk: int = BLOCK_SIZE) -> Iterator[bytes]:
    """Yield the pattern bytes [offset, offset + size) in pieces of at most `chunk` bytes."""
    end = offset + size
    pos = offset
    while pos < end:
        index, within = divmod(pos, BLOCK_SIZE)
        take = min(BLOCK_SIZE - within, end - pos, chunk)
        block = _block(seed, index)
        yield block if (within == 0 and take == BLOCK_SIZE) else block[within : within + take]
        pos += take


def pattern_bytes(seed: str, offset: int, n: int) -> bytes:
    """The n pattern bytes starting at `offset` of the stream named by `seed`."""
    return b"".join(iter_pattern(seed, n, offset))


@functools.lru_cache(maxsize=256)
def pattern_sha256(seed: str, size: int) -> str:
    """Hex sha256 of the first `size` pattern bytes of `seed` (computed block by block)."""
    digest = hashlib.sha256()
    for piece in iter_pattern(seed, size):
        digest.update(piece)
    return digest.hexdigest()
