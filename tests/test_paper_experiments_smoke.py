"""Smoke test of benchmarks/paper_experiments.py (the package benchmarks/paper/): every phase runs end to end
on a tiny generated dataset.

The dataset copies the shared layout (oxford5k-subset with official ground-truth files, bsds500,
imagenet-sample-500) with a dozen small synthetic photos, so the test needs no shared data; the CNN is
VGG16 with the ImageNet weights the extractor resolves offline (numbers are meaningless at this size,
only the plumbing is checked).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from paper.experiments.framework import fit_head  # noqa: E402  (the benchmark's package, not selconv)
from paper.main import PHASES  # noqa: E402
from paper.options import parse_args  # noqa: E402
from paper.protocols import Data  # noqa: E402
from paper.run import Run  # noqa: E402
from paper.settings import BASELINES, PHASE_NAMES, PROTOCOLS, TABLE3, VARIANTS  # noqa: E402


def _load_script():
    """The entry point ``benchmarks/paper_experiments.py`` itself, as the command line runs it."""
    spec = importlib.util.spec_from_file_location("paper_experiments", BENCHMARKS / "paper_experiments.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _photo(rng, base, size):
    """A textured image: a landmark's base pattern (shared by its images) plus its own shapes and noise."""
    from PIL import Image, ImageDraw

    width, height = size
    image = base.resize((width, height))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = rng.integers(0, width), rng.integers(0, height)
        r = int(rng.integers(4, max(5, width // 6)))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _base_pattern(rng):
    from PIL import Image

    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((160, 120), Image.Resampling.NEAREST)


def make_tiny_shared_layout(root: Path, seed=0, n_training_per_source=4) -> Path:
    """oxford5k-subset (2 landmarks x 5 images + 2 distractors, 2 official queries) and training photos."""
    rng = np.random.default_rng(seed)
    subset = root / "oxford5k-subset"
    (subset / "jpg").mkdir(parents=True)
    (subset / "groundtruth").mkdir()
    names = []
    for landmark in ("abbey", "bridge"):
        base = _base_pattern(rng)
        images = [f"{landmark}_{i:06d}" for i in range(5)]
        for name in images:
            _photo(rng, base, (160, 120)).save(subset / "jpg" / f"{name}.jpg", quality=90)
        names += images
        gt = subset / "groundtruth"
        (gt / f"{landmark}_1_query.txt").write_text(f"oxc1_{images[0]} 10.0 8.5 150.0 110.0\n")
        (gt / f"{landmark}_1_good.txt").write_text("\n".join(images[:3]) + "\n")
        (gt / f"{landmark}_1_ok.txt").write_text(images[3] + "\n")
        (gt / f"{landmark}_1_junk.txt").write_text(images[4] + "\n")
    for distractor in range(2):
        name = f"other_{distractor:06d}"
        _photo(rng, _base_pattern(rng), (120, 160)).save(subset / "jpg" / f"{name}.jpg", quality=90)
        names.append(name)
    (subset / "images.txt").write_text("\n".join(names) + "\n")
    for source, size in (("bsds500", (160, 107)), ("imagenet-sample-500", (150, 112))):
        (root / source / "jpg").mkdir(parents=True)
        for i in range(n_training_per_source):
            _photo(rng, _base_pattern(rng), size).save(root / source / "jpg" / f"{source}_{i}.jpg", quality=90)
    return root


#: The phases of issue 12 (beyond the paper), after the older ones in PHASE_NAMES.
NEW_PHASES = ("rerank", "robust", "multiscale", "table3", "table7")
OLD_PHASES = PHASE_NAMES[: -len(NEW_PHASES)]
#: Their report sections.
NEW_HEADINGS = ("## 8d.", "## 8e.", "## 8f.", "## 8g.", "## 8h.")

#: Sections of paper_results.md every run writes (8b, the same-domain learning, only with --train-source).
REPORT_HEADINGS = ("## 1.", "## 2.", "## 3.", "## 4.", "## 5.", "## 6.", "## 7.", "## 8.", "## 8c.", "## 9.", "## 10.")


@pytest.mark.slow
def test_paper_experiments_runs_every_phase(tmp_path):
    from threadpoolctl import threadpool_limits

    script = _load_script()
    # 2 x 33 training photos: enough vectors for 64-bit ITQ (n_bits <= n_samples); 512 bits is skipped.
    data = make_tiny_shared_layout(tmp_path / "data", n_training_per_source=33)
    out = tmp_path / "out"
    argv = [
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--max-size",
        "128",
        "--device",
        "cpu",
        "--batch-size",
        "8",
        "--num-workers",
        "2",
        "--n-jobs",
        "2",
        "--limit-db",
        "11",
        "--budget-s",
        "1e9",
        "--sweep-dims",
        "2048",
        "--table9",
        "32,20",
        "--skip",
        ",".join(NEW_PHASES),  # test_new_phases_run_alone_and_merge runs them
    ]
    # One BLAS thread: on a shared CI machine multi-threaded eigh can be 20x slower, not faster.
    with threadpool_limits(1):
        report = script.main(argv)

    text = report.read_text()
    results = json.loads((out / "paper_results.json").read_text())
    assert not results["errors"], results["errors"]
    # The 'domain' phase runs only with --train-source oxford-unlabelled or both; 11 database images
    # cannot support dropping 128 directions (phases framework-database and protocols).
    truncated = {"database truncated", "protocols truncated max", "protocols truncated sum"}
    expected = {"ITQ 128 bits", "ITQ 256 bits", "ITQ 512 bits", "domain", *NEW_PHASES} | truncated
    assert set(results["skipped"]) == expected, results["skipped"]
    for heading in REPORT_HEADINGS:
        assert heading in text, f"{heading} missing from the report"
    # The learning-protocol table: every baseline learned on the database with and without shrinkage.
    assert set(results["protocols"]["baselines"]) == {"spoc", "mac", "rmac", "crow", "gem"}
    for scores in results["protocols"]["baselines"].values():
        assert set(scores) == {"no shrinkage", "ledoit-wolf"}
    # Every configuration produced an mAP in [0, 100] for both protocols.
    for key, value in results["framework"].items():
        for protocol in ("official-10", "loo-landmark"):
            assert 0.0 <= value[protocol]["map"] <= 100.0, key
    assert set(results["framework"]) >= {
        f"{f}/{m}/{d}" for f in ("training", "database") for m in ("max", "sum", "sift", "none") for d in (512, 1024)
    }
    assert {"real", "64"} <= set(results["itq"])
    assert set(results["baselines"]) == {"spoc", "mac", "rmac", "crow", "gem"}
    # pool5 is the 2x2 max-pool of conv5_3: the hypercolumn extraction agrees with the pool5 one.
    assert results["pool5_vs_maxpooled_conv5_3_max_rel_diff"] < 1e-3
    assert sorted(p.name for p in out.glob("*.png")) == ["fig4_alpha.png", "fig5_dimensions.png", "fig_itq.png"]
    assert len(list(out.iterdir())) <= 8

    # A second run resumes from the map cache: nothing new is written and the masks see the same maps.
    cached = sorted((tmp_path / "cache" / "maps").rglob("*.map"))
    assert len(cached) == 66 + 11 + 2
    # It runs ONLY the new 'domain' phase, learning on generic + unlabelled database images ('both').
    out2 = tmp_path / "out2"
    rerun_argv = [a if a != str(out) else str(out2) for a in argv]
    with threadpool_limits(1):
        script.main(
            rerun_argv
            + [
                "--train-source",
                "both",
                "--skip",
                ",".join(p for p in PHASE_NAMES if p != "domain"),
            ]
        )
    rerun = json.loads((out2 / "paper_results.json").read_text())
    assert sorted((tmp_path / "cache" / "maps").rglob("*.map")) == cached
    assert rerun["mask_share"] == results["mask_share"]
    assert not rerun["framework"] and not rerun["errors"], rerun["errors"]
    # --limit-db 11 keeps the 10 labelled images and one of the two distractors: 66 + 1 learning images.
    assert rerun["data"]["n_unlabelled"] == 1 and rerun["domain"]["both"]["n_train"] == 67
    assert set(rerun["domain"]["both"]["framework"]) == {
        f"{m}/{d}" for m in ("max", "sum", "sift", "none") for d in (512, 1024)
    }
    assert set(rerun["domain"]["both"]["baselines"]) == {"spoc", "mac", "rmac", "crow", "gem"}
    assert "64" in rerun["domain"]["both"]["itq"]
    assert "## 8b." in (out2 / "paper_results.md").read_text()

    # Merge: no computation, no data folder; later file wins, resolved 'skipped' entries dropped.
    merged_out = tmp_path / "merged"
    script.main(
        ["--merge-json", str(out / "paper_results.json"), str(out2 / "paper_results.json"), "--out", str(merged_out)]
    )
    merged = json.loads((merged_out / "paper_results.json").read_text())
    merged_text = (merged_out / "paper_results.md").read_text()
    assert merged["framework"] == results["framework"]
    assert merged["domain"] == rerun["domain"]
    assert set(merged["skipped"]) == {"ITQ 128 bits", "ITQ 256 bits", "ITQ 512 bits", *NEW_PHASES} | truncated | {
        f"domain[both] ITQ {b} bits" for b in (128, 256, 512)
    }, merged["skipped"]
    assert merged_text.count("Device run ") == 2 and "Merged (no computation) by" in merged_text
    for heading in sorted({*REPORT_HEADINGS, "## 8b."}):
        assert merged_text.count(heading) == 1, heading
    assert "Learned on generic photos + unlabelled Oxford-subset images, 512-D" in merged_text
    assert "run 1: load data" in merged_text and "run 2: load data" in merged_text
    assert sorted(p.name for p in merged_out.glob("*.png")) == ["fig4_alpha.png", "fig5_dimensions.png", "fig_itq.png"]


@pytest.mark.slow
def test_new_phases_run_alone_and_merge(tmp_path):
    """Only the phases of issue 12 (every older one skipped; extraction and masks run, from the cache on a
    re-run), then merged with the committed runs: the older sections render as before, the new ones appear."""
    from threadpoolctl import threadpool_limits

    script = _load_script()
    data = make_tiny_shared_layout(tmp_path / "data", n_training_per_source=33)
    out = tmp_path / "out"
    argv = ["--data-dir", str(data), "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    argv += ["--max-size", "128", "--device", "cpu", "--batch-size", "8", "--num-workers", "2", "--n-jobs", "2"]
    # Learning set of the robust rows 'both': the 2 unlabelled images alone have too few local features.
    argv += ["--budget-s", "1e9", "--train-source", "both", "--skip", ",".join(OLD_PHASES)]
    # Table 3 under two masks (the others take the same path; each whitened cell costs an eigendecomposition).
    argv += ["--table3-masks", "max,none"]
    with threadpool_limits(1):
        script.main(argv)
    results = json.loads((out / "paper_results.json").read_text())
    text = (out / "paper_results.md").read_text()
    assert not results["errors"], results["errors"]
    assert set(results["skipped"]) >= set(OLD_PHASES) and not set(results["skipped"]) & set(NEW_PHASES)
    assert not results["framework"] and "baselines" not in results
    rows = {f"{m}/{d}/{v}" for m in ("max", "sum") for d in (512, 1024) for v in VARIANTS}
    baselines = {"spoc", "mac", "rmac", "crow", "gem"}
    for option in ("single-scale", "multi-scale"):
        assert set(results["options"][option]) == rows | baselines, option
        for r in results["options"][option].values():
            assert set(r["levels"]) == {"none", "alpha-QE", "DBA+alpha-QE"}
            assert all(0.0 <= r["levels"][lv][p]["map"] <= 100.0 for lv in r["levels"] for p in PROTOCOLS)
    assert set(results["robust"]["both"]) == rows | {"n_train"} and results["robust"]["both"]["n_train"] == 68
    frameworks = ("FV", "VLAD", "Temb", "F-FAemb", "FV+avg", "VLAD+sum")
    assert set(results["table3"]) == {f"{e}/{m}" for e in frameworks for m in ("max", "none")}
    # 66 learning vectors: 64 bits only (n_bits <= learning vectors), as ITQ.
    assert set(results["table7"]) == {"KMH/64", "RBA/64"}
    assert results["phase_runs"]["table3"]["command"] == argv
    for heading in NEW_HEADINGS:
        assert text.count(heading) == 1, heading
    assert "Target (section 8f)" in text

    # Merged with the committed runs: the committed report's older sections are unchanged, the new ones added.
    committed = BENCHMARKS / "results" / "paper"
    runs = sorted((committed / "runs").glob("*.json"))
    merged_out = tmp_path / "merged"
    script.main(["--merge-json", *map(str, runs), str(out / "paper_results.json"), "--out", str(merged_out)])
    merged_text = (merged_out / "paper_results.md").read_text()
    # The tiny run's data counts and mask shares win the merge (later file): compare counts-free lines only.
    baseline_rows = [line for line in (committed / "paper_results.md").read_text().splitlines() if "| R-MAC |" in line]
    assert baseline_rows and all(line in merged_text for line in baseline_rows)
    for heading in REPORT_HEADINGS + ("## 8b.",):
        assert merged_text.count(heading) == 1, heading
    for heading in NEW_HEADINGS:
        assert merged_text.count(heading) == 1, heading


def test_committed_report_renders_unchanged_without_the_new_phases(tmp_path, monkeypatch):
    """Re-rendering the committed runs gives the committed paper_results.md byte for byte (but the --out)."""
    script = _load_script()
    committed = BENCHMARKS / "results" / "paper"
    monkeypatch.chdir(BENCHMARKS.parent)  # the report names the runs' files as given: relative, as committed
    runs = sorted(str(p.relative_to(BENCHMARKS.parent)) for p in (committed / "runs").glob("*.json"))
    script.main(["--merge-json", *runs, "--out", str(tmp_path)])
    ours = (tmp_path / "paper_results.md").read_text().replace(str(tmp_path), "benchmarks/results/paper")
    assert ours == (committed / "paper_results.md").read_text()


def test_phase_table_matches_the_phase_names_the_command_line_lists():
    assert tuple(PHASES) == PHASE_NAMES


def test_database_limit_keeps_positives_and_remaps_ground_truth(tmp_path):
    data = make_tiny_shared_layout(tmp_path / "data")
    args = parse_args(["--data-dir", str(data), "--out", str(tmp_path / "o"), "--limit-db", "6", "--limit-train", "3"])
    loaded = Data(args)
    assert len(loaded.database) == 6 and len(loaded.training) == 3
    for gt in loaded.official_gt + loaded.loo_gt:
        assert len(gt["positives"]) > 0
        assert np.all(gt["positives"] < 6) and np.all(gt["junk"] < 6)
    # Remapped indices point at the same files as before the limit.
    names = [Path(p).stem for p in loaded.database]
    for row, gt in zip(loaded.loo_rows, loaded.loo_gt):
        assert names[row].split("_")[0] == names[gt["positives"][0]].split("_")[0]


def test_unlabelled_images_are_in_no_ground_truth_list(tmp_path):
    data = make_tiny_shared_layout(tmp_path / "data")
    loaded = Data(parse_args(["--data-dir", str(data), "--out", str(tmp_path / "o")]))
    # Every abbey_/bridge_ image is a query, good, ok or junk; only the two distractors are unlabelled.
    assert [Path(loaded.database[i]).stem for i in loaded.unlabelled_rows] == ["other_000000", "other_000001"]
    assert loaded.summary()["n_unlabelled"] == 2 and loaded.summary()["n_groundtruth_queries"] == 2


def test_merge_mode_needs_no_data_dir_and_reads_only_json(tmp_path):
    script = _load_script()
    args = parse_args(["--merge-json", "a.json", "b.json", "--out", str(tmp_path)])
    assert args.data_dir is None and [p.name for p in args.merge_json] == ["a.json", "b.json"]
    with pytest.raises(SystemExit):
        parse_args(["--out", str(tmp_path)])  # a computing run needs --data-dir
    with pytest.raises(SystemExit, match="cannot read"):
        script.main(["--merge-json", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o")])


def test_parallel_fit_equals_pipeline_fit_transform(tmp_path):
    """The script's chunked, threaded fit gives the Pipeline's own fit_transform result."""
    from conftest import make_local_sets

    from selconv.pipelines import make_paper_pipeline

    args = parse_args(["--data-dir", str(tmp_path), "--out", str(tmp_path / "o"), "--n-jobs", "2"])
    run = Run(args)
    # Several times more local features than the 640 embedding dimensions: a well-conditioned whitening.
    sets = make_local_sets(counts=(300, 0, 250, 120, 400, 1, 350, 280, 180, 270), n_features=48)
    # Images with content of their own (a per-image offset): with i.i.d. features every image would have
    # nearly the same aggregate, and centring before the rotation would magnify rounding differences.
    offsets = np.random.default_rng(1).gamma(1.0, 1.0, size=(len(sets), 48)).astype(np.float32)
    sets = [s + offset for s, offset in zip(sets, offsets)]
    # 10 images determine 9 of the 640 rotated directions: the rotation keeps those (and drops none).
    reference = make_paper_pipeline(512, n_dropped=0, undetermined="drop")[1:-1].fit_transform(sets)
    head = make_paper_pipeline(512, n_dropped=0, undetermined="drop")[1:-1]
    ours = fit_head(run, head, sets)
    # Chunked float32 GEMMs round differently from whole-array ones (~1e-7); a rotation learned from 10
    # vectors magnifies that along its weakest directions, hence an absolute tolerance of 5e-4.
    np.testing.assert_allclose(ours, reference, atol=5e-4)
    # Chunked transform (chunks of 3 images in 2 threads) equals the plain transform.
    np.testing.assert_allclose(run.transform(head, sets, chunk=3), head.transform(sets), rtol=1e-4, atol=1e-5)


# ---- Table 3: incremental saves, the paper's pooling rows; --multiscale-methods; merge key by key


def _score(value):
    return {p: {"map": value, "se": 1.0, "aps": [value]} for p in PROTOCOLS}


def _table3_run(tmp_path, monkeypatch, fail_at=None, budget_cells=None, extra_args=()):
    """A Run whose phase_table3 fits nothing: each cell's fit is faked (the plumbing only), cell ``fail_at``
    (1-based) raising ``fail_at[1]``, and the budget spent after ``budget_cells`` cells."""
    from types import SimpleNamespace

    import paper.experiments.paper_tables as paper_tables

    args = parse_args(["--data-dir", str(tmp_path), "--out", str(tmp_path / "o"), "--table3-masks", "max", *extra_args])
    run = Run(args)
    run.sets = {"max": {"train": [], "db": [], "official": []}}
    calls = []

    def fake_fit(run, head, sets, *, fit_on, label):
        calls.append(label)
        if fail_at is not None and len(calls) == fail_at[0]:
            raise fail_at[1]
        return {"dim": 4224, "pre": {}, "fit_s": 0.0, "transform_s": 0.0}

    fake_head = [None, SimpleNamespace(device="cpu"), SimpleNamespace(rotated_=False)]
    monkeypatch.setattr(paper_tables, "table3_head", lambda run, name, n_train: fake_head)
    monkeypatch.setattr(paper_tables, "fit_transform_head", fake_fit)

    def fake_record(run, fitted, **extra):
        return dict(_score(50.0), dim=fitted["dim"], **extra)

    monkeypatch.setattr(paper_tables, "framework_record", fake_record)
    if budget_cells is not None:
        monkeypatch.setattr(run, "over_budget", lambda: len(calls) >= budget_cells)
    return run, paper_tables.phase_table3


def _saved(run):
    return json.loads((run.out / "paper_results.json").read_text())


def test_table3_saves_each_cell_as_it_finishes(tmp_path, monkeypatch):
    """Killed during its second cell (an exception no phase catches), the run's JSON has the first cell."""
    run, phase_table3 = _table3_run(tmp_path, monkeypatch, fail_at=(2, KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        phase_table3(run)
    first = next(iter(TABLE3))
    assert set(_saved(run)["table3"]) == {f"{first}/max"}
    assert f"| {first}(" in (run.out / "paper_results.md").read_text()


def test_table3_failed_cell_is_recorded_and_the_others_run(tmp_path, monkeypatch):
    run, phase_table3 = _table3_run(tmp_path, monkeypatch, fail_at=(2, RuntimeError("no memory")))
    phase_table3(run)
    names = list(TABLE3)
    saved = _saved(run)
    assert set(saved["table3"]) == {f"{n}/max" for n in names if n != names[1]}
    assert saved["errors"] == {f"table 3 {names[1]} max": "RuntimeError: no memory"}


def test_table3_budget_spent_keeps_the_finished_cells(tmp_path, monkeypatch):
    run, phase_table3 = _table3_run(tmp_path, monkeypatch, budget_cells=1)
    phase_table3(run)
    names = list(TABLE3)
    saved = _saved(run)
    assert set(saved["table3"]) == {f"{names[0]}/max"}
    assert {k for k in run.results["skipped"] if k.startswith("table 3 ")} == {f"table 3 {n} max" for n in names[1:]}


def test_table3_rows_runs_only_the_cells_named(tmp_path, monkeypatch):
    """--table3-rows with --table3-masks: a call runs exactly the cells an earlier run left, in the order given."""
    run, phase_table3 = _table3_run(tmp_path, monkeypatch, extra_args=("--table3-rows", "VLAD+sum,Temb"))
    phase_table3(run)
    assert list(_saved(run)["table3"]) == ["VLAD+sum/max", "Temb/max"]
    with pytest.raises(SystemExit):
        parse_args(["--data-dir", str(tmp_path), "--out", str(tmp_path / "o"), "--table3-rows", "Temb,NetVLAD"])


def test_table3_heads_pooling_and_device(tmp_path):
    """FV+avg / VLAD+sum: the embedding of FV / VLAD with average / sum pooling, at the same (d, |C|); the
    encoding runs on the CNN's resolved CUDA device, else on the CPU."""
    from paper.experiments.paper_tables import table3_head

    import selconv

    run = Run(parse_args(["--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]))
    for name, aggregator in (("FV+avg", selconv.AveragePooling), ("VLAD+sum", selconv.SumPooling)):
        plain, pooled = table3_head(run, name.split("+")[0], 1000), table3_head(run, name, 1000)
        assert isinstance(pooled.get_params()["encode__aggregator"], aggregator)
        assert isinstance(plain.get_params()["encode__aggregator"], selconv.DemocraticAggregator)
        for param in ("pca__n_components", "rotate__n_dropped"):
            assert pooled.get_params()[param] == plain.get_params()[param], param
        assert repr(pooled.get_params()["encode__embedding"]) == repr(plain.get_params()["encode__embedding"])
        assert pooled.get_params()["encode__device"] == "cpu"
    assert table3_head(run, "Temb", 10**6).get_params()["rotate__n_dropped"] == 128
    run.results["pool5"] = {"device": "cuda:0"}
    assert table3_head(run, "FV+avg", 1000).get_params()["encode__device"] == "cuda:0"
    run.results["pool5"] = {"device": "cpu"}
    assert table3_head(run, "Temb", 1000).get_params()["encode__device"] == "cpu"


def test_table3_renders_the_paper_rows_in_order_with_or_without_the_pooling_rows(tmp_path):
    from paper.report.beyond import write_table3_section

    run = Run(parse_args(["--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]))
    labels = ["FV(48,44) + psi_a", "FV(48,44) + psi_d", "VLAD(64,66) + psi_s", "VLAD(64,66) + psi_d"]
    labels += ["Temb(64,68) + psi_d", "F-FAemb(32,10) + psi_d"]
    for keys in (("FV", "VLAD", "Temb", "F-FAemb"), tuple(TABLE3)):  # an older run's JSON; a current one
        run.results["table3"] = {f"{k}/max": dict(_score(40.0 + i), dim=4224) for i, k in enumerate(keys)}
        write_table3_section(run)
        rows = [line for line in run.report.sections["table3"].splitlines() if " + psi_" in line]
        assert [row.split(" | ")[0][2:].split(" (")[0] for row in rows] == labels
        pooled = {row.split(" | ")[0][2:].split(" (")[0]: row for row in rows}
        for key, label, paper in (
            ("FV+avg", "FV(48,44) + psi_a", "67.8 / 65.1 / 65.5 / 59.5"),
            ("VLAD+sum", "VLAD(64,66) + psi_s", "66.3 / 65.6 / 66.4 / 65.1"),
        ):
            assert paper in pooled[label]
            dim, max_official = pooled[label].split(" | ")[1:3]  # '-' from an older run's JSON
            expected = ("-", "-") if key not in keys else ("4224", f"{40.0 + keys.index(key):.1f} ± 1.0")
            assert (dim, max_official) == expected


def test_multiscale_methods_option(tmp_path):
    def methods(*extra):
        return parse_args(["--data-dir", str(tmp_path), "--out", str(tmp_path / "o"), *extra]).multiscale_methods

    assert methods() == (tuple(VARIANTS), BASELINES)
    assert methods("--multiscale-methods", "all") == (tuple(VARIANTS), BASELINES)
    assert methods("--multiscale-methods", "gem, crow") == ((), ("crow", "gem"))
    assert methods("--multiscale-methods", "framework") == (tuple(VARIANTS), ())
    assert methods("--multiscale-methods", "framework-whitened-rn,mac") == (("ledoit-wolf + whitened RN",), ("mac",))
    for bad in ("crow,sift", "", "all,crow"):
        with pytest.raises(SystemExit):
            methods("--multiscale-methods", bad)


def test_merge_combines_a_phase_key_by_key(tmp_path):
    """A later run of some multi-scale methods (and of some Table 3 cells) adds to an earlier run's, and the
    report names both runs; a failed cell's error goes once a run has the cell."""
    script = _load_script()

    def option(value):
        return {"levels": {lv: _score(value) for lv in ("none", "alpha-QE", "DBA+alpha-QE")}, "dim": 512}

    earlier = {
        "options": {"multi-scale": {"max/512/paper": option(50.0), "spoc": dict(option(40.0), whitening="none")}},
        "table3": {"FV/max": dict(_score(60.0), dim=4224)},
        "skipped": {"multi-scale baseline crow": "time budget", "table 3 VLAD max": "time budget"},
        "errors": {"table 3 FV+avg max": "RuntimeError: x"},
        "phase_runs": {p: {"command": ["--run", "1"], "gpu": "G1", "cpu_count": 16} for p in ("multiscale", "table3")},
    }
    later = {
        "options": {"multi-scale": {"crow": dict(option(45.0), whitening="none")}},
        "table3": {"VLAD/max": dict(_score(55.0), dim=4224), "FV+avg/max": dict(_score(52.0), dim=4224)},
        "skipped": {},
        "errors": {},
        "phase_runs": {"multiscale": {"command": ["--run", "2"], "gpu": "G2", "cpu_count": 16}},
    }
    # A committed run's data summary and machine (the report's header needs them).
    committed = json.loads((BENCHMARKS / "results" / "paper" / "runs" / "run07_h200.json").read_text())
    paths = []
    for i, results in enumerate((earlier, later)):
        paths.append(tmp_path / f"run{i}.json")
        context = {k: committed[k] for k in ("data", "machine")}
        paths[-1].write_text(json.dumps(dict(results, framework={}, command=[], **context)))
    script.main(["--merge-json", *map(str, paths), "--out", str(tmp_path / "merged")])
    merged = json.loads((tmp_path / "merged" / "paper_results.json").read_text())
    assert set(merged["options"]["multi-scale"]) == {"max/512/paper", "spoc", "crow"}
    assert set(merged["table3"]) == {"FV/max", "VLAD/max", "FV+avg/max"}
    assert not merged["errors"] and not merged["skipped"]
    assert [r["gpu"] for r in merged["phase_runs"]["multiscale"]] == ["G1", "G2"]
    assert merged["phase_runs"]["table3"]["gpu"] == "G1"
    text = (tmp_path / "merged" / "paper_results.md").read_text()
    assert "--run 1` on G1 (16 CPUs) and by `PYTHONPATH=src python3 benchmarks/paper_experiments.py --run 2`" in text
