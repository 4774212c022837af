"""Benchmark of ConvFeatureExtractor: images/s for VGG16 pool5 at 1024 px from JPEG files, decoding included.

Compares end-to-end extraction (files on disk -> ConvMaps in host memory) with the network alone:
- CPU: a bare torch forward of the same network on the same images, decoded and normalised beforehand,
  with the same number of threads (target: end-to-end within 10% of it).
- CUDA: the network alone on batches already in GPU memory, same precision, batch size and layout
  (target on one H100: at least 400 images/s end to end, and within 1.5x of the network alone).

Runs without selconv's virtualenv: ``PYTHONPATH=src python3 benchmarks/bench_extraction.py ...`` needs only
torch, torchvision, numpy, pillow, opencv, scikit-learn and tqdm.

Examples
--------
CPU, 8 Oxford images, results into the repository::

    python benchmarks/bench_extraction.py --device cpu --images ../shared/data/oxford5k-subset/jpg \\
        --n-images 8 --out benchmarks/results/extraction_cpu.md

Prepare a GPU run (weights as one small safe file to carry; a few dozen JPEGs)::

    python benchmarks/bench_extraction.py --export-weights bench_data/vgg16_conv.pt
    python benchmarks/bench_extraction.py --export-images bench_data/jpg --n-images 40 \\
        --images ../shared/data/oxford5k-subset/jpg

On the GPU machine::

    PYTHONPATH=src python3 benchmarks/bench_extraction.py --device cuda --images bench_data/jpg \\
        --weights bench_data/vgg16_conv.pt --replicate 2000 --out $OUT/extraction_gpu.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from selconv import ConvFeatureExtractor
from selconv.extraction.images import load_image


def log(*args):
    print(*args, flush=True)


def list_images(folder, n):
    files = sorted(str(p) for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        sys.exit(f"no JPEG files in {folder}")
    return files[:n] if n else files


def replicate(files, total, folder):
    """Copy the JPEGs under new names until there are ``total`` files (real files on disk, not links)."""
    copies = []
    for i in range(total):
        source = files[i % len(files)]
        target = Path(folder) / f"{i:06d}_{Path(source).name}"
        shutil.copyfile(source, target)
        copies.append(str(target))
    return copies


def decoded_tensors(files, max_size, mean, std):
    """The images decoded, resized and normalised exactly as the extractor does, as (1, 3, H, W) float32."""
    tensors = []
    for i, path in enumerate(files):
        pixels = load_image(path, i, max_size=max_size, upscale=True, keypoints=None).pixels
        x = torch.from_numpy(np.array(pixels)).permute(2, 0, 1).float().div(255)
        x = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
        tensors.append(x[None].contiguous())
    return tensors


def environment(device):
    lines = [
        f"- torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPU cores visible, torch threads {torch.get_num_threads()}"
    ]
    if device == "cuda":
        lines.append(
            f"- GPU: {torch.cuda.get_device_name(0)} "
            f"(CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})"
        )
    else:
        try:
            model = next(
                line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
            )
        except (OSError, StopIteration):
            model = platform.processor() or "unknown"
        lines.append(f"- CPU: {model}")
    return lines


def bench_cpu(args):
    torch.set_num_threads(args.threads or torch.get_num_threads())
    files = list_images(args.images, args.n_images)
    extractor = ConvFeatureExtractor(
        max_size=args.max_size, weights=args.weights or "imagenet", device="cpu", batch_size=1, n_workers=args.workers
    ).fit()
    model = extractor._get_model()
    tensors = decoded_tensors(files, args.max_size, extractor._mean, extractor._std)
    shapes = sorted({tuple(t.shape[2:]) for t in tensors})
    log(f"{len(files)} images, shapes {shapes}, threads {torch.get_num_threads()}")
    with torch.inference_mode():
        model(tensors[0])  # warm-up (oneDNN primitive creation)
    extractor.transform(files[:1])

    def bare():
        with torch.inference_mode():
            for x in tensors:
                model(x).numpy()

    def end_to_end():
        extractor.transform(files)

    times = {"bare": [], "e2e": []}
    for _ in range(args.repeats):  # interleaved, so that load from other processes hits both alike
        for name, fn in (("bare", bare), ("e2e", end_to_end)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
            log(f"{name}: {times[name][-1]:.2f} s")
    bare_s, e2e_s = min(times["bare"]), min(times["e2e"])
    n = len(files)
    lines = [
        "# ConvFeatureExtractor on the CPU: VGG16 pool5, 1024 px, JPEG files",
        "",
        f"Command: `{' '.join(sys.argv)}`",
        "",
        *environment("cpu"),
        f"- {n} Oxford5k JPEGs (longest side 1024 px; resized shapes {shapes}), float32, batch size 1, "
        f"{extractor.n_workers or 'auto'} decoding threads, best of {args.repeats} interleaved runs "
        f"(all runs: bare {', '.join(f'{t:.2f}' for t in times['bare'])} s; "
        f"end-to-end {', '.join(f'{t:.2f}' for t in times['e2e'])} s)",
        "",
        "| measurement | seconds | images/s |",
        "| --- | --- | --- |",
        f"| bare torch forward, tensors preloaded | {bare_s:.2f} | {n / bare_s:.3f} |",
        f"| ConvFeatureExtractor.transform(files), decoding included | {e2e_s:.2f} | {n / e2e_s:.3f} |",
        "",
        f"End-to-end time / bare forward time: **{e2e_s / bare_s:.3f}** (target: at most 1.10).",
        "",
        "The machine's 2 cores are shared with other work, so absolute numbers vary between runs; the ratio",
        "comes from interleaved runs.",
    ]
    return lines


def bench_cuda(args):
    files = list_images(args.images, args.n_images)
    workdir = tempfile.mkdtemp(prefix="selconv-bench-")
    copies = replicate(files, args.replicate, workdir)
    log(f"{len(files)} distinct JPEGs replicated to {len(copies)} files in {workdir}")
    decode_rate, shape_counts, workers = decoding_alone(copies, args)
    lines = [
        "# ConvFeatureExtractor on the GPU: VGG16 pool5, 1024 px, JPEG files",
        "",
        f"Command: `{' '.join(sys.argv)}`",
        "",
        *environment("cuda"),
        f"- {len(files)} distinct Oxford5k JPEGs (longest side 1024 px) copied to {len(copies)} files; "
        f"batch size {args.batch_size}; decoding threads: {args.workers or 'auto'}; output maps float32 in host memory",
        "- end-to-end: `transform(files)` from disk, decoding, resizing, transfer, forward and copy back included",
        "- network alone: the same module on batches of the same shapes already in GPU memory (normalised,",
        "  channels_last, in the compute precision), synchronised at the end",
        "",
        f"Decoding and resizing alone ({workers} threads): **{decode_rate:.0f} images/s**. "
        f"Resized shapes (H, W): {shape_counts}.",
        "",
        "| precision | end-to-end images/s | network alone images/s | ratio alone / end-to-end | target met |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [precision_row(precision, copies, shape_counts, args) for precision in args.precisions]
    lines += [
        "",
        "Targets (issue): at least 400 images/s end to end on one H100, and end-to-end throughput within",
        "1.5x of the network alone.",
    ]
    shutil.rmtree(workdir, ignore_errors=True)
    return lines


def decoding_alone(copies, args):
    """(images/s, {resized (H, W): count}, threads) of decoding and resizing alone: the CPU side's ceiling."""
    from concurrent.futures import ThreadPoolExecutor

    from selconv.extraction._batching import default_workers

    workers = args.workers or default_workers()
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        decoded = list(
            pool.map(
                lambda p: load_image(p, 0, max_size=args.max_size, upscale=True, keypoints=None).pixels.shape, copies
            )
        )
    decode_rate = len(copies) / (time.perf_counter() - start)
    shape_counts = {}
    for shape in decoded:
        shape_counts[shape[:2]] = shape_counts.get(shape[:2], 0) + 1
    log(f"decoding alone: {decode_rate:.0f} images/s with {workers} threads; shapes {shape_counts}")
    return decode_rate, shape_counts, workers


