"""The post-CNN stages on a GPU: torch vs numpy on real pool5 maps, encoding throughput, fit time, JPEG -> codes.

On real VGG16 pool5 maps (1024 px) of the JPEGs in ``--images``, this script measures:

1. agreement of the torch path (:class:`selconv.torch_encoder.TorchEncoder` on the GPU) with the fitted numpy
   pipeline: MAX-mask cells, 512-D descriptors (relative difference), ITQ bits;
2. post-CNN encoding throughput, MAX mask, 512-D, from pool5 maps already on the GPU (batches of maps of
   the most common grid, cycled), with the FLOP rate of its arithmetic;
3. the fit of the 512-D preset (+ ITQ) on the local features of ``--n-fit`` training images (the maps
   cycled), stage by stage, with ``encode__device="cuda"`` and with the numpy path on all CPU threads;
4. JPEG files -> 512-bit codes end to end (the extractor's JPEG decoding + CNN, then the torch encoder),
   with the network-alone rate (the same batches of already-decoded images through the CNN).

Run from the repository root (GPU machine)::

    python benchmarks/bench_gpu_pipeline.py --images DIR --weights vgg16.npz
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
import warnings
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def synchronize():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def best_of(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        synchronize()
        started = time.perf_counter()
        function()
        synchronize()
        times.append(time.perf_counter() - started)
    return min(times)


def encode_flops(counts: np.ndarray, n_channels: int, d: int, n_clusters: int, n_bits: int | None) -> float:
    """Arithmetic of the encoding of images with ``counts`` local features (multiply-adds count 2).

    Local PCA 2 n K d; Temb residuals and their norms ~4 n |C| d, projection 2 n D^2 (D = d |C|); democratic
    Gram 2 n^2 D and 10 Sinkhorn steps 2 n^2 each, aggregate 2 n D; RN 2 D (D - 128); ITQ 2 (D - 128) n_bits.
    """
    dim = d * n_clusters
    n = counts.astype(np.float64)
    per_image = 2 * n * n_channels * d + 4 * n * dim + 2 * n * dim**2 + 2 * n**2 * dim + 20 * n**2 + 2 * n * dim
    per_image += 2 * dim * (dim - 128) + (2 * (dim - 128) * n_bits if n_bits else 0)
    return float(per_image.sum())


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of JPEGs")
    parser.add_argument("--weights", default="imagenet", help="VGG16 weights (file or 'imagenet')")
    parser.add_argument("--n-fit", type=int, default=5000)
    parser.add_argument("--n-bits", type=int, default=512)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--precision", default="bfloat16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-cpu-fit", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu_pipeline.md")
    parser.add_argument("--device", default="cuda", help="torch device of the encoder ('torch' = CPU, for a dry run)")
    parser.add_argument("--max-images", type=int, default=None, help="use only the first N JPEGs")
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    args.torch_device = "cpu" if args.device == "torch" else args.device
    return args


def main(argv=None) -> None:
    import sklearn
    import torch

    args = parse_args(argv)
    warnings.simplefilter("ignore")
    started = time.perf_counter()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    info = (
        f"GPU {gpu}; {os.cpu_count()} CPU threads; torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"numpy {np.__version__}, scikit-learn {sklearn.__version__}, Python {platform.python_version()}"
    )
    print(info, flush=True)
    data = extract_maps(args)
    fits = fit_on_devices(args, data["maps"])
    pipeline = fits[args.device][0]
    agreement = compare_torch_with_numpy(args, pipeline, data["maps"])
    throughput = encoding_throughput(args, data, agreement["encoder"], agreement["real_encoder"])
    end_to_end = jpeg_to_codes(args, data, agreement["encoder"])
    measured = {"info": info, "minutes": (time.perf_counter() - started) / 60, "fits": fits}
    text = report(args, data, agreement, throughput, end_to_end, measured)
    print(text, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(f"wrote {args.out}")


def extract_maps(args) -> dict:
    """Real pool5 maps of the JPEGs (after a warm-up), the JPEG -> maps time and the grids' counts."""
    from selconv import ConvFeatureExtractor

    paths = sorted(str(p) for p in args.images.glob("*.jpg"))[: args.max_images]
    weights = None if args.weights == "none" else args.weights
    extractor = ConvFeatureExtractor(
        "vgg16",
        weights=weights,
        max_size=1024,
        device=args.torch_device,
        precision=args.precision,
        batch_size=16,
        progress=False,
    ).fit()
    extractor.transform(paths[:16])  # warm-up: cuDNN autotuning, worker start
    synchronize()
    t0 = time.perf_counter()
    maps = extractor.transform(paths)
    synchronize()
    extract_s = time.perf_counter() - t0
    grids = {}
    for m in maps:
        grids[m.features.shape] = grids.get(m.features.shape, 0) + 1
    print(f"{len(maps)} maps in {extract_s:.1f} s; grids {grids}", flush=True)
    shape = max(grids, key=grids.get)
    return {
        "paths": paths,
        "extractor": extractor,
        "maps": maps,
        "extract_s": extract_s,
        "grids": grids,
        "shape": shape,
    }


