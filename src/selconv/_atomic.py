"""One way to write a file that readers see whole or not at all (cache entries, converted weights, shards, encoders)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, write) -> None:
    """``write(stream)`` into a temporary file next to ``path``, fsync, rename: readers see all of it or nothing.

    The data is on disk before the rename makes it visible. The folder is not fsynced: a rename lost in a
    power cut only loses the file (recomputed next time), and it would double the cost (~8 ms a file).
    """
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
