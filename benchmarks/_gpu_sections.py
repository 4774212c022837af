"""Timing helpers, section 6 (fit timing) and section 2's non-finite diagnosis of bench_gpu_pipeline.py.

Kept beside that script (which imports them) so that it stays readable.
"""

from __future__ import annotations

import time

import numpy as np


def synchronize():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(function):
    synchronize()
    started = time.perf_counter()
    out = function()
    synchronize()
    return out, time.perf_counter() - started


def best_of(function, repeats: int) -> float:
    return min(timed(function)[1] for _ in range(repeats))


def augmented(maps, n):
    """``n`` (or no) extra training maps: the maps cycled, rescaled per cell at random and mirrored."""
    from selconv import ConvMap

    rng = np.random.default_rng(0)
    out = []
    for i in range(max(n, 0)):
        features = maps[i % len(maps)].features
        features = features * rng.uniform(0.5, 1.5, features.shape[1:]).astype(np.float32)
        out.append(ConvMap(np.ascontiguousarray(features[:, :, ::-1]), maps[i % len(maps)].image_size))
    return out


# ------------------------------------------------------------------------------------ 6. fit timing


def fit_timing(args, data, report) -> None:
    """The 512-D preset + ITQ (no extract step) fitted on ``args.n_fit`` maps, seconds per stage, every stage that
    takes a ``device`` on the device."""
    from selconv import make_paper_pipeline

    maps = data["maps"]
    train = (maps + augmented(maps, args.n_fit - len(maps)))[: args.n_fit]
    rows = []
    for device in [args.device] + (["cpu"] if args.cpu_fit else []):
        pipeline = make_paper_pipeline(512, n_bits=args.n_bits, device=device)  # mask, pca, encode and itq
        if args.fit_working_memory is not None:
            pipeline.set_params(encode__working_memory=args.fit_working_memory)
        seconds, X = {}, train
        for name, step in pipeline.steps:  # as Pipeline.fit runs them: fit_transform, the last one fit
            last = name == pipeline.steps[-1][0]
            X, seconds[name] = timed(lambda s=step, X=X, last=last: s.fit(X) if last else s.fit_transform(X))
            if name == "mask":
                n_local = sum(len(s) for s in X)
        total = sum(seconds.values())
        rows.append({"device": device, "n_local": n_local, "seconds": seconds, "total": total})
        print(rows[-1], flush=True)
    working_memory = pipeline.get_params()["encode__working_memory"]
    names = list(rows[0]["seconds"])
    lines = [
        "",
        f"## 6. Fit of the 512-D preset + {args.n_bits}-bit ITQ on {len(train):,} images' pool5 maps (s)",
        "",
        f"The set-up's {len(maps):,} database maps, completed to {len(train):,} by `augmented` (copies rescaled per "
        "cell at random and mirrored). `make_paper_pipeline(512, n_bits=...)` without the extract step; each "
        "stage's `fit_transform` as `Pipeline.fit` runs it (the last one's `fit`), synchronised; "
        "`make_paper_pipeline(device=...)` as in the first column: the mask (host maps copied to the device in "
        "batches of one grid size, the selected local features copied back), LocalPCA (the sample's covariance "
        "in float64 and the projection on the device, host arrays in and out), encode and ITQ on it; the rotation "
        "and the power law are numpy. "
        f"`encode__working_memory` {working_memory} MiB. Target (issue 10): <= 10 s on the GPU; CPU (2 cores, "
        "docs/benchmarks.md): 32.6 s.",
        "",
        "| device | local features | " + " | ".join(names) + " | total | total after the mask |",
        "|---|---|" + "---|" * len(names) + "---|---|",
    ]
    for row in rows:
        after = row["total"] - row["seconds"]["mask"]
        lines.append(
            f"| {row['device']} | {row['n_local']:,} | "
            + " | ".join(f"{row['seconds'][n]:.2f}" for n in names)
            + f" | **{row['total']:.1f}** | **{after:.1f}** |"
        )
    report.add("fit", rows, lines)


# ------------------------------------------------------------------- 2. diagnosis of non-finite maps


