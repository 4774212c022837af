"""The encoder of a photo collection: a fitted pipeline starting with a ConvFeatureExtractor, its fingerprint and
its file (skops, loaded without running code)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from selconv._atomic import write_atomically


class CollectionError(ValueError):
    """A photo folder, encoder or index that cannot be used as asked; the message names it."""


def split_encoder(encoder):
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

    extractor, rest = split_encoder(encoder)
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
    write_atomically(path, lambda stream: stream.write(data))
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
