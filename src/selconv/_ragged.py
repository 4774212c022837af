"""Validation of ragged input: lists with one array (or conv map) per image.

Every stage whose input is not one 2-D array calls these helpers instead of ``check_array`` /
``validate_data`` (which would reject ragged input or set ``n_features_in_`` wrongly).
A plain list passes through scikit-learn's indexing, cross-validation, pickle and joblib unchanged.
"""

from __future__ import annotations

import numpy as np

from selconv.conv_map import ConvMap, MultiScaleConvMap, scale_maps

_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _as_list(X, *, what: str, estimator) -> list:
    name = type(estimator).__name__
    if isinstance(X, np.ndarray) and X.dtype != object:
        raise TypeError(
            f"{name} expects a list with one {what} per image; got a single ndarray of shape {X.shape}. "
            f"Pass a list (one entry per image), e.g. [X] for a single image."
        )
    if isinstance(X, (str, bytes)) or not hasattr(X, "__len__") or not hasattr(X, "__iter__"):
        raise TypeError(f"{name} expects a list with one {what} per image; got {type(X).__name__}.")
    items = list(X)
    if len(items) == 0:
        raise ValueError(f"{name} got an empty list: at least one image is required.")
    return items


def _as_array(item, where: str) -> np.ndarray:
    """``np.asarray(item)``, with a message naming the image when ``item`` is ragged or not array-like."""
    try:
        return np.asarray(item)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{where} is not a rectangular array ({error}).") from None


def _set_or_check_n_features(estimator, n_features: int, *, reset: bool) -> None:
    if reset:
        estimator.n_features_in_ = n_features
        return
    expected = getattr(estimator, "n_features_in_", None)
    if expected is not None and n_features != expected:
        raise ValueError(
            f"X has {n_features} features per local descriptor, but {type(estimator).__name__} "
            f"was fitted with {expected}."
        )


def check_local_sets(X, *, estimator, reset: bool, dtype=np.float32) -> list[np.ndarray]:
    """Validate a list of per-image local feature sets.

    Parameters
    ----------
    X : list of array-like of shape (n_local_i, n_features)
        One set per image; ``n_local_i`` may differ between images and may be 0.
    estimator : estimator
        The caller; named in error messages, and its ``n_features_in_`` is set or checked.
    reset : bool
        True in ``fit`` (sets ``n_features_in_``), False in ``transform`` (checks it).
    dtype : numpy dtype
        Dtype of the returned arrays (copies are made only where needed).

    Returns
    -------
    sets : list of ndarray of shape (n_local_i, n_features)
    """
    items = _as_list(X, what="(n_local, n_features) array", estimator=estimator)
    name = type(estimator).__name__
    sets = []
    n_features = None
    for index, item in enumerate(items):
        array = _as_array(item, f"{name}: image {index}")
        if array.ndim != 2:
            raise ValueError(
                f"{name}: image {index} must be a 2-D array (n_local, n_features); got shape {array.shape}."
            )
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) or np.iscomplexobj(array):
            raise TypeError(f"{name}: image {index} has dtype {array.dtype}; expected real numbers.")
        if n_features is None:
            n_features = array.shape[1]
        elif array.shape[1] != n_features:
            raise ValueError(
                f"{name}: image {index} has {array.shape[1]} features per local descriptor; "
                f"earlier images have {n_features}."
            )
        with np.errstate(over="ignore"):
            converted = np.ascontiguousarray(array, dtype=dtype)
        if not np.isfinite(converted).all():
            overflowed = not np.issubdtype(array.dtype, np.floating) or np.isfinite(array).all()
            beyond = f" (values beyond the {np.dtype(dtype).name} range)" if overflowed else ""
            raise ValueError(f"{name}: image {index} contains NaN or infinity{beyond}.")
        sets.append(converted)
    if n_features == 0:
        raise ValueError(f"{name}: local descriptors have 0 features.")
    _set_or_check_n_features(estimator, n_features, reset=reset)
    return sets


def check_conv_maps(X, *, estimator, reset: bool, multiscale: bool = True) -> list:
    """Validate a list of conv maps (``ConvMap``, ``MultiScaleConvMap`` or 3-D arrays of shape (K, H, W)).

    Plain arrays are wrapped in a ``ConvMap`` whose image size is the grid size (enough for every
    mask except ``SiftMask``, which needs keypoints in image coordinates). Every scale of a
    ``MultiScaleConvMap`` is checked like a ``ConvMap``; ``multiscale=False`` refuses them (stages that
    take one grid per image).
    """
    items = _as_list(X, what="conv map (ConvMap or (K, H, W) array)", estimator=estimator)
    name = type(estimator).__name__
    maps = []
    n_channels = None
    for index, item in enumerate(items):
        if isinstance(item, MultiScaleConvMap) and not multiscale:
            raise ValueError(
                f"{name} takes one conv map per image; conv map {index} is a MultiScaleConvMap "
                f"({len(item.maps)} scales). Extract with ConvFeatureExtractor(scales=(1.0,)) for {name}."
            )
        if not isinstance(item, (ConvMap, MultiScaleConvMap)):
            array = _as_array(item, f"{name}: conv map {index}")
            if array.ndim != 3:
                raise ValueError(
                    f"{name}: conv map {index} must have shape (n_channels, height, width); got {array.shape}."
                )
            # The grid stands in for the image; an empty grid (no local feature) still needs a valid size.
            item = ConvMap(array, image_size=(max(array.shape[2], 1), max(array.shape[1], 1)))
        for scale, conv_map in enumerate(scale_maps(item)):
            where = f" ({item.source})" if item.source else ""
            if isinstance(item, MultiScaleConvMap):
                where += f" at scale {item.scales[scale]:g}"
            _check_one_map(conv_map, f"{name}: conv map {index}{where}")
            if n_channels is None:
                n_channels = conv_map.n_channels
            elif conv_map.n_channels != n_channels:
                raise ValueError(
                    f"{name}: conv map {index}{where} has {conv_map.n_channels} channels; "
                    f"earlier maps have {n_channels}."
                )
        maps.append(item)
    _set_or_check_n_features(estimator, n_channels, reset=reset)
    return maps


def _check_one_map(conv_map: ConvMap, what: str) -> None:
    if not np.issubdtype(conv_map.features.dtype, np.floating):
        raise TypeError(f"{what} has non-float dtype {conv_map.features.dtype}.")
    if conv_map.n_channels == 0:
        raise ValueError(f"{what} has 0 channels; a conv map needs at least one.")
    if not np.isfinite(conv_map.features).all():
        raise ValueError(f"{what} contains NaN or infinity.")
    features = conv_map.features
    if features.dtype.itemsize > 4 and features.size and np.abs(features).max() > _FLOAT32_MAX:
        raise ValueError(f"{what} has values beyond the float32 range (3.4e38) that the masks and poolings compute in.")


def batched(iterable, size: int):
    """Lists of ``size`` consecutive items of ``iterable`` (the last may be shorter): ``itertools.batched``
    of Python 3.12, for streaming images (e.g. ``ConvFeatureExtractor.iter_transform``) through a pipeline."""
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def image_blocks(counts: np.ndarray, block_rows: int):
    """Consecutive ranges [start, stop) of images with about ``block_rows`` rows each (at least one image)."""
    start = 0
    while start < len(counts):
        stop = start + 1
        rows = counts[start]
        while stop < len(counts) and rows + counts[stop] <= block_rows:
            rows += counts[stop]
            stop += 1
        yield start, stop
        start = stop
