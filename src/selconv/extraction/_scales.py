"""The extractor's ``scales``: the image size of each scale and the map an input gets from its scales' maps."""

from __future__ import annotations

from numbers import Real

from selconv.conv_map import MultiScaleConvMap


def scale_sizes(scales, max_size) -> list:
    """The ``max_size`` of each scale (``[max_size]`` for ``(1.0,)``); a bad ``scales`` is a ValueError naming it.

    Scale s runs at ``round(max_size * s)``, so that it is exactly a single-scale extraction of that size.
    """
    if not isinstance(scales, (tuple, list)) or not scales:
        raise ValueError(f"scales must be a non-empty tuple of numbers in (0, 1]; got {scales!r}.")
    if not all(isinstance(s, Real) and not isinstance(s, bool) and 0 < s <= 1 for s in scales):
        raise ValueError(f"scales must be numbers in (0, 1] (fractions of max_size); got {scales!r}.")
    if tuple(scales) == (1.0,):
        return [max_size]
    if max_size is None:
        raise ValueError(f"scales={scales!r} are fractions of max_size, which is None; set an integer max_size.")
    sizes = [max(1, round(max_size * s)) for s in scales]
    if len(set(sizes)) < len(sizes):
        raise ValueError(
            f"scales={scales!r} give the same image size twice (longest sides {sizes} px at max_size={max_size}); "
            "each scale must give a different size."
        )
    return sizes


def assemble(maps: list, scales, source):
    """An input's map: its ConvMap for one scale, a MultiScaleConvMap of its scales' ConvMaps for several."""
    if len(maps) == 1:
        return maps[0]
    return MultiScaleConvMap(tuple(maps), tuple(float(s) for s in scales), source=source)
