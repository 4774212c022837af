"""The photos of a collection: listing and sampling a folder, and encoding image files in bounded memory."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from selconv.index.encoders import CollectionError, split_encoder

#: Conv maps passed at once through the stages after the extractor (bounds memory within a chunk).
_MAPS_PER_BATCH = 32

# Building a network is not thread-safe to do twice at once on one shared extractor (Dask worker threads).
_MODEL_LOCK = threading.Lock()


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


def lenient_reader(extractor, *, progress, settings=None):
    """A copy of a fitted extractor (:meth:`~selconv.extraction.ConvFeatureExtractor.run_with`) that skips
    unreadable files (``on_error="skip"``), shows a progress bar or not and takes the run-time ``settings`` (a dict,
    e.g. ``{"compile": True, "pad_to_multiple": 32}``); it shares the network, and leaves ``extractor`` (the
    encoder that is saved) as it is. The network is built once, whichever thread (Dask's) asks first."""
    with _MODEL_LOCK:
        extractor._get_model()
    return extractor.run_with(**{**(settings or {}), "on_error": "skip", "progress": progress})


def device_head(extractor, rest):
    """The stages after the extractor as its ``head`` on its CUDA device (``TorchEncoder.transform``: the conv maps
    never leave the GPU), or None where the numpy stages run on the host as before: an extractor on the CPU, with
    several scales or keypoints, or stages TorchEncoder does not run (SIFT mask, other embeddings)."""
    from selconv.torch_encoder import TorchEncoder

    if not str(extractor.device_).startswith("cuda") or len(extractor.scales) > 1 or extractor.keypoints is not None:
        return None
    try:
        return TorchEncoder(rest, device=str(extractor.device_)).transform
    except ValueError:  # stages it does not take
        return None


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


def encode_images(encoder, paths, *, on_image=None, settings=None) -> EncodedChunk:
    """Encode image files with a fitted encoder in bounded memory, skipping unreadable files.

    Conv maps are streamed from the extractor (:meth:`~selconv.extraction.ConvFeatureExtractor.iter_extract`)
    and passed through the stages after it ``_MAPS_PER_BATCH`` at a time, so memory holds a few maps and the
    descriptors, not every map. With the extractor on a CUDA device the stages run there as its head
    (``device_head``; the same descriptors to float32 rounding), so the maps never leave the GPU.

    Parameters
    ----------
    encoder : sklearn.pipeline.Pipeline
        Fitted; its first step a :class:`~selconv.extraction.ConvFeatureExtractor`.
    paths : list of str
    on_image : callable or None
        Called with no argument after each image is read or skipped (progress bars).
    settings : dict or None
        Run-time settings of the extractor for this call (see
        :meth:`~selconv.extraction.ConvFeatureExtractor.run_with`), e.g. ``{"compile": True, "pad_to_multiple":
        32}`` on a GPU; the encoder is left as it is.

    Returns
    -------
    EncodedChunk
    """
    extractor, rest = split_encoder(encoder)
    paths = list(paths)
    head = device_head(extractor, rest)
    stream = lenient_reader(extractor, progress=False, settings=settings).iter_extract(paths, head=head)
    finish = np.stack if head is not None else rest.transform  # descriptors of a batch of maps, or of rows
    parts, kept, batch = [], [], []
    for position, item in stream:  # a conv map, or with a head the image's descriptor
        batch.append(item)
        kept.append(os.fspath(paths[position]))
        if on_image is not None:
            on_image()
        if len(batch) == _MAPS_PER_BATCH:
            parts.append(finish(batch))
            batch = []
    if batch:
        parts.append(finish(batch))
    skipped = [(skip.name, skip.reason) for skip in stream.skipped]
    if on_image is not None:
        for _ in skipped:
            on_image()
    descriptors = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)  # (0, 0): nothing was readable
    return EncodedChunk(descriptors=descriptors, paths=kept, skipped=skipped)
