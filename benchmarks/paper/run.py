"""The state the phases share: arguments, timer, results, report, budget, and the threaded transforms."""

from __future__ import annotations

import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .plumbing import PhaseTimer
from .protocols import evaluate
from .report.markdown import Report
from .settings import SECTION_ORDER


class Run:
    def __init__(self, args):
        self.args = args
        self.timer = PhaseTimer()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.cache_dir = Path(args.cache_dir) if args.cache_dir else self.out.resolve().parent / "selconv-paper-cache"
        if not args.merge_json:  # a merge computes nothing
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.report = Report(
            self.out / "paper_results.md", "Reproducing the paper's findings on the Oxford subset", order=SECTION_ORDER
        )
        self.results: dict = {"skipped": {}, "errors": {}, "framework": {}}
        self.rng_seed = args.seed
        cpus = os.cpu_count() or 1
        self.n_jobs = args.n_jobs or cpus
        self.warnings: dict[str, set] = {}
        reuse = None if args.merge_json else getattr(args, "reuse_json", None)  # a merge reads only its JSONs
        self.reused = json.loads(Path(reuse).read_text()) if reuse else {}

    # ---------------------------------------------------------------- bookkeeping

    def over_budget(self) -> bool:
        return self.timer.elapsed() > self.args.budget_s

    def within_budget(self, skipped_key: str) -> bool:
        """False, and ``skipped_key`` recorded as skipped, once the time budget is spent."""
        if self.over_budget():
            self.results["skipped"][skipped_key] = "time budget"
            return False
        return True

    def save_json(self):
        def default(value):
            if isinstance(value, (np.integer,)):
                return int(value)
            if isinstance(value, (np.floating,)):
                return float(value)
            if isinstance(value, np.ndarray):
                return value.tolist()
            if isinstance(value, set):
                return sorted(value)
            return str(value)

        payload = dict(
            self.results, wall_times_s=self.timer.phases, total_s=self.timer.elapsed(), warnings=self.warnings
        )
        tmp = self.out / "paper_results.json.tmp"
        tmp.write_text(json.dumps(payload, indent=1, default=default))
        tmp.replace(self.out / "paper_results.json")

    @contextmanager
    def recording_warnings(self, label):
        """Every warning raised in the block, recorded under ``label`` for the report (none is shown)."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for w in caught:
            self.warnings.setdefault(label, set()).add(f"{w.category.__name__}: {str(w.message)[:300]}")

    # ---------------------------------------------------------------- evaluation

    def evaluate(self, db_desc, official_desc, metric="ip", rerank="none") -> dict:
        """mAP (in %) and its standard error over queries, for both protocols (see :func:`protocols.evaluate`)."""
        return evaluate(self.data, db_desc, official_desc, metric=metric, rerank=rerank)

    # ---------------------------------------------------------------- parallel transforms

    def transform(self, estimator, items, chunk=None):
        """``estimator.transform(items)`` over chunks of images in threads (numpy releases the GIL).

        Each thread runs single-threaded BLAS: many independent per-image products parallelise better
        than one multi-threaded BLAS call at a time (measured: 3x faster on 2 cores, and OpenBLAS's
        own threads can serialise concurrent callers).
        """
        from threadpoolctl import threadpool_limits

        if chunk is None:
            # About 4 chunks per thread: balanced even when images differ in their number of features.
            chunk = max(1, min(48, -(-len(items) // (4 * self.n_jobs))))
        if self.n_jobs <= 1 or len(items) <= chunk:
            return estimator.transform(items)
        chunks = [items[i : i + chunk] for i in range(0, len(items), chunk)]
        cpus = os.cpu_count() or 1
        with threadpool_limits(limits=max(1, cpus // self.n_jobs)), ThreadPoolExecutor(self.n_jobs) as pool:
            parts = list(pool.map(estimator.transform, chunks))
        if isinstance(parts[0], np.ndarray):
            return np.concatenate(parts)
        return [x for part in parts for x in part]
