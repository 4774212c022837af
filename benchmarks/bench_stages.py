"""Single-threaded time per image of every stage after the CNN, against the paper's MATLAB (paper Fig. 7).

Stages: mask, LocalPCA, Temb, democratic pooling, RN, PN and ITQ, on conv maps shaped like VGG16 pool5 of a
1024-px image (K = 512 channels on a 32 x 24 grid).
Three configurations, as in the paper's figure: MAX-mask at 512-D (d=32, |C|=20) and 1024-D
(d=64, |C|=18), and no mask at 512-D. The paper measured 7.8 / 11.2 / 15.8 ms per image on one
3.4 GHz core (i7-6700), mask included, conv extraction excluded.

Everything runs on ONE thread (BLAS, OpenMP, torch). The same run measures this machine's
single-thread float32 GEMM rate and reports the FLOP rate achieved by the dominant steps (the Temb
projection GEMM and the democratic Gram matrix) as a fraction of it. It also times the fit of the
whole chain on the local features of ``--n-fit-images`` training images.

Without ``--maps`` the conv maps are synthetic, built to match pool5's statistics that drive the cost:
the grid size and the share of cells MAX-mask keeps (29% measured on real images, see
../shared/data/README.md; paper: ~30%); see :func:`synthetic_pool5_map`. With ``--maps file.npz`` (one (K, H, W)
array per entry) or ``--maps FOLDER`` (VGG16 pool5 maps at 1024 px of 24 JPEGs spread over the folder, extracted
first) real maps are used, cycled as needed (each copy's channels rescaled, see :meth:`MapSource.real_map`).
The committed results use
``--maps ../shared/data/oxford5k-subset/jpg --n-fit-images 5000``.

Run from the repository root::

    python benchmarks/bench_stages.py                      # full run, writes benchmarks/results/stages.md + .png
    python benchmarks/bench_stages.py --n-fit-images 1000  # quicker fit measurement
"""

from __future__ import annotations

import os

# Before numpy/scipy/torch load their thread pools: one thread everywhere.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

from selconv import (  # noqa: E402
    DemocraticAggregator,
    EncodeAggregate,
    ITQHasher,
    LocalPCA,
    MaxMask,
    NoMask,
    PowerNormalizer,
    RotationNormalizer,
    TriangulationEmbedding,
)
from selconv.aggregation import EmptyImageWarning  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stages_report import DEFAULT_N_FIT_IMAGES, write_markdown, write_plot  # noqa: E402  (beside this script)

#: name, mask class, d, |C|, paper MATLAB ms per image (Fig. 7)
CONFIGS = [
    ("MAX-mask 512-D", MaxMask, 32, 20, 7.8),
    ("MAX-mask 1024-D", MaxMask, 64, 18, 11.2),
    ("no mask 512-D", NoMask, 32, 20, 15.8),
]
N_DROPPED = 128  # leading rotated components dropped after Temb (paper section 5.2.1; docs/how-it-works.md, section 6)
N_BITS = 256  # ITQ code length for the timing (paper: 64..512 bits from the 512-D vector)
POOL5_SHAPE = (512, 24, 32)  # K x H x W of VGG16 pool5 for a 1024 x 768 image
RESULTS = Path(__file__).resolve().parent / "results"


def synthetic_pool5_map(rng, shape=POOL5_SHAPE, zero_fraction=0.8, n_salient=260) -> np.ndarray:
    """A (K, H, W) float32 map with pool5-like sparsity and MAX-mask selectivity.

    Activations are exponential noise with ``zero_fraction`` of them set to 0 (ReLU). Real pool5
    channels peak on the few object parts an image has, so every channel's maximum is placed on
    one of ``n_salient`` cells of the image: the union of the K maxima then covers about
    n_salient (1 - exp(-K / n_salient)) = 224 of the 768 cells, the 29% MAX-mask keeps on real
    images (the number of selected local features is what the later stages' cost depends on).
    """
    n_channels, height, width = shape
    n_cells = height * width
    x = rng.standard_exponential((n_channels, n_cells), dtype=np.float32)
    x[rng.random((n_channels, n_cells), dtype=np.float32) < zero_fraction] = 0.0
    salient = rng.choice(n_cells, n_salient, replace=False)
    peaks = salient[rng.integers(0, n_salient, n_channels)]
    x[np.arange(n_channels), peaks] = x.max(axis=1) + 1.0 + rng.standard_exponential(n_channels, dtype=np.float32)
    return x.reshape(shape)


