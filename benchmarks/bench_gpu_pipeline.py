"""The whole pipeline on one GPU: torch vs numpy vs float64, GPU JPEG decoding, network rate, JPEG -> codes.

On the Oxford5k subset (``--data``/oxford5k-subset, 1,008 JPEGs, VGG16 pool5 at 1024 px), this script measures:

1. agreement of :class:`selconv.torch_encoder.TorchEncoder` (``projection_dtype`` float32 and float64) and of the
   numpy pipeline with a float64 evaluation of the same fitted model: max-coordinate and l2 relative errors
   per descriptor, and the mAP of each (protocol ``loo-landmark``: 113 full-image queries);
2. GPU JPEG decoding (``decode="device"``, nvJPEG) against the CPU path: relative difference of the maps and mAP;
3. post-CNN encoding throughput from pool5 maps already on the GPU (MAX mask, 512-D, both projection dtypes);
4. the network alone (bf16 / fp16, batch sizes, channels_last, cuDNN autotuning, optionally compiled as
   ``ConvFeatureExtractor(compile=True)`` compiles it);
5. JPEG files -> 512-bit codes end to end, the JPEGs cycled to ``--n-images``: through the extractor (host maps)
   with either decoder, and a GPU-resident path (nvJPEG batches -> resize -> VGG16 -> TorchEncoder) where conv
   maps never leave the GPU;
6. the fit of the 512-D preset + ITQ on ``--n-fit`` images' maps (the database's, completed by rescaled mirrored
   copies), seconds per stage, the mask, LocalPCA, encode and ITQ on the device (``--cpu-fit``: also on the CPU
   with numpy).

Section 2 also diagnoses non-finite (or far from CPU-decoded) maps: the threaded extraction again in the calling
thread and with the decoder before its side stream, and each file flagged alone (header, pixels, map).

The markdown (``--out``) and a json beside it are rewritten after every section, so a killed run keeps what it
measured. Run from the repository root (GPU machine)::

    python benchmarks/bench_gpu_pipeline.py --data DATA --weights vgg16.npz --out results/gpu_pipeline.md

``--device torch --n-images 64 --max-images 48 --max-size 256 --n-fit 700`` is a CPU dry run of every code path.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shlex
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gpu_sections import (  # noqa: E402  (beside this script)
    augmented,
    best_of,
    extract_checked,
    fit_timing,
    nonfinite_diagnosis,
    relative_difference,
    timed,
)

RESULTS = Path(__file__).resolve().parent / "results"


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
    parser.add_argument("--data", type=Path, required=True, help="folder holding oxford5k-subset/")
    parser.add_argument("--weights", default="imagenet", help="VGG16 weights (file or 'imagenet')")
    parser.add_argument("--n-bits", type=int, default=512)
    parser.add_argument("--n-images", type=int, default=3000, help="JPEGs (cycled) of the end-to-end runs")
    parser.add_argument("--max-images", type=int, default=None, help="use only the first N database images")
    parser.add_argument("--max-size", type=int, default=1024)
    parser.add_argument("--encode-batches", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--network-batches", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--batch-size", type=int, default=32, help="extractor batch size (end to end)")
    parser.add_argument("--precisions", nargs="+", default=["bfloat16", "float16"], help="of sections 4 and 5")
    parser.add_argument(
        "--sections",
        type=int,
        nargs="*",
        choices=range(2, 7),
        default=[2, 3, 4, 5, 6],
        help="besides set-up and 1 (none: only those)",
    )
    parser.add_argument(
        "--pad-to-multiple", type=int, nargs="+", default=[0], help="the extractor's pad_to_multiple, 5 (0: None)"
    )
    parser.add_argument("--decodes", nargs="+", default=["cpu", "device"], help="the extractor's decode, 5")
    parser.add_argument("--n-fit", type=int, default=5000, help="training images of section 6")
    parser.add_argument("--cpu-fit", action="store_true", help="section 6 also on the CPU (numpy)")
    parser.add_argument("--fit-working-memory", type=float, default=None, help="encode__working_memory (MiB), 6")
    parser.add_argument(
        "--compile", action="store_true", help="sections 4 and 5 also compiled, as compile=True compiles the network"
    )
    parser.add_argument(
        "--cuda-graphs", action="store_true", help="section 5's extractors with cuda_graphs=True (warmed up twice)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu_pipeline.md")
    parser.add_argument("--device", default="cuda", help="'cuda', or 'torch' (CPU, for a dry run)")
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    args.torch_device = "cpu" if args.device == "torch" else args.device
    return args


class Report:
    """The markdown and json results, rewritten after every section."""

    def __init__(self, args, info):
        self.args, self.results, self.started = args, {"info": info}, time.perf_counter()
        command = "python " + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
        where = "on one GPU" if args.torch_device.startswith("cuda") else "with torch on the CPU"
        self.lines = [
            f"# The pipeline {where}: torch vs numpy vs float64, GPU JPEG decoding, network rate, JPEG -> codes",
            "",
            f"Generated by `benchmarks/bench_gpu_pipeline.py`. Machine: {info}. Command (repository root):",
            "",
            "```",
            command,
            "```",
        ] + (["", f"Note: {args.note}"] if args.note else [])

    def add(self, key, value, lines):
        self.results[key] = value
        self.lines += lines
        print("\n".join(lines), flush=True)
        self.write()

    def write(self):
        minutes = (time.perf_counter() - self.started) / 60
        self.args.out.parent.mkdir(parents=True, exist_ok=True)
        text = "\n".join(self.lines) + f"\n\n(Sections above measured in {minutes:.1f} min.)\n"
        self.args.out.write_text(text)
        self.args.out.with_suffix(".json").write_text(json.dumps(self.results, indent=1, default=str))


def main(argv=None) -> None:
    import sklearn
    import torch
    import torchvision

    args = parse_args(argv)
    warnings.simplefilter("ignore")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    info = (
        f"GPU {gpu}; {os.cpu_count()} CPU threads; torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"torchvision {torchvision.__version__}, numpy {np.__version__}, scikit-learn {sklearn.__version__}, "
        f"Python {platform.python_version()}"
    )
    print(info, flush=True)
    report = Report(args, info)
    data = extract_database(args, report)
    encoders = agreement(args, data, report)
    sections = {
        2: lambda: decoding_parity(args, data, encoders, report),
        3: lambda: encoding_throughput(args, data, encoders, report),
        4: lambda: network_alone(args, data, report),
        5: lambda: end_to_end(args, data, encoders, report),
        6: lambda: fit_timing(args, data, report),
    }
    for section in dict.fromkeys(args.sections):  # in the order given: the quick ones first on a short lease
        sections[section]()
    print(f"wrote {args.out}", flush=True)


# ------------------------------------------------------------------------------------------ set-up


def make_extractor(args, decode="cpu", precision="bfloat16", **options):
    from selconv import ConvFeatureExtractor

    return ConvFeatureExtractor(
        "vgg16",
        weights=None if args.weights == "none" else args.weights,
        max_size=args.max_size,
        device=args.torch_device,
        precision=precision,
        decode=decode,
        batch_size=args.batch_size,
        progress=False,
        **options,
    ).fit()


def extract_database(args, report) -> dict:
    """The subset's database maps (CPU decoding), the fitted 512-D preset + ITQ, and the queries."""
    from selconv import make_paper_pipeline
    from selconv.datasets.oxford5k_subset import load_oxford5k_subset

    dataset = load_oxford5k_subset(args.data / "oxford5k-subset", "loo-landmark")
    paths = [str(p) for p in dataset.database][: args.max_images]
    index = {p: i for i, p in enumerate(paths)}
    queries = [  # with --max-images: the queries and ground truth within the images kept
        (index[str(q)], {key: np.asarray(v)[np.asarray(v) < len(paths)] for key, v in gt.items()})
        for q, gt in zip(dataset.queries, dataset.ground_truth)
        if str(q) in index
    ]
    queries = [(i, gt) for i, gt in queries if len(gt["positives"])]
    extractor = make_extractor(args)
    extractor.transform(paths[:32])  # warm-up
    maps, seconds = timed(lambda: extractor.transform(paths))
    # Learned on the generic photos, as the paper benchmark learns (a model fitted on the database itself is too
    # degenerate for its mAP to compare paths); on the database maps where the data has no generic photos.
    learned_on = "the 1,000 generic photos" if dataset.training else "the database maps themselves (no generic photos)"
    train = extractor.transform([str(p) for p in dataset.training]) if dataset.training else list(maps)
    train += augmented(train, 700 - len(train))  # RN needs more images than its 640 dimensions (dry runs)
    pipeline = make_paper_pipeline(512, n_bits=args.n_bits).set_params(
        encode__device=args.device, itq__device=args.device
    )
    _, fit_s = timed(lambda: pipeline.fit(train))
    grids: dict = {}
    for m in maps:
        grids[m.features.shape] = grids.get(m.features.shape, 0) + 1
    shape = max(grids, key=grids.get)
    report.add(
        "setup",
        {"n_images": len(paths), "extract_s": seconds, "fit_s": fit_s, "n_queries": len(queries)},
        [
            "",
            "## Set-up",
            "",
            f"{len(paths)} database JPEGs of the Oxford5k subset -> VGG16 pool5 ({args.max_size} px, bfloat16 network, "
            f"float32 maps, CPU decoding): {seconds:.1f} s ({len(paths) / seconds:.0f} images/s, start-up included). "
            f"Weights: {extractor.weights_source_}. The 512-D preset + {args.n_bits}-bit ITQ fitted on "
            f"{learned_on} ({len(train)} maps; encode and ITQ on {args.device}): {fit_s:.1f} s. Most common grid "
            f"{shape[2]} x {shape[1]} ({grids[shape]} maps). mAP protocol `loo-landmark`: {len(queries)} "
            "full-image queries from the database.",
        ],
    )
    return {"paths": paths, "maps": maps, "pipeline": pipeline, "queries": queries, "shape": shape}


