"""The command line (argument parsing, errors, the job on tiny data) and the HTML report."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

from selconv import cli
from selconv.cli import _benchmark as benchmark_command
from selconv.evaluation import format_table
from selconv.report import interpolated_precision_recall, render_report, write_report

# ------------------------------------------------------------------------------------------ arguments


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "required"),
        (["evaluate"], "--dataset"),
        (["evaluate", "--dataset", "nope"], "invalid choice"),
        (["evaluate", "--dataset", "sample", "--preset", "500"], "invalid choice"),
        (["evaluate", "--dataset", "sample", "--mask", "max,median"], "masks must be among"),
        (["evaluate", "--dataset", "sample", "--bits", "0"], "positive integer"),
        (["fit", "photos", "--bits", "12"], "must be a multiple of 8"),  # fit and evaluate: one rule
        (["demo", "--max-size", "-3"], "positive integer"),
        (["evaluate", "--dataset", "sample", "--train-dir", "a", "--train-dataset", "paris6k"], "not allowed"),
    ],
)
def test_bad_arguments_exit_with_status_2(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.startswith("selconv: error:") and err.count("\n") == 1  # one line, no usage dump


def test_parser_defaults():
    args = cli.build_parser().parse_args(["demo"])
    assert (args.max_size, args.preset, args.masks, args.device) == (512, 512, ["max", "sum", "sift", "none"], "auto")
    args = cli.build_parser().parse_args(
        ["evaluate", "--dataset", "oxford5k", "--data-dir", "x", "--mask", "sum,MAX", "--bits", "64", "128"]
    )
    assert (args.max_size, args.masks, args.bits, args.fit_on) == (1024, ["sum", "max"], [64, 128], "training")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "oxford5k"], "needs --data-dir"),
        (["--dataset", "oxford5k", "--data-dir", "{missing}"], "does not exist"),
        (["--dataset", "oxford5k", "--data-dir", "{file}"], "is not a folder"),
        (["--dataset", "roxford5k", "--data-dir", "{dir}", "--protocol", "loo-landmark"], "not valid for roxford5k"),
        (["--dataset", "sample", "--fit-on", "database", "--train-dir", "{dir}"], "do not also give"),
        (["--dataset", "sample", "--train-dir", "{missing}"], "--train-dir"),
        (["--dataset", "sample", "--train-data-dir", "{dir}"], "goes with --train-dataset"),
        (["--dataset", "sample", "--bits", "12"], "must be a multiple of 8"),
        (["--dataset", "sample", "--train-dir", "{sample_images}"], "learning images are also searched"),
    ],
)
def test_user_errors_are_clear_and_nonzero(argv, message, tmp_path, capsys, monkeypatch):
    (tmp_path / "afile").write_text("x")
    # Errors must come before any conv map is computed: make extraction impossible.
    monkeypatch.setattr(benchmark_command, "run_benchmark", _refuse_benchmark)
    from selconv.datasets import SAMPLE_ROOT

    argv = [
        a.format(
            missing=tmp_path / "missing", file=tmp_path / "afile", dir=tmp_path, sample_images=SAMPLE_ROOT / "images"
        )
        for a in argv
    ]
    status = cli.main(["evaluate", "--out", str(tmp_path / "out"), *argv])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("selconv: error:") and message in err


def _refuse_benchmark(*args, **kwargs):
    raise AssertionError("run_benchmark must not be reached")


def test_dataset_loader_errors_are_reported(tmp_path, capsys):
    (tmp_path / "oxford").mkdir()
    status = cli.main(["evaluate", "--dataset", "oxford5k", "--data-dir", str(tmp_path / "oxford")])
    assert status == 2
    assert "selconv: error:" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ exit codes


@pytest.mark.parametrize(
    ("raised", "status", "message"),
    [
        (None, 0, ""),
        (ValueError("bad data in x.csv"), 2, "selconv: error: bad data in x.csv"),
        (KeyboardInterrupt(), 130, "interrupted"),
        (ZeroDivisionError("a bug"), 1, "internal error"),
    ],
)
def test_exit_status_of_each_path_is_the_documented_one(raised, status, message, tmp_path, monkeypatch, capsys):
    """0 success, 2 user error, 130 interrupted, 1 internal error (with its traceback): docs/usage.md and --help."""

    def job(*args, **kwargs):
        if raised is not None:
            raise raised

    monkeypatch.setattr(benchmark_command, "run_benchmark", job)
    assert cli.main(["demo", "--out", str(tmp_path)]) == status
    err = capsys.readouterr().err
    assert message in err
    assert ("Traceback" in err) == (status == 1)
    help_text = " ".join(cli.build_parser().format_help().split())
    assert "0 success, 1 internal error (a bug), 2 user error, 130 interrupted" in help_text


# ---------------------------------------------------------------- your own folders, baselines: arguments


def _capture(monkeypatch):
    seen = {}

    def capture(dataset, **kwargs):
        seen.update(kwargs, dataset=dataset)

    monkeypatch.setattr(benchmark_command, "run_benchmark", capture)
    return seen


def test_evaluate_labels_from_sub_folder_names(tmp_path, monkeypatch):
    from selconv.datasets import SAMPLE_ROOT

    for label in ("cat", "dog"):
        for i in range(2):
            (tmp_path / "photos" / label).mkdir(parents=True, exist_ok=True)
            (tmp_path / "photos" / label / f"{i}.jpg").write_bytes(b"x")
    seen = _capture(monkeypatch)
    argv = ["evaluate", "--dataset", "subfolders", "--data-dir", str(tmp_path / "photos")]
    train = ["--train-dir", str(SAMPLE_ROOT / "training"), "--out", str(tmp_path / "out")]
    assert cli.main([*argv, *train, "--baselines", "gem,RMAC", "--no-baseline-whitening"]) == 0
    assert len(seen["dataset"].queries) == 4 and seen["dataset"].query_labels == ["cat", "cat", "dog", "dog"]
    assert seen["baselines"] == ["gem", "rmac"] and seen["baseline_whitening"] is False
    assert len(seen["training"]) == 40


def test_evaluate_separate_query_and_database_folders(tmp_path, monkeypatch):
    from selconv.datasets import SAMPLE_ROOT

    for folder, names in (("q/cat", ["q0"]), ("db/cat", ["d0", "d1"]), ("db/dog", ["d2"])):
        (tmp_path / folder).mkdir(parents=True)
        for name in names:
            (tmp_path / folder / f"{name}.jpg").write_bytes(b"x")
    seen = _capture(monkeypatch)
    argv = ["evaluate", "--queries", str(tmp_path / "q"), "--database", str(tmp_path / "db")]
    assert cli.main([*argv, "--train-dir", str(SAMPLE_ROOT / "training"), "--out", str(tmp_path / "out")]) == 0
    assert seen["dataset"].ground_truth[0]["positives"].tolist() == [0, 1] and seen["baselines"] == []
    assert seen["baseline_whitening"] is True


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "sample", "--baselines", "gem,vlad"], "baselines must be among spoc, mac, rmac, crow, gem"),
        (["--dataset", "sample", "--queries", "{dir}"], "--queries does not apply to dataset sample"),
        (["--queries", "{dir}"], "query-folders' needs --database"),
        (["--dataset", "subfolders", "--data-dir", "{dir}", "--ground-truth", "x.csv"], "--ground-truth does not"),
    ],
)
def test_own_folder_and_baseline_errors(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(benchmark_command, "run_benchmark", _refuse_benchmark)
    argv = [a.format(dir=tmp_path) for a in argv]
    assert cli.main(["evaluate", "--out", str(tmp_path / "out"), *argv]) == 2
    assert message in capsys.readouterr().err


# ----------------------------------------------------------------------------- the job on tiny data


def _TinyExtractor(**kwargs):
    """ConvFeatureExtractor with random AlexNet weights at 96 px: the real class, fast enough for unit tests."""
    from selconv.extraction.extractor import ConvFeatureExtractor

    kwargs.update(backbone="alexnet", layers=None, weights=None, max_size=96, n_workers=0, progress=False)
    return ConvFeatureExtractor(**kwargs)


def _write_image(path, rng, base=None, size=(96, 72)):
    from PIL import Image

    pixels = rng.integers(0, 256, size=(size[1], size[0], 3)) if base is None else base
    noisy = np.clip(pixels + rng.normal(0, 12, size=pixels.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(noisy).save(path)
    return pixels


@pytest.fixture(scope="module")
def folder_dataset(tmp_path_factory):
    """A user-format folder: 3 groups of 3 near-duplicates, 3 distractors, a CSV, 52 training images
    (more than the 48 dimensions the shrunk preset rotates)."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    lines = ["image,label,query,x1,y1,x2,y2"]
    for group in ("a", "b", "c"):
        base = None
        for i in range(3):
            base = _write_image(root / "images" / f"{group}{i}.png", rng, base)
            box = "4,4,90,70" if (group, i) == ("a", 0) else ",,,"
            lines.append(f"{group}{i}.png,{group},{int(i < 2)},{box}")
    for i in range(3):
        _write_image(root / "images" / f"other{i}.png", rng)
    (root / "images" / "groundtruth.csv").write_text("\n".join(lines) + "\n")
    for i in range(52):
        _write_image(root / "training" / f"t{i}.png", rng, size=(48, 36))
    return root