def real_pool5_maps(folder: Path, n_maps: int = 24) -> list[np.ndarray]:
    """VGG16 pool5 maps at 1024 px of ``n_maps`` JPEGs spread evenly over a folder (sorted by name)."""
    from selconv import ConvFeatureExtractor

    files = sorted(folder.glob("*.jpg"))
    if not files:
        raise ValueError(f"--maps {folder}: no .jpg file in this folder.")
    chosen = files[:: max(1, len(files) // n_maps)][:n_maps]
    extractor = ConvFeatureExtractor(max_size=1024).fit()
    return [m.features for m in extractor.transform([str(f) for f in chosen])]


class MapSource:
    """Conv maps by index: real ones from ``--maps`` (cycled), or synthetic ones seeded per index."""

    def __init__(self, path: str | None, seed: int):
        self.seed = seed
        self.maps = None
        if path is not None and Path(path).is_dir():
            self.maps = real_pool5_maps(Path(path))
        elif path is not None:
            with np.load(path) as archive:
                self.maps = [np.asarray(archive[key], dtype=np.float32) for key in sorted(archive.files)]
            bad = [m.shape for m in self.maps if m.ndim != 3]
            if not self.maps or bad:
                raise ValueError(f"--maps {path}: expected one (K, H, W) array per entry; got shapes {bad or 'none'}.")

    def __call__(self, start: int, stop: int) -> list[np.ndarray]:
        if self.maps is not None:
            return [self.real_map(i) for i in range(start, stop)]
        return [synthetic_pool5_map(np.random.default_rng([self.seed, i])) for i in range(start, stop)]

    def real_map(self, index: int) -> np.ndarray:
        """Real map ``index % len(maps)``; after the first cycle each channel scaled by a factor in [0.9, 1.1]
        seeded per index: the images stay distinct (a fit on identical copies determines too few directions for
        RN and ITQ, which refuse it) and MAX-mask keeps the same cells (its per-channel argmax is unchanged)."""
        features = self.maps[index % len(self.maps)]
        if index < len(self.maps):
            return features
        factors = np.random.default_rng([self.seed, index]).uniform(0.9, 1.1, len(features)).astype(np.float32)
        return features * factors[:, None, None]


def best_time(function, repeats: int) -> float:
    """Smallest CPU time of this thread over ``repeats`` calls.

    With every library limited to one thread, all the work runs on the calling thread, so its CPU
    time (``time.thread_time``) is the single-core compute time: on an idle machine it equals the
    wall time, and on a shared one it leaves out the slices other processes take.
    """
    times = []
    for _ in range(repeats):
        start = time.thread_time()
        function()
        times.append(time.thread_time() - start)
    return min(times)


def gemm_rate(m: int, k: int, n: int, repeats: int) -> float:
    """Single-thread float32 GEMM rate of an (m, k) @ (k, n) product, in GFLOP/s."""
    rng = np.random.default_rng(0)
    a = rng.random((m, k), dtype=np.float32)
    b = rng.random((k, n), dtype=np.float32)
    out = np.empty((m, n), dtype=np.float32)
    np.matmul(a, b, out=out)  # warm-up
    return 2.0 * m * k * n / best_time(lambda: np.matmul(a, b, out=out), repeats) / 1e9


def fit_chain(config, source: MapSource, n_fit: int, batch: int, seed: int):
    """Fit mask -> LocalPCA -> Temb -> democratic -> RN -> PN -> ITQ as Pipeline.fit would; time each stage.

    The training conv maps are produced batch by batch and never all held in memory.
    """
    _, mask_class, d, n_clusters, _ = config
    mask = mask_class().fit(source(0, 1))
    pca = LocalPCA(d, random_state=seed)
    times = dict.fromkeys(["mask", "LocalPCA", "Temb + democratic", "RN", "PN", "ITQ"], 0.0)
    reduced = fit_local_pca(mask, pca, source, n_fit, batch, times)
    n_local = sum(len(s) for s in reduced)

    def timed(name, function, *args):
        began = time.thread_time()
        out = function(*args)
        times[name] = time.thread_time() - began
        return out

    # Embedded sets are |C| times larger than the reduced ones: EncodeAggregate streams them.
    encode = EncodeAggregate(TriangulationEmbedding(n_clusters, random_state=seed), DemocraticAggregator())
    aggregated = timed("Temb + democratic", encode.fit_transform, reduced)
    rn = RotationNormalizer(n_dropped=N_DROPPED)
    rotated = timed("RN", rn.fit_transform, aggregated)
    pn = PowerNormalizer()
    final = timed("PN", pn.fit_transform, rotated)
    n_bits = min(N_BITS, len(final) // 8 * 8)  # ITQ's PCA needs n_bits training vectors
    itq = timed("ITQ", ITQHasher(n_bits, random_state=seed).fit, final)
    stages = {
        "mask": mask,
        "LocalPCA": pca,
        "Temb": encode.embedding_,
        "democratic": encode.aggregator_,
        "RN": rn,
        "PN": pn,
        "ITQ": itq,
    }
    return stages, times, n_local


def fit_local_pca(mask, pca, source: MapSource, n_fit: int, batch: int, times: dict) -> list:
    """Masked and reduced local features of the ``n_fit`` training images, ``pca`` fitted on the way.

    LocalPCA is fitted on the first images holding at least its ``max_samples`` local features (it would
    sample only that many from all images anyway), then transforms every training image. The mask's and
    LocalPCA's thread times are added to ``times``.
    """

    def masked(start, stop):
        maps = source(start, stop)
        began = time.thread_time()
        sets = mask.transform(maps)
        times["mask"] += time.thread_time() - began
        return sets

    # LocalPCA's fit sample: the first images, up to max_samples local features.
    raw, n_raw, stop = [], 0, 0
    while stop < n_fit and n_raw < pca.max_samples:
        sets = masked(stop, min(stop + batch, n_fit))
        stop += len(sets)
        raw += sets
        n_raw += sum(len(s) for s in sets)
    began = time.thread_time()
    pca.fit(raw)
    reduced = pca.transform(raw)
    times["LocalPCA"] += time.thread_time() - began
    del raw
    for start in range(stop, n_fit, batch):
        sets = masked(start, min(start + batch, n_fit))
        began = time.thread_time()
        reduced += pca.transform(sets)
        times["LocalPCA"] += time.thread_time() - began
    return reduced


def time_online(stages: dict, maps: list, repeats: int, batch: int = 20):
    """Per-stage seconds per image: one call per image (online query), and calls on ``batch`` images.

    Every timed call is short (milliseconds) and repeated ``repeats`` times back to back, keeping the
    best: on a machine shared with other processes this picks the undisturbed runs, where timing
    the whole test set at once would average the disturbances in.
    """
    names = list(stages)
    # Inputs of every stage, computed once.
    inputs = {names[0]: maps}
    for previous, name in zip(names, names[1:]):
        inputs[name] = stages[previous].transform(inputs[previous])
    n_images = len(maps)
    per_image, batched = {}, {}
    for name in names:
        stage, data = stages[name], inputs[name]
        per_image[name] = (
            sum(
                best_time(lambda i=i, stage=stage, data=data: stage.transform(data[i : i + 1]), repeats)
                for i in range(n_images)
            )
            / n_images
        )
        batched[name] = (
            sum(
                best_time(lambda i=i, stage=stage, data=data: stage.transform(data[i : i + batch]), repeats)
                for i in range(0, n_images, batch)
            )
            / n_images
        )
    return per_image, batched, inputs


def gram_rate(embedded: list, repeats: int) -> float:
    """GFLOP/s of the democratic Gram matrices Y Y^T alone, on the actual embedded test images."""
    seconds = sum(best_time(lambda Y=Y: Y @ Y.T, repeats) for Y in embedded if len(Y))
    return sum(len(Y) * (len(Y) + 1) * Y.shape[1] for Y in embedded) / seconds / 1e9


def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "unknown"
    blas = [
        f"{i['internal_api']} {i.get('version')} ({i.get('architecture')}, {i['filepath'].rsplit('/', 1)[-1]})"
        for i in threadpool_info()
        if i["user_api"] == "blas" and "numpy" in i["filepath"]
    ]
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "blas": "; ".join(blas) or "unknown",
        "numpy": np.__version__,
        "python": platform.python_version(),
        "load": load,
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--maps",
        help="npz file with one (K, H, W) conv map per entry, or a folder of JPEGs whose VGG16 "
        "pool5 maps at 1024 px (24 files spread over the folder) are extracted first "
        "(default: synthetic pool5 maps)",
    )
    parser.add_argument("--n-images", type=int, default=100, help="test images for the online timing (default 100)")
    parser.add_argument(
        "--n-fit-images",
        type=int,
        default=DEFAULT_N_FIT_IMAGES,
        help=f"training images for the fit timing (default {DEFAULT_N_FIT_IMAGES})",
    )
    parser.add_argument("--repeats", type=int, default=5, help="repeats of every timing; the best is kept (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where stages.md and stages.png go")
    parser.add_argument("--note", default="", help="a remark added to the results file")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    limiter = threadpool_limits(limits=1)  # noqa: F841 - kept alive for the whole run
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    warnings.simplefilter("ignore", EmptyImageWarning)
    info = machine_info()
    print(f"CPU {info['cpu']}, BLAS {info['blas']}, load {info['load']}", flush=True)

    fit_source = MapSource(args.maps, args.seed)
    test_maps = MapSource(args.maps, args.seed + 1)(0, args.n_images)
    shapes = {
        "1024x640 @ 640x640": (1024, 640, 640),
        "1024x1152 @ 1152x1152": (1024, 1152, 1152),
        "2048x2048 @ 2048x2048": (2048, 2048, 2048),
    }
    peak = {"shapes": {name: gemm_rate(*shape, repeats=args.repeats) for name, shape in shapes.items()}}
    print(f"GEMM: {peak['shapes']}", flush=True)
    rows = [measure(config, fit_source, test_maps, args, peak["shapes"]) for config in CONFIGS]
    peak["reference"] = max(peak["shapes"].values())
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_plot(args.out_dir / "stages.png", rows)
    write_markdown(args.out_dir / "stages.md", args, info, peak, rows, time.perf_counter() - started)
    print(f"wrote {args.out_dir / 'stages.md'}", flush=True)


def measure(config, fit_source: MapSource, test_maps: list, args, gemm_rates: dict) -> dict:
    """One configuration's fit and online timings and FLOP rates (a row of the results)."""
    name, _, d, n_clusters, paper_ms = config
    print(f"== {name}: fitting on {args.n_fit_images} images", flush=True)
    stages, fit_times, n_fit_local = fit_chain(config, fit_source, args.n_fit_images, batch=250, seed=args.seed)
    print(f"   fit times {fit_times}", flush=True)
    dim = d * n_clusters
    # The machine's rate can drift while other processes come and go: measure the GEMM of the
    # Temb projection's own shape again next to this configuration's timings.
    gemm_rates[f"1024x{dim} @ {dim}x{dim}, before {name}"] = gemm_rate(1024, dim, dim, args.repeats)
    per_image, batched, inputs = time_online(stages, test_maps, args.repeats)
    gemm_rates[f"1024x{dim} @ {dim}x{dim}, after {name}"] = gemm_rate(1024, dim, dim, args.repeats)
    counts = np.array([len(s) for s in inputs["Temb"]])
    temb_flops = 2.0 * counts.sum() * dim**2
    gram_flops = float(np.sum(counts * (counts + 1))) * dim
    n_images = len(test_maps)
    row = {
        "name": name,
        "paper_ms": paper_ms,
        "dim": dim,
        "per_image": per_image,
        "batched": batched,
        "fit": fit_times,
        "n_fit_local": n_fit_local,
        "n_local": counts.mean(),
        "kept": counts.mean() / np.prod(test_maps[0].shape[1:]),
        "temb_rate": temb_flops / (batched["Temb"] * n_images) / 1e9,
        "temb_rate_single": temb_flops / (per_image["Temb"] * n_images) / 1e9,
        "democratic_rate": gram_flops / (batched["democratic"] * n_images) / 1e9,
        "gram_rate": gram_rate(inputs["democratic"], args.repeats),
    }
    print("   per image (ms): " + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in per_image.items()), flush=True)
    print("   batched (ms):   " + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in batched.items()), flush=True)
    print(
        f"   GFLOP/s: Temb {row['temb_rate']:.1f}, democratic {row['democratic_rate']:.1f}, "
        f"Gram alone {row['gram_rate']:.1f}",
        flush=True,
    )
    return row


if __name__ == "__main__":
    main()