def decode_resize_on_current_stream(raws, sizes, device):
    """``decode_resize`` as it was before the side stream (commit eab42e8): nvJPEG's output allocated on the worker's
    current stream (the network's default stream) and written on torchvision's own stream; for the A/B of section 2."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from selconv.extraction._device_decode import _LOCK, resize

    data = [torch.frombuffer(bytearray(raw), dtype=torch.uint8) for raw in raws]
    with _LOCK:
        decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    return [resize(image, width, height).permute(1, 2, 0) for image, (width, height) in zip(decoded, sizes)]


def extract_checked(extractor, paths, cpu_maps):
    """(maps or None, seconds, problem): the extraction, its NonFiniteError caught, and the files it names or whose
    map is far (> 5 % of its largest value) from the CPU-decoded one."""
    from selconv.exceptions import NonFiniteError

    try:
        maps, seconds = timed(lambda: extractor.transform(paths))
    except NonFiniteError as error:
        return None, float("nan"), {"error": str(error), "files": [p for p in paths if p in str(error)]}
    far = [p for p, a, b in zip(paths, maps, cpu_maps) if relative_difference(a, b) > 0.05]
    return maps, seconds, {"error": None, "files": far}


def relative_difference(a, b) -> float:
    if a.features.shape != b.features.shape:
        return float("inf")
    return float(np.abs(a.features - b.features).max() / np.abs(b.features).max())


def file_diagnosis(args, make_extractor, path, cpu_map) -> dict:
    """One file: its JPEG header, its device decoding alone (no threads, synchronised) against the CPU pixels, and
    its map alone (``n_workers=0``): finite, and its distance to the CPU-decoded map."""
    from PIL import Image

    from selconv.exceptions import NonFiniteError
    from selconv.extraction._device_decode import decode_resize, read_plain_jpeg
    from selconv.extraction.images import load_image, target_size

    with Image.open(path) as image:
        info = {
            "file": path,
            "size": image.size,
            "mode": image.mode,
            "format": image.format,
            "progressive": bool(image.info.get("progressive") or image.info.get("progression")),
        }
    plain = read_plain_jpeg(path, path)
    info["device_path"] = plain is not None
    if plain is not None:
        raw, (width, height) = plain
        size = target_size(width, height, args.max_size, True)[1]
        pixels, _ = timed(lambda: decode_resize([raw], [size], args.torch_device)[0].cpu().numpy())
        cpu_pixels = load_image(path, 0, max_size=args.max_size, upscale=True, keypoints=None).pixels
        same = pixels.shape == cpu_pixels.shape
        info["target"] = size
        info["alone_grey_levels"] = int(np.abs(pixels.astype(int) - cpu_pixels).max()) if same else "shape differs"
    try:
        (alone,) = make_extractor(args, decode="device", n_workers=0).transform([path])
        info["alone_map_finite"] = bool(np.isfinite(alone.features).all())
        info["alone_map_relative"] = relative_difference(alone, cpu_map)
    except NonFiniteError:
        info["alone_map_finite"] = False
    return info


def nonfinite_diagnosis(args, make_extractor, paths, cpu_maps, threaded_maps, problem) -> tuple[dict, list]:
    """Section 2's diagnosis: the files the threaded extraction flagged (non-finite or far from the CPU map) looked
    at alone, the whole extraction again in the calling thread, and with the decoder before the side stream."""
    from selconv.extraction import _device_decode

    results = {"threaded": problem}
    lines = [f"- threaded extraction (the decoder with its side stream): {describe(problem)}"]
    alone_maps, _, results["calling_thread"] = extract_checked(
        make_extractor(args, decode="device", n_workers=0), paths, cpu_maps
    )
    lines.append(f"- the same, decoding in the calling thread (`n_workers=0`): {describe(results['calling_thread'])}")
    fixed = _device_decode.decode_resize
    _device_decode.decode_resize = decode_resize_on_current_stream
    try:
        before_maps, _, results["before_fix"] = extract_checked(make_extractor(args, decode="device"), paths, cpu_maps)
    finally:
        _device_decode.decode_resize = fixed
    lines.append(
        "- the same, threaded, with the decoder before the side stream (nvJPEG output on the network's stream): "
        + describe(results["before_fix"])
    )
    if alone_maps is not None:
        for key, maps in (("threaded", threaded_maps), ("before_fix", before_maps)):
            if maps is not None:
                results[key]["vs_calling_thread"] = max(map(relative_difference, maps, alone_maps))
        threaded, before = (results[key].get("vs_calling_thread", float("nan")) for key in ("threaded", "before_fix"))
        lines.append(
            f"- largest max|a - b| / max|b| of a map against the calling thread's: threaded {threaded:.2g}, before "
            f"the side stream {before:.2g} (a race shows here; 0 or cuDNN's noise otherwise)"
        )
    files = list(dict.fromkeys(problem["files"] + results["calling_thread"]["files"] + results["before_fix"]["files"]))
    index = {p: i for i, p in enumerate(paths)}
    results["files"] = [file_diagnosis(args, make_extractor, p, cpu_maps[index[p]]) for p in files[:5]]
    for info in results["files"]:
        lines.append(
            f"  - `{info.pop('file')}`: "
            + ", ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items())
        )
    return {**results, "alone_maps": alone_maps}, lines


def describe(problem) -> str:
    if problem["error"] is not None:
        return f"**NonFiniteError** naming {len(problem['files'])} file(s): {problem['error'][:300]}"
    if problem["files"]:
        return f"finite; **{len(problem['files'])} map(s) > 5 % from the CPU-decoded one**: {problem['files'][:5]}"
    return "all maps finite and within 5 % of the CPU-decoded ones"
