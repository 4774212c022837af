"""The ``selconv`` command line: ``selconv demo`` (bundled sample) and ``selconv evaluate`` (any dataset).

Both run the same job, :func:`run_benchmark`: extract VGG16 conv maps (cached on disk, so an
interrupted run resumes), fit the paper's pipeline (:func:`selconv.pipelines.make_paper_pipeline`) on a
training set for each mask, evaluate real-valued descriptors and ITQ binary codes, print an mAP table
that says what produced every number, and write ``results.json`` and an HTML report.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["DATASETS", "BenchmarkResult", "build_parser", "format_table", "main", "run_benchmark"]

#: Datasets ``selconv evaluate --dataset`` knows; "folder" is the user format of docs/datasets.md.
DATASETS = (
    "sample", "folder", "oxford5k", "paris6k", "roxford5k", "rparis6k", "holidays", "ukbench", "oxford5k-subset",
)

_MASK_LABELS = {"max": "MAX-mask", "sum": "SUM-mask", "sift": "SIFT-mask", "none": "no mask"}

#: Bit lengths tried by ``selconv demo`` (the paper's binary results use 64..512 bits).
DEMO_BITS = (16, 32, 64, 128, 256)

#: Seeded random rankings averaged for the "random ranking" reference row.
_N_RANDOM_RANKINGS = 20


class CommandError(Exception):
    """A user error (bad path, unusable setting): printed as ``selconv: error: ...``, exit status 2."""


@dataclass
class BenchmarkResult:
    """What :func:`run_benchmark` computed: one row per descriptor, plus how it was produced."""

    rows: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    report_path: Path | None = None
    results_path: Path | None = None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``selconv`` (subcommands ``demo`` and ``evaluate``)."""
    from selconv import __version__
    from selconv.pipelines import MASKS, PAPER_SETTINGS

    parser = argparse.ArgumentParser(
        prog="selconv",
        description="Selective deep convolutional features for image retrieval (Do, Hoang et al.).",
    )
    parser.add_argument("--version", action="version", version=f"selconv {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{demo,evaluate}")

    def common(sub, *, max_size_default, out_default):
        sub.add_argument("--out", type=Path, default=Path(out_default),
                         help="output folder for results.json, report.html and the conv-map cache "
                              "(default: %(default)s)")
        sub.add_argument("--cache-dir", type=Path, default=None,
                         help="where conv maps are cached (default: OUT/cache); rerunning resumes from it")
        sub.add_argument("--max-size", type=_positive_int, default=max_size_default,
                         help="resize images so the longest side is this many pixels "
                              "(default: %(default)s; paper: 1024)")
        sub.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:1, ... (default: auto)")
        sub.add_argument("--preset", type=int, choices=sorted(PAPER_SETTINGS), default=512,
                         help="final dimension D of the paper's Table 4 (default: %(default)s)")
        sub.add_argument("--top-k", type=_positive_int, default=8, help="results shown per query in the report")
        sub.add_argument("--seed", type=int, default=0, help="random_state of every random stage (default: 0)")
        sub.add_argument("--no-report", action="store_true", help="do not write report.html")

    demo = commands.add_parser(
        "demo", help="run the paper's pipeline on the bundled sample (about 90 images, a few minutes on a CPU)",
        description="Fit the paper's pipeline (VGG16 pool5, Table 4 preset) on the training images of the "
                    "bundled sample, evaluate MAX/SUM/SIFT/no-mask descriptors and ITQ codes on its queries, "
                    "print an mAP table and write an HTML report.",
    )
    common(demo, max_size_default=512, out_default="selconv-output/demo")
    demo.add_argument("--masks", type=_mask_list, default=list(MASKS),
                      help="comma-separated masks to evaluate (default: max,sum,sift,none)")

    evaluate = commands.add_parser(
        "evaluate", help="evaluate a paper preset on a retrieval dataset",
        description="Fit the paper's pipeline on a training set and evaluate it on a dataset's queries.",
    )
    common(evaluate, max_size_default=1024, out_default="selconv-output/evaluate")
    evaluate.add_argument("--dataset", required=True, choices=DATASETS, metavar="NAME",
                          help="one of: " + ", ".join(DATASETS))
    evaluate.add_argument("--data-dir", type=Path, default=None,
                          help="the dataset's folder in its official layout (not needed for 'sample')")
    evaluate.add_argument("--protocol", default=None,
                          help="roxford5k/rparis6k: easy, medium (default) or hard; "
                               "oxford5k-subset: official-10 (default) or loo-landmark")
    evaluate.add_argument("--ground-truth", type=Path, default=None,
                          help="folder: the CSV/JSON ground-truth file (default: groundtruth.csv/.json in DATA_DIR)")
    evaluate.add_argument("--rotations", type=Path, default=None, help="holidays: the manual rotation list")
    evaluate.add_argument("--distractors", type=Path, default=None,
                          help="folder of distractor images added to the database")
    evaluate.add_argument("--mask", dest="masks", type=_mask_list, default=["max"],
                          help="comma-separated masks: max, sum, sift, none (default: max)")
    evaluate.add_argument("--bits", type=_positive_int, nargs="+", default=[],
                          help="also evaluate ITQ codes of these lengths (multiples of 8), learned on the training set")
    training = evaluate.add_mutually_exclusive_group()
    training.add_argument("--train-dir", type=Path, default=None, help="folder of training images")
    training.add_argument("--train-dataset", choices=DATASETS, default=None, metavar="NAME",
                          help="learn on this dataset's database images (paper: paris6k for oxford5k)")
    evaluate.add_argument("--train-data-dir", type=Path, default=None, help="folder of --train-dataset")
    evaluate.add_argument("--max-train", type=_positive_int, default=None,
                          help="use a seeded random subset of this many training images")
    evaluate.add_argument("--fit-on", choices=("training", "database"), default="training",
                          help="'database': learn on the test database itself, without truncation (paper Table 9)")
    return parser


