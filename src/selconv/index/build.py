"""Index a photo collection: learn the encoder on a folder, then encode a folder into an :class:`ImageIndex`.

Indexing is built for collections far larger than memory and for runs that get killed. The sorted list of
photos not yet in the index is cut into chunks; each chunk is encoded (here, or as one task on a Dask
cluster) into a *shard*, a ``.npz`` file written atomically into a work folder next to the index and named
after the encoder and the chunk's paths. When every chunk has its shard, the shards are added to the index in
path order, the index is saved (atomically) and the work folder removed. A run killed at any moment
therefore loses at most the chunks being encoded, and its rerun ends with the same index as an uninterrupted
run: a chunk is always the same paths, encoded by the same code in the same batches. A rerun on a folder
with new photos encodes only the new ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "CollectionError",
    "EncodedChunk",
    "FitReport",
    "IndexReport",
    "default_work_dir",
    "encode_images",
    "encoder_fingerprint",
    "fit_encoder",
    "index_folder",
    "list_photos",
    "load_encoder",
    "sample_photos",
    "save_encoder",
]

#: Version of the shard layout; part of every shard's name, so shards of another layout are never reused.
SHARD_FORMAT = 1

#: Conv maps passed at once through the stages after the extractor (bounds memory within a chunk).
_MAPS_PER_BATCH = 32

# Building a network is not thread-safe to do twice at once on one shared extractor (Dask worker threads).
_MODEL_LOCK = threading.Lock()


class CollectionError(ValueError):
    """A photo folder, encoder or index that cannot be used as asked; the message names it."""


# ---------------------------------------------------------------------------------------------- photos


def list_photos(folder) -> list[str]:
    """Absolute paths of every image file under ``folder`` (recursively), sorted.

    Parameters
    ----------
    folder : path-like

    Returns
    -------
    paths : list of str

    Raises
    ------
    CollectionError
        When ``folder`` is not a folder or holds no image file (extensions of
        ``selconv.datasets.base.IMAGE_EXTENSIONS``).
    """
    from selconv.datasets.base import IMAGE_EXTENSIONS, list_images

    folder = Path(folder)
    if not folder.exists():
        raise CollectionError(f"photo folder {folder} does not exist.")
    if not folder.is_dir():
        raise CollectionError(f"{folder} is not a folder.")
    paths = [os.path.abspath(path) for path in list_images(folder)]
    if not paths:
        raise CollectionError(f"no images under {folder} (looked for {', '.join(IMAGE_EXTENSIONS)}).")
    return paths


def sample_photos(paths, n_images, *, random_state=0) -> list:
    """A seeded random subset of ``n_images`` of ``paths``, in their original order (all when fewer)."""
    paths = list(paths)
    if n_images is None or n_images >= len(paths):
        return paths
    keep = np.sort(np.random.default_rng(random_state).choice(len(paths), n_images, replace=False))
    return [paths[i] for i in keep]


# ----------------------------------------------------------------------------------------------- encoder


def _split_encoder(encoder):
    """``(extractor, rest)`` of a fitted pipeline whose first step is a ConvFeatureExtractor."""
    from sklearn.pipeline import Pipeline

    from selconv.extraction import ConvFeatureExtractor

    if (
        not isinstance(encoder, Pipeline)
        or len(encoder.steps) < 2
        or not isinstance(encoder.steps[0][1], ConvFeatureExtractor)
    ):
        raise CollectionError(
            "to encode image files the encoder must be a fitted selconv Pipeline whose first step is a "
            "ConvFeatureExtractor (what `selconv fit` and fit_encoder make); got "
            f"{type(encoder).__name__}."
        )
    return encoder.steps[0][1], encoder[1:]


def encoder_fingerprint(encoder) -> str:
    """SHA-256 of what determines an encoder's output, and of nothing else.

    The extractor contributes its output signature (backbone, layers, weights checksum, image size,
    keypoints, dtypes); every later stage its class, parameters and fitted attributes (public names ending
    in ``_``; private caches derived from them are left out). Run-time settings (device, worker threads,
    progress bars) do not count, so the same encoder saved, loaded or moved to a GPU machine keeps its
    fingerprint.
    """
    from sklearn.utils.validation import check_is_fitted

    extractor, rest = _split_encoder(encoder)
    check_is_fitted(extractor, "weights_checksum_")
    digest = hashlib.sha256(extractor._output_signature().encode())
    for name, step in rest.steps:
        digest.update(f"step {name} {type(step).__module__}.{type(step).__qualname__}".encode())
        _digest_value(digest, step.get_params(deep=False))
        _digest_value(
            digest, {key: value for key, value in vars(step).items() if key.endswith("_") and not key.startswith("_")}
        )
    return digest.hexdigest()


def _digest_value(digest, value) -> None:
    """Feed ``value`` (arrays, scalars, containers, estimators) into ``digest`` in a canonical form."""
    from sklearn.base import BaseEstimator

    if isinstance(value, np.ndarray) and value.dtype != object:
        digest.update(f"array {value.dtype.str} {value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, np.ndarray):
        _digest_value(digest, value.tolist())
    elif isinstance(value, dict):
        digest.update(f"dict {len(value)}".encode())
        for key in sorted(value, key=repr):
            _digest_value(digest, key)
            _digest_value(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__} {len(value)}".encode())
        for item in value:
            _digest_value(digest, item)
    elif isinstance(value, BaseEstimator):
        digest.update(f"estimator {type(value).__qualname__}".encode())
        _digest_value(digest, value.get_params(deep=False))
        _digest_value(digest, {k: v for k, v in vars(value).items() if k.endswith("_") and not k.startswith("_")})
    elif isinstance(value, np.random.RandomState):
        _digest_value(digest, value.get_state())
    elif value is None or isinstance(value, (bool, int, float, str, np.generic)):
        digest.update(f"{type(value).__name__} {value!r}".encode())
    else:
        raise TypeError(f"cannot fingerprint a {type(value).__name__} in an encoder.")


def save_encoder(encoder, path) -> Path:
    """Save a fitted encoder to one file that loads without running code; written atomically.

    The format is the one :class:`ImageIndex` stores its encoder in: :mod:`skops.io`, refusing any type
    outside selconv's trusted list (:func:`selconv.index.trusted_types`).

    Parameters
    ----------
    encoder : sklearn.pipeline.Pipeline
    path : path-like

    Returns
    -------
    path : Path
    """
    from selconv.index._persistence import encoder_to_bytes

    path = Path(path)
    data = encoder_to_bytes(encoder)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, lambda stream: stream.write(data))
    return path


def load_encoder(path):
    """Load an encoder written by :func:`save_encoder` (or ``selconv fit``), trusting only selconv's types.

    Raises
    ------
    CollectionError
        When ``path`` is missing, is not such a file, or holds a type outside the trusted list.
    """
    from selconv.index._persistence import IndexFormatError, encoder_from_file

    path = Path(path)
    if not path.is_file():
        raise CollectionError(f"encoder file {path} does not exist.")
    try:
        return encoder_from_file(path)
    except IndexFormatError as error:
        raise CollectionError(f"cannot load the encoder: {error}") from error


def _skipping_copy(extractor):
    """A shallow copy of a fitted extractor that skips unreadable files quietly; it shares the network.

    ``copy.copy`` would go through ``__getstate__``, which drops the network on purpose (pickles stay small),
    and every chunk would then build it again. Each call gets its own copy, so concurrent calls (threads of
    one Dask worker) never share ``skipped_``.
    """
    with _MODEL_LOCK:
        extractor._get_model()
    copy = object.__new__(type(extractor))
    copy.__dict__.update(extractor.__dict__)
    copy.on_error, copy.progress = "skip", False
    return copy


@dataclass
class EncodedChunk:
    """The outcome of encoding a list of image files.

    Attributes
    ----------
    descriptors : ndarray of shape (n_read, D) float32, or (n_read, n_bytes) uint8 packed codes
    paths : list of str
        The files read, in input order (one per row of ``descriptors``).
    skipped : list of (str, str)
        ``(path, reason)`` of the files that could not be read.
    """

    descriptors: np.ndarray
    paths: list
    skipped: list = field(default_factory=list)


def encode_images(encoder, paths, *, on_image=None) -> EncodedChunk:
    """Encode image files with a fitted encoder in bounded memory, skipping unreadable files.

    Conv maps are streamed from the extractor and passed through the stages after it
    ``_MAPS_PER_BATCH`` at a time, so memory holds a few maps and the descriptors, not every map.

    Parameters
    ----------
    encoder : sklearn.pipeline.Pipeline
        Fitted; its first step a :class:`~selconv.extraction.ConvFeatureExtractor`.
    paths : list of str
    on_image : callable or None
        Called with no argument after each image is read or skipped (progress bars).

    Returns
    -------
    EncodedChunk
    """
    from selconv.extraction.extractor import ImageSkippedWarning

    extractor, rest = _split_encoder(encoder)
    reader = _skipping_copy(extractor)
    parts, kept, batch = [], [], []

    def flush():
        parts.append(rest.transform(batch))
        kept.extend(conv_map.source for conv_map in batch)
        batch.clear()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImageSkippedWarning)  # reported per file in ``skipped``
        for conv_map in reader.iter_transform(list(paths)):
            batch.append(conv_map)
            if on_image is not None:
                on_image()
            if len(batch) == _MAPS_PER_BATCH:
                flush()
        if batch:
            flush()
    skipped = [(name, reason) for _, name, reason in reader.skipped_]
    if on_image is not None:
        for _ in skipped:
            on_image()
    descriptors = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)  # (0, 0): nothing was readable
    return EncodedChunk(descriptors=descriptors, paths=kept, skipped=skipped)


# ----------------------------------------------------------------------------------------------- fitting


@dataclass
class FitReport:
    """What :func:`fit_encoder` learned on.

    Attributes
    ----------
    encoder : sklearn.pipeline.Pipeline
        The fitted encoder: image files -> descriptors (or packed codes).
    n_images : int
        Images learned on (readable ones).
    dimension : int
        Output dimension D of the real-valued descriptors (before ITQ, if any).
    n_bits : int or None
        Code length when the encoder ends in ITQ.
    skipped : list of (str, str)
        Unreadable files, with the reason.
    warnings : list of str
        What the user should know about the fit: fewer images than dimensions, then the stages' own
        warnings (e.g. too few local features for the embedding's whitening).
    seconds : float
    """

    encoder: object
    n_images: int
    dimension: int
    n_bits: int | None
    skipped: list
    warnings: list
    seconds: float


def fit_encoder(
    images,
    *,
    preset: int = 512,
    mask: str = "max",
    n_bits: int | None = None,
    max_size: int | None = 1024,
    device: str = "auto",
    random_state=0,
    extractor=None,
    progress: bool = True,
) -> FitReport:
    """Learn the paper's preset (VGG16 pool5 -> mask -> Temb -> democratic -> RN -> PN [-> ITQ]) on images.

    Parameters
    ----------
    images : list of path
        The learning images (e.g. :func:`sample_photos` of :func:`list_photos`).
    preset : {512, 1024, 2048, 4096, 8064}, default=512
        Final dimension D (paper Table 4).
    mask : {"max", "sum", "sift", "none"}, default="max"
    n_bits : int or None, default=None
        End with ITQ codes of this many bits (a multiple of 8, at most D and the number of images).
    max_size : int or None, default=1024
        Longest image side for the CNN (paper: 1024).
    device : str, default="auto"
    random_state : int, default=0
        Seeds every random stage.
    extractor : ConvFeatureExtractor or None
        Use this (unfitted) extractor instead of VGG16 pool5 at ``max_size`` on ``device``.
    progress : bool, default=True
        Show a progress bar while the conv maps are computed.

    Returns
    -------
    FitReport

    Raises
    ------
    CollectionError
        Bad ``n_bits``, or too few readable images.
    """
    from selconv.extraction import ConvFeatureExtractor
    from selconv.extraction.extractor import ImageSkippedWarning
    from selconv.pipelines import make_paper_pipeline, paper_dimension, rotation_settings

    images = [os.fspath(image) for image in images]
    dimension = paper_dimension(preset)
    if n_bits is not None:
        if n_bits <= 0 or n_bits % 8:
            raise CollectionError(f"bits must be a positive multiple of 8 (codes are packed in bytes); got {n_bits}.")
        if n_bits >= len(images) or n_bits > dimension:
            raise CollectionError(
                f"ITQ learns fewer bits than it has images ({len(images)}) and at most as many as dimensions "
                f"({dimension}); got {n_bits} bits."
            )
    if extractor is None:
        extractor = ConvFeatureExtractor(max_size=max_size, device=device, keypoints="sift" if mask == "sift" else None)
    started = time.perf_counter()
    extractor.fit().set_params(progress=progress, on_error="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImageSkippedWarning)  # reported in the FitReport
        maps = extractor.transform(images)
    skipped = [(name, reason) for _, name, reason in extractor.skipped_]
    extractor.set_params(progress=None, on_error="raise")  # the saved encoder: quiet, and loud on bad queries
    extractor.skipped_ = []
    if len(maps) < 2:
        raise CollectionError(f"need at least 2 readable images to learn from; {len(maps)} of {len(images)} were.")
    if n_bits is not None and n_bits >= len(maps):
        raise CollectionError(
            f"only {len(maps)} of the {len(images)} images could be read: too few for {n_bits}-bit ITQ "
            "(it learns fewer bits than it has images)."
        )
    # Too few images for the rotation: skip it (rotation_settings says why) rather than complete it arbitrarily.
    rotation, note = rotation_settings(len(maps), preset)
    notes = [] if note is None else [note]
    if rotation["undetermined"] == "center":
        dimension = paper_dimension(preset, fit_on="database")
    encoder = make_paper_pipeline(
        preset, mask=mask, n_bits=n_bits, extractor=extractor, random_state=random_state, **rotation
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        encoder[1:].fit(maps)  # the slice shares its steps with ``encoder``: this fits them in place
    notes += list(dict.fromkeys(str(w.message) for w in caught))  # the stages' own warnings, once each
    return FitReport(
        encoder=encoder,
        n_images=len(maps),
        dimension=dimension,
        n_bits=n_bits,
        skipped=skipped,
        warnings=notes,
        seconds=time.perf_counter() - started,
    )


# ---------------------------------------------------------------------------------------------- indexing


@dataclass
class IndexReport:
    """What :func:`index_folder` did.

    Attributes
    ----------
    index : ImageIndex
        The saved index.
    path : Path
        Its folder.
    n_found : int
        Images found under the folder.
    n_already : int
        Of those, already in the index before this run.
    n_added : int
        Images added by this run.
    n_chunks : int
        Chunks the new images were cut into.
    n_resumed : int
        Chunks whose shard an interrupted run had already written.
    skipped : list of (str, str)
        Unreadable files (path, reason): not indexed, tried again on the next run.
    seconds : float
    """

    index: object
    path: Path
    n_found: int
    n_already: int
    n_added: int
    n_chunks: int
    n_resumed: int
    skipped: list
    seconds: float


def default_work_dir(out) -> Path:
    """Where :func:`index_folder` keeps the shards of an index being built: ``OUT.shards`` next to it."""
    out = Path(out)
    return out.with_name(out.name + ".shards")


def index_folder(
    folder,
    encoder,
    out,
    *,
    chunk_size: int = 256,
    client=None,
    work_dir=None,
    kind: str = "flat",
    index_params=None,
    progress: bool = True,
) -> IndexReport:
    """Encode every image under ``folder`` not yet in the index at ``out`` and save the index there.

    Parameters
    ----------
    folder : path-like
        Walked recursively; files with an image extension are indexed, unreadable ones reported.
    encoder : sklearn.pipeline.Pipeline
        Fitted, starting with a ConvFeatureExtractor (see :func:`fit_encoder`). When ``out`` already holds
        an index, it must have been built with this encoder (same :func:`encoder_fingerprint`).
    out : path-like
        The index folder (:meth:`~selconv.index.ImageIndex.save` layout); created, or extended with the new images.
    chunk_size : int, default=256
        Images per shard: the most a killed run loses, and the unit of work of a Dask task.
    client : dask.distributed.Client or None
        Encode the chunks on this cluster: the encoder is scattered once to every worker, each chunk is
        a task (retried elsewhere when its worker dies) and the shards come back here. None: this process.
    work_dir : path-like or None
        Where shards are kept until the index is saved (default: :func:`default_work_dir` of ``out``).
    kind, index_params
        The faiss index of a NEW index (see :class:`ImageIndex`); an approximate kind that needs training
        is trained on all the images of this run. Ignored when ``out`` exists (its own kind is kept).
    progress : bool, default=True
        Progress bar (images/s and time left) on stderr.

    Returns
    -------
    IndexReport

    Raises
    ------
    CollectionError
        Missing folder, no images, or an existing index built with another encoder.
    """
    from tqdm import tqdm

    if not isinstance(chunk_size, int) or chunk_size <= 0:
        raise CollectionError(f"chunk_size must be a positive integer; got {chunk_size!r}.")
    started = time.perf_counter()
    out = Path(out)
    photos = list_photos(folder)
    fingerprint = encoder_fingerprint(encoder)
    index = _open_index(out, encoder, fingerprint, kind=kind, index_params=index_params)
    known = set(index.paths)
    new = [path for path in photos if path not in known]
    chunks = [new[i : i + chunk_size] for i in range(0, len(new), chunk_size)]
    work_dir = Path(work_dir) if work_dir is not None else default_work_dir(out)
    keys = [_chunk_key(fingerprint, chunk) for chunk in chunks]
    shard_paths = [work_dir / f"{key}.npz" for key in keys]
    shards = {i: shard for i, path in enumerate(shard_paths) if (shard := _read_shard(path, chunks[i])) is not None}
    n_resumed = len(shards)
    todo = [i for i in range(len(chunks)) if i not in shards]
    if todo:
        work_dir.mkdir(parents=True, exist_ok=True)

    def keep(i, chunk_result):
        _write_shard(shard_paths[i], chunks[i], chunk_result)
        shards[i] = chunk_result

    total = sum(len(chunks[i]) for i in todo)
    with tqdm(total=total, unit="img", desc="encoding", disable=not progress or not total, smoothing=0.1) as bar:
        if client is None:
            for i in todo:
                keep(i, encode_images(encoder, chunks[i], on_image=lambda: bar.update(1)))
        else:
            _encode_on_cluster(client, encoder, {keys[i]: (i, chunks[i]) for i in todo}, keep, bar)

    encoded = [shards[i] for i in range(len(chunks))]
    skipped = [item for chunk_result in encoded for item in chunk_result.skipped]
    readable = [chunk_result for chunk_result in encoded if chunk_result.paths]
    if readable and not index.is_trained:  # a new approximate index learns its cells/codebooks on this run's images
        index.train(np.concatenate([chunk_result.descriptors for chunk_result in readable]))
    for chunk_result in readable:
        index.add_descriptors(chunk_result.descriptors, paths=chunk_result.paths)
    n_added = sum(len(chunk_result.paths) for chunk_result in readable)
    if n_added or not out.exists():
        index.save(out)
    if work_dir.exists():
        shutil.rmtree(work_dir)
    return IndexReport(
        index=index,
        path=out,
        n_found=len(photos),
        n_already=len(photos) - len(new),
        n_added=n_added,
        n_chunks=len(chunks),
        n_resumed=n_resumed,
        skipped=skipped,
        seconds=time.perf_counter() - started,
    )


def _open_index(out: Path, encoder, fingerprint: str, **new):
    """The index saved at ``out`` (checked to use ``encoder``), or a new empty one with ``encoder``."""
    from selconv.index import ImageIndex

    if not out.exists():
        return ImageIndex(encoder, **new)
    index = ImageIndex.load(out)
    if index.encoder is None:
        raise CollectionError(
            f"the index {out} was built from descriptors without an encoder: cannot tell whether this encoder "
            "made them; index into a new folder."
        )
    if encoder_fingerprint(index.encoder) != fingerprint:
        raise CollectionError(
            f"the index {out} was built with another encoder than the one given; index into a new folder, or "
            "pass the encoder it was built with."
        )
    return index


#: Times a chunk that Dask cancelled (not merely rescheduled) is submitted again before the run fails.
CLUSTER_RETRIES = 3


def _encode_on_cluster(client, encoder, chunks: dict, keep, bar) -> None:
    """Encode ``chunks`` ({shard key: (number, paths)}) as Dask tasks; ``keep(number, EncodedChunk)`` each result.

    The encoder is scattered once to every worker (its network is built there on first use). A task whose
    worker dies is rescheduled by Dask on another worker; a task Dask cancels instead (it can forget one whose
    scattered encoder went with a dying worker: "already forgotten") is submitted again, with the encoder
    scattered again, up to ``CLUSTER_RETRIES`` times per chunk. At most two tasks per worker thread are in
    flight, so results never pile up on the cluster.
    """
    from dask.distributed import as_completed
    from distributed.client import FutureCancelledError

    remote_encoder = client.scatter(encoder, broadcast=True, hash=False)
    pending = list(chunks)[::-1]
    threads = sum(client.nthreads().values()) or 1
    attempts: dict[str, int] = {}
    chunk_of: dict[str, str] = {}  # task key -> shard key

    def submit(key):
        attempts[key] = attempts.get(key, 0) + 1
        task = f"selconv-encode-{key}" + ("" if attempts[key] == 1 else f"-retry{attempts[key] - 1}")
        chunk_of[task] = key
        return client.submit(encode_images, remote_encoder, chunks[key][1], key=task)

    running = as_completed([submit(pending.pop()) for _ in range(min(len(pending), 2 * threads))])
    for future in running:
        key = chunk_of.pop(future.key)
        number, paths = chunks[key]
        try:
            result = future.result()
        except FutureCancelledError:
            if attempts[key] > CLUSTER_RETRIES:
                raise
            remote_encoder = client.scatter(encoder, broadcast=True, hash=False)
            running.add(submit(key))
            continue
        keep(number, result)
        bar.update(len(paths))
        future.release()
        if pending:
            running.add(submit(pending.pop()))


def _chunk_key(fingerprint: str, paths) -> str:
    text = json.dumps({"format": SHARD_FORMAT, "encoder": fingerprint, "paths": list(paths)})
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _write_shard(path: Path, chunk, result: EncodedChunk) -> None:
    arrays = {
        "chunk": np.asarray(chunk, dtype=str),
        "descriptors": result.descriptors,
        "paths": np.asarray(result.paths, dtype=str),
        "skipped": np.asarray([p for p, _ in result.skipped], dtype=str),
        "reasons": np.asarray([r for _, r in result.skipped], dtype=str),
    }
    _write_atomically(path, lambda stream: np.savez(stream, **arrays))


def _write_atomically(path: Path, write) -> None:
    """``write(stream)`` into a temporary file next to ``path``, fsync, rename: readers see all of it or nothing."""
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


def _read_shard(path: Path, chunk) -> EncodedChunk | None:
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
