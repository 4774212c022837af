"""The conv map of one image (at one or several scales): what ConvFeatureExtractor produces and masks consume."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ConvMap", "MultiScaleConvMap"]


@dataclass(frozen=True, eq=False)
class ConvMap:
    """Feature map of one image at one CNN layer (or several, concatenated as hypercolumns).

    Parameters
    ----------
    features : ndarray of shape (n_channels, height, width)
        Activations, float32 (or float16 when asked for). Axis order follows PyTorch: K x H x W.
    image_size : tuple of int
        ``(width, height)`` in pixels of the (resized, possibly cropped) image the CNN saw.
        Needed to map keypoints from image to grid coordinates.
    keypoints : ndarray of shape (n_keypoints, 2) or None
        ``(x, y)`` positions, in pixels of that same image, of local keypoints (OpenCV SIFT when
        the extractor runs with ``keypoints="sift"``). ``None`` means none were detected/asked for;
        an empty ``(0, 2)`` array means detection ran and found nothing.
    source : str or None
        Where the image came from (a file path, usually); used in error messages and reports.
    """

    features: np.ndarray
    image_size: tuple[int, int]
    keypoints: np.ndarray | None = None
    source: str | None = None

    def __post_init__(self):
        features = np.asarray(self.features)
        if features.ndim != 3:
            raise ValueError(
                f"ConvMap.features must have shape (n_channels, height, width); got shape {features.shape}"
                + (f" for {self.source}" if self.source else "")
            )
        object.__setattr__(self, "features", features)
        where = f" for {self.source}" if self.source else ""
        try:
            width, height = (int(v) for v in self.image_size)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(
                f"ConvMap.image_size must be two positive integers (width, height); got {self.image_size!r}{where}"
            ) from None
        if width <= 0 or height <= 0:
            raise ValueError(f"ConvMap.image_size must be positive (width, height); got {self.image_size}{where}")
        object.__setattr__(self, "image_size", (width, height))
        if self.keypoints is not None:
            try:
                keypoints = np.asarray(self.keypoints, dtype=np.float32)
            except (TypeError, ValueError) as error:
                raise ValueError(f"ConvMap.keypoints must be an (n, 2) array of (x, y){where}: {error}") from None
            if keypoints.size % 2 or (keypoints.ndim > 1 and keypoints.shape[-1] != 2):
                raise ValueError(f"ConvMap.keypoints must have shape (n_keypoints, 2); got {keypoints.shape}{where}")
            keypoints = keypoints.reshape(-1, 2)
            if not np.isfinite(keypoints).all():
                bad = np.flatnonzero(~np.isfinite(keypoints).all(axis=1))
                raise ValueError(f"ConvMap.keypoints contain NaN or infinity (keypoints {bad[:10].tolist()}){where}")
            object.__setattr__(self, "keypoints", keypoints)

    @property
    def n_channels(self) -> int:
        return self.features.shape[0]

    @property
    def grid_size(self) -> tuple[int, int]:
        """``(width, height)`` of the feature grid."""
        return self.features.shape[2], self.features.shape[1]

    def local_features(self) -> np.ndarray:
        """All H*W local features as an (H*W, K) array, row-major over (y, x)."""
        n_channels = self.features.shape[0]
        return self.features.reshape(n_channels, -1).T


@dataclass(frozen=True, eq=False)
class MultiScaleConvMap:
    """Conv maps of one image at several image scales (``ConvFeatureExtractor(scales=...)``).

    Masks keep each scale's local features by their own rule and concatenate them into the image's one
    local feature set; global poolings pool each scale and combine the per-scale descriptors
    (their ``scale_pooling`` parameter). See docs/how-it-works.md, "Multi-scale".

    Parameters
    ----------
    maps : tuple of ConvMap
        One map per scale, in the order of ``scales``; each has its own ``image_size`` (and keypoints,
        when asked for) at that scale. All have the same number of channels.
    scales : tuple of float
        The relative scale of each map: its image's longest side is ``scale * max_size`` of the extractor.
    source : str or None
        Where the image came from (a file path, usually); used in error messages and reports.
    """

    maps: tuple
    scales: tuple
    source: str | None = None

    def __post_init__(self):
        where = f" for {self.source}" if self.source else ""
        maps = tuple(self.maps)
        if not maps or not all(isinstance(m, ConvMap) for m in maps):
            raise ValueError(f"MultiScaleConvMap.maps must be a non-empty tuple of ConvMap{where}.")
        try:
            scales = tuple(float(s) for s in self.scales)
        except (TypeError, ValueError):
            raise ValueError(f"MultiScaleConvMap.scales must be numbers; got {self.scales!r}{where}") from None
        if len(scales) != len(maps) or not all(np.isfinite(s) and s > 0 for s in scales):
            raise ValueError(
                f"MultiScaleConvMap.scales must be {len(maps)} positive numbers (one per map); "
                f"got {self.scales!r}{where}"
            )
        channels = {m.n_channels for m in maps}
        if len(channels) > 1:
            raise ValueError(f"MultiScaleConvMap.maps have different numbers of channels {sorted(channels)}{where}.")
        object.__setattr__(self, "maps", maps)
        object.__setattr__(self, "scales", scales)

    @property
    def n_channels(self) -> int:
        return self.maps[0].n_channels


def scale_maps(conv_map) -> tuple:
    """The single-scale maps of a ConvMap (itself) or of a MultiScaleConvMap (one per scale)."""
    return conv_map.maps if isinstance(conv_map, MultiScaleConvMap) else (conv_map,)