def mean_ap(descriptors, queries) -> float:
    from selconv.metrics import evaluate

    rows = [i for i, _ in queries]
    if not rows:
        return float("nan")
    return 100 * evaluate(descriptors[rows], descriptors, [gt for _, gt in queries]).map


def relative_errors(ours, exact) -> dict:
    """Max over images (and median) of max|a - b| / max|b| and of ||a - b|| / ||b||."""
    difference = np.abs(ours.astype(np.float64) - exact)
    by_coordinate = difference.max(axis=1) / np.abs(exact).max(axis=1)
    by_norm = np.linalg.norm(difference, axis=1) / np.linalg.norm(exact, axis=1)
    return {
        "max_coordinate": float(by_coordinate.max()),
        "max_coordinate_median": float(np.median(by_coordinate)),
        "l2": float(by_norm.max()),
        "l2_median": float(np.median(by_norm)),
    }


# --------------------------------------------------------------------------- 1. agreement, float64


def agreement(args, data, report) -> dict:
    from selconv.torch_encoder import TorchEncoder

    maps, pipeline, queries = data["maps"], data["pipeline"], data["queries"]
    real = pipeline[:-1]
    numpy_out = real.set_params(encode__device="cpu").transform(maps)
    real.set_params(encode__device=args.device)
    encoders = {
        dtype: TorchEncoder(real, device=args.device, projection_dtype=dtype) for dtype in ("float32", "float64")
    }
    exact = encoders["float32"].transform_float64(maps)
    outputs = {"numpy": numpy_out, **{f"torch {d}": e.transform(maps) for d, e in encoders.items()}}
    results = {name: relative_errors(out, exact) for name, out in outputs.items()}
    results["torch float32 vs numpy"] = relative_errors(outputs["torch float32"], numpy_out.astype(np.float64))
    results["torch float64 vs numpy"] = relative_errors(outputs["torch float64"], numpy_out.astype(np.float64))
    maps_ap = {name: mean_ap(out, queries) for name, out in [*outputs.items(), ("float64", exact)]}
    codes = {d: TorchEncoder(pipeline, device=args.device, projection_dtype=d).transform(maps) for d in encoders}
    codes_numpy = pipeline.set_params(encode__device="cpu").transform(maps)
    pipeline.set_params(encode__device=args.device)
    bits = {d: float(np.unpackbits(c ^ codes_numpy).mean()) for d, c in codes.items()}
    lines = [
        "",
        "## 1. Descriptors: numpy and torch against a float64 evaluation of the same fitted model",
        "",
        f"{len(maps)} maps, 512-D (MAX). Per descriptor: max|a - b| / max|b| and ||a - b|| / ||b||; max over images "
        "(median). The float64 reference runs the torch kernels in float64 on the fitted parameters.",
        "",
        "| path | max-coordinate rel. | l2 rel. | mAP (loo-landmark) |",
        "|---|---|---|---|",
    ]
    for name, r in results.items():
        ap = maps_ap.get(name)
        lines.append(
            f"| {name} | {r['max_coordinate']:.2e} ({r['max_coordinate_median']:.1e}) | {r['l2']:.2e} "
            f"({r['l2_median']:.1e}) | {'' if ap is None else f'{ap:.2f}'} |"
        )
    lines += [
        f"| float64 reference | 0 | 0 | {maps_ap['float64']:.2f} |",
        "",
        f"{args.n_bits}-bit ITQ codes, fraction of bits differing from numpy's: "
        + ", ".join(f"torch {d} {b:.2e}" for d, b in bits.items()),
    ]
    report.add("agreement", {"errors": results, "mAP": maps_ap, "bits": bits}, lines)
    return {"real": encoders, "codes": TorchEncoder(pipeline, device=args.device)}


