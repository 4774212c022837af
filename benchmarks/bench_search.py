"""Benchmark of searching with :class:`selconv.index.ImageIndex` against raw faiss and selconv 0.1.0's numpy search.

For real vectors (float32, inner product) and packed binary codes (Hamming), on the same synthetic collection:

1. exact search through ``ImageIndex.search_descriptors`` against the bare faiss index it wraps
   (``IndexFlatIP`` / ``IndexBinaryFlat``) in the same run, alternating the two (best of ``--repeats``), and
   against selconv 0.1.0's numpy ``FlatIndex`` / ``BinaryIndex`` (``--old-search``: that release's
   ``src/selconv/search.py``, by default read from git at the commit before it was replaced), on
   ``--old-queries`` of the queries;
2. memory per image (faiss storage in RAM, and the saved index folder on disk: faiss file, ids, paths, manifest),
   add (build), save and load times;
3. each approximate option (IVF, HNSW, IVF-PQ for vectors; binary IVF and HNSW for codes) with its default
   parameters: training and adding time, queries/s, recall@k against the exact top k, speed-up over exact.

The collection: ``--n`` unit vectors of ``--dim`` dimensions drawn around ``--n-clusters`` random centres
(Gaussian noise of norm ``--noise`` relative to the centre, then l2-normalised), since retrieval descriptors
are clustered and uniform random data would make every approximate index look worse than it is; the codes are
the signs of the same vectors packed into ``--dim`` bits (ITQ-like sign quantisation without a learned rotation).
The queries are ``--n-queries`` further draws of the same mixture, not in the collection. Seeded: rerunning gives
the same data.

Example (the committed results, on the GPU machine's 16 CPU cores; faiss-cpu)::

    PYTHONPATH=src python benchmarks/bench_search.py --out benchmarks/results/search
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: selconv 0.1.0's search module (numpy FlatIndex / BinaryIndex) lives in git at the parent of this commit,
#: the one that replaced it with faiss.
OLD_SEARCH_COMMIT = "1bdd978"


def log(*args):
    print(*args, flush=True)


def make_collection(n, n_queries, dim, n_clusters, noise, seed):
    """(database, queries) float32 unit vectors around shared random centres; generated in blocks."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(count):
        out = np.empty((count, dim), dtype=np.float32)
        for start in range(0, count, 100_000):
            m = min(100_000, count - start)
            block = centres[rng.integers(n_clusters, size=m)]
            block += rng.standard_normal((m, dim), dtype=np.float32) * np.float32(noise / np.sqrt(dim))
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            out[start : start + m] = block
        return out

    return draw(n), draw(n_queries)