def fit_on_devices(args, maps) -> dict:
    """{device: (fitted pipeline, seconds per step, local features)} of the 512-D preset + ITQ on the GPU and CPU."""
    from selconv import make_paper_pipeline

    train = [maps[i % len(maps)] for i in range(args.n_fit)]
    fits = {}
    for device in [args.device] + ([] if args.skip_cpu_fit else ["cpu"]):
        pipeline = make_paper_pipeline(512, n_bits=args.n_bits).set_params(
            encode__device=device, encode__working_memory=64 if device == "cpu" else 2048
        )
        times = {}
        data = train
        n_local = None
        for name, step in pipeline.steps:
            synchronize()
            t0 = time.perf_counter()
            if name == "itq":
                step.fit(data)
            else:
                data = step.fit_transform(data)
            synchronize()
            times[name] = time.perf_counter() - t0
            if name == "mask":
                n_local = sum(len(s) for s in data)
        fits[device] = (pipeline, times, n_local)
        print(f"fit on {device}: {times}", flush=True)
    return fits


def compare_torch_with_numpy(args, pipeline, maps) -> dict:
    """The torch encoders (codes, 512-D) and their agreement with the numpy pipeline on the real maps."""
    import torch

    from selconv import MaxMask
    from selconv.torch_encoder import TorchEncoder, max_mask

    reference = pipeline.set_params(encode__device="cpu")[:-1].transform(maps)
    codes_reference = pipeline.transform(maps)
    encoder = TorchEncoder(pipeline, device=args.device)
    real_encoder = TorchEncoder(pipeline[:-1], device=args.device)
    ours = real_encoder.transform(maps)
    codes = encoder.transform(maps)
    relative = np.abs(ours - reference).max(axis=1) / np.abs(reference).max(axis=1)
    mask_equal = all(
        np.array_equal(
            max_mask(torch.as_tensor(m.features[None]).to(args.torch_device)).cpu().numpy()[0],
            MaxMask().get_selected_locations([m.features])[0].ravel(),
        )
        for m in maps
    )
    return {
        "encoder": encoder,
        "real_encoder": real_encoder,
        "relative": relative,
        "bit_mismatch": np.unpackbits(codes ^ codes_reference).mean(),
        "mask_equal": mask_equal,
    }


def encoding_throughput(args, data, encoder, real_encoder) -> dict:
    """Images/s and TFLOP/s of both encoders on batches of same-grid maps already on the device."""
    import torch

    from selconv import MaxMask

    shape = data["shape"]
    same_grid = [m.features for m in data["maps"] if m.features.shape == shape]
    counts_grid = np.array([len(s) for s in MaxMask().fit_transform(same_grid)])
    rows = []
    for batch_size in args.batch_sizes:
        stacked = np.stack([same_grid[i % len(same_grid)] for i in range(batch_size)])
        batch = torch.as_tensor(stacked).to(args.torch_device)
        counts = counts_grid[np.arange(batch_size) % len(same_grid)]
        for name, enc, n_bits in (
            ("512-D float32", real_encoder, None),
            (f"{args.n_bits}-bit ITQ codes", encoder, args.n_bits),
        ):
            enc.transform(batch)  # warm-up
            seconds = best_of(lambda enc=enc, batch=batch: enc.transform(batch), args.repeats)
            flops = encode_flops(counts, shape[0], 32, 20, n_bits)
            rows.append((batch_size, name, batch_size / seconds, flops / seconds / 1e12, flops / batch_size))
            print(rows[-1], flush=True)
        del batch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {"rows": rows, "n_same_grid": len(same_grid), "mean_count": counts_grid.mean()}