# ---------------------------------------------------------------------------- 2. GPU JPEG decoding


def decoding_parity(args, data, encoders, report) -> None:
    from selconv.extraction._device_decode import decode_resize, read_plain_jpeg

    try:  # the extractor falls back to the CPU silently: say here whether the device decoder works at all
        raw, size = read_plain_jpeg(data["paths"][0], "probe")
        decode_resize([raw], [size], args.torch_device)
        decoder = "works"
    except Exception as error:
        decoder = f"FAILED ({type(error).__name__}: {error}); every file took the CPU path"
    print(f"device JPEG decoder: {decoder}", flush=True)
    extractor = make_extractor(args, decode="device")
    extractor.transform(data["paths"][:32])
    cpu_maps = data["maps"]
    maps, seconds, problem = extract_checked(extractor, data["paths"], cpu_maps)
    diagnosis, diagnosis_lines = nonfinite_diagnosis(args, make_extractor, data["paths"], cpu_maps, maps, problem)
    lines = [
        "",
        '## 2. JPEG decoding on the GPU (`decode="device"`, nvJPEG + torch bicubic antialiased resize) vs CPU',
        "",
        f"- torchvision's decode_jpeg on {args.torch_device}: {decoder}",
        *diagnosis_lines,
    ]
    results = {"decoder": decoder, "diagnosis": {k: v for k, v in diagnosis.items() if k != "alone_maps"}}
    if maps is None:  # the parity on the maps decoded in the calling thread, if those are finite
        maps, seconds = diagnosis["alone_maps"], float("nan")
    if maps is None:
        report.add("decoding", results, [*lines, "- no finite maps from the device decoder: no parity measured"])
        return
    relative = np.array([relative_difference(a, b) for a, b in zip(maps, cpu_maps)])
    same_size = all(a.image_size == b.image_size for a, b in zip(maps, cpu_maps))
    encoder = encoders["real"]["float32"]
    ap_cpu = mean_ap(encoder.transform(cpu_maps), data["queries"])
    ap_gpu = mean_ap(encoder.transform(maps), data["queries"])
    results.update(relative=relative.tolist(), mAP_cpu=ap_cpu, mAP_device=ap_gpu, extract_s=seconds)
    lines += [
        f"- resized sizes identical: **{same_size}**; pool5 maps, max|gpu - cpu| / max|cpu| per image: max "
        f"**{relative.max():.2e}**, median {np.median(relative):.2e}",
        f"- mAP (torch float32 encoder, loo-landmark): CPU-decoded {ap_cpu:.2f}, GPU-decoded **{ap_gpu:.2f}** "
        f"(difference {ap_gpu - ap_cpu:+.2f})",
        f"- {len(maps)} JPEGs -> maps through the extractor with GPU decoding: {len(maps) / seconds:.0f} images/s",
    ]
    report.add("decoding", results, lines)


