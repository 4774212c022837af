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

import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from selconv.index._cluster import encode_on_cluster
from selconv.index._shards import chunk_key, read_shard, write_shard
from selconv.index.encoders import CollectionError, encoder_fingerprint, load_encoder, save_encoder
from selconv.index.photos import EncodedChunk, encode_images, lenient_reader, list_photos, sample_photos

# This module is the public face of building an index: the names of its helper modules are listed here.
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
    precision: str = "float32",
    decode: str = "cpu",
    random_state=0,
    extractor=None,
    settings=None,
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
    precision : {"float32", "tf32", "float16", "bfloat16"}, default="float32"
        The network's arithmetic (:class:`~selconv.extraction.ConvFeatureExtractor`; the paper's is float32).
        Saved with the encoder: the images it indexes and the queries it searches with run in it too.
    decode : {"cpu", "device"}, default="cpu"
        Where JPEG files are decoded (``"device"``: nvJPEG on a GPU, pixels slightly different); saved too.
    random_state : int, default=0
        Seeds every random stage.
    extractor : ConvFeatureExtractor or None
        Use this (unfitted) extractor instead of VGG16 pool5 at ``max_size`` on ``device`` in ``precision``
        with ``decode``.
    settings : dict or None
        Run-time settings of the extractor for this fit's extraction only (see
        :meth:`~selconv.extraction.ConvFeatureExtractor.run_with`), e.g. ``{"compile": True, "pad_to_multiple":
        32}`` on a GPU; the saved encoder keeps its own.
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
    # Long only by its docstring (a public function's parameters); the body is about 30 lines.
    from selconv.extraction import ConvFeatureExtractor
    from selconv.pipelines import make_paper_pipeline, paper_dimension, rotation_settings

    images = [os.fspath(image) for image in images]
    dimension = paper_dimension(preset)
    _check_bits(n_bits, len(images), dimension)
    if extractor is None:
        extractor = ConvFeatureExtractor(
            max_size=max_size,
            device=device,
            precision=precision,
            decode=decode,
            keypoints="sift" if mask == "sift" else None,
        )
    started = time.perf_counter()
    extractor.fit().set_params(progress=None, on_error="raise")  # the saved encoder: quiet, and loud on bad queries
    # The learning set: bad files skipped.
    extraction = lenient_reader(extractor, progress=progress, settings=settings).extract(images)
    maps = extraction.maps
    _check_readable(len(maps), len(images), n_bits)
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
        skipped=[(skip.name, skip.reason) for skip in extraction.skipped],
        warnings=notes,
        seconds=time.perf_counter() - started,
    )


def _check_bits(n_bits, n_images: int, dimension: int) -> None:
    """ITQ codes: the hashers' rule on a code length (whole bytes) and evaluation's on what ITQ can learn."""
    from selconv.evaluation import itq_bits_problem
    from selconv.hashing._base import check_packable

    if n_bits is None:
        return
    if n_bits <= 0:
        raise CollectionError(f"bits must be positive; got {n_bits}.")
    try:
        check_packable(n_bits, "bits")
    except ValueError as error:
        raise CollectionError(str(error)) from None
    problem = itq_bits_problem(n_bits, n_images, dimension)
    if problem:
        raise CollectionError(f"{problem}.")


def _check_readable(n_maps: int, n_images: int, n_bits) -> None:
    if n_maps < 2:
        raise CollectionError(f"need at least 2 readable images to learn from; {n_maps} of {n_images} were.")
    if n_bits is not None and n_bits >= n_maps:
        raise CollectionError(
            f"only {n_maps} of the {n_images} images could be read: too few for {n_bits}-bit ITQ "
            "(it learns fewer bits than it has images)."
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
    settings=None,
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
    settings : dict or None
        Run-time settings of the encoder's extractor for this run (see
        :meth:`~selconv.extraction.ConvFeatureExtractor.run_with`), e.g. ``{"compile": True, "pad_to_multiple":
        32, "batch_size": 32}`` for a large collection on a GPU. They change the descriptors by float rounding at
        most, so a run may resume shards written with other settings; the encoder saved in the index keeps its own.
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
    # Long only by its docstring (a public function's parameters); the body is about 30 lines.
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
    encoded, n_resumed = _encode_chunks(
        chunks, encoder, fingerprint, work_dir, client=client, settings=settings, progress=progress
    )
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
        skipped=[item for chunk_result in encoded for item in chunk_result.skipped],
        seconds=time.perf_counter() - started,
    )


def _encode_chunks(chunks, encoder, fingerprint: str, work_dir: Path, *, client, settings, progress: bool):
    """Every chunk's EncodedChunk, in order, read from its shard when an earlier run wrote it, else encoded (here
    or on ``client``) and written as a shard; and how many were read from shards."""
    from tqdm import tqdm

    keys = [chunk_key(fingerprint, chunk) for chunk in chunks]
    shard_paths = [work_dir / f"{key}.npz" for key in keys]
    shards = {i: shard for i, path in enumerate(shard_paths) if (shard := read_shard(path, chunks[i])) is not None}
    n_resumed = len(shards)
    todo = [i for i in range(len(chunks)) if i not in shards]
    if todo:
        work_dir.mkdir(parents=True, exist_ok=True)

    def keep(i, chunk_result):
        write_shard(shard_paths[i], chunks[i], chunk_result)
        shards[i] = chunk_result

    total = sum(len(chunks[i]) for i in todo)
    with tqdm(total=total, unit="img", desc="encoding", disable=not progress or not total, smoothing=0.1) as bar:
        if client is None:
            for i in todo:
                keep(i, encode_images(encoder, chunks[i], on_image=lambda: bar.update(1), settings=settings))
        else:
            encode_on_cluster(client, encoder, {keys[i]: (i, chunks[i]) for i in todo}, keep, bar, settings=settings)
    return [shards[i] for i in range(len(chunks))], n_resumed


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
