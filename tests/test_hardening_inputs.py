"""Regression tests of issue 7 (numerics, input validation, command line): each repro of the issue, as a test.

Items 4 (democratic gamma), 6 (folder training images in the database), 7 (ground truth beyond the
database, NaN descriptors), 12 (CLI errors) and 14 (cryptic estimator errors). The generated hostile
cases are in test_hostile_estimator_inputs.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_local_sets

from selconv import cli
from selconv.aggregation import DemocraticAggregator, GeneralizedMaxPooling, SumPooling
from selconv.conv_map import ConvMap
from selconv.exceptions import NonFiniteError
from selconv.extraction import SkippedInput
from selconv.index import ImageIndex
from selconv.local_pca import LocalPCA
from selconv.masks import NoMask, SiftMask
from selconv.metrics import average_precisions, evaluate
from selconv.pooling import CroW
from selconv.postprocessing import PowerNormalizer
from selconv.search import rank

# ------------------------------------------------------------------ item 4: no NaN from the democratic weights


@pytest.mark.parametrize("gamma", [1.5, 2.0, 1.0001, -0.5])
def test_democratic_gamma_outside_0_1_is_refused(gamma):
    with pytest.raises(ValueError, match="gamma"):
        DemocraticAggregator(gamma=gamma).fit(make_local_sets())
    # Set after fit, it is refused too (transform re-validates), instead of returning NaN.
    fitted = DemocraticAggregator().fit(make_local_sets())
    with pytest.raises(ValueError, match="gamma"):
        fitted.set_params(gamma=gamma).transform(make_local_sets())


def test_democratic_gamma_1_alternates_in_scale_but_keeps_the_democratic_direction():
    sets = make_local_sets(counts=(40, 0, 25, 60), n_features=8)
    damped = DemocraticAggregator(200, gamma=0.5).fit_transform(sets)
    for n_iter in (200, 201):  # both phases of the 2-cycle
        undamped = DemocraticAggregator(n_iter, gamma=1.0).fit_transform(sets)
        assert np.isfinite(undamped).all()
        unit = undamped / np.maximum(np.linalg.norm(undamped, axis=1, keepdims=True), 1e-30)
        reference = damped / np.maximum(np.linalg.norm(damped, axis=1, keepdims=True), 1e-30)
        np.testing.assert_allclose(unit, reference, atol=1e-4)


def test_overflowing_aggregate_is_an_error_naming_the_estimator():
    huge = [np.full((4, 3), 3e38, np.float32)]
    with pytest.raises(NonFiniteError, match=r"SumPooling\(\).*aggregated vectors.*rescale"):
        SumPooling().fit_transform(huge)


def test_generalized_max_pooling_gram_matrix_is_formed_in_float64():
    # The float32 Gram matrix of these features overflows; float64 does not, and the result is finite.
    Y = [np.array([[2e19, 0.0], [0.0, 2e19]], np.float32)]
    out = GeneralizedMaxPooling().fit_transform(Y)
    assert np.isfinite(out).all() and np.abs(out).max() > 0


@pytest.mark.parametrize("alpha", [1e-6, 1e6])
def test_power_normalizer_never_overflows_or_underflows(alpha):
    X = np.array([[1e200, -1e180, 3.0], [1e-200, -2e-200, 0.0], [0.0, 0.0, 0.0]])
    out = PowerNormalizer(alpha=alpha).fit_transform(X)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), [1.0, 1.0, 0.0])
    # The largest |v| keeps its sign and dominates for large alpha.
    if alpha > 1:
        np.testing.assert_allclose(out[:2], [[1.0, 0.0, 0.0], [0.0, -1.0, 0.0]], atol=1e-12)


def test_crow_pooled_direction_is_independent_of_a_and_finite_at_extremes():
    rng = np.random.default_rng(0)
    maps = [np.abs(rng.standard_normal((5, 6, 7))).astype(np.float32) for _ in range(2)]
    reference = CroW(a=2, b=2).fit_transform(maps)
    for a in (1e-4, 1e4):
        np.testing.assert_allclose(CroW(a=a, b=2).fit_transform(maps), reference, rtol=1e-5, atol=1e-6)
    assert np.isfinite(CroW(a=1e-4, b=1e-4).fit_transform(maps)).all()
    assert np.isfinite(CroW().spatial_weights(maps[0] * np.float32(1e38))).all()


def test_local_pca_overflow_is_an_error_not_nan():
    rng = np.random.default_rng(0)
    # Leading direction (1, 1, 1, 1) / 2: projecting 3e38 * (1, 1, 1, 1) on it gives 6e38, beyond float32.
    train = rng.standard_normal((50, 1)) * np.ones(4) + 0.01 * rng.standard_normal((50, 4))
    pca = LocalPCA(n_components=2).fit([train.astype(np.float32)])
    with pytest.raises(NonFiniteError, match="LocalPCA.*projected local features"):
        pca.transform([np.full((2, 4), 3e38, np.float32)])


# --------------------------------------------------- item 7: ground truth vs database, descriptor finiteness


def test_ground_truth_index_beyond_the_database_is_an_error_naming_query_and_index():
    rng = np.random.default_rng(0)
    q, db = rng.standard_normal((3, 8)), rng.standard_normal((60, 8))
    ground_truth = [{"positives": [1]}, {"positives": [50]}, {"positives": [2]}]
    assert np.isfinite(evaluate(q, db, ground_truth).map)
    with pytest.raises(ValueError, match=r'ground_truth\[1\]\["positives"\] holds database index 50.*10 images'):
        evaluate(q, db[:10], ground_truth)
    with pytest.raises(ValueError, match=r'ground_truth\[0\]\["junk"\]'):
        average_precisions(np.array([[0, 1]]), [{"positives": [1], "junk": [7]}], n_database=2)


def test_a_database_shortened_by_a_skipped_image_is_refused():
    """on_error='skip' drops an image: the database is one short and the last ground-truth index dangles."""
    rng = np.random.default_rng(0)
    q, db = rng.standard_normal((2, 8)), rng.standard_normal((12, 8))
    ground_truth = [{"positives": [3, 11]}, {"positives": [0]}]
    with pytest.raises(ValueError, match="on_error='skip'"):
        evaluate(q, np.delete(db, 5, axis=0), ground_truth)


@pytest.mark.parametrize("where", ["query", "database"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_descriptors_are_an_error_not_a_silent_map(where, value):
    rng = np.random.default_rng(0)
    q, db = rng.standard_normal((2, 8)), rng.standard_normal((6, 8))
    (q if where == "query" else db)[1, 3] = value
    with pytest.raises(ValueError, match=rf"{where} row 1 holds NaN or infinity"):
        evaluate(q, db, [{"positives": [0]}, {"positives": [1]}])


def test_run_benchmark_refuses_descriptor_counts_that_do_not_match_the_dataset():
    descriptors = {"max": np.zeros((4, 3)), "sum": np.zeros((5, 3))}

    from selconv.evaluation import EvaluationError
    from selconv.evaluation._steps import _check_all_described

    skipped = [SkippedInput(2, "db/broken.jpg", "truncated file")]
    with pytest.raises(EvaluationError, match=r"1 of the 5 database images.*db/broken.jpg: truncated file"):
        _check_all_described(descriptors, 5, "database images", skipped)


# -------------------------------------------------------------- item 14: clear errors where inputs enter


def test_index_search_with_nan_is_a_clear_error():
    index = ImageIndex()
    index.add_descriptors(np.eye(4, dtype=np.float32))
    with pytest.raises(ValueError, match=r"queries row 0 holds NaN or infinity"):
        index.search_descriptors(np.full((1, 4), np.nan), k=2)
    with pytest.raises(ValueError, match="descriptors row 0 holds NaN"):
        index.add_descriptors(np.array([[np.nan, 0, 0, 0]]))


def test_search_overflowing_float32_is_a_clear_error():
    index = ImageIndex()
    index.add_descriptors(np.full((2, 4), 3e38, np.float32))
    with pytest.raises(ValueError, match="overflow float32"):
        index.search_descriptors(np.full((1, 4), 3e38, np.float32), k=1)
    with pytest.raises(ValueError, match="overflow float32"):
        rank(np.full((1, 4), 3e38, np.float32), np.full((2, 4), 3e38, np.float32))


def test_sift_mask_with_nan_keypoints_is_a_clear_error():
    with pytest.raises(ValueError, match=r"keypoints contain NaN or infinity \(keypoints \[1\]\) for img.jpg"):
        SiftMask().fit_transform(
            [ConvMap(np.ones((3, 4, 4), np.float32), (64, 64), keypoints=[[1, 2], [np.nan, 3]], source="img.jpg")]
        )


def test_masks_on_a_zero_channel_map_are_a_clear_error():
    with pytest.raises(ValueError, match="conv map 0 has 0 channels"):
        NoMask().fit_transform([np.zeros((0, 4, 4), np.float32)])


def test_masks_on_an_empty_grid_select_nothing():
    from selconv.masks import MaxMask, SumMask

    maps = [np.zeros((3, 0, 4), np.float32), np.ones((3, 2, 2), np.float32)]
    for mask in (NoMask(), MaxMask(), SumMask()):
        local = mask.fit_transform(maps)
        assert local[0].shape == (0, 3) and len(local[1]) > 0


# ------------------------------------------------------- items 6 and 12: the command line and user folders


@pytest.fixture
def folder_with_training_inside(tmp_path):
    """DATA/ with 5 database images, a CSV, and DATA/train/ with 4 training images (the issue's layout)."""
    from PIL import Image

    data = tmp_path / "DATA"
    rng = np.random.default_rng(0)
    for name in ("a0", "a1", "b0", "b1", "c0", "train/t0", "train/t1", "train/t2", "train/t3"):
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(data / f"{name}.png")
    (data / "groundtruth.csv").write_text("image,label\na0.png,a\na1.png,a\nb0.png,b\nb1.png,b\n")
    return data


def test_cli_folder_training_images_are_not_database_distractors(folder_with_training_inside, tmp_path, monkeypatch):
    seen = {}

    def capture(dataset, *, training, **kwargs):
        seen.update(database=dataset.database, training=training)

    monkeypatch.setattr(cli._benchmark, "run_benchmark", capture)
    data = folder_with_training_inside
    argv = [
        "evaluate",
        "--dataset",
        "folder",
        "--data-dir",
        str(data),
        "--train-dir",
        str(data / "train"),
        "--out",
        str(tmp_path / "out"),
    ]
    assert cli.main(argv) == 0
    assert sorted(p.name for p in seen["database"]) == ["a0.png", "a1.png", "b0.png", "b1.png", "c0.png"]
    assert sorted(p.name for p in seen["training"]) == ["t0.png", "t1.png", "t2.png", "t3.png"]


def test_json_training_list_keeps_its_images_out_of_the_database(folder_with_training_inside):
    from selconv.datasets import GroundTruthError, load_image_folder

    data = folder_with_training_inside
    spec = {"training": ["train/t0.png", "train/t1.png"], "queries": [{"image": "a0.png", "positives": ["a1.png"]}]}
    (data / "gt.json").write_text(json.dumps(spec))
    dataset = load_image_folder(data, "gt.json")
    names = {p.name for p in dataset.database}
    assert {"t0.png", "t1.png"}.isdisjoint(names) and {"t2.png", "t3.png"} <= names
    assert sorted(p.name for p in dataset.training) == ["t0.png", "t1.png"]
    spec["database"] = ["a0.png", "a1.png", "train/t0.png"]
    (data / "gt.json").write_text(json.dumps(spec))
    with pytest.raises(GroundTruthError, match="also training images"):
        load_image_folder(data, "gt.json")


def _run_cli(argv, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("run_benchmark must not be reached")

    monkeypatch.setattr(cli._benchmark, "run_benchmark", refuse)
    status = cli.main(argv)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return status, err


@pytest.mark.parametrize("option", ["--out", "--cache-dir"])
@pytest.mark.parametrize("shape", ["file", "under_file"])
def test_cli_file_valued_output_folders_are_one_line_errors(option, shape, tmp_path, monkeypatch, capsys):
    (tmp_path / "afile").write_text("x")
    target = tmp_path / "afile" if shape == "file" else tmp_path / "afile" / "sub"
    status, err = _run_cli(
        ["evaluate", "--dataset", "sample", "--out", str(tmp_path / "out"), option, str(target)], monkeypatch, capsys
    )
    assert status == 2
    assert err.startswith(f"selconv: error: {option} {target}") and ("is a file" in err or "not a writable" in err)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "sample", "--protocol", "hard"], "--protocol does not apply to dataset sample"),
        (["--dataset", "oxford5k", "--data-dir", ".", "--protocol", "hard"], "--protocol does not apply"),
        (["--dataset", "sample", "--data-dir", "."], "--data-dir does not apply"),
        (["--dataset", "sample", "--fit-on", "database", "--max-train", "3"], "--max-train"),
    ],
)
def test_cli_options_a_dataset_does_not_use_are_errors(argv, message, tmp_path, monkeypatch, capsys):
    status, err = _run_cli(["evaluate", "--out", str(tmp_path / "out"), *argv], monkeypatch, capsys)
    assert status == 2 and message in err


def test_cli_os_errors_from_deep_inside_are_one_line_with_status_2(tmp_path, monkeypatch, capsys):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "out" / "results.json"))

    monkeypatch.setattr(cli._benchmark, "run_benchmark", disk_full)
    status = cli.main(["evaluate", "--dataset", "sample", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert "No space left on device" in err and "free some disk space" in err
