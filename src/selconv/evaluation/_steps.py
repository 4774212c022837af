"""The steps of :func:`~selconv.evaluation.run_benchmark`: build the extractor, fit every method, describe the images.

A *method* is one fitted pipeline: the paper's pipeline for one mask, or one baseline; ITQ hashers
are learned on the training descriptors of the first mask's pipeline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from selconv.evaluation._settings import (
    BASELINE_LABELS,
    MASK_LABELS,
    EvaluationError,
    default_cache_dir,
    itq_bits_problem,
)


@dataclass
class FittedMethods:
    """The methods :func:`fit_methods` fitted, and how."""

    pipelines: dict = field(default_factory=dict)  # mask or baseline name -> fitted Pipeline
    hashers: dict = field(default_factory=dict)  # n_bits -> ITQHasher fitted on the first mask's descriptors
    masks: tuple = ()
    baseline_whitening: bool = True
    rotation_note: str | None = None
    skipped: list = field(default_factory=list)
    n_training: int = 0
    fit_seconds: float = 0.0
    seconds_per_image: float = 0.0  # conv maps of the training images, cache reads included
    database_maps: list | None = None  # the training maps, when they are the database (fit_on="database")

    def rows(self, described):
        """``(row, query descriptors, database descriptors)`` per method; rows lack the scores."""
        for name, pipeline in self.pipelines.items():
            db_desc = described.database[name]
            if name in self.masks:
                row = _paper_row(name, pipeline, db_desc.shape[1], kept=described.stats["kept"][name])
            else:
                row = _baseline_row(name, db_desc.shape[1], whitening=self.baseline_whitening)
            yield row, described.queries[name], db_desc
        first = self.masks[0]
        real_dim = described.database[first].shape[1]
        for n_bits, hasher in self.hashers.items():
            row = {
                "kind": "binary",
                "descriptor": f"ITQ on {MASK_LABELS[first]} {real_dim}-D",
                "size": f"{n_bits} bits ({n_bits // 8} bytes)",
                "label": f"ITQ {n_bits} bits ({MASK_LABELS[first]})",
                "mask": first,
                "dims": n_bits,
            }
            yield row, hasher.transform(described.queries[first]), hasher.transform(described.database[first])


def _paper_row(mask, pipeline, dims, *, kept) -> dict:
    steps = pipeline.named_steps
    name = (
        f"{MASK_LABELS[mask]} + Temb(d={steps['pca'].n_components}, |C|={steps['encode'].embedding.n_clusters})"
        f" + democratic + RN(-{steps['rotate'].n_dropped}) + PN({steps['power'].alpha})"
    )
    label = f"{MASK_LABELS[mask]}, {dims}-D"
    return {
        "kind": "real",
        "descriptor": name,
        "size": f"{dims}-D float32",
        "label": label,
        "mask": mask,
        "dims": int(dims),
        "kept": kept,
    }


def _baseline_row(name, dims, *, whitening) -> dict:
    final = "PCA-whitening" if whitening else "l2 (no whitening)"
    label = f"{BASELINE_LABELS[name]} baseline, {final}"
    return {
        "kind": "baseline",
        "descriptor": f"{BASELINE_LABELS[name]} + {final}",
        "size": f"{dims}-D float32",
        "label": label,
        "dims": int(dims),
    }


@dataclass
class Described:
    """Descriptors of the queries and the database under every method, and database grid statistics."""

    queries: dict
    database: dict
    stats: dict


def prepare_extractor(extractor, *, max_size, device, sift, cache_dir, say):
    """`extractor` (or VGG16 pool5 with these settings) fitted, saying what it loads while it is silent."""
    from selconv.extraction import ConvFeatureExtractor

    if extractor is None:
        extractor = ConvFeatureExtractor(
            backbone="vgg16",
            layers="pool5",
            max_size=max_size,
            keypoints="sift" if sift else None,
            cache_dir=default_cache_dir() if cache_dir is None else cache_dir,
            device=device,
            progress=True,
        )
    say(f"Loading the {extractor.backbone} network and its ImageNet weights (downloaded on first use) ...")
    started = time.perf_counter()
    extractor.fit()
    settings = extractor.get_params()
    say(
        f"Backbone {settings['backbone']} (weights: {extractor.weights_source_}) ready in "
        f"{time.perf_counter() - started:.0f} s; layer(s) {', '.join(extractor.layers_)} "
        f"(K = {extractor.n_channels_}), "
        f"longest side {settings['max_size']} px, device {extractor.device_}; conv maps cached in "
        f"{settings['cache_dir']} (a rerun reads them back)."
    )
    return extractor


def extract_announced(extractor, items, what: str, say) -> list:
    """Conv maps of `items`, after saying how long they should take (timed on the first image)."""
    items = list(items)
    say(f"Conv maps of the {len(items)} {what}:")
    if len(items) < 2:
        return extractor.transform(items)
    started = time.perf_counter()
    first = extractor.transform(items[:1])
    seconds = time.perf_counter() - started
    if seconds > 0.5:  # read from the cache otherwise: nothing worth announcing
        say(
            f"  the first image took {seconds:.1f} s: about {_duration(seconds * (len(items) - 1))} for the "
            f"other {len(items) - 1} on this machine (less for those already cached)"
        )
    return first + extractor.transform(items[1:])


def fit_methods(extractor, training, *, preset, masks, bits, baselines, baseline_whitening, random_state, fit_on, say):
    """Fit the paper's pipeline per mask, each baseline, and ITQ per usable bit length on `training`."""
    from selconv import make_baseline, make_paper_pipeline
    from selconv.hashing import ITQHasher
    from selconv.pipelines import rotation_settings

    what = "database images (= training set)" if fit_on == "database" else "training images"
    started = time.perf_counter()
    train_maps = extract_announced(extractor, training, what, say)
    methods = FittedMethods(masks=tuple(masks), baseline_whitening=baseline_whitening, n_training=len(train_maps))
    methods.seconds_per_image = (time.perf_counter() - started) / max(len(train_maps), 1)
    say(f"Fitting the paper's pipeline (preset D = {preset}) on {len(train_maps)} training images, one per mask ...")
    rotation, methods.rotation_note = rotation_settings(len(train_maps), preset, fit_on=fit_on)
    if methods.rotation_note:
        say(f"Note: {methods.rotation_note}")
    started = time.perf_counter()
    for mask in masks:
        methods.pipelines[mask] = make_paper_pipeline(
            preset, mask=mask, random_state=random_state, fit_on=fit_on, **rotation
        )
        descriptors = methods.pipelines[mask].fit_transform(train_maps)
        if mask == masks[0]:
            train_descriptors = descriptors
    for name in baselines:
        baseline = make_baseline(name, whitening=baseline_whitening)  # an unknown name raises here
        say(f"Fitting the {BASELINE_LABELS[name]} baseline ...")
        methods.pipelines[name] = baseline.fit(train_maps)
    for n_bits in bits:
        problem = itq_bits_problem(n_bits, *train_descriptors.shape)
        if problem:  # listed with the warnings under the results table
            methods.skipped.append(f"skipped: {problem}")
        else:
            methods.hashers[n_bits] = ITQHasher(n_bits, random_state=random_state).fit(train_descriptors)
    methods.fit_seconds = time.perf_counter() - started
    methods.database_maps = train_maps if fit_on == "database" else None
    return methods


