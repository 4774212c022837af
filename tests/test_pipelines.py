"""The paper presets and the pipeline-level guarantees: fit/transform, GridSearchCV, clone, pickles."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline

import selconv
from selconv.masks import MaxMask, NoMask, SiftMask, SumMask
from selconv.model_selection import map_scorer
from selconv.pipelines import PAPER_SETTINGS, make_mask, make_paper_pipeline, paper_dimension

N_CHANNELS = 16
SIZES = ((5, 7), (6, 6), (7, 5), (4, 8), (6, 8), (3, 5))


def make_retrieval_maps(n_groups=4, per_group=6, n_distractors=8, random_state=0):
    """Conv maps of a toy retrieval problem: images of one group share "object parts" (channel vectors)
    at random places on grids of unequal sizes; distractors have parts of their own. Returns (maps, labels)."""
    rng = np.random.default_rng(random_state)
    group_parts = rng.gamma(1.0, 1.0, size=(n_groups, 5, N_CHANNELS)) * (rng.random((n_groups, 5, N_CHANNELS)) < 0.4)
    maps, labels = [], []
    for i in range(n_groups * per_group + n_distractors):
        group = i // per_group if i < n_groups * per_group else -1
        height, width = SIZES[i % len(SIZES)]
        x = rng.gamma(1.0, 0.15, size=(N_CHANNELS, height, width)).astype(np.float32)
        x[rng.random(x.shape) < 0.6] = 0.0
        parts = (
            group_parts[group]
            if group >= 0
            else rng.gamma(1.0, 1.0, size=(5, N_CHANNELS)) * (rng.random((5, N_CHANNELS)) < 0.4)
        )
        for part in parts:
            y0, x0 = rng.integers(height), rng.integers(width)
            x[:, y0, x0] += 3.0 * part * rng.uniform(0.7, 1.3)
        maps.append(x)
        labels.append(group)
    return maps, np.array(labels)


def small_pipeline(**kwargs) -> Pipeline:
    """The 512 preset, shrunk to the toy data (K = 16): d = 8, |C| = 6, 4 dropped components."""
    pipeline = make_paper_pipeline(512, **kwargs)
    return pipeline.set_params(pca__n_components=8, encode__embedding__n_clusters=6, rotate__n_dropped=4)


@pytest.fixture(scope="module")
def data():
    # 64 learning images: more than the 48 dimensions the toy pipeline rotates, so the rotation is determined.
    train, _ = make_retrieval_maps(n_distractors=40, random_state=1)
    database, labels = make_retrieval_maps(random_state=2)
    return train, database, labels


def quiet(function, *args):
    """Run ``function(*args)`` with the small-training-set warnings silenced (the toy data is tiny on purpose)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return function(*args)


# ---------------------------------------------------------------------------------------------- presets


def test_paper_settings_are_table_4():
    assert PAPER_SETTINGS == {512: (32, 20), 1024: (64, 18), 2048: (64, 34), 4096: (64, 66), 8064: (128, 64)}
    for dim, (d, n_clusters) in PAPER_SETTINGS.items():
        assert d * n_clusters - 128 == dim == paper_dimension(dim)


@pytest.mark.parametrize("dim", sorted(PAPER_SETTINGS))
def test_preset_steps_and_parameters(dim):
    pipeline = make_paper_pipeline(dim)
    assert [name for name, _ in pipeline.steps] == ["mask", "pca", "encode", "rotate", "power"]
    d, n_clusters = PAPER_SETTINGS[dim]
    steps = pipeline.named_steps
    assert isinstance(steps["mask"], MaxMask)
    assert steps["pca"].n_components == d
    assert steps["encode"].embedding.n_clusters == n_clusters
    assert steps["rotate"].n_dropped == 128
    assert steps["power"].alpha == 0.5
    assert steps["encode"].aggregator.n_iter == 10 and steps["encode"].aggregator.gamma == 0.5


def test_preset_options():
    pipeline = make_paper_pipeline(1024, mask="sum", n_bits=64, alpha=0.3, random_state=7)
    assert [name for name, _ in pipeline.steps][-1] == "itq"
    assert pipeline.named_steps["itq"].n_bits == 64
    assert pipeline.named_steps["power"].alpha == 0.3
    assert isinstance(pipeline.named_steps["mask"], SumMask)
    for name in ("pca", "itq"):
        assert pipeline.named_steps[name].random_state == 7
    assert pipeline.named_steps["encode"].embedding.random_state == 7
    # Table 9 protocol: learned on the database itself, no truncation.
    assert make_paper_pipeline(512, fit_on="database").named_steps["rotate"].n_dropped == 0
    assert make_paper_pipeline(512, fit_on="database", n_dropped=16).named_steps["rotate"].n_dropped == 16
    assert paper_dimension(512, fit_on="database") == paper_dimension(512, n_dropped=0) == 640


