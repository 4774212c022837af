"""Evaluate the paper's pipeline (and the baselines) on a retrieval dataset: what ``selconv demo`` and ``evaluate`` run.

:func:`run_benchmark` extracts conv maps (cached on disk, so an interrupted run resumes), fits the
paper's pipeline (:func:`selconv.pipelines.make_paper_pipeline`) once per mask and each requested
baseline (:func:`selconv.make_baseline`) on a training set, evaluates real-valued descriptors and ITQ
binary codes on the dataset's queries, adds a random-ranking reference, and returns a
:class:`BenchmarkResult` whose rows and notes say what produced every number; it also writes
``results.json`` and an HTML report. The command line only parses arguments and calls it.
"""

from __future__ import annotations

import json
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from selconv.evaluation._settings import N_RANDOM_RANKINGS

__all__ = ["BenchmarkResult", "format_table", "random_ranking_map", "run_benchmark"]


@dataclass
class BenchmarkResult:
    """What :func:`run_benchmark` computed.

    Attributes
    ----------
    rows : list of dict
        One per descriptor: ``kind`` (real, binary, baseline, random), ``descriptor``, ``size``,
        ``mAP``, ``queries`` and, where they apply, ``N-S``, ``mask``, ``dims`` and ``kept``.
    notes : list of str
        How the numbers were produced (dataset, backbone, training set, protocol, time).
    warnings : list of str
        Warnings raised while computing them, and the ITQ lengths that were skipped.
    rankings : dict of str to ndarray
        Each descriptor's full ranking per query (the report's input).
    report_path, results_path : Path or None
        Where ``report.html`` and ``results.json`` were written.
    """

    rows: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    rankings: dict = field(default_factory=dict)
    report_path: Path | None = None
    results_path: Path | None = None


def random_ranking_map(n_database: int, ground_truth, *, n_rankings=N_RANDOM_RANKINGS, random_state=0) -> float:
    """Mean mAP of `n_rankings` seeded random rankings: the score of a descriptor that knows nothing."""
    from selconv.metrics import mean_average_precision

    rng = np.random.default_rng(random_state)
    n_queries = len(ground_truth)
    return float(
        np.mean(
            [
                mean_average_precision(np.stack([rng.permutation(n_database) for _ in range(n_queries)]), ground_truth)
                for _ in range(n_rankings)
            ]
        )
    )