def jpeg_to_codes(args, data, encoder) -> dict:
    """JPEG files -> codes end to end, and the network alone on batches of already-decoded images."""
    import torch

    extractor, paths, shape = data["extractor"], data["paths"], data["shape"]
    extractor.transform(paths[:16])
    synchronize()
    t0 = time.perf_counter()
    end_codes = encoder.transform(extractor.transform(paths))
    synchronize()
    end_to_end_s = time.perf_counter() - t0
    assert end_codes.shape == (len(paths), args.n_bits // 8)
    # Network alone: the model on batches of 16 already-decoded 768 x 1024 images.
    model = extractor._get_model()
    x = torch.randint(0, 255, (16, 3, shape[1] * 32, shape[2] * 32), dtype=torch.uint8, device=args.torch_device)
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(args.precision, torch.float32)

    def network():
        with torch.no_grad():
            model(x.to(dtype).contiguous(memory_format=torch.channels_last))

    network()
    return {"seconds": end_to_end_s, "network_rate": 16 / best_of(network, args.repeats)}


def report(args, data, agreement, throughput, end_to_end, measured) -> str:
    """The markdown results: set-up, then one section per measurement."""
    maps, grids = data["maps"], data["grids"]
    grid_counts = ", ".join(f"{s[2]}x{s[1]}: {n}" for s, n in sorted(grids.items(), key=lambda kv: -kv[1]))
    lines = [
        "# The post-CNN stages on the GPU: torch vs numpy, throughput, fit, JPEG -> codes",
        "",
        f"Generated by `benchmarks/bench_gpu_pipeline.py` in {measured['minutes']:.1f} min. Machine: "
        f"{measured['info']}. Command (repository root):",
        "",
        "```",
        "python " + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "```",
        "",
        f"Input: VGG16 pool5 maps at 1024 px ({args.precision} network, float32 maps) of {len(maps)} Oxford-subset "
        f"JPEGs; grids {grid_counts}. Weights: {data['extractor'].weights_source_}.",
    ]
    if args.note:
        lines += ["", f"Note: {args.note}"]
    lines += _agreement_lines(args, maps, agreement)
    lines += _throughput_lines(args, data["shape"], throughput)
    lines += _fit_lines(args, maps, measured["fits"])
    lines += _end_to_end_lines(args, data, end_to_end)
    return "\n".join(lines)


def _agreement_lines(args, maps, agreement) -> list[str]:
    relative = agreement["relative"]
    return [
        "",
        "## 1. torch (GPU) vs numpy on these real maps",
        "",
        f"- MAX-mask cells identical on all {len(maps)} maps: **{agreement['mask_equal']}**",
        f"- 512-D descriptors (MAX, fitted as in section 3): max over images of max|torch - numpy| / max|numpy| ="
        f" **{relative.max():.2e}** (median {np.median(relative):.2e})",
        f"- {args.n_bits}-bit ITQ codes: {agreement['bit_mismatch']:.2e} of the bits differ (coordinates within "
        "float32 rounding of 0)",
    ]


def _throughput_lines(args, shape, throughput) -> list[str]:
    lines = [
        "",
        "## 2. Post-CNN encoding throughput, MAX mask, 512-D, pool5 maps already on the GPU",
        "",
        f"Batches of the {throughput['n_same_grid']} maps of the {shape[2]} x {shape[1]} grid, cycled; MAX keeps "
        f"{throughput['mean_count']:.0f} local features per image on average. Best of {args.repeats}. FLOPs counted "
        "as in `encode_flops` (local PCA, Temb residuals and projection, democratic Gram and Sinkhorn, RN, ITQ), "
        "strict float32 (TF32 off), so the reference is the H200's float32 rate (about 60 TFLOP/s without tensor "
        "cores).",
        "",
        "| batch | output | images/s | TFLOP/s | GFLOP per image |",
        "|---|---|---|---|---|",
    ]
    for batch_size, name, rate, tflops, per_image in throughput["rows"]:
        lines.append(f"| {batch_size} | {name} | **{rate:,.0f}** | {tflops:.1f} | {per_image / 1e9:.3f} |")
    return lines


def _fit_lines(args, maps, fits) -> list[str]:
    names = [name for name, _ in fits[args.device][0].steps]
    lines = [
        "",
        f"## 3. Fit of the 512-D preset + {args.n_bits}-bit ITQ on {args.n_fit:,} images (s)",
        "",
        f"The {len(maps)} maps cycled to {args.n_fit:,} training images. Each step's `fit_transform` as "
        "`Pipeline.fit` runs it. `encode` on cuda: k-means (scikit-learn, 100,000-feature sample) on the CPU, the "
        "covariance pass of Temb and the embedding + democratic pooling of all training images on the GPU.",
        "",
        "| encode device | local features | " + " | ".join(names) + " | total | total after the mask |",
        "|---" * (len(names) + 4) + "|",
    ]
    for device, (_, times, n_local) in fits.items():
        lines.append(
            f"| {device} | {n_local:,} | "
            + " | ".join(f"{times[n]:.2f}" for n in names)
            + f" | **{sum(times.values()):.1f}** | **{sum(times.values()) - times['mask']:.1f}** |"
        )
    return lines


def _end_to_end_lines(args, data, end_to_end) -> list[str]:
    n_paths, shape, seconds = len(data["paths"]), data["shape"], end_to_end["seconds"]
    return [
        "",
        "## 4. JPEG files -> codes end to end",
        "",
        f"- {n_paths} JPEGs -> {args.n_bits}-bit codes (extractor: decoding and resizing on {os.cpu_count()} CPU "
        f"threads, VGG16 {args.precision}, batch 16; then `TorchEncoder`): {seconds:.2f} s = "
        f"**{n_paths / seconds:.0f} images/s**",
        f"- network alone ({args.precision}, batch 16, {shape[2] * 32} x {shape[1] * 32}, channels_last): "
        f"**{end_to_end['network_rate']:.0f} images/s**",
        f"- JPEG -> pool5 maps alone (first pass above): {len(data['maps']) / data['extract_s']:.0f} images/s",
        "",
    ]


if __name__ == "__main__":
    main()
