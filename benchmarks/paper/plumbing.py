"""Plumbing of the experiments: phase timer, machine facts, on-disk caches of ragged local-feature sets.

Nothing here is part of the selconv package.
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
