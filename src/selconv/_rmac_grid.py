"""The R-MAC region grid (Tolias, Sicre & Jegou): which square regions of a conv map R-MAC pools.

Public as :func:`selconv.pooling.rmac_regions`, where :class:`~selconv.pooling.RMAC` uses it.
"""

from __future__ import annotations

import numpy as np


def rmac_regions(height: int, width: int, *, levels: int = 3, overlap: float = 0.4) -> np.ndarray:
    """The R-MAC region grid of Tolias, Sicre & Jegou (ICLR 2016) on a height x width map.

    At level l = 1..``levels`` the square regions have side floor(2 min(H, W) / (l + 1)) and are
    spread uniformly over the map, l regions along the short side and l + extra along the long side,
    where the extra count (0 for a square map) makes consecutive regions on the long side overlap by
    about ``overlap`` (the authors try 2..7 regions along the long side). Regions of side 0 are skipped.
    Same grid as the authors' ``rmac_regions.m`` and cirtorch's ``rmac``.

    Parameters
    ----------
    height, width : int
        Grid size of the conv map.
    levels : int, default=3
        Number of scales L.
    overlap : float, default=0.4
        Desired overlap of neighbouring regions.

    Returns
    -------
    regions : ndarray of shape (n_regions, 4), int64
        ``(x, y, side, side)``: 0-based top-left corner in grid cells, then width and height.
        A 24 x 32 map at L = 3 gives 2 + 6 + 12 = 20 regions, a square map 1 + 4 + 9 = 14.
    """
    short, long_ = min(height, width), max(height, width)
    if short == 0:
        return np.zeros((0, 4), dtype=np.int64)
    steps = np.arange(2, 8)
    step_overlap = 1.0 - (long_ - short) / (steps - 1) / short
    extra = int(np.argmin(np.abs(step_overlap - overlap))) + 1
    extra_w = extra if height < width else 0
    extra_h = extra if height > width else 0
    regions = []
    for level in range(1, levels + 1):
        side = int(np.floor(2 * short / (level + 1)))
        if side == 0:
            continue
        half = np.floor(side / 2 - 1)
        ys, xs = np.meshgrid(
            _region_corners(level + extra_h, height, side, half),
            _region_corners(level + extra_w, width, side, half),
            indexing="ij",
        )
        block = np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, side), np.full(xs.size, side)], axis=1)
        regions.append(block)
    return np.concatenate(regions) if regions else np.zeros((0, 4), dtype=np.int64)


def _region_corners(count: int, size: int, side: int, half: float) -> np.ndarray:
    """Top-left coordinates of ``count`` regions of ``side`` cells spread evenly over ``size`` cells."""
    step = 0.0 if count == 1 else (size - side) / (count - 1)
    return (np.floor(half + np.arange(count) * step) - half).astype(np.int64)