def run_benchmark(
    dataset,
    *,
    training,
    training_name: str,
    preset: int = 512,
    masks=("max",),
    bits=(),
    baselines=(),
    baseline_whitening: bool = True,
    max_size: int | None = 1024,
    device: str = "auto",
    out=Path("selconv-output/evaluate"),
    cache_dir=None,
    top_k: int = 8,
    random_state: int = 0,
    report: bool = True,
    fit_on: str = "training",
    title: str = "selconv retrieval report",
    extra_notes=(),
    extractor=None,
    stream=None,
) -> BenchmarkResult:
    """Fit every method on `training`, evaluate it on `dataset`, print and save the results.

    Parameters
    ----------
    dataset : RetrievalDataset
        Queries (with boxes), database and ground truth; images needing a rotation are turned
        upright into ``out/upright`` first.
    training : list of path
        Images every method (and ITQ) is fitted on; never the test database unless ``fit_on="database"``.
    training_name : str
        How the training set is described in the output.
    preset : int, default=512
        Final dimension D of the paper's Table 4.
    masks : sequence of {"max", "sum", "sift", "none"}, default=("max",)
        One paper pipeline per mask.
    bits : sequence of int, default=()
        ITQ code lengths (multiples of 8), learned on the training descriptors of the first mask. A
        length the training set cannot support (:func:`~selconv.evaluation.itq_bits_problem`) is skipped
        with a note.
    baselines : sequence of str, default=()
        Keys of :data:`~selconv.evaluation.BASELINE_LABELS`, evaluated beside the paper's pipeline.
    baseline_whitening : bool, default=True
        Learn the baselines' PCA-whitening on the training set (see :func:`selconv.make_baseline`).
    max_size, device : int or None, str
        Conv-map extraction settings (VGG16, pool5).
    out : path
        Folder for ``results.json`` and ``report.html``.
    cache_dir : path or None
        Conv-map cache (default: :func:`~selconv.evaluation.default_cache_dir`).
    top_k : int, default=8
        Results per query in the report.
    random_state : int, default=0
        Seeds every random stage.
    report : bool, default=True
        Write ``report.html``.
    fit_on : {"training", "database"}, default="training"
        The protocol (see :func:`selconv.pipelines.make_paper_pipeline`).
    title, extra_notes : str, sequence of str
        Report title; lines added to the notes.
    extractor : ConvFeatureExtractor or None
        Use this (unfitted or fitted) extractor instead of VGG16 pool5 built from the settings
        above (tests pass a tiny random-weight one).
    stream : file or None
        Where the table and progress lines go (default: stdout).

    Returns
    -------
    BenchmarkResult
    """
    # Long only by its signature and docstring (the options of `selconv evaluate`); the body is about 40 lines.
    from selconv.evaluation._steps import describe_all, fit_methods, prepare_extractor

    if not masks:
        raise ValueError("run_benchmark: give at least one mask (the ITQ codes and the notes use the first).")
    say = _printer(stream)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if dataset.needs_rotation:
        from selconv.datasets import apply_rotations

        say("Turning rotated images upright (the dataset's rotation list) ...")
        dataset = apply_rotations(dataset, out / "upright")
    started = time.perf_counter()
    extractor = prepare_extractor(
        extractor, max_size=max_size, device=device, sift="sift" in masks, cache_dir=cache_dir, say=say
    )
    say(f"{dataset.summary()}")
    say(f"Training set: {training_name}: {len(training)} images.")
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        methods = fit_methods(
            extractor,
            dataset.database_inputs() if fit_on == "database" else list(training),
            preset=preset,
            masks=masks,
            bits=bits,
            baselines=baselines,
            baseline_whitening=baseline_whitening,
            random_state=random_state,
            fit_on=fit_on,
            say=say,
        )
        described = describe_all(extractor, dataset, methods, say=say)
        result = _score(dataset, methods, described, random_state=random_state, say=say)
    result.warnings = list(dict.fromkeys([f"{w.category.__name__}: {w.message}" for w in recorded] + methods.skipped))
    seconds = {"total": time.perf_counter() - started, "fit": methods.fit_seconds}
    result.notes = _notes(dataset, extractor, methods, described.stats, training_name, fit_on, seconds, extra_notes)
    _present(result, say)
    _save(result, dataset, out=out, title=title, report=report, top_k=top_k, say=say)
    return result


def _printer(stream):
    stream = sys.stdout if stream is None else stream

    def say(text=""):
        print(text, file=stream, flush=True)

    return say


def _score(dataset, methods, described, *, random_state, say) -> BenchmarkResult:
    """The rows of every fitted method, in the order paper pipelines, baselines, ITQ codes, random ranking."""
    from selconv.metrics import evaluate, ns_score

    result = BenchmarkResult()
    ground_truth = dataset.ground_truth
    say("Results:")
    for row, query_desc, db_desc in methods.rows(described):
        evaluation = evaluate(query_desc, db_desc, ground_truth)
        row = {**row, "mAP": float(evaluation.map), "queries": len(dataset.queries)}
        if "N-S" in dataset.scores:
            row["N-S"] = float(ns_score(evaluation.rankings, ground_truth))
        result.rankings[row.pop("label")] = evaluation.rankings.astype(np.int32)  # half the memory of int64
        result.rows.append(row)
        say(f"  {row['descriptor']:<64} {row['size']:<18} mAP {row['mAP']:.4f}")
    result.rows.append(
        {
            "kind": "random",
            "descriptor": f"random ranking (mean of {N_RANDOM_RANKINGS} seeded shuffles)",
            "size": "-",
            "mAP": random_ranking_map(len(dataset.database), ground_truth, random_state=random_state),
            "queries": len(dataset.queries),
        }
    )
    return result