def load_old_search(path):
    """selconv 0.1.0's ``search`` module from a file, or from git when ``path`` is None (None if neither works)."""
    if path is None:
        try:
            source = subprocess.run(
                ["git", "show", f"{OLD_SEARCH_COMMIT}^:src/selconv/search.py"],
                check=True,
                capture_output=True,
                text=True,
                cwd=Path(__file__).resolve().parent,
            ).stdout
        except (OSError, subprocess.CalledProcessError):
            return None
        path = Path(tempfile.mkdtemp(prefix="selconv-old-search-")) / "old_search.py"
        path.write_text(source)
    spec = importlib.util.spec_from_file_location("selconv_old_search", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def best_time(function, repeats):
    """(best seconds, last result) of ``repeats`` calls."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def recall_at_k(found_ids, exact_ids):
    """Mean share of the exact top k found by the approximate search."""
    return float(np.mean([len(np.intersect1d(f[f >= 0], e)) / len(e) for f, e in zip(found_ids, exact_ids)]))


def bench_one(name, database, queries, args, old_search, work):
    """All measurements for one data type (``name`` is "vectors" or "codes")."""
    from selconv.index import ImageIndex

    n = len(database)
    paths = [f"photos/{i // 1000:04d}/{i:07d}.jpg" for i in range(n)]
    row = {"n": n, "k": args.k, "n_queries": len(queries)}
    index = ImageIndex()
    row["add_s"], _ = best_time(lambda: index.add_descriptors(database, paths=paths), 1)
    log(f"[{name}] flat index built in {row['add_s']:.1f} s")
    exact = exact_search(name, index, database, queries, args, row)
    if old_search is not None and args.old_queries:
        old_numpy_search(name, old_search, database, queries, exact, args, row)
    save_and_load(name, index, database, queries, exact, work, row)
    index = None  # free its memory before the approximate indexes
    row["approximate"] = approximate_searches(name, database, queries, exact.ids, args, row["index_qps"])
    return row


def exact_search(name, index, database, queries, args, row):
    """ImageIndex's exact search against raw faiss on the same data, alternated; its result."""
    import faiss

    binary = database.dtype == np.uint8
    raw = faiss.IndexBinaryFlat(database.shape[1] * 8) if binary else faiss.IndexFlatIP(database.shape[1])
    raw.add(database)
    index_times, raw_times = [], []
    for _ in range(args.repeats):  # alternate, so that load changes hit both alike
        start = time.perf_counter()
        result = index.search_descriptors(queries, args.k)
        index_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        raw_distances, raw_ids = raw.search(queries, args.k)
        raw_times.append(time.perf_counter() - start)
    row["index_qps"] = len(queries) / min(index_times)
    row["faiss_qps"] = len(queries) / min(raw_times)
    row["index_vs_faiss"] = row["index_qps"] / row["faiss_qps"]
    # Same neighbours as faiss: equal scores may be ordered differently (ImageIndex lists ties by id).
    raw_scores = -raw_distances.astype(np.float32) if binary else raw_distances
    row["same_scores_as_faiss"] = bool(np.array_equal(result.scores, raw_scores))
    log(
        f"[{name}] exact: ImageIndex {row['index_qps']:.0f} q/s, raw faiss {row['faiss_qps']:.0f} q/s "
        f"({row['index_vs_faiss']:.2f}x); same scores: {row['same_scores_as_faiss']}"
    )
    return result


def old_numpy_search(name, old_search, database, queries, exact, args, row):
    """selconv 0.1.0's numpy search on the first ``--old-queries`` queries: rate and agreement."""
    binary = database.dtype == np.uint8
    old = (old_search.BinaryIndex() if binary else old_search.FlatIndex()).add(database)
    subset = queries[: args.old_queries]
    seconds, (old_scores, _) = best_time(lambda: old.search(subset, args.k), 1)
    row["old_qps"] = len(subset) / seconds
    row["old_queries"] = len(subset)
    expected = -exact.scores[: len(subset)] if binary else exact.scores[: len(subset)]
    row["old_same_scores"] = bool(np.allclose(old_scores, expected, rtol=0, atol=1e-5))
    log(f"[{name}] old numpy search: {row['old_qps']:.1f} q/s on {len(subset)} queries")


def save_and_load(name, index, database, queries, exact, work, row):
    """Memory and disk per image, save and load times, and the loaded index's agreement."""
    from selconv.index import load_index

    binary = database.dtype == np.uint8
    row["ram_bytes_per_image"] = (database.shape[1] if binary else 4 * database.shape[1]) + 8  # storage + id
    folder = work / f"{name}.index"
    row["save_s"], _ = best_time(lambda: index.save(folder), 1)
    row["disk_bytes_per_image"] = folder_bytes(folder) / len(database)
    row["load_s"], loaded = best_time(lambda: load_index(folder), 1)
    row["loaded_identical"] = bool(
        np.array_equal(loaded.search_descriptors(queries[:50], row["k"]).ids, exact.ids[:50])
    )
    shutil.rmtree(folder)
    log(
        f"[{name}] save {row['save_s']:.1f} s, load {row['load_s']:.1f} s, "
        f"{row['disk_bytes_per_image']:.0f} bytes/image on disk"
    )


def approximate_searches(name, database, queries, exact_ids, args, exact_qps) -> list[dict]:
    """Train, add, search rate, recall and speed-up of every ``--approx`` kind (no PQ on codes)."""
    from selconv.index import ImageIndex

    binary = database.dtype == np.uint8
    n, k = len(database), args.k
    entries = []
    sample = database[np.sort(np.random.default_rng(1).choice(n, min(n, args.train_size), replace=False))]
    for kind in args.approx:
        if binary and kind == "pq":
            continue
        approx = ImageIndex(kind=kind)
        start = time.perf_counter()
        approx.train(sample)
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        approx.add_descriptors(database)
        add_s = time.perf_counter() - start
        seconds, found = best_time(lambda approx=approx: approx.search_descriptors(queries, k), args.repeats)
        entry = {
            "kind": kind,
            "params": dict(approx.index_params),
            "train_s": train_s,
            "add_s": add_s,
            "qps": len(queries) / seconds,
            "recall": recall_at_k(found.ids, exact_ids),
        }
        entry["speedup"] = entry["qps"] / exact_qps
        entries.append(entry)
        log(
            f"[{name}] {kind} {entry['params']}: train {train_s:.1f} s, add {add_s:.1f} s, {entry['qps']:.0f} q/s "
            f"({entry['speedup']:.1f}x exact), recall@{k} {entry['recall']:.3f}"
        )
    return entries


def machine_lines():
    import faiss

    lines = []
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
        if model:
            lines.append(
                f"- CPU: {model}, {os.cpu_count()} logical CPUs visible; faiss OpenMP threads: "
                f"{faiss.omp_get_max_threads()}"
            )
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            lines.append(f"- RAM: {int(f.readline().split()[1]) / 2**20:.0f} GiB")
    except (OSError, ValueError, IndexError):
        pass
    lines.append(f"- faiss {faiss.__version__} (faiss-cpu), numpy {np.__version__}, Python {sys.version.split()[0]}")
    return lines


def report(results, args, command):
    lines = [
        "# Searching with `ImageIndex` vs raw faiss vs selconv 0.1.0's numpy search",
        "",
        f"Command: `{command}`",
        "",
        *machine_lines(),
        f"- Collection: {args.n:,} unit vectors of {args.dim} dimensions drawn around {args.n_clusters:,} random "
        f"centres (noise {args.noise} of the centre's norm, seed {args.seed}); codes: their signs packed into "
        f"{args.dim} bits. {args.n_queries:,} queries from the same mixture, not in the collection; top {args.k}.",
        f"- Times: best of {args.repeats} for searches (ImageIndex and raw faiss alternated in the same run); "
        "one run for add, save, load and the old numpy search.",
        "",
        "## Exact search",
        "",
        "| data | ImageIndex q/s | raw faiss q/s | ImageIndex / faiss | same scores as faiss | old numpy q/s (queries) "
        "| ImageIndex / old | RAM bytes/image | disk bytes/image | add s | save s | load s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results.items():
        old = f"{row['old_qps']:.1f} ({row['old_queries']})" if "old_qps" in row else "not run"
        ratio = f"{row['index_qps'] / row['old_qps']:.0f}x" if "old_qps" in row else "-"
        lines.append(
            f"| {name} | {row['index_qps']:.0f} | {row['faiss_qps']:.0f} | **{row['index_vs_faiss']:.2f}x** | "
            f"{'yes' if row['same_scores_as_faiss'] else 'NO'} | {old} | {ratio} | {row['ram_bytes_per_image']} | "
            f"{row['disk_bytes_per_image']:.0f} | {row['add_s']:.1f} | {row['save_s']:.1f} | {row['load_s']:.1f} |"
        )
    lines += [
        "",
        "RAM per image: the vector or code faiss stores plus its 8-byte id (the paths list adds Python strings "
        "on top). Disk: the saved folder (`index.faiss`, `ids.npy`, `paths.jsonl` with paths like "
        "`photos/0123/0123456.jpg`, `manifest.json`) divided by the number of images. A loaded index gave the "
        "same top-k as before saving: "
        + ", ".join(f"{name} {'yes' if row['loaded_identical'] else 'NO'}" for name, row in results.items())
        + ". The old numpy search gave the same scores: "
        + ", ".join(
            f"{name} {'yes' if row.get('old_same_scores') else 'NO'}"
            for name, row in results.items()
            if "old_qps" in row
        )
        + ".",
        "",
        "## Approximate options (default parameters) against exact search",
        "",
        f"Trained on a random sample of {min(args.n, args.train_size):,} of the vectors; recall@{args.k}: the "
        f"share of the exact top {args.k} found, averaged over the queries; speed-up over the exact ImageIndex.",
        "",
        "| data | kind | parameters | train s | add s | q/s | speed-up | recall@k |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results.items():
        for entry in row["approximate"]:
            params = ", ".join(f"{key}={value}" for key, value in entry["params"].items())
            lines.append(
                f"| {name} | {entry['kind']} | {params} | {entry['train_s']:.1f} | {entry['add_s']:.1f} | "
                f"{entry['qps']:.0f} | {entry['speedup']:.1f}x | {entry['recall']:.3f} |"
            )
    lines += ["", "![queries/s against recall](search.png)", ""]
    return "\n".join(lines)


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, (name, row) in zip(axes[0], results.items()):
        ax.scatter([1.0], [row["index_qps"]], marker="s", color="black", label="exact (flat)")
        for entry in row["approximate"]:
            ax.scatter([entry["recall"]], [entry["qps"]], label=entry["kind"])
        if "old_qps" in row:
            ax.scatter([1.0], [row["old_qps"]], marker="x", color="red", label="selconv 0.1.0 numpy")
        ax.set_yscale("log")
        ax.set_xlabel(f"recall@{row['k']}")
        ax.set_ylabel("queries / s")
        ax.set_title(f"{name}: {row['n']:,} items")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="items in the collection")
    parser.add_argument("--dim", type=int, default=512, help="dimensions of the vectors = bits of the codes")
    parser.add_argument("--n-queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--n-clusters", type=int, default=10_000)
    parser.add_argument("--noise", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=200_000, help="sample the approximate indexes train on")
    parser.add_argument("--approx", default="ivf,hnsw,pq", help="approximate kinds to measure (comma-separated)")
    parser.add_argument(
        "--old-search",
        type=Path,
        default=None,
        help=f"selconv 0.1.0's search.py (default: git show {OLD_SEARCH_COMMIT}^:src/selconv/search.py)",
    )
    parser.add_argument("--old-queries", type=int, default=200, help="queries for the old numpy search (0: skip)")
    parser.add_argument("--data", default="vectors,codes", help="which of vectors,codes to measure")
    parser.add_argument("--out", type=Path, default=None, help="folder for search.md, search.json and search.png")
    args = parser.parse_args()
    args.approx = [kind for kind in args.approx.split(",") if kind]
    if args.dim % 8:
        parser.error("--dim must be a multiple of 8 (codes are packed in bytes).")

    old_search = load_old_search(args.old_search)
    if old_search is None:
        log("selconv 0.1.0's search module not found (no git): the old numpy search is not measured.")
    vectors, queries = make_collection(args.n, args.n_queries, args.dim, args.n_clusters, args.noise, args.seed)
    log(f"collection made: {vectors.shape}")
    work = Path(tempfile.mkdtemp(prefix="selconv-bench-search-"))
    results = {}
    try:
        for name in args.data.split(","):
            if name == "vectors":
                results[name] = bench_one(name, vectors, queries, args, old_search, work)
            elif name == "codes":
                results[name] = bench_one(
                    name, np.packbits(vectors > 0, axis=1), np.packbits(queries > 0, axis=1), args, old_search, work
                )
            else:
                parser.error(f"--data: unknown {name!r}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    command = "PYTHONPATH=src python benchmarks/bench_search.py " + " ".join(sys.argv[1:])
    text = report(results, args, command)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "search.md").write_text(text)
        (args.out / "search.json").write_text(
            json.dumps(
                {"args": {**vars(args), "out": str(args.out), "old_search": str(args.old_search)}, "results": results},
                indent=1,
            )
        )
        plot(results, args.out / "search.png")


if __name__ == "__main__":
    main()
