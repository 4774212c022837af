"""Shared fixtures. Ragged fixtures always have UNEQUAL per-image counts and an empty image:
equal counts silently become 3-D arrays and hide bugs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

# `make test` runs two xdist workers on two cores: one BLAS thread each avoids oversubscription
# (small matrix products ran ~17x slower with default threading on a loaded 2-core machine).
threadpool_limits(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def make_local_sets(counts=(9, 0, 23, 4, 15, 1, 30), n_features=16, random_state=0, nonnegative=True):
    """One (n_i, n_features) float32 array per image, like masked conv features (ReLU: >= 0)."""
    rng = np.random.default_rng(random_state)
    sets = []
    for n in counts:
        x = rng.standard_normal((n, n_features)).astype(np.float32)
        sets.append(np.abs(x) if nonnegative else x)
    return sets


def make_conv_maps(
    n_images=5, n_channels=32, sizes=((6, 8), (5, 7), (8, 6), (4, 4), (7, 9)), random_state=0, sparsity=0.7
):
    """Conv maps shaped like pool5 output (non-negative, mostly zero), with unequal grid sizes."""
    rng = np.random.default_rng(random_state)
    maps = []
    for i in range(n_images):
        h, w = sizes[i % len(sizes)]
        x = rng.gamma(1.0, 1.0, size=(n_channels, h, w)).astype(np.float32)
        x[rng.random(x.shape) < sparsity] = 0.0
        maps.append(x)
    return maps


@pytest.fixture(autouse=True)
def _private_conv_map_cache(tmp_path_factory, monkeypatch):
    """The command line's default conv-map cache (selconv-output/cache) goes to a temporary folder, not the cwd."""
    monkeypatch.setenv("SELCONV_CACHE_DIR", str(tmp_path_factory.mktemp("conv-map-cache")))


@pytest.fixture
def local_sets():
    return make_local_sets()


@pytest.fixture
def conv_maps():
    return make_conv_maps()


def require_shared_data(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test saying why."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs the shared real-image data at {path} (present in CI, absent here)")
    return path
