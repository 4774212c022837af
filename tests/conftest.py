"""Shared fixtures and the test markers' rules. Ragged fixtures always have UNEQUAL per-image counts and an
empty image: equal counts silently become 3-D arrays and hide bugs.

Markers (registered in pyproject.toml): ``shared_data`` on every test that reads ../shared/data (such a test
skips, saying why, where the data is absent; :func:`require_shared_data` fails a test without the marker);
``slow`` on every test that runs a pretrained CNN, a subprocess or process pool, Dask, a browser or end-to-end
work (``make test-fast`` leaves them out; a pretrained forward pass in a test without the marker fails).
tests/test_markers.py checks both rules.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

# `make test` runs two xdist workers on two cores: one BLAS thread each avoids oversubscription
# (small matrix products ran ~17x slower with default threading on a loaded 2-core machine).
threadpool_limits(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHARED_DATA_MISSING = "needs the shared real-image data at {} (present in CI, absent here)"

_current_test: list = [None]  # the test item being run (setup, call and teardown)


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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _current_test[0] = item
    try:
        yield
    finally:
        _current_test[0] = None


def pytest_runtest_setup(item):
    """A test marked shared_data skips, saying why, where ../shared/data is absent."""
    if item.get_closest_marker("shared_data") is not None and not SHARED_DATA.is_dir():
        pytest.skip(SHARED_DATA_MISSING.format(SHARED_DATA))


def require_shared_data(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test saying why; only a test marked shared_data may ask."""
    test = _current_test[0]
    if test is not None and test.get_closest_marker("shared_data") is None:
        pytest.fail(f"{test.nodeid} reads ../shared/data: mark it @pytest.mark.shared_data", pytrace=False)
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(SHARED_DATA_MISSING.format(path))
    return path


def refuse_pretrained(method):
    """``method`` of ConvFeatureExtractor, failing the test when it ran a pretrained network: a named backbone
    with weights (a factory's own network is the test's)."""

    @functools.wraps(method)
    def checked(self, *args, **kwargs):
        result = method(self, *args, **kwargs)
        if isinstance(self.backbone, str) and self.weights is not None:
            pytest.fail(
                f"this test runs a pretrained CNN ({self.backbone}, weights={self.weights!r}): mark it "
                "@pytest.mark.slow, or use weights=None",
                pytrace=False,
            )
        return result

    return checked


@pytest.fixture(autouse=True)
def _pretrained_cnns_only_in_slow_tests(request, monkeypatch):
    """make test-fast leaves out the tests marked slow: a pretrained forward pass elsewhere fails."""
    if request.node.get_closest_marker("slow") is not None:
        return
    from selconv import ConvFeatureExtractor

    for name in ("transform", "iter_transform", "extract", "iter_extract"):
        monkeypatch.setattr(ConvFeatureExtractor, name, refuse_pretrained(getattr(ConvFeatureExtractor, name)))
