"""Reproduce the paper's findings on the shared Oxford subset: masks, dimensions, alpha, layers, baselines, ITQ.

Do, Hoang et al., "Selective deep convolutional features for image retrieval" (Tables 3-10, Figs. 3-5),
re-run with selconv on the 1,008-image Oxford5k subset of ``shared/data`` (protocols ``official-10``
with box-cropped queries and ``loo-landmark``), VGG16 pool5 at 1024 px, every parameter learned on the
1,000 generic training photos (bsds500 + imagenet-sample-500) and, separately labelled, on the
database itself (paper Table 9: no truncation). Writes ``paper_results.md`` (every table, the paper's
numbers beside ours, the discussion of disagreements, machine facts, wall time of each phase, the
exact command), ``paper_results.json`` and a few PNG figures into ``--out``.

Each image's conv map is extracted ONCE per layer configuration (pool5 with SIFT keypoints; the
conv5_3+conv5_2+conv5_1 hypercolumns, streamed and MAX-masked map by map, never all in memory);
the extractor's ``cache_dir`` and this script's cache of masked hypercolumn sets make a re-run resume.
Phases run in order of importance and a phase that would start after ``--budget-s`` seconds is
skipped (and said so), so the results file is complete up to where time ran out.

GPU run (all data), from the repository root::

    PYTHONPATH=src python3 benchmarks/paper_experiments.py --data-dir DATA --weights VGG16.pth \
        --out OUT --cache-dir /tmp/selconv-paper-cache

Same-domain learning only (phase ``domain``: learned on the database images in no ground-truth list,
the stand-in for the paper's Paris6k), resuming from the cached maps::

    ... --train-source oxford-unlabelled \
        --skip framework-training,baselines,framework-database,dimensions,hypercolumns,table9

Only the phases beyond the paper (issue 12: rerank, robust, multiscale, table3, table7), the baselines'
whitening as the committed run's proxy task chose it::

    ... --reuse-json benchmarks/results/paper/paper_results.json \
        --skip framework-training,baselines,framework-database,dimensions,hypercolumns,table9,domain,protocols

Merge partial runs' JSON into one complete report (no computation, no data folder)::

    python benchmarks/paper_experiments.py --merge-json RUN1/paper_results.json RUN2/paper_results.json --out OUT

Smoke run on a few images (CPU; below about 512 px the smallest official query box, 124 px wide, gets
no pool5 cell)::

    python benchmarks/paper_experiments.py --data-dir ../shared/data --out /tmp/paper-smoke \
        --limit-train 70 --limit-db 40 --max-size 512 --device cpu --sweep-dims 2048 --table9 32,20

The code is the package ``benchmarks/paper/`` beside this entry point (its docstring says what each module does).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper.main import main  # noqa: E402  (the experiments' package beside this script)

if __name__ == "__main__":
    main()
