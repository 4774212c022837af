"""The extractor's on-disk map cache: one checksummed entry per (file, box, output settings), written atomically.

A cache entry: a magic, the SHA-256 digest of its key and payload, then the payload. The key in the digest
binds an entry to its file name: a copied or misplaced entry fails the check. The payload is a 4-byte
little-endian header length, a JSON header listing each array's name, dtype and shape, then the arrays' raw
C-order bytes. Not np.load: numpy parses .npy headers with ast.literal_eval, whose recursion counter CPython
< 3.11.8 / 3.12.1 shares between threads (gh-106905), so concurrent reads of valid entries in the worker
threads could fail with a SystemError and be thrown away. Entries of the earlier npz layout (magic
"selconv-map") are recomputed once.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np

from selconv._atomic import write_atomically
from selconv.conv_map import ConvMap
from selconv.extraction.images import open_regular_file

CACHE_FORMAT = 2  # bump when the stored layout or the computation changes (part of the output signature)
_MAGIC = b"selconv-map2\x00"
_DIGEST_SIZE = 32
_DTYPE_KINDS = "fiu"  # plain numbers only: anything else in a header is a damaged or foreign entry


def pack_arrays(arrays: dict) -> bytes:
    """Arrays as a cache payload: header length, JSON header (name, dtype, shape of each), raw bytes."""
    arrays = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    header = json.dumps([[name, a.dtype.str, list(a.shape)] for name, a in arrays.items()]).encode()
    return b"".join([len(header).to_bytes(4, "little"), header, *(a.tobytes() for a in arrays.values())])


def unpack_arrays(payload: bytes) -> dict:
    """Inverse of :func:`pack_arrays` (copies, writable); a ValueError for anything else."""
    try:
        size = int.from_bytes(payload[:4], "little")
        header = json.loads(payload[4 : 4 + size])
        offset, arrays = 4 + size, {}
        for name, dtype_str, shape in header:
            dtype = np.dtype(dtype_str)
            if dtype.kind not in _DTYPE_KINDS or not all(isinstance(n, int) and n >= 0 for n in shape):
                raise ValueError(f"array {name!r} of dtype {dtype_str} and shape {shape}")
            count = math.prod(shape)
            if count * dtype.itemsize > len(payload) - offset:
                raise ValueError(f"array {name!r} of shape {shape} runs past the end of the entry")
            arrays[str(name)] = np.frombuffer(payload, dtype, count, offset).reshape(shape).copy()
            offset += count * dtype.itemsize
        if offset != len(payload):
            raise ValueError(f"{len(payload) - offset} bytes after the arrays")
    except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"cannot be read ({exc})") from None
    return arrays


def _entry_digest(path: Path, payload: bytes) -> bytes:
    digest = hashlib.sha256(path.stem.encode())  # SHA-256: hardware-accelerated, faster than BLAKE2b here
    digest.update(payload)
    return digest.digest()


def content_fingerprint(handle) -> str:
    """SHA-256 of a whole file (an open binary file object), part of the cache key.

    Catches a replacement that keeps the size and modification time (``cp -p``, ``rsync -a``), wherever
    the bytes changed. Hashing the whole file rather than its first and last 64 KiB costs about 5% of
    decoding it and, on the Oxford images, little more than the partial hash (measured:
    benchmarks/results/cache_key.md), so nothing is left uncaught to save time.
    """
    return hashlib.file_digest(handle, "sha256").hexdigest()


def output_signature(extractor, max_size) -> str:
    """Every output-affecting setting of a fitted extractor at one scale (``max_size``): part of the cache key.
    A scale of a multi-scale extractor has the signature of a single-scale extractor of that size.

    Left out: what changes the maps by float rounding only, the same arithmetic in another order (``device``,
    ``batch_size``, ``n_workers``, ``compile``). ``precision`` is in: it changes the arithmetic itself."""
    backbone = extractor.backbone
    if not isinstance(backbone, str):
        backbone = f"{getattr(backbone, '__module__', '')}.{getattr(backbone, '__qualname__', repr(backbone))}"
    return json.dumps(
        {
            "format": CACHE_FORMAT,
            "backbone": backbone,
            "layers": extractor.layers_,
            "weights": extractor.weights_checksum_,
            "max_size": max_size,
            "upscale": extractor.upscale,
            "keypoints": extractor.keypoints,
            "dtype": extractor.dtype,
            "precision": extractor.precision,
            # Only when set, so that the entries of earlier (CPU-decoding) extractors keep their key.
            **({"decode": "device"} if extractor.decode == "device" else {}),
        },
        sort_keys=True,
    )


class MapCache:
    """The cache folder of one extractor's output settings (``signature``), maps of ``dtype`` with or without
    keypoints. A multi-scale extractor looks up each scale under that scale's :func:`output_signature`
    (:meth:`paths_of`). Every method runs in the extractor's worker threads; none raises for a damaged entry."""

    def __init__(self, folder, signature: str, *, dtype: str, keypoints: str | None):
        self.folder = Path(folder)
        self.signature = signature
        self.dtype = np.dtype(dtype)
        self.keypoints = keypoints

    def path_of(self, file, box) -> Path:
        """Where the map of ``file`` (cropped to ``box``) is cached. Opens the file (regular files only, see
        open_regular_file) for its fingerprint, so a bad file raises ImageLoadError here."""
        return self.paths_of(file, box, [self.signature])[0]

    def paths_of(self, file, box, signatures: list) -> list[Path]:
        """:meth:`path_of` under each of ``signatures`` (the scales of one extractor), the file read once."""
        name = os.fspath(file)
        handle, info = open_regular_file(name, name)
        with handle:
            fingerprint = content_fingerprint(handle)
        paths = []
        for signature in signatures:
            key = json.dumps([os.path.abspath(name), info.st_size, info.st_mtime_ns, fingerprint, box, signature])
            digest = hashlib.sha256(key.encode()).hexdigest()
            paths.append(self.folder / digest[:2] / f"{digest}.map")
        return paths

    def read(self, path: Path, source: str):
        """``(map, None)`` for a valid entry, ``(None, None)`` for none, ``(None, reason)`` for a damaged one
        (then deleted)."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            reason = f"unreadable ({exc.strerror or exc})"
        else:
            try:
                return self._decode(path, data, source), None
            except ValueError as exc:
                reason = str(exc)
        try:
            path.unlink()
        except OSError:
            pass  # e.g. a folder in its place: the write reports it
        return None, f"cache entry {path} {reason}"

    def _decode(self, path: Path, data: bytes, source: str) -> ConvMap:
        start = len(_MAGIC) + _DIGEST_SIZE
        if len(data) < start or not data.startswith(_MAGIC):
            raise ValueError("is truncated or not a selconv cache entry")
        payload = data[start:]
        if _entry_digest(path, payload) != data[len(_MAGIC) : start]:
            raise ValueError("failed its checksum (truncated or corrupted)")
        stored = unpack_arrays(payload)  # the checksum matched: only a writer of another layout fails here
        if not {"features", "image_size"} <= set(stored) <= {"features", "image_size", "keypoints"}:
            raise ValueError(f"cannot be read (holds arrays {sorted(stored)})")
        features, image_size, keypoints = stored["features"], stored["image_size"], stored.get("keypoints")
        if (
            features.ndim != 3
            or features.dtype != self.dtype
            or image_size.shape != (2,)
            or (keypoints is None) != (self.keypoints is None)
        ):
            raise ValueError("does not hold a map of this extractor's layout")
        return ConvMap(features, image_size=tuple(int(v) for v in image_size), keypoints=keypoints, source=source)

    @staticmethod
    def write(path: Path, conv_map: ConvMap) -> str | None:
        """Store an entry atomically and durably; return why it failed (a cache failure never stops a run)."""
        arrays = {"features": conv_map.features, "image_size": np.asarray(conv_map.image_size, dtype=np.int64)}
        if conv_map.keypoints is not None:
            arrays["keypoints"] = conv_map.keypoints
        payload = pack_arrays(arrays)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            entry = _MAGIC + _entry_digest(path, payload) + payload
            write_atomically(path, lambda stream: stream.write(entry))
        except OSError as exc:
            return f"cache entry {path} could not be written ({exc.strerror or exc})"
        return None
