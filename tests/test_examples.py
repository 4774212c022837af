"""The gallery examples (examples/plot_*.py) run end to end, so that a change cannot break them silently.

Each example runs in its own interpreter, as a user would run it, in the fast variant
(``SELCONV_EXAMPLE_FAST=1``: images at 192 px instead of 384) with the real VGG16. One conv-map cache is
shared by every example and every xdist worker; the first worker to get here fills it under a file lock,
so the CNN runs once per image and each example then takes seconds.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("plot_*.py"))
FAST_MAX_SIZE = 192  # the examples' fast-variant image size; the warm-up must match it to fill their cache


def test_every_example_is_collected():
    names = {path.stem for path in EXAMPLES}
    assert {
        "plot_quickstart",
        "plot_grid_search",
        "plot_binary_search_index",
        "plot_image_folder",
        "plot_html_report",
        "plot_gpu_codes",
    } <= names
    for path in EXAMPLES:  # each example's fast size is the one the shared cache is filled at
        assert f"MAX_SIZE = {FAST_MAX_SIZE} if " in path.read_text(), path.name


@pytest.fixture(scope="session")
def example_cache(tmp_path_factory):
    """A conv-map cache of the bundled sample at the fast size, filled once for all xdist workers."""
    from selconv.datasets import load_sample
    from selconv.extraction import ConvFeatureExtractor, WeightsNotFoundError

    shared = tmp_path_factory.getbasetemp().parent / "selconv-example-cache"  # common to all workers
    shared.mkdir(exist_ok=True)
    with open(shared / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            extractor = ConvFeatureExtractor(max_size=FAST_MAX_SIZE, cache_dir=shared).fit()
        except WeightsNotFoundError as error:  # pragma: no cover - depends on the machine
            pytest.skip(f"no offline VGG16 weights here: {error}")
        if not (shared / ".filled").exists():
            dataset = load_sample()
            extractor.transform(dataset.training + dataset.database_inputs() + dataset.query_inputs())
            (shared / ".filled").touch()
    return shared


def run_example(path: Path, cache: Path, out: Path) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        SELCONV_EXAMPLE_FAST="1",
        SELCONV_CACHE_DIR=str(cache),
        SELCONV_EXAMPLE_OUTPUT=str(out),
        MPLBACKEND="Agg",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    )
    return subprocess.run([sys.executable, str(path)], cwd=out, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.examples
@pytest.mark.parametrize("path", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_example_runs(path, example_cache, tmp_path):
    result = run_example(path, example_cache, tmp_path)
    assert result.returncode == 0, f"{path.name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    assert "mAP" in result.stdout or "best:" in result.stdout, result.stdout[-2000:]
    if path.stem == "plot_html_report":
        page = (tmp_path / "report.html").read_text()
        assert page.count("data:image/jpeg;base64") > 10 and "Precision-recall" in page
    if path.stem == "plot_image_folder":
        assert (tmp_path / "my_groundtruth.csv").is_file()
