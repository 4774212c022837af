"""Benchmark of `selconv index`: images/s end to end, beside the CNN alone, and a 2-worker Dask LocalCluster.

Measures, on the same images (a few dozen JPEGs of the shared Oxford subset by default):

1. the CNN alone: a bare torch forward of the encoder's VGG16 on the images decoded, resized and normalised
   beforehand (``bench_extraction.decoded_tensors``; on a GPU they are copied there first), torch's default
   threads;
2. ``selconv index PHOTOS --encoder ENCODER --out INDEX`` as a subprocess: its own images/s (walking,
   decoding, CNN, the paper's pipeline, shards, merge, save) and the command's wall time (Python, torch and
   weights loading included);
3. :func:`selconv.index.build.index_folder` in this process against the same call with a
   ``dask.distributed.Client`` of a ``LocalCluster(n_workers=2, threads_per_worker=1)``, checking that both
   indexes are byte-identical (``--no-cluster`` skips it, e.g. on a one-GPU machine).

The encoder is the paper's 512-D MAX-mask preset learned on the bundled sample's 40 training photos at the
same ``--max-size`` (a learning set this small under-determines the rotation: fine for timing, not for mAP).

Examples (the committed results; ``--device auto`` uses the GPU when there is one)::

    PYTHONPATH=src python benchmarks/bench_index.py --n-images 32 --max-size 512 --out benchmarks/results/index_cpu.md
    PYTHONPATH=src python benchmarks/bench_index.py --n-images 1008 --max-size 1024 --chunk-size 64 --no-cluster \
        --out benchmarks/results/index_gpu.md
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def log(*args):
    print(*args, flush=True)


def cnn_alone(encoder, files, max_size, repeats):
    import torch
    from bench_extraction import decoded_tensors

    extractor = encoder.steps[0][1]
    model = extractor._get_model()
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype  # the extractor's precision
    tensors = [x.to(device, dtype) for x in decoded_tensors(files, max_size, extractor._mean, extractor._std)]
    best = float("inf")
    with torch.inference_mode():
        model(tensors[0])  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            for x in tensors:
                model(x).float().cpu().numpy()
            best = min(best, time.perf_counter() - start)
    return len(files) / best, best


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default="../shared/data/oxford5k-subset/jpg", help="folder of JPEG files")
    parser.add_argument("--n-images", type=int, default=32, help="images indexed (the first N by name)")
    parser.add_argument("--max-size", type=int, default=512)
    parser.add_argument("--chunk-size", type=int, default=8, help="images per shard / Dask task")
    parser.add_argument("--repeats", type=int, default=2, help="CNN-alone repetitions (best kept)")
    parser.add_argument("--device", default="auto", help="torch device of the encoder: auto, cpu, cuda, ...")
    parser.add_argument("--no-cluster", action="store_true", help="skip the 2-worker LocalCluster comparison")
    parser.add_argument(
        "--weights",
        default=None,
        help="VGG16 weights file, or 'none' (random: the same arithmetic, for timing only; default: 'imagenet')",
    )
    parser.add_argument("--precision", default="float32", help="selconv fit --precision (default: the paper's)")
    parser.add_argument("--batch-size", type=int, default=None, help="selconv index --batch-size")
    parser.add_argument("--compile", action="store_true", help="selconv index --compile")
    parser.add_argument("--cuda-graphs", action="store_true", help="selconv index --cuda-graphs")
    parser.add_argument("--pad-to-multiple", type=int, default=None, help="selconv index --pad-to-multiple")
    parser.add_argument("--out", default=None, help="write the markdown results here")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch

    from selconv.index.build import index_folder

    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="selconv-bench-index-"))
    photos, files = copy_photos(args, work)
    fit, fit_seconds = learn_encoder(args, work)
    encoder = fit.encoder
    measured = {"fit": fit, "fit_seconds": fit_seconds}
    measured["cnn_rate"], measured["cnn_seconds"] = cnn_alone(encoder, files, args.max_size, args.repeats)
    log(f"CNN alone: {measured['cnn_rate']:.2f} images/s")
    measured["cli_rate"], measured["wall"] = command_line_rate(photos, work, args)
    started = time.perf_counter()
    single = index_folder(
        photos, encoder, work / "single.index", chunk_size=args.chunk_size, settings=settings(args), progress=False
    )
    measured["single_seconds"] = time.perf_counter() - started
    log(f"one process ({torch.get_num_threads()} torch threads): {measured['single_seconds']:.1f} s")
    cluster = ([], []) if args.no_cluster else cluster_comparison(photos, encoder, work, args, single, measured)
    measured["load"] = (load_before[0], os.getloadavg()[0])
    text = report(args, len(files), encoder.steps[0][1].device_, measured, cluster)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    shutil.rmtree(work, ignore_errors=True)


def settings(args) -> dict:
    """The extractor's run-time settings the command line's speed options give (selconv.cli._common)."""
    from selconv.cli._common import speed_settings

    return speed_settings(args)


def copy_photos(args, work: Path):
    """The first ``--n-images`` JPEGs copied into ``work/photos``: (the folder, its files)."""
    photos = work / "photos"
    photos.mkdir()
    files = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))[: args.n_images]
    for path in files:
        shutil.copyfile(path, photos / path.name)
    log(f"{len(files)} images copied to {photos}")
    return photos, sorted(str(p) for p in photos.iterdir())


def learn_encoder(args, work: Path):
    """(fit report, seconds) of the 512-D preset learned on the bundled sample's training photos, saved to
    ``work/encoder``."""
    from selconv.datasets import load_sample
    from selconv.index.build import fit_encoder, save_encoder

    extractor = None
    if args.weights is not None:  # a weights file (the GPU machine has no internet nor offline package)
        from selconv.extraction import ConvFeatureExtractor

        weights = None if args.weights == "none" else args.weights
        extractor = ConvFeatureExtractor(
            max_size=args.max_size, device=args.device, weights=weights, precision=args.precision
        )
    started = time.perf_counter()
    fit = fit_encoder(
        load_sample().training,
        max_size=args.max_size,
        device=args.device,
        precision=args.precision,
        extractor=extractor,
        progress=False,
    )
    seconds = time.perf_counter() - started
    save_encoder(fit.encoder, work / "encoder")
    log(f"encoder learned on {fit.n_images} images in {seconds:.0f} s")
    return fit, seconds


def command_line_rate(photos: Path, work: Path, args):
    """(images/s the ``selconv index`` command reports, its wall time) of a run as a subprocess."""
    command = [sys.executable, "-m", "selconv", "index", str(photos), "--encoder", str(work / "encoder")]
    command += ["--out", str(work / "cli.index"), "--chunk-size", str(args.chunk_size)]
    command += ["--compile"] if args.compile else []
    command += ["--cuda-graphs"] if args.cuda_graphs else []
    for option, value in (("--batch-size", args.batch_size), ("--pad-to-multiple", args.pad_to_multiple)):
        command += [option, str(value)] if value is not None else []
    started = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True, env={**os.environ})
    wall = time.perf_counter() - started
    if run.returncode:
        sys.exit(run.stderr)
    match = re.search(r"took (\d+) s \(([\d.]+) images/s\)", run.stdout)
    log(run.stdout.strip())
    return float(match.group(2)), wall


def cluster_comparison(photos, encoder, work, args, single, measured):
    """(table rows, lines) of index_folder on a 2-worker LocalCluster against the one-process index."""
    from dask.distributed import Client, LocalCluster

    from selconv.index.build import index_folder

    started = time.perf_counter()
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        startup = time.perf_counter() - started
        started = time.perf_counter()
        remote = index_folder(
            photos,
            encoder,
            work / "dask.index",
            chunk_size=args.chunk_size,
            client=client,
            settings=settings(args),
            progress=False,
        )
        dask_seconds = time.perf_counter() - started
    log(f"2-worker LocalCluster: {dask_seconds:.1f} s (cluster start {startup:.1f} s)")
    identical = all(
        (single.path / name).read_bytes() == (remote.path / name).read_bytes()
        for name in ("index.faiss", "ids.npy", "paths.jsonl")
    )
    n_images = len(list(photos.iterdir()))
    rows = [
        f"| `index_folder`, 2-worker `LocalCluster` (1 thread each; cluster start {startup:.1f} s "
        f"not counted) | {dask_seconds:.1f} | {n_images / dask_seconds:.2f} |"
    ]
    lines = [
        f"Dask index byte-identical to the one-process index: **{'yes' if identical else 'NO'}**; "
        f"2 workers / one process: **{measured['single_seconds'] / dask_seconds:.2f}x**."
    ]
    return rows, lines


def report(args, n, device, measured, cluster) -> str:
    import torch
    from bench_extraction import environment

    fit, cnn_rate, cli_rate = measured["fit"], measured["cnn_rate"], measured["cli_rate"]
    wall, single_seconds = measured["wall"], measured["single_seconds"]
    cluster_rows, cluster_lines = cluster
    where = f"the GPU ({torch.cuda.get_device_name(0)})" if device.startswith("cuda") else "this CPU"
    lines = [
        f"# `selconv index` throughput on {where}",
        "",
        f"Command: `PYTHONPATH=src python {' '.join(sys.argv)}`",
        "",
        *environment("cuda" if device.startswith("cuda") else "cpu"),
        f"- {os.cpu_count()} CPU cores visible; load average {measured['load'][0]:.1f} before, "
        f"{measured['load'][1]:.1f} after (on a shared machine absolute numbers vary from run to run)",
        f"- {n} JPEGs (`{args.images}`, first {n} by name), resized to a longest side of {args.max_size} px; "
        f"chunks of {args.chunk_size} images; encoder on `{device}`, precision {args.precision}; index run settings "
        f"{settings(args)}",
        f"- encoder: the paper's 512-D MAX-mask preset (VGG16 pool5), learned on the bundled sample's "
        f"{fit.n_images} training photos in {measured['fit_seconds']:.0f} s",
        "",
        "| what | seconds | images/s |",
        "| --- | --- | --- |",
        f"| CNN alone (VGG16 forward on pre-decoded tensors, best of {args.repeats}) "
        f"| {measured['cnn_seconds']:.1f} | {cnn_rate:.2f} |",
        f"| `selconv index` end to end, as the command reports it | {n / cli_rate:.1f} | {cli_rate:.2f} |",
        f"| `selconv index` command wall time (Python start, imports, weights included) "
        f"| {wall:.1f} | {n / wall:.2f} |",
        f"| `index_folder`, one process | {single_seconds:.1f} | {n / single_seconds:.2f} |",
        *cluster_rows,
        "",
        f"End to end / CNN alone: **{cli_rate / cnn_rate:.2f}** of the CNN's rate.",
        *cluster_lines,
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
