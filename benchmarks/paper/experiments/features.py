"""Local features of every image: the pool5 maps with SIFT keypoints (extracted once) and the four masks'
selected features (Fig. 3a: share kept; Fig. 3b: decorrelation of feature pairs)."""

from __future__ import annotations

import numpy as np

from ..report.tables import write_masks_section
from ..settings import MASK_NAMES


def make_extractor(run, layers, keypoints, cache=True, scales=(1.0,)):
    from selconv import ConvFeatureExtractor

    args = run.args
    return ConvFeatureExtractor(
        "vgg16",
        layers=layers,
        weights=args.weights,
        max_size=args.max_size,
        keypoints=keypoints,
        scales=scales,
        precision=args.precision,
        device=args.device,
        batch_size=args.batch_size,
        n_workers=args.num_workers,
        cache_dir=str(run.cache_dir / "maps") if cache else None,
        progress=False,
    ).fit()


def phase_extract(run):
    extractor = make_extractor(run, "pool5", "sift")
    data = run.data
    run.maps = {}
    for split, items in (("train", data.training), ("db", data.database), ("official", data.official_items)):
        with run.timer.phase(f"extract pool5+SIFT: {split} ({len(items)} images)"):
            run.maps[split] = extractor.transform(items)
    example = run.maps["db"][0]
    run.results["pool5"] = {
        "n_channels": int(example.n_channels),
        "grid_db_example": list(example.grid_size),
        "mean_cells_db": float(np.mean([m.features.shape[1] * m.features.shape[2] for m in run.maps["db"]])),
        "mean_cells_train": float(np.mean([m.features.shape[1] * m.features.shape[2] for m in run.maps["train"]])),
        "dtype": str(example.features.dtype),
        "extractor": repr(extractor),
        "weights_source": extractor.weights_source_,
        "device": extractor.device_,
    }


def masked_sets(run, name, maps) -> tuple:
    """(mask ``name``, its selected local features of every split of ``maps``)."""
    from selconv.pipelines import make_mask

    mask = make_mask(name).fit(maps["train"][:1])
    return mask, {split: run.transform(mask, split_maps) for split, split_maps in maps.items()}


def phase_masks(run):
    run.sets = {}
    shares, decorrelation = {}, {}
    rng = np.random.default_rng(run.rng_seed)
    for name in MASK_NAMES:
        with run.timer.phase(f"mask {name}"):
            mask, run.sets[name] = masked_sets(run, name, run.maps)
        shares[name] = {
            split: 100.0 * float(np.mean(mask.selected_fraction(run.maps[split]))) for split in ("train", "db")
        }
        decorrelation[name] = 100.0 * feature_pair_decorrelation(run.sets[name]["db"], rng)
    run.results["mask_share"] = shares
    run.results["mask_decorrelation"] = decorrelation
    write_masks_section(run)


def feature_pair_decorrelation(
    sets: list[np.ndarray], rng: np.random.Generator, max_images: int = 200, band: float = 0.15
) -> float:
    """Share of l2-normalised local-feature pairs of one image whose dot product is in [-band, band].

    Paper Fig. 3b (averaged over images; pairs of distinct features of the same image).
    """
    picks = rng.permutation(len(sets))[:max_images]
    shares = []
    for i in picks:
        x = sets[i].astype(np.float64)
        if len(x) < 2:
            continue
        norms = np.linalg.norm(x, axis=1)
        x = x[norms > 0] / norms[norms > 0, None]
        if len(x) < 2:
            continue
        gram = x @ x.T
        upper = gram[np.triu_indices(len(x), k=1)]
        shares.append(np.mean(np.abs(upper) <= band))
    return float(np.mean(shares)) if shares else float("nan")
