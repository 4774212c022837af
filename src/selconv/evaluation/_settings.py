"""Names and checks shared by the evaluation steps: method labels, the default conv-map cache, ITQ lengths."""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable that moves :func:`default_cache_dir`.
CACHE_DIR_VARIABLE = "SELCONV_CACHE_DIR"

MASK_LABELS = {"max": "MAX-mask", "sum": "SUM-mask", "sift": "SIFT-mask", "none": "no mask"}

#: The baselines :func:`selconv.make_baseline` builds, by the name the command line takes.
BASELINE_LABELS = {"spoc": "SPoC", "mac": "MAC", "rmac": "R-MAC", "crow": "CroW", "gem": "GeM"}

#: Seeded random rankings averaged for the "random ranking" reference row.
N_RANDOM_RANKINGS = 20


def default_cache_dir() -> Path:
    """The conv-map cache shared by ``selconv demo``, ``evaluate``, the examples and the README quickstart.

    ``$SELCONV_CACHE_DIR`` when set, else ``selconv-output/cache`` in the current folder. The cache
    key holds every extraction setting, so one folder serves every image size and backbone.
    """
    return Path(os.environ.get(CACHE_DIR_VARIABLE) or Path("selconv-output") / "cache")


def itq_bits_problem(n_bits: int, n_training: int, n_dims: int) -> str | None:
    """Why ITQ cannot learn `n_bits`-bit codes from `n_training` descriptors of `n_dims` dimensions, or None."""
    if n_bits > min(n_training - 1, n_dims):
        return (
            f"ITQ at {n_bits} bits needs more than {n_bits} training images and at least {n_bits} "
            f"dimensions (have {n_training} images, {n_dims} dims)"
        )
    return None


class EvaluationError(ValueError):
    """The data cannot give a meaningful evaluation (e.g. some images could not be read)."""
