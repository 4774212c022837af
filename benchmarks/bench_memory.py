"""Peak host memory of embedding + aggregation against the number of images: streamed vs all at once.

For each number of images, one fresh process builds the PCA-reduced local features (``--n-local`` unit
vectors of d dimensions per image, the shape LocalPCA hands on; memory does not depend on their values),
then runs ONE call (after a warm-up call on 3 images) and reports its peak resident memory above the
memory held before the call (VmHWM, reset before the call, minus VmRSS). Two ways to run the same stages:

* ``streamed``: :class:`selconv.encoding.EncodeAggregate` (the paper pipeline's ``encode`` step), which
  embeds and aggregates ``working_memory`` MiB of local features at a time;
* ``all at once``: ``aggregator.transform(embedding.transform(X))``, what a Pipeline with separate
  embedding and aggregation steps does (every embedded local feature in memory).

Calls: ``fit`` (fit_transform, as Pipeline.fit runs a middle step) at 512-D and 8064-D (streamed only: the
fit's 8192 x 8192 eigen-decomposition takes minutes), and ``transform`` at 512-D and 8064-D. The 8064-D
transform uses a Temb whose fitted attributes are random arrays of the right shapes (memory does not depend
on the values).

Run from the repository root::

    python benchmarks/bench_memory.py            # writes benchmarks/results/memory.md
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = {512: (32, 20), 8064: (128, 64)}  # paper Table 4: D -> (d, |C|)


def memory_status(field: str) -> float:
    """VmRSS (resident now) or VmHWM (peak resident since the last reset) of this process, in MiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def reset_peak() -> None:
    """Make VmHWM start again from the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def local_sets(n_images: int, n_local: int, d: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    sets = []
    for _ in range(n_images):
        x = rng.standard_normal((n_local, d), dtype=np.float32)
        sets.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    return sets


def random_temb(d: int, n_clusters: int, seed: int = 0):
    """A TriangulationEmbedding with random fitted attributes of the paper's shapes (for memory only)."""
    from selconv import TriangulationEmbedding

    rng = np.random.default_rng(seed)
    dim = d * n_clusters
    temb = TriangulationEmbedding(n_clusters)
    temb.cluster_centers_ = rng.standard_normal((n_clusters, d), dtype=np.float32)
    temb.mean_ = rng.standard_normal(dim)
    temb.eigenvalues_ = np.ones(dim)
    temb.projection_ = rng.standard_normal((dim, dim), dtype=np.float32) / np.sqrt(dim)
    temb.n_samples_seen_ = 10 * dim
    temb.n_features_in_ = d
    return temb


