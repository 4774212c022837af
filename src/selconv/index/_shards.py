"""Shards: the encoded chunks of an index being built, one ``.npz`` each (no pickles), written atomically.

A shard's name is a hash of the shard format, the encoder's fingerprint and the chunk's paths, so a shard is
only ever reused for exactly the chunk and encoder that made it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from selconv._atomic import write_atomically
from selconv.index.photos import EncodedChunk

#: Version of the shard layout; part of every shard's name, so shards of another layout are never reused.
SHARD_FORMAT = 1


def chunk_key(fingerprint: str, paths) -> str:
    text = json.dumps({"format": SHARD_FORMAT, "encoder": fingerprint, "paths": list(paths)})
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def write_shard(path: Path, chunk, result: EncodedChunk) -> None:
    arrays = {
        "chunk": np.asarray(chunk, dtype=str),
        "descriptors": result.descriptors,
        "paths": np.asarray(result.paths, dtype=str),
        "skipped": np.asarray([p for p, _ in result.skipped], dtype=str),
        "reasons": np.asarray([r for _, r in result.skipped], dtype=str),
    }
    write_atomically(path, lambda stream: np.savez(stream, **arrays))


def read_shard(path: Path, chunk) -> EncodedChunk | None:
    """The shard at ``path`` if it is there, readable and of exactly ``chunk``; else None (encode again)."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            if stored["chunk"].tolist() != list(chunk):
                return None
            return EncodedChunk(
                descriptors=stored["descriptors"],
                paths=stored["paths"].tolist(),
                skipped=list(zip(stored["skipped"].tolist(), stored["reasons"].tolist())),
            )
    except (OSError, ValueError, KeyError, EOFError):
        return None
