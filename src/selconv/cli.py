"""The ``selconv`` command line: ``demo`` (bundled sample), ``evaluate`` (any dataset), and ``fit`` / ``index`` /
``search`` for a photo collection (thin presenters of :mod:`selconv.index.build`).

``demo`` and ``evaluate`` run the same job, :func:`run_benchmark`: extract VGG16 conv maps (cached on disk, so an
interrupted run resumes), fit the paper's pipeline (:func:`selconv.pipelines.make_paper_pipeline`) on a
training set for each mask, evaluate real-valued descriptors and ITQ binary codes, print an mAP table
that says what produced every number, and write ``results.json`` and an HTML report.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import pickle
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["DATASETS", "BenchmarkResult", "build_parser", "format_table", "main", "run_benchmark"]

#: Datasets ``selconv evaluate --dataset`` knows; "folder" is the user format of docs/datasets.md.
DATASETS = (
    "sample",
    "folder",
    "oxford5k",
    "paris6k",
    "roxford5k",
    "rparis6k",
    "holidays",
    "ukbench",
    "oxford5k-subset",
)

_MASK_LABELS = {"max": "MAX-mask", "sum": "SUM-mask", "sift": "SIFT-mask", "none": "no mask"}

#: Bit lengths tried by ``selconv demo`` (the paper's binary results use 64..512 bits).
DEMO_BITS = (16, 32, 64, 128, 256)

#: Seeded random rankings averaged for the "random ranking" reference row.
_N_RANDOM_RANKINGS = 20


class CommandError(Exception):
    """A user error (bad path, unusable setting): printed as ``selconv: error: ...``, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``selconv: error: ... (see 'selconv evaluate --help')``), exit status 2."""

    def error(self, message):
        print(f"selconv: error: {message} (see '{self.prog} --help').", file=sys.stderr)
        raise SystemExit(2)


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

    parser = _Parser(
        prog="selconv",
        description="Selective deep convolutional features for image retrieval (Do, Hoang et al.).",
    )
    parser.add_argument("--version", action="version", version=f"selconv {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{demo,evaluate,fit,index,search}")

    def common(sub, *, max_size_default, out_default):
        sub.add_argument(
            "--out",
            type=Path,
            default=Path(out_default),
            help="output folder for results.json, report.html and the conv-map cache (default: %(default)s)",
        )
        sub.add_argument(
            "--cache-dir",
            type=Path,
            default=None,
            help="where conv maps are cached (default: OUT/cache); rerunning resumes from it",
        )
        sub.add_argument(
            "--max-size",
            type=_positive_int,
            default=max_size_default,
            help="resize images so the longest side is this many pixels (default: %(default)s; paper: 1024)",
        )
        sub.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:1, ... (default: auto)")
        sub.add_argument(
            "--preset",
            type=int,
            choices=sorted(PAPER_SETTINGS),
            default=512,
            help="final dimension D of the paper's Table 4 (default: %(default)s)",
        )
        sub.add_argument("--top-k", type=_positive_int, default=8, help="results shown per query in the report")
        sub.add_argument("--seed", type=int, default=0, help="random_state of every random stage (default: 0)")
        sub.add_argument("--no-report", action="store_true", help="do not write report.html")

    demo = commands.add_parser(
        "demo",
        help="run the paper's pipeline on the bundled sample (about 90 images, a few minutes on a CPU)",
        description="Fit the paper's pipeline (VGG16 pool5, Table 4 preset) on the training images of the "
        "bundled sample, evaluate MAX/SUM/SIFT/no-mask descriptors and ITQ codes on its queries, "
        "print an mAP table and write an HTML report.",
    )
    common(demo, max_size_default=512, out_default="selconv-output/demo")
    demo.add_argument(
        "--masks",
        type=_mask_list,
        default=list(MASKS),
        help="comma-separated masks to evaluate (default: max,sum,sift,none)",
    )

    evaluate = commands.add_parser(
        "evaluate",
        help="evaluate a paper preset on a retrieval dataset",
        description="Fit the paper's pipeline on a training set and evaluate it on a dataset's queries.",
    )
    common(evaluate, max_size_default=1024, out_default="selconv-output/evaluate")
    evaluate.add_argument(
        "--dataset", required=True, choices=DATASETS, metavar="NAME", help="one of: " + ", ".join(DATASETS)
    )
    evaluate.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="the dataset's folder in its official layout (not needed for 'sample')",
    )
    evaluate.add_argument(
        "--protocol",
        default=None,
        help="roxford5k/rparis6k: easy, medium (default) or hard; "
        "oxford5k-subset: official-10 (default) or loo-landmark",
    )
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
    evaluate.add_argument(
        "--mask",
        dest="masks",
        type=_mask_list,
        default=["max"],
        help="comma-separated masks: max, sum, sift, none (default: max)",
    )
    evaluate.add_argument(
        "--bits",
        type=_positive_int,
        nargs="+",
        default=[],
        help="also evaluate ITQ codes of these lengths (multiples of 8), learned on the training set",
    )
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
        "--max-train", type=_positive_int, default=None, help="use a seeded random subset of this many training images"
    )
    evaluate.add_argument(
        "--fit-on",
        choices=("training", "database"),
        default="training",
        help="'database': learn on the test database itself, without truncation (paper Table 9)",
    )
    _add_collection_commands(commands)
    return parser


def main(argv=None) -> int:
    """Run ``selconv`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status.

    0: success; 2: a user error (bad argument, path, file or data), printed as one line
    ``selconv: error: ...`` that says what to fix; 130: interrupted. Anything else is a bug and
    keeps its traceback.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help / --version (0), or an argument error already printed (2)
        return done.code if isinstance(done.code, int) else 0
    try:
        return {"demo": _demo, "evaluate": _evaluate, "fit": _fit, "index": _index, "search": _search}[args.command](
            args
        )
    except (CommandError, OSError, ValueError, pickle.UnpicklingError) as error:
        # Loaders and estimators raise these with messages naming the file or argument.
        print(f"selconv: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        from selconv.extraction.weights import WeightsNotFoundError

        if not isinstance(error, WeightsNotFoundError):
            raise
        print(f"selconv: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nselconv: interrupted; conv maps computed so far are cached, rerun to resume.", file=sys.stderr)
        return 130


def _one_line(error: BaseException) -> str:
    """An exception as one line that says what to fix (OSErrors get the path and a hint)."""
    if isinstance(error, OSError) and error.strerror:  # raised by the OS (custom messages have no strerror)
        where = f" {error.filename}" if error.filename else ""
        fix = {
            "EACCES": "check its permissions or choose another path",
            "EPERM": "check its permissions",
            "ENOSPC": "free some disk space",
            "EROFS": "choose a writable location",
            "ENOTDIR": "a part of the path is a file, not a folder",
            "EEXIST": "a file is in the way of a folder; remove it or choose another path",
            "EISDIR": "it is a folder; give a file",
        }.get(errno.errorcode.get(error.errno, ""), "check the path")
        text = f"{error.strerror}:{where} ({fix})"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def _require_writable_dir(path: Path, what: str) -> None:
    """Create ``path`` if needed and prove it writable, before any work is done."""
    try:
        if path.exists() and not path.is_dir():
            raise CommandError(f"{what} {path} is a file; give a folder (it is created if missing).")
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise CommandError(
            f"{what} {path} is not a writable folder ({_one_line(error)}); choose a folder you can write to."
        ) from None


def _require_output_dirs(args) -> None:
    _require_writable_dir(args.out, "--out")
    if args.cache_dir is not None:
        _require_writable_dir(args.cache_dir, "--cache-dir")
    else:
        _require_writable_dir(args.out / "cache", "--out (its cache/ folder)")


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


def _demo(args) -> int:
    from selconv.datasets import load_sample

    _require_output_dirs(args)
    dataset = load_sample()
    notes = [
        f"Demo image size: longest side {args.max_size} px (the paper uses 1024 px; "
        "the bundled sample's images are at most 512 px)."
    ]
    result = run_benchmark(
        dataset,
        training=dataset.training,
        training_name=f"the sample's {len(dataset.training)} training photos "
        "(BSDS500 + ImageNet, disjoint from the database)",
        bits=list(DEMO_BITS),
        extra_notes=notes,
        title="selconv demo: bundled sample",
        **_run_options(args),
    )
    return 0 if result.rows else 1


def _evaluate(args) -> int:
    from selconv.datasets import list_images, shared_images
    from selconv.pipelines import paper_dimension, rotation_settings

    # Argument combinations first: a mistake must not cost a feature extraction.
    _check_dataset_options(args)
    if args.max_train is not None and args.fit_on == "database":
        raise CommandError("--max-train subsets the training set; with --fit-on database there is none (drop it).")
    if args.train_data_dir is not None and args.train_dataset is None:
        raise CommandError("--train-data-dir goes with --train-dataset.")
    if args.fit_on == "database" and (args.train_dir or args.train_dataset):
        raise CommandError("--fit-on database learns on the database; do not also give a training set.")
    odd = [b for b in args.bits if b % 8]
    if odd:
        raise CommandError(f"--bits must be multiples of 8 (codes are packed in bytes); got {odd}.")
    if args.train_dir is not None:
        _require_dir(args.train_dir, "--train-dir")
    # A training folder inside a user folder must not also join its database as distractors.
    dataset = _load_dataset(
        args.dataset,
        args.data_dir,
        protocol=args.protocol,
        ground_truth=args.ground_truth,
        rotations=args.rotations,
        what="--data-dir",
        training=args.train_dir.resolve() if args.train_dir is not None else None,
    )
    if args.distractors is not None:
        _require_dir(args.distractors, "--distractors")
        dataset = dataset.with_distractors(args.distractors)
    if not dataset.queries:
        raise CommandError(f"dataset {dataset.name} has no queries (for 'folder', give a ground-truth file).")

    if args.fit_on == "database":
        training = list(dataset.database)
        training_name = f"the test database itself ({len(training)} images, paper Table 9 protocol)"
    elif args.train_dir is not None:
        training, training_name = list_images(args.train_dir), f"images under {args.train_dir}"
    elif args.train_dataset is not None:
        train_set = _load_dataset(
            args.train_dataset,
            args.train_data_dir,
            protocol=None,
            ground_truth=None,
            rotations=None,
            what="--train-data-dir",
        )
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
    if args.fit_on == "training":
        shared = shared_images(training, list(dataset.database) + [q for q in dataset.queries])
        if shared:
            learned, searched = shared[0]
            raise CommandError(
                f"{len(shared)} of the {len(training)} learning images are also searched (e.g. {learned} is "
                f"{searched}): learning on the searched images collapses mAP when they are few. Learn on a "
                "separate folder (--train-dir), or on the database on purpose with --fit-on database "
                "(no truncation, the paper's Table 9 protocol)."
            )
    if args.max_train is not None and args.max_train < len(training):
        keep = np.sort(np.random.default_rng(args.seed).choice(len(training), args.max_train, replace=False))
        training = [training[i] for i in keep]
        training_name += f", random subset (seed {args.seed})"
    rotation, _ = rotation_settings(len(training), args.preset, fit_on=args.fit_on)
    # A skipped rotation (too few learning images) drops nothing: the descriptors keep d |C| dimensions.
    dim = paper_dimension(args.preset, fit_on="database" if rotation["undetermined"] == "center" else args.fit_on)
    too_long = [b for b in args.bits if b > min(len(training) - 1, dim)]
    if too_long:
        raise CommandError(
            f"--bits {too_long}: ITQ learns fewer bits than it has training images ({len(training)}) and at most "
            f"as many as descriptor dimensions ({dim})."
        )

    _require_output_dirs(args)
    run_benchmark(
        dataset,
        training=training,
        training_name=training_name,
        bits=args.bits,
        fit_on=args.fit_on,
        title=f"selconv evaluate: {dataset.name}",
        strict_bits=True,
        **_run_options(args),
    )
    return 0


#: Protocols of the datasets that have several; the others have exactly one.
_PROTOCOLS = {
    "roxford5k": ("easy", "medium", "hard"),
    "rparis6k": ("easy", "medium", "hard"),
    "oxford5k-subset": ("official-10", "loo-landmark"),
}

#: Options of ``evaluate`` that only some datasets use: giving one to another dataset is an error, not ignored.
_DATASET_OPTIONS = {
    "protocol": tuple(_PROTOCOLS),
    "ground_truth": ("folder",),
    "rotations": ("holidays",),
    "data_dir": tuple(name for name in DATASETS if name != "sample"),
}


def _check_dataset_options(args) -> None:
    for option, users in _DATASET_OPTIONS.items():
        if getattr(args, option) is not None and args.dataset not in users:
            flag = "--" + option.replace("_", "-")
            raise CommandError(
                f"{flag} does not apply to --dataset {args.dataset} (only to {', '.join(users)}); drop it."
            )
    allowed = _PROTOCOLS.get(args.dataset, ())
    if args.protocol is not None and args.protocol not in allowed:
        raise CommandError(
            f"--protocol {args.protocol!r} is not valid for {args.dataset}; choose one of {', '.join(allowed)}."
        )


def _load_dataset(name, data_dir, *, protocol, ground_truth, rotations, what, training=None):
    from selconv import datasets

    if name == "sample":
        return datasets.load_sample()
    if data_dir is None:
        raise CommandError(f"dataset {name!r} needs {what} (its folder in the official layout).")
    _require_dir(data_dir, what)
    if name == "folder":
        return datasets.load_image_folder(data_dir, ground_truth, training=training)
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


# ------------------------------------------------------------------- fit / index / search a photo collection

_FIT_EXAMPLES = """examples:
  selconv fit ~/photos --out photos.encoder                     # learn on a sample of the collection itself
  selconv fit ~/photos --out photos.encoder --train-dir ~/other --preset 1024 --mask sum
  selconv fit ~/photos --out photos-64bit.encoder --bits 64 --sample 5000 --max-size 1024"""

_INDEX_EXAMPLES = """examples:
  selconv index ~/photos --encoder photos.encoder --out photos.index
  selconv index ~/photos --encoder photos.encoder --out photos.index     # again: adds only new photos
  selconv index ~/photos --encoder photos.encoder --out photos.index --scheduler tcp://10.0.0.5:8786

Killed at any moment, rerun the same command: it resumes from the shards kept in INDEX.shards/."""

_SEARCH_EXAMPLES = """examples:
  selconv search photos.index query.jpg
  selconv search photos.index query.jpg --box 120 40 560 400 -k 50 --html results.html"""


def _add_collection_commands(commands) -> None:
    from selconv.pipelines import MASKS, PAPER_SETTINGS

    def sub(name, help, examples):
        return commands.add_parser(
            name,
            help=help,
            description=help[0].upper() + help[1:] + ".",
            epilog=examples,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    fit = sub("fit", "learn the paper's encoder (a Table 4 preset) on a photo folder and save it", _FIT_EXAMPLES)
    fit.add_argument("photos", type=Path, metavar="PHOTOS", help="the photo collection (walked recursively)")
    fit.add_argument("--out", type=Path, required=True, metavar="ENCODER", help="where to save the fitted encoder")
    fit.add_argument(
        "--train-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="learn on the photos under DIR instead of a sample of PHOTOS",
    )
    fit.add_argument(
        "--sample",
        type=_positive_int,
        default=5000,
        metavar="N",
        help="learn on a seeded random sample of N photos (default: %(default)s; the paper learns on "
        "5,000-6,400; fitting holds every sampled conv map in memory)",
    )
    fit.add_argument(
        "--preset",
        type=int,
        choices=sorted(PAPER_SETTINGS),
        default=512,
        help="final dimension D of the paper's Table 4 (default: %(default)s)",
    )
    fit.add_argument("--mask", choices=MASKS, default="max", help="local feature mask (default: %(default)s)")
    fit.add_argument(
        "--bits",
        type=_positive_int,
        default=None,
        metavar="N",
        help="end with N-bit ITQ codes (a multiple of 8), searched by Hamming distance",
    )
    fit.add_argument(
        "--max-size",
        type=_positive_int,
        default=1024,
        help="longest image side for the CNN, pixels (default: %(default)s, the paper's)",
    )
    fit.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, ... (default: auto)")
    fit.add_argument("--seed", type=int, default=0, help="seeds the sample and every random stage (default: 0)")

    index = sub(
        "index", "encode a photo folder into a searchable index (resumable; adds only new photos)", _INDEX_EXAMPLES
    )
    index.add_argument("photos", type=Path, metavar="PHOTOS", help="the photo collection (walked recursively)")
    index.add_argument("--encoder", type=Path, required=True, metavar="ENCODER", help="written by `selconv fit`")
    index.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="INDEX",
        help="the index folder: created, or extended with the photos not yet in it",
    )
    index.add_argument(
        "--chunk-size",
        type=_positive_int,
        default=256,
        metavar="N",
        help="photos per shard: the most a killed run loses (default: %(default)s)",
    )
    index.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="encode on this Dask cluster (e.g. tcp://host:8786) instead of in this process",
    )
    index.add_argument(
        "--kind",
        choices=("flat", "ivf", "hnsw", "pq"),
        default="flat",
        help="faiss index of a new INDEX: flat (exact, default) or approximate for large "
        "collections (ivf and pq are trained on the photos of this run)",
    )

    search = sub("search", "search an index with a photo and print the ranked paths and scores", _SEARCH_EXAMPLES)
    search.add_argument("index", type=Path, metavar="INDEX", help="written by `selconv index`")
    search.add_argument("query", type=Path, metavar="QUERY", help="the query photo")
    search.add_argument(
        "--box",
        type=float,
        nargs=4,
        default=None,
        metavar=("X1", "Y1", "X2", "Y2"),
        help="search with this region of the query only (pixels of the original photo)",
    )
    search.add_argument("-k", type=_positive_int, default=20, help="results to show (default: %(default)s)")
    search.add_argument(
        "--html",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write a self-contained page with the query and the results' thumbnails",
    )


def _fit(args) -> int:
    from selconv.index.build import CollectionError, fit_encoder, list_photos, sample_photos, save_encoder

    try:
        source = args.photos if args.train_dir is None else args.train_dir
        if args.train_dir is not None:
            list_photos(args.photos)  # a mistyped collection is an error even when learning elsewhere
        photos = list_photos(source)
        images = sample_photos(photos, args.sample, random_state=args.seed)
        print(
            f"Learning on {len(images):,} of the {len(photos):,} photos under {source}"
            + (f" (seeded random sample, --sample {args.sample})" if len(images) < len(photos) else "")
            + "."
        )
        report = fit_encoder(
            images,
            preset=args.preset,
            mask=args.mask,
            n_bits=args.bits,
            max_size=args.max_size,
            device=args.device,
            random_state=args.seed,
        )
    except CollectionError as error:
        raise CommandError(str(error)) from error
    _print_skipped(report.skipped)
    codes = f", hashed to {report.n_bits}-bit ITQ codes" if report.n_bits else ""
    print(
        f"Learned on {report.n_images:,} images for {report.dimension}-D descriptors{codes} (preset {args.preset}, "
        f"{args.mask} mask, longest side {args.max_size} px) in {report.seconds:.0f} s."
    )
    for line in report.warnings:
        print(f"warning: {line}")
    path = save_encoder(report.encoder, args.out)
    print(f"Encoder saved to {path}.")
    return 0


def _index(args) -> int:
    from selconv.index import IndexFormatError
    from selconv.index.build import CollectionError, index_folder, load_encoder

    client = None
    try:
        encoder = load_encoder(args.encoder)
        if args.scheduler is not None:
            from dask.distributed import Client

            client = Client(args.scheduler)
            print(
                f"Dask cluster {args.scheduler}: {len(client.nthreads())} workers, "
                f"{sum(client.nthreads().values())} threads."
            )
        report = index_folder(args.photos, encoder, args.out, chunk_size=args.chunk_size, client=client, kind=args.kind)
    except (CollectionError, IndexFormatError) as error:
        raise CommandError(str(error)) from error
    finally:
        if client is not None:
            client.close()
    resumed = (
        f"; {report.n_resumed} of its {report.n_chunks} chunks resumed from an interrupted run"
        if (report.n_resumed)
        else ""
    )
    print(
        f"{report.n_found:,} photos under {args.photos}: {report.n_already:,} already indexed, "
        f"{report.n_added:,} added{resumed}."
    )
    _print_skipped(report.skipped)
    index = report.index
    rate = f" ({report.n_added / report.seconds:.1f} images/s)" if report.n_added else ""
    print(
        f"Index {report.path}: {len(index):,} images, {index.dimension} {_describe_metric(index)}; "
        f"this run took {report.seconds:.0f} s{rate}."
    )
    return 0


def _search(args) -> int:
    from selconv.extraction.images import BoxedImage, ImageLoadError, split_box
    from selconv.index import IndexFormatError, load_index
    from selconv.index.search_page import write_search_page

    _require_dir(args.index, "INDEX")
    if not args.query.is_file():
        raise CommandError(f"query {args.query} is not a file.")
    try:
        index = load_index(args.index)
    except IndexFormatError as error:
        raise CommandError(str(error)) from error
    if index.encoder is None:
        raise CommandError(f"the index {args.index} has no encoder (built from descriptors): it cannot encode a photo.")
    query = os.fspath(args.query) if args.box is None else BoxedImage(os.fspath(args.query), tuple(args.box))
    try:
        split_box(query)
        result = index.search([query], k=args.k)
    except ImageLoadError as error:
        raise CommandError(f"cannot read the query: {error}") from error
    except ValueError as error:  # a box that is no box, or a crop too small for the network
        raise CommandError(f"--box: {error}" if args.box is not None else str(error)) from error
    found = result.ids[0] >= 0
    scores, paths = result.scores[0][found], [p for p, ok in zip(result.paths[0], found) if ok]
    print(f"{'rank':>4}  {'score':>8}  path")
    for rank, (score, path) in enumerate(zip(scores, paths), start=1):
        print(f"{rank:>4}  {score:>8.4f}  {path}")
    if args.html is not None:
        notes = [f"Index {args.index}: {len(index):,} images, {index.dimension} {_describe_metric(index)}."]
        page = write_search_page(args.html, args.query, scores, paths, box=args.box, notes=notes)
        print(f"Page: {page}")
    return 0


def _describe_metric(index) -> str:
    return "bits per code, Hamming distance" if index.metric == "hamming" else "dimensions, inner product"


def _print_skipped(skipped) -> None:
    if skipped:
        print(f"Skipped {len(skipped)} unreadable file(s):")
        for path, reason in skipped:
            print(f"  {reason}" if reason.startswith(path) else f"  {path}: {reason}")


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
    from selconv.pipelines import make_paper_pipeline, rotation_settings

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
            backbone="vgg16",
            layers="pool5",
            max_size=max_size,
            keypoints="sift" if "sift" in masks else None,
            cache_dir=cache_dir,
            device=device,
            progress=True,
        )
    started = time.perf_counter()
    extractor.fit()
    settings = extractor.get_params()
    say(f"{dataset.summary()}")
    say(f"Training set: {training_name}: {len(training)} images.")
    say(
        f"Backbone {settings['backbone']} (weights: {extractor.weights_source_}), "
        f"layer(s) {', '.join(extractor.layers_)} "
        f"(K = {extractor.n_channels_}), longest side {settings['max_size']} px, device {extractor.device_}; "
        f"conv maps cached in {settings['cache_dir']}."
    )

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
        train = extractor.extract(dataset.database_inputs() if fit_on == "database" else list(training))
        train_maps = train.maps
        say(
            f"Fitting the paper's pipeline (preset D = {preset}) on {len(train_maps)} training images, one per mask ..."
        )
        rotation, rotation_note = rotation_settings(len(train_maps), preset, fit_on=fit_on)
        if rotation_note:
            say(f"Note: {rotation_note}")
        fit_started = time.perf_counter()
        for mask in masks:
            pipelines[mask] = make_paper_pipeline(
                preset, mask=mask, random_state=random_state, fit_on=fit_on, **rotation
            )
            descriptors = pipelines[mask].fit_transform(train_maps)
            if mask == masks[0]:
                train_descriptors = descriptors
        fit_seconds += time.perf_counter() - fit_started
        n_training = len(train_maps)
        if fit_on == "database":
            db_desc, db_stats = _describe(train_maps, pipelines)
            skipped = train.skipped
        else:
            del train_maps
            say("Conv maps of the database images:")
            extracted = extractor.iter_extract(dataset.database_inputs())
            db_desc, db_stats = _describe((conv_map for _, conv_map in extracted), pipelines)
            skipped = extracted.skipped
        _check_all_described(db_desc, len(dataset.database), "database images", skipped)
        say("Conv maps of the queries:")
        extracted = extractor.iter_extract(queries)
        query_desc, _ = _describe((conv_map for _, conv_map in extracted), pipelines)
        _check_all_described(query_desc, n_queries, "queries", extracted.skipped)

        say("Results:")
        for mask, pipeline in pipelines.items():
            steps = pipeline.named_steps
            name = (
                f"{_MASK_LABELS[mask]} + Temb(d={steps['pca'].n_components}, "
                f"|C|={steps['encode'].embedding.n_clusters})"
                f" + democratic + RN(-{steps['rotate'].n_dropped}) + PN({steps['power'].alpha})"
            )
            dims = db_desc[mask].shape[1]
            add_row(
                "real",
                name,
                f"{dims}-D float32",
                evaluate(query_desc[mask], db_desc[mask], ground_truth),
                label=f"{_MASK_LABELS[mask]}, {dims}-D",
                mask=mask,
                dims=int(dims),
                kept=db_stats["kept"][mask],
            )

        first_mask = masks[0]
        real_dim = db_desc[first_mask].shape[1]
        skipped = []
        for n_bits in bits:
            if n_bits % 8 or n_bits > min(len(train_descriptors) - 1, real_dim):
                reason = (
                    f"{n_bits} bits is not a multiple of 8"
                    if n_bits % 8
                    else f"ITQ at {n_bits} bits needs more than {n_bits} training images and at least {n_bits} "
                    f"dimensions (have {len(train_descriptors)} images, {real_dim} dims)"
                )
                if strict_bits:
                    raise CommandError(reason + ".")
                skipped.append(f"skipped: {reason}")
                continue
            fit_started = time.perf_counter()
            hasher = ITQHasher(n_bits, random_state=random_state).fit(train_descriptors)
            fit_seconds += time.perf_counter() - fit_started
            add_row(
                "binary",
                f"ITQ on {_MASK_LABELS[first_mask]} {real_dim}-D",
                f"{n_bits} bits ({n_bits // 8} bytes)",
                evaluate(hasher.transform(query_desc[first_mask]), hasher.transform(db_desc[first_mask]), ground_truth),
                label=f"ITQ {n_bits} bits ({_MASK_LABELS[first_mask]})",
                mask=first_mask,
                dims=n_bits,
            )
    caught = [f"{w.category.__name__}: {w.message}" for w in recorded] + skipped
    total_seconds = time.perf_counter() - started

    rng = np.random.default_rng(random_state)
    random_maps = [
        mean_average_precision(
            np.stack([rng.permutation(len(dataset.database)) for _ in range(n_queries)]), ground_truth
        )
        for _ in range(_N_RANDOM_RANKINGS)
    ]
    rows.append(
        {
            "kind": "random",
            "descriptor": f"random ranking (mean of {_N_RANDOM_RANKINGS} seeded shuffles)",
            "size": "-",
            "mAP": float(np.mean(random_maps)),
            "queries": n_queries,
        }
    )

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
        *([rotation_note] if rotation_note else []),
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
    result.results_path.write_text(
        json.dumps({"title": title, "rows": rows, "notes": notes, "warnings": result.warnings}, indent=2)
    )
    if report:
        from selconv.report import write_report

        result.report_path = write_report(
            out / "report.html",
            queries=queries,
            database=list(dataset.database),
            ground_truth=ground_truth,
            rankings=rankings,
            table=[{k: v for k, v in row.items() if k not in ("kind", "mask")} for row in rows],
            title=title,
            notes=notes + [f"warning: {w}" for w in result.warnings],
            top_k=top_k,
        )
        say(f"Report: {result.report_path}")
    say(f"Results: {result.results_path}")
    return result


def _check_all_described(descriptors, expected: int, what: str, skipped) -> None:
    """Every image must have its descriptor: a skipped one (``skipped``: the extractor's SkippedInput list)
    would shift every later ground-truth index."""
    got = {len(d) for d in descriptors.values()}
    if got != {expected}:
        skipped = "; ".join(f"{name}: {reason}" for _, name, reason in skipped[:3])
        raise CommandError(
            f"{expected - min(got)} of the {expected} {what} could not be read"
            + (f" ({skipped})" if skipped else "")
            + "; the ground truth refers to every image by position, so fix or remove them (and their ground truth)."
        )


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
    stats = {
        "kept": {mask: kept[mask] / cells if cells else 0.0 for mask in pipelines},
        "width": widths / max(count, 1),
        "height": heights / max(count, 1),
    }
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