def measure(call: str, mode: str, dim: int, n_images: int, n_local: int, working_memory: float) -> dict:
    """One measurement, in this process (run it in a fresh one)."""
    from selconv import DemocraticAggregator, EncodeAggregate, TriangulationEmbedding

    warnings.simplefilter("ignore")
    d, n_clusters = SETTINGS[dim]
    sets = local_sets(n_images, n_local, d)
    if call == "fit":
        embedding = TriangulationEmbedding(n_clusters, random_state=0)
    else:
        embedding = random_temb(d, n_clusters)
    if mode == "streamed":
        encode = EncodeAggregate(embedding, DemocraticAggregator(), working_memory=working_memory)
        if call == "fit":
            run = lambda: encode.fit_transform(sets)  # noqa: E731
        else:
            encode.embedding_, encode.aggregator_ = (
                embedding,
                DemocraticAggregator().fit([np.zeros((0, d * n_clusters))]),
            )
            encode.n_features_in_, encode.n_embedded_features_ = d, d * n_clusters
            encode._n_features_out = d * n_clusters
            run = lambda: encode.transform(sets)  # noqa: E731
    else:
        aggregator = DemocraticAggregator()
        if call == "fit":
            run = lambda: aggregator.fit_transform(embedding.fit_transform(sets))  # noqa: E731
        else:
            aggregator.fit([np.zeros((0, d * n_clusters))])
            run = lambda: aggregator.transform(embedding.transform(sets))  # noqa: E731
    full, sets[:] = list(sets), sets[:3]
    run()  # warm-up on 3 images: lazy imports and thread pools are not counted
    sets[:] = full
    del full
    reset_peak()
    before = memory_status("VmRSS")
    started = time.perf_counter()
    out = run()
    seconds = time.perf_counter() - started
    peak = memory_status("VmHWM")
    return {
        "call": call,
        "mode": mode,
        "dim": dim,
        "n_images": n_images,
        "n_local_features": n_images * n_local,
        "input_mib": sum(s.nbytes for s in sets) / 2**20,
        "extra_peak_mib": max(0.0, peak - before),
        "seconds": seconds,
        "out_shape": list(out.shape),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-images-512", type=int, nargs="+", default=[250, 500, 1000, 2000, 4000])
    parser.add_argument("--n-images-8064", type=int, nargs="*", default=[4, 8, 16, 32])
    parser.add_argument("--fit-images-8064", type=int, nargs="*", default=[16, 64], help="8064-D fit points")
    parser.add_argument("--transform-512", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--n-local", type=int, default=220, help="local features per image (MAX-mask keeps ~220)")
    parser.add_argument("--working-memory", type=float, default=64, help="EncodeAggregate working_memory (MiB)")
    parser.add_argument("--out", type=Path, default=RESULTS / "memory.md")
    parser.add_argument("--point", nargs=4, metavar=("CALL", "MODE", "DIM", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.point:
        call, mode, dim, n = args.point
        print(json.dumps(measure(call, mode, int(dim), int(n), args.n_local, args.working_memory)))
        return

    started = time.perf_counter()
    plan = [("fit", 512, n) for n in args.n_images_512]
    plan += [("transform", 512, n) for n in args.n_images_512 if args.transform_512]
    plan += [("fit", 8064, n) for n in args.fit_images_8064]
    plan += [("transform", 8064, n) for n in args.n_images_8064]
    rows = []
    for call, dim, n in plan:
        for mode in ("streamed",) if (call, dim) == ("fit", 8064) else ("streamed", "all at once"):
            point = ["--point", call, mode, str(dim), str(n)]
            settings = ["--n-local", str(args.n_local), "--working-memory", str(args.working_memory)]
            command = [sys.executable, __file__, *settings, *point]  # a fresh process: its own peak memory
            result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
            print(result, flush=True)
            rows.append(result)
            write_report(args, plan, rows, (time.perf_counter() - started) / 60)  # a partial table if cut short


def write_report(args, plan, rows, minutes) -> None:
    """memory.md (one row per (call, D, images): both modes) and memory.json (every measurement)."""
    lines = [
        "# Peak host memory of embedding + aggregation against the number of images",
        "",
        f"Generated by `benchmarks/bench_memory.py` in {minutes:.1f} min on "
        f"{platform.machine()} ({os.cpu_count()} logical cores, one BLAS thread), Python {platform.python_version()}, "
        f"numpy {np.__version__}. Rerun from the repository root:",
        "",
        "```",
        "python " + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "```",
        "",
        f"Input: {args.n_local} PCA-reduced local features per image (unit vectors of d dimensions, the"
        " shape LocalPCA hands on). 'extra peak' = peak resident memory of the one call (fresh process,"
        " after a warm-up call on 3 images; VmHWM reset through /proc/self/clear_refs) minus the resident memory"
        " before it, so neither the input nor the fitted model is counted."
        f" Streamed = `EncodeAggregate(..., working_memory={args.working_memory:g})`, the paper pipeline's `encode`"
        " step; all at once = `aggregator.transform(embedding.transform(X))`, a Pipeline with separate steps."
        " The 8064-D transform rows use a Temb with random fitted attributes of the paper's shapes (d = 128,"
        " |C| = 64, an 8192 x 8192 projection); the 8064-D fit rows fit it (streamed only).",
        "",
        "| call | D | images | local features | input (MiB) | extra peak, streamed (MiB) "
        "| extra peak, all at once (MiB)"
        " | time streamed / all at once (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    measured = {(r["call"], r["dim"], r["n_images"], r["mode"]): r for r in rows}
    for call, dim, n in plan:
        streamed, whole = (measured.get((call, dim, n, m)) for m in ("streamed", "all at once"))
        if streamed is None:
            continue
        whole_peak, whole_time = (f"{whole['extra_peak_mib']:.0f}", f"{whole['seconds']:.1f}") if whole else ("-", "-")
        lines.append(
            f"| {call} | {dim} | {n:,} | {streamed['n_local_features']:,} | "
            f"{streamed['input_mib']:.0f} | **{streamed['extra_peak_mib']:.0f}** | {whole_peak} | "
            f"{streamed['seconds']:.1f} / {whole_time} |"
        )
    lines += [
        "",
        "`fit` at 512-D is `fit_transform` of the middle step, as `Pipeline.fit` runs it: Temb's fit (k-means on a"
        " 100,000-feature sample drawn image by image, its mean and covariance streamed over chunks of rows read"
        " across the images, never one concatenated copy of the input) and the aggregated training vectors. At"
        " 8064-D the fit's peak is its fixed working set: the 8192 x 8192 float64 covariance (512 MiB), its"
        " eigen-decomposition and a chunk of 8192 embedded rows (256 MiB), whatever the number of images.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    (args.out.with_suffix(".json")).write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