def _notes(dataset, extractor, methods, stats, training_name, fit_on, seconds, extra_notes) -> list[str]:
    settings = extractor.get_params()
    n_queries = len(dataset.queries)
    n_cropped = sum(box is not None for box in dataset.query_boxes)
    return [
        f"Dataset: {dataset.summary()}; {n_cropped} of the {n_queries} queries cropped to their bounding box.",
        f"Backbone: {settings['backbone']} with ImageNet weights ({extractor.weights_source_}); layer "
        f"{', '.join(extractor.layers_)} (K = {extractor.n_channels_} channels); images resized to a longest side "
        f"of {settings['max_size']} px"
        + (f", described at scales {tuple(settings['scales'])} of it." if tuple(settings["scales"]) != (1.0,) else "."),
        f"Conv-map grid: {stats['width']:.1f} x {stats['height']:.1f} cells on average (database); "
        "the MAX-mask keeps at most "
        f"K = {extractor.n_channels_} cells per image, so it keeps a larger fraction of small grids (paper, 1024 px: "
        "MAX/SUM/SIFT keep about 30/50/75%).",
        f"Parameters (local PCA, codebook, Temb whitening, rotation, ITQ, baseline whitening) learned on: "
        f"{training_name} ({methods.n_training} images); protocol fit_on={fit_on!r}.",
        "mAP: Oxford protocol (junk images removed from the ranking); descriptors ranked by inner product, "
        "codes by Hamming distance.",
        f"Time: {seconds['total']:.0f} s in all (conv maps, cache reads included, and descriptors), of which "
        f"fitting {seconds['fit']:.0f} s; {platform.machine()}, torch device {extractor.device_}.",
        *([methods.rotation_note] if methods.rotation_note else []),
        *extra_notes,
    ]


def _present(result: BenchmarkResult, say) -> None:
    say()
    say(format_table(result.rows))
    say()
    for note in result.notes:
        say(f"* {note}")
    for line in result.warnings:
        say(f"! {line}")


def _save(result: BenchmarkResult, dataset, *, out: Path, title, report, top_k, say) -> None:
    """Write ``results.json`` and (if `report`) ``report.html`` under `out`; record their paths in `result`."""
    result.results_path = out / "results.json"
    result.results_path.write_text(
        json.dumps({"title": title, "rows": result.rows, "notes": result.notes, "warnings": result.warnings}, indent=2)
    )
    if report:
        from selconv.report import write_report

        result.report_path = write_report(
            out / "report.html",
            queries=dataset.query_inputs(),
            database=list(dataset.database),
            ground_truth=dataset.ground_truth,
            rankings=result.rankings,
            table=[{k: v for k, v in row.items() if k not in ("kind", "mask")} for row in result.rows],
            title=title,
            notes=result.notes + [f"warning: {w}" for w in result.warnings],
            top_k=top_k,
        )
        say(f"Report: {result.report_path}")
    say(f"Results: {result.results_path}")


def format_table(rows) -> str:
    """The results as an aligned text table (what the command prints)."""
    columns = ["descriptor", "size", "mAP"] + (["N-S"] if any("N-S" in r for r in rows) else []) + ["queries", "kept"]
    headers = {"kept": "features kept"}
    cells = [[headers.get(c, c) for c in columns]]
    for row in rows:
        line = []
        for column in columns:
            value = row.get(column, "")
            if column == "kept" and value != "":
                value = f"{100 * value:.0f}%"
            elif isinstance(value, float):
                value = f"{value:.4f}"
            line.append(str(value))
        cells.append(line)
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    text = ["  ".join(value.ljust(width) for value, width in zip(line, widths)).rstrip() for line in cells]
    text.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(text)