def describe_all(extractor, dataset, methods: FittedMethods, *, say) -> Described:
    """Descriptors of the database and the queries under every method, streamed in chunks."""
    if methods.database_maps is not None:
        database, stats = _describe(methods.database_maps, methods)
        methods.database_maps = None
    else:
        say(f"Conv maps of the {len(dataset.database)} database images{_eta(methods, len(dataset.database))}:")
        stream = extractor.iter_extract(dataset.database_inputs())
        database, stats = _describe((conv_map for _, conv_map in stream), methods)
        _check_all_described(database, len(dataset.database), "database images", stream.skipped)
    say(f"Conv maps of the {len(dataset.queries)} queries{_eta(methods, len(dataset.queries))}:")
    stream = extractor.iter_extract(dataset.query_inputs())
    queries, _ = _describe((conv_map for _, conv_map in stream), methods)
    _check_all_described(queries, len(dataset.queries), "queries", stream.skipped)
    return Described(queries=queries, database=database, stats=stats)


def _eta(methods: FittedMethods, n_images: int) -> str:
    seconds = methods.seconds_per_image * n_images
    return f" (about {_duration(seconds)} at the training images' rate)" if seconds >= 30 else ""


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _check_all_described(descriptors, expected: int, what: str, skipped) -> None:
    """Every image must have its descriptor: a skipped one (`skipped`: the extractor's SkippedInput list)
    would shift every later ground-truth index."""
    got = {len(d) for d in descriptors.values()}
    if got != {expected}:
        skipped = "; ".join(f"{name}: {reason}" for _, name, reason in skipped[:3])
        raise EvaluationError(
            f"{expected - min(got)} of the {expected} {what} could not be read"
            + (f" ({skipped})" if skipped else "")
            + "; the ground truth refers to every image by position, so fix or remove them (and their ground truth)."
        )


def _describe(maps, methods: FittedMethods, *, chunk_size=64):
    """Descriptors of `maps` (ConvMap or MultiScaleConvMap each) under every method, in chunks, and grid statistics.

    Returns ``(descriptors, stats)``: ``descriptors[name]`` is an (n_images, D) array; ``stats`` holds
    ``kept[mask]``, the fraction of all grid cells each mask keeps, and the mean grid ``width``/``height``.
    """
    from selconv._ragged import batched
    from selconv.conv_map import scale_maps

    parts = {name: [] for name in methods.pipelines}
    kept = dict.fromkeys(methods.masks, 0)
    cells, widths, heights, count = 0, 0, 0, 0
    for chunk in batched(maps, chunk_size):
        for name, pipeline in methods.pipelines.items():
            parts[name].append(pipeline.transform(chunk))
            if name in kept:
                kept[name] += sum(len(s) for s in pipeline.named_steps["mask"].transform(chunk))
        # Cells of every scale (what a mask chooses from); the grid size is that of the first scale.
        cells += sum(m.grid_size[0] * m.grid_size[1] for item in chunk for m in scale_maps(item))
        widths += sum(scale_maps(item)[0].grid_size[0] for item in chunk)
        heights += sum(scale_maps(item)[0].grid_size[1] for item in chunk)
        count += len(chunk)
    descriptors = {name: np.concatenate(p) if p else np.zeros((0, 0), np.float32) for name, p in parts.items()}
    stats = {
        "kept": {mask: kept[mask] / cells if cells else 0.0 for mask in kept},
        "width": widths / max(count, 1),
        "height": heights / max(count, 1),
    }
    return descriptors, stats
