"""``selconv demo`` and ``selconv evaluate``: parse, check, and present :func:`selconv.evaluation.run_benchmark`."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from selconv.cli._common import (
    CommandError,
    add_model_arguments,
    baseline_list,
    bit_length,
    mask_list,
    positive_int,
    require_dir,
    require_writable_dir,
)
from selconv.evaluation import default_cache_dir, run_benchmark

#: Bit lengths tried by ``selconv demo`` (the paper's binary results use 64..512 bits).
DEMO_BITS = (16, 32, 64, 128, 256)


def add_benchmark_commands(commands) -> None:
    """Add ``demo`` and ``evaluate`` to the subcommands `commands`."""
    from selconv.pipelines import MASKS

    demo = commands.add_parser(
        "demo",
        help="run the paper's pipeline on the bundled sample (85 images; 1.5 to 10 min on a CPU the first time)",
        description="Fit the paper's pipeline (VGG16 pool5, Table 4 preset) on the training images of the "
        "bundled sample, evaluate MAX/SUM/SIFT/no-mask descriptors and ITQ codes on its queries, "
        "print an mAP table and write an HTML report.",
    )
    _add_run_options(demo, max_size_default=512, out_default="selconv-output/demo")
    demo.add_argument(
        "--masks", type=mask_list, default=list(MASKS), help="comma-separated masks to evaluate (default: all four)"
    )
    evaluate = commands.add_parser(
        "evaluate",
        help="evaluate a paper preset (and baselines) on a retrieval dataset",
        description="Fit the paper's pipeline on a training set and evaluate it on a dataset's queries.",
    )
    _add_run_options(evaluate, max_size_default=1024, out_default="selconv-output/evaluate")
    _add_dataset_options(evaluate)
    _add_method_options(evaluate)
    _add_training_options(evaluate)


def _add_run_options(sub, *, max_size_default, out_default) -> None:
    sub.add_argument(
        "--out",
        type=Path,
        default=Path(out_default),
        help="output folder for results.json and report.html (default: %(default)s)",
    )
    sub.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"where conv maps are cached (default: $SELCONV_CACHE_DIR, else {default_cache_dir()}; shared "
        "with the examples); rerunning resumes from it",
    )
    add_model_arguments(sub, max_size_default=max_size_default)
    sub.add_argument("--top-k", type=positive_int, default=8, help="results shown per query in the report")
    sub.add_argument("--seed", type=int, default=0, help="random_state of every random stage (default: 0)")
    sub.add_argument("--no-report", action="store_true", help="do not write report.html")


def _add_dataset_options(evaluate) -> None:
    from selconv.datasets import DATASETS

    names = "; ".join(f"{name}: {spec.summary}" for name, spec in DATASETS.items())
    evaluate.add_argument(
        "--dataset",
        choices=DATASETS,
        default=None,
        metavar="NAME",
        help=f"one of {names} (default with --queries: query-folders)",
    )
    evaluate.add_argument("--data-dir", type=Path, default=None, help="the dataset's folder (not needed for 'sample')")
    evaluate.add_argument("--queries", type=Path, default=None, metavar="DIR", help="query-folders: QUERIES/<label>/")
    evaluate.add_argument("--database", type=Path, default=None, metavar="DIR", help="query-folders: DATABASE/<label>/")
    protocols = "; ".join(
        f"{name}: {', '.join(spec.protocols)} (default {spec.default_protocol})"
        for name, spec in DATASETS.items()
        if spec.protocols
    )
    evaluate.add_argument("--protocol", default=None, help=protocols)
    evaluate.add_argument(
        "--ground-truth",
        type=Path,
        default=None,
        help="folder: the CSV/JSON ground-truth file (default: groundtruth.csv/.json in DATA_DIR)",
    )
    evaluate.add_argument("--rotations", type=Path, default=None, help="holidays: the manual rotation list")
    evaluate.add_argument(
        "--distractors", type=Path, default=None, help="folder of distractor images added to the database"
    )


def _add_method_options(evaluate) -> None:
    evaluate.add_argument(
        "--mask",
        dest="masks",
        type=mask_list,
        default=["max"],
        help="comma-separated masks: max, sum, sift, none (default: max)",
    )
    evaluate.add_argument(
        "--bits",
        type=bit_length,
        nargs="+",
        default=[],
        help="also evaluate ITQ codes of these lengths (multiples "
        "of 8), learned on the training set; a length it cannot support is skipped with a note",
    )
    evaluate.add_argument(
        "--baselines",
        type=baseline_list,
        default=[],
        help="also evaluate these baselines, comma-separated: spoc, mac, rmac, crow, gem",
    )
    evaluate.add_argument(
        "--baseline-whitening",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="learn the baselines' PCA-whitening on the training set (default: on)",
    )


def _add_training_options(evaluate) -> None:
    from selconv.datasets import DATASETS

    training = evaluate.add_mutually_exclusive_group()
    training.add_argument("--train-dir", type=Path, default=None, help="folder of training images")
    training.add_argument(
        "--train-dataset",
        choices=DATASETS,
        default=None,
        metavar="NAME",
        help="learn on this dataset's database images (paper: paris6k for oxford5k)",
    )
    evaluate.add_argument("--train-data-dir", type=Path, default=None, help="folder of --train-dataset")
    evaluate.add_argument(
        "--max-train", type=positive_int, default=None, help="use a seeded random subset of this many training images"
    )
    evaluate.add_argument(
        "--fit-on",
        choices=("training", "database"),
        default="training",
        help="'database': learn on the test database itself, without truncation (paper Table 9)",
    )


def _require_output_dirs(args) -> None:
    require_writable_dir(args.out, "--out")
    require_writable_dir(args.cache_dir or default_cache_dir(), "--cache-dir")


def _run_options(args) -> dict:
    """The :func:`run_benchmark` settings that ``demo`` and ``evaluate`` take from their shared options."""
    return {
        "preset": args.preset,
        "masks": args.masks,
        "max_size": args.max_size,
        "device": args.device,
        "out": args.out,
        "cache_dir": args.cache_dir,
        "top_k": args.top_k,
        "random_state": args.seed,
        "report": not args.no_report,
    }


def demo(args) -> int:
    from selconv.datasets import load_sample

    _require_output_dirs(args)
    dataset = load_sample()
    notes = [
        f"Demo image size: longest side {args.max_size} px (the paper uses 1024 px; "
        "the bundled sample's images are at most 512 px)."
    ]
    run_benchmark(
        dataset,
        training=dataset.training,
        training_name=f"the sample's {len(dataset.training)} training photos "
        "(BSDS500 + ImageNet, disjoint from the database)",
        bits=list(DEMO_BITS),
        extra_notes=notes,
        title="selconv demo: bundled sample",
        **_run_options(args),
    )
    return 0


def evaluate(args) -> int:
    # Argument combinations first: a mistake must not cost a feature extraction.
    _check_combinations(args)
    dataset = _load(args)
    if not dataset.queries:
        raise CommandError(f"dataset {dataset.name} has no queries (for 'folder', give a ground-truth file).")
    training, training_name = _training_set(args, dataset)
    if args.fit_on == "training":
        _refuse_shared(training, dataset)
    if args.max_train is not None and args.max_train < len(training):
        keep = np.sort(np.random.default_rng(args.seed).choice(len(training), args.max_train, replace=False))
        training = [training[i] for i in keep]
        training_name += f", random subset (seed {args.seed})"
    _require_output_dirs(args)
    run_benchmark(
        dataset,
        training=training,
        training_name=training_name,
        bits=args.bits,
        baselines=args.baselines,
        baseline_whitening=args.baseline_whitening,
        fit_on=args.fit_on,
        title=f"selconv evaluate: {dataset.name}",
        **_run_options(args),
    )
    return 0


def _check_combinations(args) -> None:
    if args.max_train is not None and args.fit_on == "database":
        raise CommandError("--max-train subsets the training set; with --fit-on database there is none (drop it).")
    if args.train_data_dir is not None and args.train_dataset is None:
        raise CommandError("--train-data-dir goes with --train-dataset.")
    if args.fit_on == "database" and (args.train_dir or args.train_dataset):
        raise CommandError("--fit-on database learns on the database; do not also give a training set.")
    if args.dataset is None and args.queries is None and args.database is None:
        raise CommandError("give --dataset NAME (or --queries DIR --database DIR for your own labelled folders).")
    if args.train_dir is not None:
        require_dir(args.train_dir, "--train-dir")


def _load(args):
    from selconv.datasets import load_dataset

    # A training folder inside a user folder must not also join its database as distractors.
    return load_dataset(
        args.dataset or "query-folders",
        training=args.train_dir,
        distractors=args.distractors,
        data_dir=args.data_dir,
        queries=args.queries,
        database=args.database,
        protocol=args.protocol,
        ground_truth=args.ground_truth,
        rotations=args.rotations,
    )


def _training_set(args, dataset) -> tuple[list, str]:
    """The images the methods learn on, and how the output names them."""
    from selconv.datasets import list_images, load_dataset

    if args.fit_on == "database":
        training = list(dataset.database)
        return training, f"the test database itself ({len(training)} images, paper Table 9 protocol)"
    if args.train_dir is not None:
        training, training_name = list_images(args.train_dir), f"images under {args.train_dir}"
    elif args.train_dataset is not None:
        try:
            train_set = load_dataset(args.train_dataset, data_dir=args.train_data_dir)
        except ValueError as error:
            raise CommandError(f"--train-dataset {args.train_dataset} (folder: --train-data-dir): {error}") from None
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
    return training, training_name


def _refuse_shared(training, dataset) -> None:
    from selconv.datasets import shared_images

    shared = shared_images(training, list(dataset.database) + list(dataset.queries))
    if shared:
        learned, searched = shared[0]
        raise CommandError(
            f"{len(shared)} of the {len(training)} learning images are also searched (e.g. {learned} is "
            f"{searched}): learning on the searched images collapses mAP when they are few. Learn on a "
            "separate folder (--train-dir), or on the database on purpose with --fit-on database "
            "(no truncation, the paper's Table 9 protocol)."
        )
