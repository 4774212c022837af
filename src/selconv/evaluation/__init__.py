"""Evaluation of the paper's pipeline and the baselines on a retrieval dataset, as ``selconv demo``/``evaluate`` run it.

:func:`run_benchmark` is the whole job (extraction, fitting, scoring, random-ranking reference, notes,
``results.json`` and the HTML report); its steps (extractor, fitting, descriptors) are in ``_steps.py``.
"""

from selconv.evaluation._benchmark import BenchmarkResult, format_table, random_ranking_map, run_benchmark
from selconv.evaluation._settings import (
    BASELINE_LABELS,
    CACHE_DIR_VARIABLE,
    MASK_LABELS,
    EvaluationError,
    default_cache_dir,
    itq_bits_problem,
)

__all__ = [
    "BASELINE_LABELS",
    "CACHE_DIR_VARIABLE",
    "MASK_LABELS",
    "BenchmarkResult",
    "EvaluationError",
    "default_cache_dir",
    "format_table",
    "itq_bits_problem",
    "random_ranking_map",
    "run_benchmark",
]
