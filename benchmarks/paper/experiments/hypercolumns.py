"""The hypercolumn experiment (paper Table 6): conv5_3 + conv5_2 + conv5_1, streamed map by map and MAX-masked
in worker threads (the 1536-channel maps are never all in memory), against pool5."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..plumbing import key_of, load_sets, save_sets
from ..report.tables import write_hypercolumn_section
from ..settings import HC_VARIANTS, HYPERCOLUMN_LAYERS
from .features import make_extractor
from .framework import fit_framework, score_framework


def max_pool_2x2(features: np.ndarray) -> np.ndarray:
    """2x2 max-pooling with stride 2 of a (K, H, W) map (floor, like VGG16's pool5 on even sizes)."""
    k, h, w = features.shape
    h2, w2 = h // 2, w // 2
    if h2 == 0 or w2 == 0:
        return features
    trimmed = features[:, : 2 * h2, : 2 * w2]
    return trimmed.reshape(k, h2, 2, w2, 2).max(axis=(2, 4))


def _mask_hypercolumn_variants(conv_map) -> dict:
    """MAX-masked local features (float16) of one hypercolumn map, for every variant of HC_VARIANTS."""
    from selconv import ConvMap, MaxMask

    out = {}
    for variant, (channels, pooled) in HC_VARIANTS.items():
        features = np.asarray(conv_map.features[channels], dtype=np.float32)
        if pooled:
            features = max_pool_2x2(features)
        # A fresh mask per call: worker threads must not share a fitted estimator.
        selected = MaxMask().fit_transform([ConvMap(features, conv_map.image_size, source=conv_map.source)])
        out[variant] = selected[0].astype(np.float16)
    return out


def phase_hypercolumns(run):
    sets = hypercolumn_sets(run)
    run.results["hypercolumns"] = {}
    for dim in (1024, 512):
        for variant in HC_VARIANTS:
            if dim == 512 and "conv5_3 (" in variant:
                continue
            if not run.within_budget(f"hypercolumns {variant} {dim}"):
                continue
            label = f"fit training: hypercolumns {variant} {dim}-D"
            variant_sets = {s: [x.astype(np.float32) for x in v] for s, v in sets[variant].items()}
            with run.timer.phase(label):
                fitted = fit_framework(run, variant_sets, dim=dim, mask="max", fit_on="training", label=label)
                run.results["hypercolumns"][f"{variant}/{dim}"] = dict(
                    score_framework(run, fitted),
                    fit_s=fitted["fit_s"],
                    transform_s=fitted["transform_s"],
                    kept_db=float(np.mean([len(x) for x in variant_sets["db"]])),
                )
            del variant_sets
            write_hypercolumn_section(run)
    write_hypercolumn_section(run)


def hypercolumn_sets(run) -> dict:
    """{variant: {split: MAX-masked float16 sets}} from the cache, the splits not cached extracted (and cached)."""
    data = run.data
    splits = {"train": data.training, "db": data.database, "official": data.official_items}
    key = key_of(
        run.args.max_size, run.args.weights, HYPERCOLUMN_LAYERS, data.training, data.database, data.official_items
    )
    paths = {
        (v, s): run.cache_dir / "hypercolumns" / f"{key}-{i}-{s}.npz" for i, v in enumerate(HC_VARIANTS) for s in splits
    }
    sets = {v: {} for v in HC_VARIANTS}
    for (variant, split), path in paths.items():
        loaded = load_sets(path)
        if loaded is not None:
            sets[variant][split] = loaded
    pool5_check = []
    extractor = None
    for split, items in splits.items():
        if all(split in sets[v] for v in HC_VARIANTS):
            continue
        if extractor is None:
            # No map cache: 1536 x 64 x 48 float32 maps are 19 MB each; the masked sets are cached instead.
            extractor = make_extractor(run, HYPERCOLUMN_LAYERS, None, cache=False)
        with run.timer.phase(f"extract + MAX-mask hypercolumns: {split} ({len(items)} images)"):
            parts = _extract_masked(run, extractor, split, items, pool5_check)
        for variant in HC_VARIANTS:
            sets[variant][split] = parts[variant]
            save_sets(paths[(variant, split)], parts[variant])
    if pool5_check:
        run.results["pool5_vs_maxpooled_conv5_3_max_rel_diff"] = max(pool5_check)
    return sets


def _extract_masked(run, extractor, split, items, pool5_check) -> dict:
    """{variant: MAX-masked sets} of ``items``; on the database, pool5 checked against conv5_3 into ``pool5_check``.

    Maps come one at a time off the extractor's stream and are masked in worker threads while the
    GPU runs on: the 1536-channel maps are never all in memory, only their MAX-selected cells.
    """
    parts = {v: [] for v in HC_VARIANTS}
    with ThreadPoolExecutor(run.n_jobs) as pool:
        jobs = []
        for index, conv_map in enumerate(extractor.iter_transform(items)):
            jobs.append(pool.submit(_mask_hypercolumn_variants, conv_map))
            if split == "db" and index < 8:
                # Sanity check of the extractor: pool5 is the 2x2 max-pool of conv5_3 (after ReLU).
                c53 = max_pool_2x2(np.asarray(conv_map.features[:512], dtype=np.float32))
                ref = np.asarray(run.maps["db"][index].features, dtype=np.float32)
                if c53.shape == ref.shape:
                    pool5_check.append(float(np.abs(c53 - ref).max() / max(np.abs(ref).max(), 1e-12)))
                if index == 0:
                    run.results["hypercolumn_grid_example"] = list(conv_map.grid_size)
        for job in jobs:
            for variant, selected in job.result().items():
                parts[variant].append(selected)
    return parts