def precision_row(precision, copies, shape_counts, args) -> str:
    """The table row of one CNN precision: end-to-end and network-alone rates (or why it failed)."""
    try:
        extractor = ConvFeatureExtractor(
            max_size=args.max_size,
            weights=args.weights or "imagenet",
            device="cuda",
            precision=precision,
            batch_size=args.batch_size,
            n_workers=args.workers,
            progress=False,
        ).fit()
        extractor.transform(copies[: 4 * args.batch_size])  # warm-up: CUDA context, cuDNN handles, workers
        torch.cuda.synchronize()
        start = time.perf_counter()
        maps = extractor.transform(copies)
        e2e = len(copies) / (time.perf_counter() - start)
        assert len(maps) == len(copies) and all(np.isfinite(m.features).all() for m in maps[:: max(1, len(maps) // 20)])
        del maps
        alone = network_alone(extractor, shape_counts, args.batch_size, precision)
        ratio = alone / e2e
        met = "yes" if e2e >= 400 and ratio <= 1.5 else "no"
        log(f"{precision}: end-to-end {e2e:.0f} images/s, network alone {alone:.0f} images/s, ratio {ratio:.2f}")
        row = f"| {precision} | {e2e:.0f} | {alone:.0f} | {ratio:.2f} | {met} |"
    except Exception as exc:  # one precision failing must not lose the others' numbers
        traceback.print_exc()
        row = f"| {precision} | failed: {type(exc).__name__}: {exc} | | | |"
    torch.cuda.empty_cache()
    return row


def network_alone(extractor, shape_counts, batch_size, precision):
    model = extractor._get_model()
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(precision, torch.float32)
    batches = []
    for (height, width), count in shape_counts.items():
        x = (
            torch.randn(batch_size, 3, height, width, device="cuda")
            .to(dtype)
            .contiguous(memory_format=torch.channels_last)
        )
        batches += [x] * (count // batch_size) + ([x[: count % batch_size]] if count % batch_size else [])
    n_images = sum(len(b) for b in batches)
    # the extractor's own cuDNN settings (heuristic algorithm choice, TF32 only when asked)
    flags = torch.backends.cudnn.flags(
        enabled=True, benchmark=False, deterministic=False, allow_tf32=precision != "float32"
    )
    with torch.inference_mode(), flags:
        for x in {(tuple(b.shape)): b for b in batches}.values():  # warm-up: each distinct batch shape once
            model(x)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for x in batches:
            model(x)
        torch.cuda.synchronize()
    return n_images / (time.perf_counter() - start)


def export_weights(path, half):
    from selconv.extraction.backbones import build_backbone

    built = build_backbone("vgg16", None, "imagenet")
    state = {f"features.{k.split('.', 1)[1]}": v for k, v in built.module.state_dict().items()}
    if half:  # halves the file to carry (the extractor casts back on loading); for timing runs only
        state = {k: v.half() for k, v in state.items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    log(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB) from {built.weights_source}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--images", default="../shared/data/oxford5k-subset/jpg", help="folder of JPEG files")
    parser.add_argument("--n-images", type=int, default=8, help="distinct images to use (0: all)")
    parser.add_argument("--replicate", type=int, default=2000, help="CUDA: number of files after copying")
    parser.add_argument("--max-size", type=int, default=1024)
    parser.add_argument("--weights", default=None, help="a converted VGG16 weights file (default: resolve 'imagenet')")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: the extractor's)")
    parser.add_argument("--threads", type=int, default=None, help="CPU: torch threads")
    parser.add_argument("--repeats", type=int, default=2, help="CPU: interleaved repetitions")
    parser.add_argument("--precisions", nargs="+", default=["float16", "bfloat16", "tf32"])
    parser.add_argument("--out", default=None, help="write the results as markdown here")
    parser.add_argument("--export-weights", default=None, help="write VGG16 conv weights to this .pt file and exit")
    parser.add_argument("--half", action="store_true", help="with --export-weights: store float16 (half the size)")
    parser.add_argument("--export-images", default=None, help="copy the first --n-images JPEGs here and exit")
    args = parser.parse_args()
    if args.export_weights:
        return export_weights(args.export_weights, args.half)
    if args.export_images:
        Path(args.export_images).mkdir(parents=True, exist_ok=True)
        for path in list_images(args.images, args.n_images):
            shutil.copy(path, args.export_images)
        return log(f"copied {args.n_images} images to {args.export_images}")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda but CUDA is not available")
    lines = bench_cuda(args) if args.device == "cuda" else bench_cpu(args)
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