@pytest.mark.parametrize(("name", "cls"), [("max", MaxMask), ("sum", SumMask), ("sift", SiftMask), ("none", NoMask)])
def test_make_mask(name, cls):
    assert type(make_mask(name)) is cls


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 500}, "Table 4"),
        ({"dim": True}, "Table 4"),
        ({"mask": "median"}, "mask must be one of"),
        ({"fit_on": "queries"}, "fit_on must be one of"),
        ({"extractor": "vgg16"}, "extractor must be None, True or a ConvFeatureExtractor"),
        ({"device": "gpu"}, "device must be 'cpu'"),
    ],
)
def test_preset_errors(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make_paper_pipeline(**kwargs)


def test_preset_with_extractor():
    from selconv.extraction import ConvFeatureExtractor

    pipeline = make_paper_pipeline(512, extractor=True)
    assert pipeline.steps[0][0] == "extract"
    extractor = pipeline.named_steps["extract"]
    assert extractor.backbone == "vgg16" and extractor.keypoints is None
    assert make_paper_pipeline(512, mask="sift", extractor=True).named_steps["extract"].keypoints == "sift"
    mine = ConvFeatureExtractor(max_size=256)
    assert make_paper_pipeline(512, extractor=mine).named_steps["extract"] is mine
    with pytest.raises(ValueError, match="keypoints"):
        make_paper_pipeline(512, mask="sift", extractor=mine)


# ---------------------------------------------------------------------------------- pipeline guarantees


@pytest.mark.parametrize("mask", ["max", "sum", "none"])
def test_fits_on_training_and_transforms_queries_and_database(data, mask):
    train, database, labels = data
    pipeline = quiet(small_pipeline(mask=mask).fit, train)
    db = pipeline.transform(database)
    queries = pipeline.transform(database[:5])
    assert db.shape == (len(database), 8 * 6 - 4) and db.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(db, axis=1), 1.0, rtol=1e-5)
    # A query is its own nearest neighbour, and transform does not depend on the batch.
    np.testing.assert_allclose(queries, db[:5], rtol=1e-5, atol=1e-6)
    score = map_scorer(pipeline, database, labels)
    assert score > 0.6, score  # random ranking gives about 0.25 here


def test_binary_codes(data):
    train, database, labels = data
    pipeline = quiet(small_pipeline(n_bits=16).fit, train)
    codes = pipeline.transform(database)
    assert codes.shape == (len(database), 2) and codes.dtype == np.uint8
    assert len(np.unique(codes, axis=0)) > len(database) // 2
    assert map_scorer(pipeline, database, labels) > 0.4


def test_conv_maps_with_an_empty_selection(data):
    """An all-zero map has no MAX-mask location: it must become a zero row (with a warning), never NaN."""
    train, database, _ = data
    pipeline = quiet(small_pipeline(mask="max").fit, train)
    empty = np.zeros((N_CHANNELS, 4, 6), dtype=np.float32)
    with pytest.warns(UserWarning):
        out = pipeline.transform([database[0], empty])
    assert np.isfinite(out).all()
    assert np.linalg.norm(out[0]) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.slow  # n_jobs=2: a process pool
def test_grid_search_with_map_scorer(data):
    train, database, labels = data
    grid = {
        "mask": [MaxMask(), SumMask()],
        "encode__embedding__n_clusters": [5, 6],
        "power__alpha": [0.5, 1.0],
    }
    # Folds of 16 images cannot determine the 48-D rotation: keep only the determined directions.
    search = GridSearchCV(
        small_pipeline(undetermined="drop"),
        grid,
        scoring=map_scorer,
        cv=KFold(2, shuffle=True, random_state=0),
        n_jobs=2,
        error_score="raise",
    )
    quiet(search.fit, database, labels)
    scores = search.cv_results_["mean_test_score"]
    assert len(scores) == 8 and np.isfinite(scores).all()
    assert search.best_score_ > 0.5
    assert set(search.best_params_) == set(grid)
    assert search.best_estimator_.transform(database).shape[0] == len(database)


def test_clone_gives_an_unfitted_equal_pipeline(data):
    train, database, _ = data
    pipeline = small_pipeline(n_bits=8)
    fitted = quiet(pipeline.fit, train)
    cloned = clone(fitted)
    assert cloned.get_params(deep=False)["steps"][0][1] is not fitted.named_steps["mask"]
    assert repr(cloned) == repr(fitted)
    assert not hasattr(cloned.named_steps["pca"], "components_")
    np.testing.assert_array_equal(quiet(cloned.fit, train).transform(database), fitted.transform(database))


_LOAD_AND_TRANSFORM = """
import pickle, sys
import numpy as np
with open(sys.argv[1], "rb") as f:
    pipeline, X = pickle.load(f)
np.save(sys.argv[2], pipeline.transform(X))
"""