@pytest.mark.slow
def test_evaluate_runs_end_to_end_on_a_user_folder(folder_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("selconv.extraction.ConvFeatureExtractor", _TinyExtractor)
    monkeypatch.setattr("selconv.pipelines.PAPER_SETTINGS", {**cli_settings(), 512: (8, 6)})
    monkeypatch.setattr("selconv.pipelines._PAPER_N_DROPPED", 4)
    out = tmp_path / "run"
    argv = [
        "evaluate",
        "--dataset",
        "folder",
        "--data-dir",
        str(folder_dataset / "images"),
        "--train-dir",
        str(folder_dataset / "training"),
        "--mask",
        "max,none",
        "--bits",
        "8",
        "512",
        "--baselines",
        "gem,mac",
        "--out",
        str(out),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--device",
        "cpu",
    ]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    # The table says what produced the numbers.
    for expected in (
        "MAX-mask",
        "no mask",
        "8 bits (1 byte",
        "random ranking",
        "alexnet",
        "longest side of 96 px",
        f"images under {folder_dataset / 'training'}",
        "52 images",
        "Loading the alexnet network and its ImageNet weights",
        "GeM + PCA-whitening",
        "MAC + PCA-whitening",
        "skipped: ITQ at 512 bits",  # the same behaviour as the demo: a note, not an error
    ):
        assert expected in printed, expected
    results = json.loads((out / "results.json").read_text())
    rows = {row["descriptor"].split(" ")[0]: row for row in results["rows"]}
    assert {row["queries"] for row in results["rows"]} == {6}
    assert results["rows"][0]["dims"] == 8 * 6 - 4
    assert all(0.0 <= row["mAP"] <= 1.0 for row in results["rows"])
    assert [row["kind"] for row in results["rows"]] == ["real", "real", "baseline", "baseline", "binary", "random"]
    assert any("skipped: ITQ at 512 bits" in w for w in results["warnings"])
    # Near-duplicates must be found far better than chance, even with random CNN weights.
    assert rows["MAX-mask"]["mAP"] > rows["random"]["mAP"] + 0.3
    # The cache makes a rerun skip extraction.
    assert any((tmp_path / "cache").rglob("*.map"))
    report = (out / "report.html").read_text()
    assert "data:image/png;base64," in report and report.count("data:image/jpeg;base64,") >= 6 * 9


def test_extraction_announces_its_expected_time():
    import time

    from selconv.evaluation._steps import extract_announced

    class SlowExtractor:
        calls = []

        def transform(self, items):
            if not self.calls:
                time.sleep(0.6)
            self.calls.append(list(items))
            return [f"map of {i}" for i in items]

    lines = []
    maps = extract_announced(SlowExtractor(), [0, 1, 2, 3], "training images", lines.append)
    assert maps == ["map of 0", "map of 1", "map of 2", "map of 3"] and SlowExtractor.calls == [[0], [1, 2, 3]]
    assert lines[0] == "Conv maps of the 4 training images:"
    assert re.fullmatch(r"  the first image took 0\.\d s: about 2 s for the other 3 on this machine .*", lines[1])


def cli_settings():
    from selconv.pipelines import PAPER_SETTINGS

    return dict(PAPER_SETTINGS)


def test_format_table_aligns_columns():
    rows = [
        {"kind": "real", "descriptor": "MAX-mask", "size": "512-D float32", "mAP": 0.81234, "queries": 5, "kept": 0.3},
        {"kind": "random", "descriptor": "random ranking", "size": "-", "mAP": 0.1, "queries": 5},
    ]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["descriptor", "size", "mAP", "queries", "features", "kept"]
    assert "0.8123" in lines[2] and "30%" in lines[2]
    assert lines[2].index("0.8123") == lines[3].index("0.1000")


# -------------------------------------------------------------------------------------------- report


def test_interpolated_precision_recall_by_hand():
    # Ranking: positive, junk, negative, positive -> junk removed: P, N, P.
    ground_truth = [{"positives": np.array([0, 3]), "junk": np.array([1])}]
    precision = interpolated_precision_recall(
        np.array([[0, 1, 2, 3]]), ground_truth, recall_levels=[0.0, 0.5, 0.75, 1.0]
    )
    np.testing.assert_allclose(precision, [1.0, 1.0, 2 / 3, 2 / 3])
    # Queries without positives are left out of the average.
    both = ground_truth + [{"positives": np.array([], dtype=int), "junk": np.array([], dtype=int)}]
    np.testing.assert_allclose(
        interpolated_precision_recall(np.array([[0, 1, 2, 3], [3, 2, 1, 0]]), both, recall_levels=[1.0]), [2 / 3]
    )
    perfect = interpolated_precision_recall(np.array([[3, 0, 1, 2]]), ground_truth)
    np.testing.assert_allclose(perfect, 1.0)


@pytest.fixture
def report_inputs(tmp_path):
    rng = np.random.default_rng(1)
    database = []
    for i in range(5):
        database.append(str(tmp_path / f"db{i}.png"))
        _write_image(tmp_path / f"db{i}.png", rng, size=(40, 30))
    queries = [(database[0], (5, 5, 30, 25)), database[1]]
    ground_truth = [
        {"positives": np.array([2, 3]), "junk": np.array([0])},
        {"positives": np.array([], dtype=int), "junk": np.array([1])},
    ]
    rankings = {
        "good": np.array([[0, 2, 3, 1, 4], [1, 0, 2, 3, 4]]),
        "bad": np.array([[4, 1, 0, 2, 3], [0, 1, 2, 3, 4]]),
    }
    table = [{"descriptor": "good <b>", "mAP": 1.0}, {"descriptor": "bad", "mAP": 0.33333}]
    return dict(queries=queries, database=database, ground_truth=ground_truth, rankings=rankings, table=table)


def test_report_is_self_contained_and_colours_results(report_inputs, tmp_path):
    path = write_report(tmp_path / "sub" / "report.html", **report_inputs, notes=["VGG16 pool5"], top_k=4)
    page = path.read_text()
    assert "<script" not in page and "src='http" not in page and 'src="http' not in page
    images = re.findall(r"data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)", page)
    kinds = [kind for kind, _ in images]
    assert kinds.count("png") == 1  # the precision-recall plot
    assert kinds.count("jpeg") == 2 * (1 + 4)  # each query and its top 4
    for kind, data in images:
        head = base64.b64decode(data)[:4]
        assert head.startswith(b"\x89PNG" if kind == "png" else b"\xff\xd8")
    # Query 0, "good" ranking: junk, positive, positive, negative.
    first_row = page.split("class='row'")[1]
    statuses = re.findall(r"<br>(positive|junk|negative)</div>", first_row)
    assert statuses == ["junk", "positive", "positive", "negative"]
    assert "#2e9d3a" in first_row and "#e0b400" in first_row and "#d0312d" in first_row
    assert "AP 1.000" in first_row
    assert "no positive" in page.split("class='row'")[2]
    assert "good &lt;b&gt;" in page and "0.3333" in page and "VGG16 pool5" in page


def test_report_options_and_errors(report_inputs):
    page = render_report(**report_inputs, show="bad", max_queries=1, top_k=2)
    assert page.count("class='row'") == 1 and "1 more queries not shown" in page
    assert re.findall(r"<br>(positive|junk|negative)</div>", page) == ["negative", "negative"]
    with pytest.raises(ValueError, match="show="):
        render_report(**report_inputs, show="other")
    bad = dict(report_inputs, rankings={"x": np.zeros((2, 3), dtype=int)})
    with pytest.raises(ValueError, match="all 5 database images"):
        render_report(**bad)
    with pytest.raises(ValueError, match="integer array"):
        render_report(**dict(report_inputs, rankings={"x": np.zeros((2, 5))}))


def test_report_survives_a_missing_image(report_inputs, tmp_path):
    inputs = dict(report_inputs, database=[str(tmp_path / "gone.jpg")] + report_inputs["database"][1:])
    page = render_report(**inputs)
    assert "image unavailable" in page


# ------------------------------------------------------------------------------------ the real demo


@pytest.mark.slow
def test_real_demo_on_the_bundled_sample(tmp_path, capsys):
    """The real VGG16 (offline ImageNet weights) on the bundled sample, at a reduced size for speed."""
    from selconv.extraction import WeightsNotFoundError

    try:
        status = cli.main(["demo", "--max-size", "256", "--masks", "max,none", "--out", str(tmp_path), "--no-report"])
    except WeightsNotFoundError as error:  # pragma: no cover - depends on the machine
        pytest.skip(f"no offline VGG16 weights here: {error}")
    assert status == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    random_map = next(row["mAP"] for row in rows if row["kind"] == "random")
    best = max(row["mAP"] for row in rows if row["kind"] == "real")
    assert random_map < 0.25
    assert best > 0.6 > 3 * random_map
    assert "vgg16" in capsys.readouterr().out
