"""The markdown report: number formatting, tables, paired differences and the sectioned results file."""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np

from ..settings import PROTOCOLS


def fmt(value, digits: int = 1) -> str:
    """mAP-style number as a percentage-point string; '-' for missing, 'n/a' for NaN."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line(argv, prefix="PYTHONPATH=src python3") -> str:
    return f"{prefix} benchmarks/paper_experiments.py " + " ".join(shlex.quote(str(a)) for a in argv)


class Report:
    """The one results file, rewritten after every section so an interrupted run still leaves results."""

    def __init__(self, path: Path, title: str, order: tuple[str, ...] = ()):
        self.path = Path(path)
        self.title = title
        self.order = {key: i for i, key in enumerate(order)}
        self.sections: dict[str, str] = {}

    def set(self, key: str, text: str) -> None:
        self.sections[key] = text.rstrip() + "\n"
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Sections appear in the given order whatever order the phases wrote them in.
        keys = sorted(self.sections, key=lambda k: self.order.get(k, len(self.order)))
        body = f"# {self.title}\n\n" + "\n".join(self.sections[k] for k in keys)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(body)
        tmp.replace(self.path)


def pair(result):
    """'mAP ± s.e.' of both protocols (official-10, loo-landmark); '-' twice when there is no result."""
    if result is None:
        return ["-", "-"]
    return [map_se(result[p]) for p in PROTOCOLS]


def map_se(r):
    if r is None:
        return "-"
    se = r.get("se", float("nan"))
    return f"{r['map']:.1f} ± {se:.1f}" if np.isfinite(se) else f"{r['map']:.1f}"


def paired_values(result, reference, protocol) -> tuple[float, float]:
    """(mean per-query AP difference, its standard error): much tighter than comparing two mAPs' errors."""
    diff = np.asarray(result[protocol]["aps"]) - np.asarray(reference[protocol]["aps"])
    se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    return float(diff.mean()), float(se)


def paired(result, reference, protocol):
    """:func:`paired_values` as 'mean ± s.e.'."""
    return "{:+.1f} ± {:.1f}".format(*paired_values(result, reference, protocol))


def ratio(result, reference, protocol="loo-landmark"):
    return f"{100.0 * result[protocol]['map'] / max(reference[protocol]['map'], 1e-12):.0f}%"