def main(argv=None) -> int:
    """Run ``selconv`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return _demo(args)
        return _evaluate(args)
    except CommandError as error:
        print(f"selconv: error: {error}", file=sys.stderr)
        return 2
    except (FileNotFoundError, NotADirectoryError, ValueError) as error:
        # Loaders and estimators raise these with messages naming the file or argument.
        print(f"selconv: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nselconv: interrupted; conv maps computed so far are cached, rerun to resume.", file=sys.stderr)
        return 130


def _demo(args) -> int:
    from selconv.datasets import load_sample

    dataset = load_sample()
    notes = [f"Demo image size: longest side {args.max_size} px (the paper uses 1024 px; "
             "the bundled sample's images are at most 512 px)."]
    result = run_benchmark(
        dataset, training=dataset.training, training_name=f"the sample's {len(dataset.training)} training photos "
        "(BSDS500 + ImageNet, disjoint from the database)", preset=args.preset, masks=args.masks,
        bits=list(DEMO_BITS), max_size=args.max_size, device=args.device, out=args.out, cache_dir=args.cache_dir,
        top_k=args.top_k, random_state=args.seed, report=not args.no_report, extra_notes=notes,
        title="selconv demo: bundled sample",
    )
    return 0 if result.rows else 1


def _evaluate(args) -> int:
    from selconv.datasets import list_images
    from selconv.pipelines import paper_dimension

    # Argument combinations first: a mistake must not cost a feature extraction.
    if args.train_data_dir is not None and args.train_dataset is None:
        raise CommandError("--train-data-dir goes with --train-dataset.")
    if args.fit_on == "database" and (args.train_dir or args.train_dataset):
        raise CommandError("--fit-on database learns on the database; do not also give a training set.")
    odd = [b for b in args.bits if b % 8]
    if odd:
        raise CommandError(f"--bits must be multiples of 8 (codes are packed in bytes); got {odd}.")
    dataset = _load_dataset(args.dataset, args.data_dir, protocol=args.protocol, ground_truth=args.ground_truth,
                            rotations=args.rotations, what="--data-dir")
    if args.distractors is not None:
        _require_dir(args.distractors, "--distractors")
        dataset = dataset.with_distractors(args.distractors)
    if not dataset.queries:
        raise CommandError(f"dataset {dataset.name} has no queries (for 'folder', give a ground-truth file).")

    if args.fit_on == "database":
        training = list(dataset.database)
        training_name = f"the test database itself ({len(training)} images, paper Table 9 protocol)"
    elif args.train_dir is not None:
        _require_dir(args.train_dir, "--train-dir")
        training, training_name = list_images(args.train_dir), f"images under {args.train_dir}"
    elif args.train_dataset is not None:
        train_set = _load_dataset(args.train_dataset, args.train_data_dir, protocol=None, ground_truth=None,
                                  rotations=None, what="--train-data-dir")
        training, training_name = list(train_set.database), f"the database of {train_set.name}"
    elif dataset.training:
        training, training_name = list(dataset.training), f"the training images of {dataset.name}"
    else:
        raise CommandError(
            f"dataset {dataset.name} defines no training images: pass --train-dir DIR or --train-dataset NAME "
            "(the paper learns Oxford's parameters on Paris6k and vice versa), or --fit-on database."
        )
    if not training:
        raise CommandError(f"the training set ({training_name}) holds no images.")
    if args.max_train is not None and args.max_train < len(training):
        keep = np.sort(np.random.default_rng(args.seed).choice(len(training), args.max_train, replace=False))
        training = [training[i] for i in keep]
        training_name += f", random subset (seed {args.seed})"
    dim = paper_dimension(args.preset, fit_on=args.fit_on)
    too_long = [b for b in args.bits if b > min(len(training), dim)]
    if too_long:
        raise CommandError(
            f"--bits {too_long}: ITQ learns at most as many bits as it has training images ({len(training)}) "
            f"and descriptor dimensions ({dim})."
        )

    run_benchmark(
        dataset, training=training, training_name=training_name, preset=args.preset, masks=args.masks,
        bits=args.bits, max_size=args.max_size, device=args.device, out=args.out, cache_dir=args.cache_dir,
        top_k=args.top_k, random_state=args.seed, report=not args.no_report, fit_on=args.fit_on,
        title=f"selconv evaluate: {dataset.name}", strict_bits=True,
    )
    return 0


def _load_dataset(name, data_dir, *, protocol, ground_truth, rotations, what):
    from selconv import datasets

    if name == "sample":
        return datasets.load_sample()
    if data_dir is None:
        raise CommandError(f"dataset {name!r} needs {what} (its folder in the official layout).")
    _require_dir(data_dir, what)
    protocols = {"roxford5k": ("easy", "medium", "hard"), "rparis6k": ("easy", "medium", "hard"),
                 "oxford5k-subset": ("official-10", "loo-landmark")}
    if protocol is not None and protocol not in protocols.get(name, ()):
        allowed = protocols.get(name)
        raise CommandError(f"--protocol {protocol!r} is not valid for {name}"
                           + (f"; choose one of {', '.join(allowed)}." if allowed else " (it has one protocol)."))
    if name == "folder":
        return datasets.load_image_folder(data_dir, ground_truth)
    if name == "oxford5k":
        return datasets.load_oxford5k(data_dir)
    if name == "paris6k":
        return datasets.load_paris6k(data_dir)
    if name in ("roxford5k", "rparis6k"):
        return datasets.load_revisited(data_dir, name, protocol or "medium")
    if name == "holidays":
        if rotations is not None and not rotations.is_file():
            raise CommandError(f"--rotations {rotations} is not a file.")
        return datasets.load_holidays(data_dir, rotations=rotations)
    if name == "ukbench":
        return datasets.load_ukbench(data_dir)
    return datasets.load_shared_oxford_subset(data_dir, protocol or "official-10")


def _require_dir(path: Path, what: str) -> None:
    if not path.exists():
        raise CommandError(f"{what} {path} does not exist.")
    if not path.is_dir():
        raise CommandError(f"{what} {path} is not a folder.")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _mask_list(text: str) -> list[str]:
    from selconv.pipelines import MASKS

    masks = [m.strip().lower() for m in text.split(",") if m.strip()]
    unknown = [m for m in masks if m not in MASKS]
    if unknown or not masks:
        raise argparse.ArgumentTypeError(f"masks must be among {', '.join(MASKS)}; got {text!r}")
    return list(dict.fromkeys(masks))


def run_benchmark(
    dataset,
    *,
    training,
    training_name: str,
    preset: int = 512,
    masks=("max",),
    bits=(),
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
    strict_bits: bool = False,
    extractor=None,
    stream=None,
) -> BenchmarkResult:
    """Fit the paper's pipeline per mask on ``training``, evaluate it on ``dataset``, print and save the results.

    Parameters
    ----------
    dataset : RetrievalDataset
        Queries (with boxes), database and ground truth.
    training : list of path
        Images the pipelines (and ITQ) are fitted on; never the test database unless
        ``fit_on="database"``.
    training_name : str
        How the training set is described in the output.
    preset : int
        Final dimension D of the paper's Table 4.
    masks : sequence of {"max", "sum", "sift", "none"}
        One pipeline per mask.
    bits : sequence of int
        ITQ code lengths, learned on the training descriptors of the first mask. A length the
        training set cannot support (more bits than training images or than D) is skipped with a
        note, or raises when ``strict_bits``.
    max_size, device : conv-map extraction settings (VGG16, pool5).
    out : path
        Folder for ``results.json``, ``report.html`` and (by default) the conv-map cache.
    cache_dir : path or None
        Conv-map cache (default ``out/cache``).
    top_k : int
        Results per query in the report.
    random_state : int
        Seeds every random stage.
    report : bool
        Write ``report.html``.
    fit_on : {"training", "database"}
        The protocol (see :func:`selconv.pipelines.make_paper_pipeline`).
    title, extra_notes : str, sequence of str
        Report title; lines added to the notes.
    strict_bits : bool
        Raise on unusable bit lengths instead of skipping them.
    extractor : ConvFeatureExtractor or None
        Use this (unfitted or fitted) extractor instead of building VGG16 pool5 from the settings above
        (tests pass a tiny random-weight one).
    stream : file or None
        Where the table and progress lines go (default: stdout).

    Returns
    -------
    BenchmarkResult
    """
    from selconv.datasets import apply_rotations
    from selconv.extraction import ConvFeatureExtractor
    from selconv.hashing import ITQHasher
    from selconv.metrics import evaluate, mean_average_precision, ns_score
    from selconv.pipelines import make_paper_pipeline

    stream = sys.stdout if stream is None else stream
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache_dir) if cache_dir is not None else out / "cache"

    def say(text=""):
        print(text, file=stream, flush=True)

    if any(dataset.database_rotations or ()) or any(dataset.query_rotations or ()):
        say("Turning rotated images upright (the dataset's rotation list) ...")
        dataset = apply_rotations(dataset, out / "upright")

    if extractor is None:
        extractor = ConvFeatureExtractor(
            backbone="vgg16", layers="pool5", max_size=max_size, keypoints="sift" if "sift" in masks else None,
            cache_dir=cache_dir, device=device, progress=True,
        )
    started = time.perf_counter()
    extractor.fit()
    settings = extractor.get_params()
    say(f"{dataset.summary()}")
    say(f"Training set: {training_name}: {len(training)} images.")
    say(f"Backbone {settings['backbone']} (weights: {extractor.weights_source_}), "
        f"layer(s) {', '.join(extractor.layers_)} "
        f"(K = {extractor.n_channels_}), longest side {settings['max_size']} px, device {extractor.device_}; "
        f"conv maps cached in {settings['cache_dir']}.")

    queries = dataset.query_inputs()
    n_queries = len(queries)
    ground_truth = dataset.ground_truth
    is_ukbench = dataset.name.startswith("ukbench")
    rows, rankings, pipelines = [], {}, {}
    fit_seconds = 0.0

    def add_row(kind, name, size, evaluation, *, label, **extra):
        row = {"kind": kind, "descriptor": name, "size": size, "mAP": float(evaluation.map), "queries": n_queries}
        if is_ukbench:
            row["N-S"] = float(ns_score(evaluation.rankings, ground_truth))
        row.update(extra)
        rows.append(row)
        rankings[label] = evaluation.rankings.astype(np.int32)  # half the memory of int64
        say(f"  {name:<64} {size:<18} mAP {row['mAP']:.4f}")

    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        # Training maps stay in memory (fitting needs them all); database and queries are streamed
        # through the fitted pipelines in chunks, so memory does not grow with the database.
        say(f"Conv maps of the {'database (= training set)' if fit_on == 'database' else 'training images'}:")
        train_maps = extractor.transform(dataset.database_inputs() if fit_on == "database" else list(training))
        say(f"Fitting the paper's pipeline (preset D = {preset}) on {len(train_maps)} training images, "
            "one per mask ...")
        fit_started = time.perf_counter()
        for mask in masks:
            pipelines[mask] = make_paper_pipeline(preset, mask=mask, random_state=random_state, fit_on=fit_on)
            descriptors = pipelines[mask].fit_transform(train_maps)
            if mask == masks[0]:
                train_descriptors = descriptors
        fit_seconds += time.perf_counter() - fit_started
        n_training = len(train_maps)
        if fit_on == "database":
            db_desc, db_stats = _describe(train_maps, pipelines)
        else:
            del train_maps
            say("Conv maps of the database images:")
            db_desc, db_stats = _describe(extractor.iter_transform(dataset.database_inputs()), pipelines)
        say("Conv maps of the queries:")
        query_desc, _ = _describe(extractor.iter_transform(queries), pipelines)
        if len(query_desc[masks[0]]) != n_queries or len(db_desc[masks[0]]) != len(dataset.database):
            raise CommandError("some images could not be read (see the warnings above); fix or remove them.")

        say("Results:")
        for mask, pipeline in pipelines.items():
            steps = pipeline.named_steps
            name = (f"{_MASK_LABELS[mask]} + Temb(d={steps['pca'].n_components}, |C|={steps['encode'].embedding.n_clusters})"
                    f" + democratic + RN(-{steps['rotate'].n_dropped}) + PN({steps['power'].alpha})")
            dims = db_desc[mask].shape[1]
            add_row("real", name, f"{dims}-D float32", evaluate(query_desc[mask], db_desc[mask], ground_truth),
                    label=f"{_MASK_LABELS[mask]}, {dims}-D", mask=mask, dims=int(dims), kept=db_stats["kept"][mask])

        first_mask = masks[0]
        real_dim = db_desc[first_mask].shape[1]
        n_dropped = pipelines[first_mask].named_steps["rotate"].n_dropped
        skipped = []
        for n_bits in bits:
            if n_bits % 8 or n_bits > min(len(train_descriptors), real_dim):
                reason = (f"{n_bits} bits is not a multiple of 8" if n_bits % 8 else
                          f"ITQ at {n_bits} bits needs at least {n_bits} training images and dimensions "
                          f"(have {len(train_descriptors)} images, {real_dim} dims)")
                if strict_bits:
                    raise CommandError(reason + ".")
                skipped.append(f"skipped: {reason}")
                continue
            fit_started = time.perf_counter()
            hasher = ITQHasher(n_bits, random_state=random_state).fit(train_descriptors)
            fit_seconds += time.perf_counter() - fit_started
            add_row("binary", f"ITQ on {_MASK_LABELS[first_mask]} {real_dim}-D", f"{n_bits} bits ({n_bits // 8} bytes)",
                    evaluate(hasher.transform(query_desc[first_mask]), hasher.transform(db_desc[first_mask]),
                             ground_truth),
                    label=f"ITQ {n_bits} bits ({_MASK_LABELS[first_mask]})", mask=first_mask, dims=n_bits)
    caught = [f"{w.category.__name__}: {w.message}" for w in recorded] + skipped
    if fit_on == "training" and n_training - 1 < n_dropped:
        # Centred training vectors span at most n - 1 directions: RN puts them all first, then drops them.
        caught.append(
            f"the {n_training} training images span at most {n_training - 1} directions, all among the "
            f"{n_dropped} leading components RN drops: the kept components are not learned from data, and ITQ is "
            "fitted on (near-)constant training descriptors, so its codes are close to random projections. "
            "Learn on many more images (paper: 5,000-6,400) for meaningful rotation and hashing."
        )
    total_seconds = time.perf_counter() - started

    rng = np.random.default_rng(random_state)
    random_maps = [
        mean_average_precision(np.stack([rng.permutation(len(dataset.database)) for _ in range(n_queries)]),
                               ground_truth)
        for _ in range(_N_RANDOM_RANKINGS)
    ]
    rows.append({"kind": "random", "descriptor": f"random ranking (mean of {_N_RANDOM_RANKINGS} seeded shuffles)",
                 "size": "-", "mAP": float(np.mean(random_maps)), "queries": n_queries})

    n_cropped = sum(box is not None for box in dataset.query_boxes)
    notes = [
        f"Dataset: {dataset.summary()}; {n_cropped} of the {n_queries} queries cropped to their bounding box.",
        f"Backbone: {settings['backbone']} with ImageNet weights ({extractor.weights_source_}); layer "
        f"{', '.join(extractor.layers_)} (K = {extractor.n_channels_} channels); images resized to a longest side "
        f"of {settings['max_size']} px.",
        f"Conv-map grid: {db_stats['width']:.1f} x {db_stats['height']:.1f} cells on average (database); "
        "the MAX-mask keeps at most "
        f"K = {extractor.n_channels_} cells per image, so it keeps a larger fraction of small grids (paper, 1024 px: "
        "MAX/SUM/SIFT keep about 30/50/75%).",
        f"Parameters (local PCA, codebook, Temb whitening, rotation, ITQ) learned on: {training_name} "
        f"({n_training} images); protocol fit_on={fit_on!r}.",
        "mAP: Oxford protocol (junk images removed from the ranking); descriptors ranked by inner product, "
        "codes by Hamming distance.",
        f"Time: {total_seconds:.0f} s in all (conv maps, cache reads included, and descriptors), of which fitting "
        f"{fit_seconds:.0f} s; {platform.machine()}, torch device {extractor.device_}.",
        *extra_notes,
    ]
    result = BenchmarkResult(rows=rows, notes=notes, warnings=list(dict.fromkeys(caught)))
    say()
    say(format_table(rows))
    say()
    for note in notes:
        say(f"* {note}")
    for line in result.warnings:
        say(f"! {line}")

    result.results_path = out / "results.json"
    result.results_path.write_text(json.dumps({"title": title, "rows": rows, "notes": notes,
                                               "warnings": result.warnings}, indent=2))
    if report:
        from selconv.report import write_report

        result.report_path = write_report(
            out / "report.html", queries=queries, database=list(dataset.database), ground_truth=ground_truth,
            rankings=rankings, table=[{k: v for k, v in row.items() if k not in ("kind", "mask")} for row in rows],
            title=title, notes=notes + [f"warning: {w}" for w in result.warnings], top_k=top_k,
        )
        say(f"Report: {result.report_path}")
    say(f"Results: {result.results_path}")
    return result


def _describe(maps, pipelines, *, chunk_size=64):
    """Descriptors of ``maps`` (an iterable of ConvMap) under every fitted pipeline, in chunks.

    Returns ``(descriptors, stats)``: ``descriptors[mask]`` is an (n_images, D) array; ``stats`` holds
    ``kept[mask]``, the fraction of all grid cells each mask keeps, and the mean grid ``width``/``height``.
    """
    from selconv._ragged import batched

    parts = {mask: [] for mask in pipelines}
    kept = dict.fromkeys(pipelines, 0)
    cells = widths = heights = count = 0
    for chunk in batched(maps, chunk_size):
        for mask, pipeline in pipelines.items():
            parts[mask].append(pipeline.transform(chunk))
            kept[mask] += sum(len(s) for s in pipeline.named_steps["mask"].transform(chunk))
        cells += sum(m.grid_size[0] * m.grid_size[1] for m in chunk)
        widths += sum(m.grid_size[0] for m in chunk)
        heights += sum(m.grid_size[1] for m in chunk)
        count += len(chunk)
    descriptors = {mask: np.concatenate(p) if p else np.zeros((0, 0), np.float32) for mask, p in parts.items()}
    stats = {"kept": {mask: kept[mask] / cells if cells else 0.0 for mask in pipelines},
             "width": widths / max(count, 1), "height": heights / max(count, 1)}
    return descriptors, stats


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