# ---------------------------------------------------------------------------- 3. encoding throughput


def encoding_throughput(args, data, encoders, report) -> None:
    import torch

    from selconv import MaxMask

    shape = data["shape"]
    same_grid = [m.features for m in data["maps"] if m.features.shape == shape]
    counts_grid = np.array([len(s) for s in MaxMask().fit_transform(same_grid)])
    rows = []
    for batch_size in args.encode_batches:
        batch = torch.as_tensor(np.stack([same_grid[i % len(same_grid)] for i in range(batch_size)]))
        batch = batch.to(args.torch_device)
        counts = counts_grid[np.arange(batch_size) % len(same_grid)]
        for name, encoder, n_bits in (
            ("512-D, projection float32", encoders["real"]["float32"], None),
            ("512-D, projection float64", encoders["real"]["float64"], None),
            (f"{args.n_bits}-bit codes, projection float32", encoders["codes"], args.n_bits),
        ):
            encoder.transform(batch)
            seconds = best_of(lambda e=encoder, b=batch: e.transform(b), args.repeats)
            flops = encode_flops(counts, shape[0], 32, 20, n_bits)
            rows.append([batch_size, name, batch_size / seconds, flops / seconds / 1e12])
            print(rows[-1], flush=True)
        del batch
    lines = [
        "",
        "## 3. Post-CNN encoding throughput, MAX mask, pool5 maps already on the GPU",
        "",
        f"Batches of the {len(same_grid)} maps of the {shape[2]} x {shape[1]} grid, cycled ({counts_grid.mean():.0f} "
        f"local features per image on average); best of {args.repeats}; TF32 off. FLOPs as in `encode_flops`.",
        "",
        "| batch | output | images/s | TFLOP/s |",
        "|---|---|---|---|",
    ] + [f"| {b} | {name} | **{rate:,.0f}** | {tflops:.1f} |" for b, name, rate, tflops in rows]
    report.add("encoding", rows, lines)