@pytest.mark.parametrize("n_bits", [None, 16])
@pytest.mark.slow
def test_pickle_loads_in_a_fresh_process_with_identical_output(data, tmp_path, n_bits):
    train, database, _ = data
    pipeline = quiet(small_pipeline(n_bits=n_bits, mask="sum").fit, train)
    expected = pipeline.transform(database)
    with open(tmp_path / "pipeline.pkl", "wb") as f:
        pickle.dump((pipeline, database), f)
    command = [sys.executable, "-c", _LOAD_AND_TRANSFORM, str(tmp_path / "pipeline.pkl"), str(tmp_path / "out.npy")]
    # The same thread count as this process (tests/conftest.py): float32 GEMMs sum in a thread-dependent order.
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run(command, check=True, capture_output=True, timeout=120, env=env)
    loaded = np.load(tmp_path / "out.npy")
    assert loaded.dtype == expected.dtype
    np.testing.assert_array_equal(loaded, expected)


def test_pickle_from_another_version_warns(data, monkeypatch):
    train, database, _ = data
    pipeline = quiet(small_pipeline().fit, train)
    blob = pickle.dumps(pipeline)
    monkeypatch.setattr(selconv, "__version__", "0.0.0-other")
    with pytest.warns(UserWarning, match="pickled with selconv 0.1.0"):
        loaded = pickle.loads(blob)
    np.testing.assert_array_equal(loaded.transform(database), pipeline.transform(database))


def test_device_sets_every_stage_that_takes_one():
    pipeline = make_paper_pipeline(512, n_bits=64, device="torch")
    params = pipeline.get_params()
    assert [params[f"{name}__device"] for name in ("mask", "pca", "encode", "itq")] == ["torch"] * 4
    assert params["rotate"].get_params().get("device") is None  # numpy-only stages take none
    assert "device" not in make_paper_pipeline(512, mask="sift", device="torch").named_steps["mask"].get_params()
    assert make_paper_pipeline(512, device="cuda:1").get_params()["pca__device"] == "cuda:1"
    # get_params -> set_params round trip, and back to numpy
    restored = make_paper_pipeline(512, n_bits=64).set_params(**{k: v for k, v in params.items() if "__" in k})
    assert restored.get_params()["mask__device"] == "torch" and restored.get_params()["itq__device"] == "torch"
    restored.set_params(mask__device="cpu", pca__device="cpu", encode__device="cpu", itq__device="cpu")
    assert clone(restored).get_params()["pca__device"] == "cpu"


@pytest.mark.parametrize("n_bits", [None, 16])
def test_fitted_on_a_torch_device_gives_the_cpu_descriptors(data, n_bits):
    """Every stage with a device (mask, LocalPCA, encode, ITQ) fitted and run with torch kernels: the numpy numbers."""
    train, database, _ = data
    reference = quiet(small_pipeline(n_bits=n_bits).fit, train)
    ours = quiet(small_pipeline(n_bits=n_bits, device="torch").fit, train)
    np.testing.assert_allclose(ours.named_steps["pca"].components_, reference.named_steps["pca"].components_, atol=1e-9)
    expected, got = reference.transform(database), ours.transform(database)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    if n_bits is None:
        # Float32 rounding (LocalPCA's transform, k-means) amplified by the Temb whitening: measured 5.6e-5 on
        # these unit-norm descriptors (7.1e-5 with only encode on the device, 3.6e-5 with only LocalPCA).
        np.testing.assert_allclose(got, expected, atol=2e-4)
    else:  # a bit of a coordinate within float rounding of 0 may flip
        assert np.unpackbits(got ^ expected).sum() <= 2


def test_fit_is_reproducible(data):
    train, database, _ = data
    first = quiet(small_pipeline(random_state=3).fit, train).transform(database)
    second = quiet(small_pipeline(random_state=3).fit, train).transform(database)
    np.testing.assert_array_equal(first, second)


def test_full_pipeline_from_image_files(tmp_path):
    """Images -> extractor -> mask -> ... -> ITQ codes, as one Pipeline, queries with boxes included."""
    from PIL import Image

    from selconv.extraction import ConvFeatureExtractor

    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(64, 48), (48, 64), (64, 64), (56, 40)] * 5):
        path = tmp_path / f"image{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    # Random AlexNet weights at 96 px: a 2 x 3 pool5 grid, fast enough for a unit test.
    extractor = ConvFeatureExtractor(backbone="alexnet", weights=None, max_size=96, device="cpu", n_workers=0)
    # 16 learning images determine 15 of the 20 rotated directions: keep those.
    pipeline = make_paper_pipeline(512, extractor=extractor, n_bits=8, mask="none", undetermined="drop").set_params(
        pca__n_components=4, encode__embedding__n_clusters=5, encode__embedding__n_clamped=4, rotate__n_dropped=2
    )
    quiet(pipeline.fit, paths[:16])
    codes = pipeline.transform(paths[16:] + [(paths[2], (0, 0, 64, 48))])
    assert codes.shape == (5, 1) and codes.dtype == np.uint8
