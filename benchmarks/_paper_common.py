"""Helpers of the paper-reproduction benchmark (benchmarks/paper_experiments.py): timing, caching, report.

Nothing here is part of the selconv package: it is the plumbing of one benchmark script (phase timers,
machine facts, on-disk caches of ragged local-feature sets, the markdown report, the training-only
proxy task that picks the baselines' whitening, plots).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

# --------------------------------------------------------------------------------------------------
# Timing


class PhaseTimer:
    """Wall time of each named phase, in the order the phases ran (a phase may run several times)."""

    def __init__(self):
        self.start = time.perf_counter()
        self.phases: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        t0 = time.perf_counter()
        print(f"[{self.elapsed():7.1f}s] >> {name}", flush=True)
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            self.phases[name] = self.phases.get(name, 0.0) + dt
            print(f"[{self.elapsed():7.1f}s] << {name} ({dt:.1f}s)", flush=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


# --------------------------------------------------------------------------------------------------
# Machine facts


def machine_info() -> dict:
    """Facts that make a timing or a number interpretable later: host, CPU, RAM, GPU, library versions."""
    import numpy
    import scipy
    import sklearn

    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
    }
    try:
        with open("/proc/meminfo") as f:
            total_kb = int(f.readline().split()[1])
        info["ram_gib"] = round(total_kb / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except Exception as error:  # torch missing or a broken CUDA set-up: the report says so
        info["torch"] = f"unavailable ({error})"
    try:
        import selconv

        info["selconv"] = selconv.__version__
    except Exception:  # pragma: no cover - the script cannot run without it anyway
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


# --------------------------------------------------------------------------------------------------
# Ragged local-feature sets on disk (resumable runs)


def key_of(*parts) -> str:
    """A short stable hash naming a cache entry from everything that determines its content."""
    return hashlib.sha1(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:16]


def save_sets(path: Path, sets: list[np.ndarray], dtype=np.float16) -> None:
    """Store a list of (n_i, K) arrays as one concatenated array + counts (float16 halves the disk)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    counts = np.array([len(s) for s in sets], dtype=np.int64)
    n_features = sets[0].shape[1] if sets else 0
    rows = np.concatenate(sets).astype(dtype) if counts.sum() else np.zeros((0, n_features), dtype)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, rows=rows, counts=counts)
    tmp.replace(path)  # atomic: an interrupted run never leaves a half-written cache entry


def load_sets(path: Path) -> list[np.ndarray] | None:
    """The list saved by :func:`save_sets` as float32 arrays, or None when absent or unreadable."""
    if not path.exists():
        return None
    try:
        with np.load(path) as data:
            rows, counts = data["rows"], data["counts"]
    except (OSError, ValueError, KeyError):
        return None
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [rows[a:b].astype(np.float32) for a, b in zip(bounds[:-1], bounds[1:])]


# --------------------------------------------------------------------------------------------------
# Conv-map manipulations used by the experiments


def max_pool_2x2(features: np.ndarray) -> np.ndarray:
    """2x2 max-pooling with stride 2 of a (K, H, W) map (floor, like VGG16's pool5 on even sizes)."""
    k, h, w = features.shape
    h2, w2 = h // 2, w // 2
    if h2 == 0 or w2 == 0:
        return features
    trimmed = features[:, : 2 * h2, : 2 * w2]
    return trimmed.reshape(k, h2, 2, w2, 2).max(axis=(2, 4))


def random_subwindow(features: np.ndarray, rng: np.random.Generator, side_fraction: float) -> np.ndarray:
    """A random window of ``side_fraction`` of each side of a (K, H, W) map (at least 1 x 1 cells).

    Stands in for the conv map of a crop of the image: the training-only proxy query of
    :func:`proxy_retrieval_map`.
    """
    _, h, w = features.shape
    hh, ww = max(1, round(h * side_fraction)), max(1, round(w * side_fraction))
    y0 = int(rng.integers(0, h - hh + 1))
    x0 = int(rng.integers(0, w - ww + 1))
    return features[:, y0 : y0 + hh, x0 : x0 + ww]


def proxy_retrieval_map(query_desc: np.ndarray, db_desc: np.ndarray) -> float:
    """mAP of finding image i (database row i) from query i, the sub-window of image i: one positive each.

    With a single positive, AP is 1 / (rank + 1) (the Oxford AP of section 9 reduces to that too,
    up to the trapezoid, which is monotone in the rank), so this is a mean reciprocal rank.
    """
    scores = query_desc @ db_desc.T
    own = scores[np.arange(len(scores)), np.arange(len(scores))]
    ranks = (scores > own[:, None]).sum(axis=1)
    return float(np.mean(1.0 / (ranks + 1.0)))


def feature_pair_decorrelation(
    sets: list[np.ndarray], rng: np.random.Generator, max_images: int = 200, band: float = 0.15
) -> float:
    """Share of l2-normalised local-feature pairs of one image whose dot product is in [-band, band].

    Paper Fig. 3b (averaged over images; pairs of distinct features of the same image).
    """
    picks = rng.permutation(len(sets))[:max_images]
    shares = []
    for i in picks:
        x = sets[i].astype(np.float64)
        if len(x) < 2:
            continue
        norms = np.linalg.norm(x, axis=1)
        x = x[norms > 0] / norms[norms > 0, None]
        if len(x) < 2:
            continue
        gram = x @ x.T
        upper = gram[np.triu_indices(len(x), k=1)]
        shares.append(np.mean(np.abs(upper) <= band))
    return float(np.mean(shares)) if shares else float("nan")


# --------------------------------------------------------------------------------------------------
# Markdown report


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