# ------------------------------------------------------------------------------- 4. network alone


def network_alone(args, data, report) -> None:
    import torch

    extractor = make_extractor(args)
    model = extractor._get_model()
    shape = data["shape"]
    height, width = shape[1] * 32, shape[2] * 32
    rows = []
    for precision in args.precisions:
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[precision]
        net = model.to(dtype)
        for batch_size in args.network_batches:
            x = torch.rand(batch_size, 3, height, width, device=args.torch_device).to(dtype)
            for layout in ("channels_last", "contiguous"):
                for autotune in (False, True):
                    y = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
                    with torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, benchmark=autotune):
                        net(y)
                        seconds = best_of(lambda n=net, y=y: n(y), args.repeats)
                    rows.append([precision, batch_size, layout, autotune, "eager", batch_size / seconds])
                    print(rows[-1], flush=True)
            if args.compile and batch_size == args.batch_size:  # one compilation per precision
                rows.append(
                    [precision, batch_size, "channels_last", False, "compile dynamic", compiled_rate(args, net, x)]
                )
                print(rows[-1], flush=True)
            del x
    lines = [
        "",
        f"## 4. The network alone: VGG16 to pool5 on {width} x {height} inputs already on the GPU",
        "",
        "| precision | batch | layout | cudnn.benchmark | mode | images/s |",
        "|---|---|---|---|---|---|",
    ] + [f"| {p} | {b} | {lay} | {a} | {m} | **{r:.0f}** |" for p, b, lay, a, m, r in rows]
    report.add("network", rows, lines)


