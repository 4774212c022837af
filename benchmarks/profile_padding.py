"""What a padded batch costs the network: VGG16 to pool5 on one batch of images of one resized shape, run at
that shape, and zero-padded to a multiple (``pad_to_multiple``) with and without the masking that keeps the
padded forward exact. Random weights (the same arithmetic); pixels already on the device. Prints a markdown table
(the source of the padding figures in the notes of benchmarks/results/gpu_pipeline.md).

On the GPU machine (repository root)::

    PYTHONPATH=src python3 benchmarks/profile_padding.py --compile
"""

from __future__ import annotations

import argparse
import time

import torch

from selconv.extraction import ConvFeatureExtractor
from selconv.extraction._network import compile_network


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="683x1024", help="HEIGHTxWIDTH of the images (default: Oxford's landscape)")
    parser.add_argument("--multiple", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10, help="batches timed per row")
    parser.add_argument("--compile", action="store_true", help="also the compiled network (compile=True's)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="bfloat16")
    return parser.parse_args(argv)


def rate(module, x, sizes, repeats: int) -> float:
    """Images/s of ``module`` on the batch ``x`` (with ``sizes``: the padded forward), after two warm-up calls."""
    arguments = (x,) if sizes is None else (x, sizes)

    def run(n_calls: int) -> None:
        for _ in range(n_calls):
            module(*arguments)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)

    with torch.inference_mode():
        run(2)
        start = time.perf_counter()
        run(repeats)
    return repeats * len(x) / (time.perf_counter() - start)


def main(argv=None) -> None:
    args = parse_args(argv)
    height, width = (int(v) for v in args.size.split("x"))
    padded = tuple(-(-n // args.multiple) * args.multiple for n in (height, width))
    extractor = ConvFeatureExtractor("vgg16", weights=None, device=args.device, precision=args.precision).fit()
    network = extractor._get_model()
    dtype = next(network.parameters()).dtype
    cuda = args.device.startswith("cuda")
    layout = torch.channels_last if cuda else torch.contiguous_format  # as the extractor places the network

    def batch(h: int, w: int) -> torch.Tensor:
        return torch.randn(args.batch_size, 3, h, w, device=args.device, dtype=dtype).to(memory_format=layout)

    sizes = torch.tensor([[height, width]] * args.batch_size, device=args.device)
    name = torch.cuda.get_device_name(0) if cuda else args.device
    shapes = f"{height} x {width} padded to {padded[0]} x {padded[1]}"
    print(f"{name}, {args.precision}, batch {args.batch_size}: {shapes}\n")
    print("| network | batch | images/s |\n|---|---|---|")
    for compiled in (False, True) if args.compile else (False,):
        module = compile_network(network) if compiled else network
        mode = "compiled" if compiled else "eager"
        rows = [
            (f"{height} x {width}, its own shape", batch(height, width), None),
            (f"padded to {padded[0]} x {padded[1]}, masked (exact)", batch(*padded), sizes),
            (f"padded to {padded[0]} x {padded[1]}, not masked", batch(*padded), None),
        ]
        for what, x, row_sizes in rows:
            print(f"| {mode} | {what} | {rate(module, x, row_sizes, args.repeats):.0f} |", flush=True)


if __name__ == "__main__":
    main()
