"""The command line of ``benchmarks/paper_experiments.py``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .settings import (
    BASELINES,
    MASK_NAMES,
    MULTISCALE_FRAMEWORK,
    MULTISCALE_METHODS,
    PHASE_NAMES,
    TABLE3,
    TRAIN_SOURCES,
)

DESCRIPTION = (
    "Reproduce the paper's findings on the shared Oxford subset: masks, dimensions, alpha, layers, baselines, ITQ."
)

# (flags, keyword arguments of add_argument), in the order --help lists them.
OPTIONS = (
    (
        "--data-dir",
        dict(
            type=Path,
            default=None,
            help="folder with oxford5k-subset/, bsds500/ and imagenet-sample-500/ (shared layout); "
            "required unless --merge-json",
        ),
    ),
    ("--out", dict(type=Path, required=True, help="results folder (paper_results.md, json, PNGs)")),
    (
        "--weights",
        dict(
            default="imagenet", help="VGG16 weights file for ConvFeatureExtractor (default: its 'imagenet' resolution)"
        ),
    ),
    (
        "--cache-dir",
        dict(
            type=Path, default=None, help="conv-map cache (default: OUT/../selconv-paper-cache); re-runs resume from it"
        ),
    ),
    ("--device", dict(default="auto", help="'auto', 'cpu', 'cuda', ...")),
    (
        "--max-size",
        dict(
            type=int,
            default=1024,
            help="longest image side fed to the CNN (paper: 1024; the official query crops need >= 512)",
        ),
    ),
    ("--limit-train", dict(type=int, default=None, help="use this many training photos (smoke runs)")),
    (
        "--limit-db",
        dict(type=int, default=None, help="use this many database images, labelled ones first (smoke runs)"),
    ),
    ("--batch-size", dict(type=int, default=16)),
    (
        "--num-workers",
        dict(
            type=int,
            default=None,
            help="image decoding / SIFT threads (default: the extractor's, available cores up to 16)",
        ),
    ),
    (
        "--precision",
        dict(
            default="float32",
            choices=("float32", "tf32", "float16", "bfloat16"),
            help="CNN arithmetic (default float32, the paper's; tf32 is faster on GPUs, ~1e-3 off)",
        ),
    ),
    (
        "--n-jobs",
        dict(
            type=int,
            default=None,
            help="threads transforming image chunks in parallel, one BLAS thread each (default: CPU count)",
        ),
    ),
    (
        "--budget-s",
        dict(type=float, default=420.0, help="no new phase starts after this many seconds (results so far are kept)"),
    ),
    ("--skip", dict(default="", help="comma-separated phases to skip: " + ", ".join(PHASE_NAMES))),
    (
        "--sweep-dims",
        dict(
            default="2048,4096",
            help="final dimensions beyond 512/1024 for the dimension sweep (paper Table 4 presets)",
        ),
    ),
    (
        "--table9",
        dict(default="64,64", help="'d,|C|' of the Table 9 replica (paper: 64,64 = 4096-D, then PCA to 512)"),
    ),
    (
        "--train-source",
        dict(
            default="generic",
            choices=TRAIN_SOURCES,
            help="learning set of the 'domain' phase: 'oxford-unlabelled' = the database images in no "
            "ground-truth list of any of the 55 queries (same domain, held out from every query and "
            "labelled image, but part of the database), 'both' = those plus the generic photos; "
            "'generic' (default) skips the phase (every other phase learns on the generic photos)",
        ),
    ),
    (
        "--merge-json",
        dict(
            type=Path,
            nargs="+",
            default=None,
            metavar="FILE",
            help="no computation: merge these paper_results.json files of partial runs (later files win "
            "on the same key) and write the complete report into --out",
        ),
    ),
    (
        "--table3-masks",
        dict(
            default=",".join(MASK_NAMES),
            help="masks of phase table3, in this order (split Table 3 over device calls; merged by --merge-json)",
        ),
    ),
    (
        "--table3-rows",
        dict(
            default=",".join(TABLE3),
            help="rows (frameworks) of phase table3, in this order: " + ", ".join(TABLE3) + " (with "
            "--table3-masks, a call can run exactly the cells an earlier run left; merged by --merge-json)",
        ),
    ),
    (
        "--multiscale-methods",
        dict(
            default="all",
            help="methods of phase multiscale (comma-separated; default 'all'): "
            + ", ".join(MULTISCALE_METHODS)
            + " ('framework': its three learned-step variants, each at MAX/SUM x 512/1024-D); e.g. 'crow,gem' "
            "finishes the baselines of an earlier run without refitting the framework (merged by --merge-json)",
        ),
    ),
    (
        "--reuse-json",
        dict(
            type=Path,
            default=None,
            metavar="FILE",
            help="a paper_results.json (e.g. the committed one) whose baselines' whitening choices, made by the "
            "training-only proxy task, the phases rerank and multiscale reuse when phase baselines is skipped",
        ),
    ),
    ("--seed", dict(type=int, default=0)),
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    for flag, settings in OPTIONS:
        parser.add_argument(flag, **settings)
    args = parser.parse_args(argv)
    if args.data_dir is None and args.merge_json is None:
        parser.error("--data-dir is required (unless --merge-json)")
    try:
        args.sweep_dims = tuple(int(d) for d in args.sweep_dims.split(",") if d.strip())
        args.table9 = tuple(int(v) for v in args.table9.split(","))
    except ValueError:
        parser.error("--sweep-dims and --table9 take comma-separated integers")
    args.table3_masks = tuple(m.strip() for m in args.table3_masks.split(",") if m.strip())
    if not set(args.table3_masks) <= set(MASK_NAMES):
        parser.error(f"--table3-masks takes masks among {', '.join(MASK_NAMES)}")
    args.table3_rows = tuple(r.strip() for r in args.table3_rows.split(",") if r.strip())
    if not args.table3_rows or not set(args.table3_rows) <= set(TABLE3):
        parser.error(f"--table3-rows takes frameworks among {', '.join(TABLE3)}")
    args.multiscale_methods = multiscale_methods(args.multiscale_methods, parser)
    if len(args.table9) != 2:
        parser.error("--table9 takes 'd,|C|'")
    return args


def multiscale_methods(text, parser) -> tuple:
    """--multiscale-methods as (framework variants of settings.VARIANTS, baselines), each in the phase's order."""
    names = {m.strip() for m in text.split(",") if m.strip()}
    if names == {"all"}:
        names = set(MULTISCALE_METHODS)
    unknown = names - set(MULTISCALE_METHODS)
    if unknown or not names:
        parser.error(
            f"--multiscale-methods: unknown method(s) {sorted(unknown)}; known: all, {', '.join(MULTISCALE_METHODS)}"
        )
    variants = tuple(v for n, v in MULTISCALE_FRAMEWORK.items() if n in names or "framework" in names)
    return variants, tuple(b for b in BASELINES if b in names)