def compiled_rate(args, net, x) -> float:
    """Images/s of ``net`` compiled as ``ConvFeatureExtractor(compile=True)`` compiles it (``compile_network``:
    default mode, dynamic shapes), or NaN (with the error printed) where it fails. The H100 rates of 2026-12-05
    (883 / 906 images/s, row "torch.compile") were of ``torch.compile(net)``, static shapes."""
    import torch

    from selconv.extraction._network import compile_network

    try:
        compiled = compile_network(net)
        y = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            compiled(y)
            return len(x) / best_of(lambda: compiled(y), args.repeats)
    except Exception as error:  # a compiler missing or failing must not lose the other sections
        print(f"torch.compile failed: {type(error).__name__}: {error}", flush=True)
        return float("nan")


# ------------------------------------------------------------------------------------ 5. end to end


def cycled(paths, n):
    return [paths[i % len(paths)] for i in range(n)]


def end_to_end(args, data, encoders, report) -> None:
    import torch

    paths = cycled(data["paths"], args.n_images)
    encoder = encoders["codes"]
    rows = []

    def maps_via_host(extractor):
        return encoder.transform(extractor.transform(paths))

    def head_on_device(extractor):
        return np.stack([codes for _, codes in extractor.iter_extract(paths, head=encoder.transform)])

    for precision in args.precisions:
        compiles = (False, True) if args.compile else (False,)
        for compile, decode, pad in itertools.product(compiles, args.decodes, args.pad_to_multiple):
            if compile:  # a fresh budget of compiled graphs (torch's recompile limit is per process)
                torch._dynamo.reset()
            extractor = make_extractor(
                args,
                decode=decode,
                precision=precision,
                compile=compile,
                pad_to_multiple=pad or None,
                cuda_graphs=args.cuda_graphs,
            )
            # Warm-up: with compile=True every distinct file once, so that every graph is compiled before the timing;
            # with CUDA graphs the timed files twice, through the head (a graph is recorded at the second full batch of
            # its batch shape).
            extractor.transform(data["paths"] if compile else paths[:64])
            for _ in range(2 if args.cuda_graphs else 0):
                head_on_device(extractor)
            for route, run in (("maps via host", maps_via_host), ("head=TorchEncoder on the device", head_on_device)):
                codes, seconds = timed(lambda e=extractor, run=run: run(e))
                assert codes.shape == (len(paths), args.n_bits // 8)
                options = (", compile=True" if compile else "") + (f", pad_to_multiple={pad}" if pad else "")
                options += ", cuda_graphs=True" if args.cuda_graphs else ""
                path = f"extractor decode={decode!r}{options}, {route}"
                rows.append([precision, path, len(paths) / seconds])
                print(rows[-1], flush=True)
        report.results["end_to_end"] = rows
        report.write()
    lines = [
        "",
        f"## 5. JPEG files -> {args.n_bits}-bit codes end to end",
        "",
        f"The {len(data['paths'])} JPEGs cycled to {len(paths):,} files (after a warm-up: 64 files, every file "
        "once when compiled); batch "
        f"{args.batch_size}; {os.cpu_count()} CPU threads; channels_last; TorchEncoder (projection float32) for the "
        "codes. Maps via host: `extractor.transform`, then `TorchEncoder.transform` of the maps; head: "
        "`extractor.iter_extract(paths, head=encoder.transform)`, the maps never leave the GPU (nor the pixels "
        "with decode='device'). Target (issue 10): >= 800 images/s.",
        "",
        "| precision | path | images/s |",
        "|---|---|---|",
    ] + [f"| {p} | {path} | **{rate:.0f}** |" for p, path, rate in rows]
    report.add("end_to_end", rows, lines)


if __name__ == "__main__":
    main()
