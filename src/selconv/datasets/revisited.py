"""Revisited Oxford and Paris (ROxford5k, RParis6k; Radenovic et al., CVPR 2018) with the Easy/Medium/Hard protocols."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from selconv._safe_pickle import safe_load_pickle
from selconv.datasets.base import GroundTruthError, RetrievalDataset, make_ground_truth

REVISITED_NAMES = ("roxford5k", "rparis6k")
PROTOCOLS = ("easy", "medium", "hard")


def _indices(entry, key, n_database, where):
    values = np.asarray(entry.get(key, []))
    if values.size == 0:
        return np.zeros(0, dtype=np.int64)
    if values.dtype.kind not in "iu":  # a float index would be truncated, a bool one misread
        raise GroundTruthError(f"{where}: {key!r} must hold integer image indices; got dtype {values.dtype}")
    values = values.astype(np.int64).ravel()
    if n_database is not None and ((values < 0) | (values >= n_database)).any():
        bad = values[(values < 0) | (values >= n_database)][:3].tolist()
        raise GroundTruthError(f"{where}: {key!r} indices {bad} are outside the {n_database} database images")
    return values


def revisited_ground_truth(entry, protocol, *, n_database=None, where="ground truth"):
    """Positives and junk of one revisited query under `protocol` (the revisitop evaluation's rules).

    easy: positives = easy, junk = junk + hard; medium: positives = easy + hard, junk = junk;
    hard: positives = hard, junk = junk + easy. Indices must be integers (in ``[0, n_database)`` when
    given); `where` names the entry in errors.
    """
    if not isinstance(entry, dict):
        raise GroundTruthError(f"{where}: expected a dict with 'easy', 'hard' and 'junk'; got {type(entry).__name__}")
    easy, hard, junk = (_indices(entry, k, n_database, where) for k in ("easy", "hard", "junk"))
    if protocol == "easy":
        return make_ground_truth(easy, np.concatenate([junk, hard]))
    if protocol == "medium":
        return make_ground_truth(np.concatenate([easy, hard]), junk)
    if protocol == "hard":
        return make_ground_truth(hard, np.concatenate([junk, easy]))
    raise ValueError(f"protocol must be one of {PROTOCOLS}; got {protocol!r}")


def _image_path(folder: Path, name, gnd_file) -> Path:
    """``folder/<name>.jpg``, refusing names that are not plain relative paths inside `folder`."""
    parts = PurePosixPath(name.replace("\\", "/")).parts if isinstance(name, str) else ()
    if not parts or parts[0] == "/" or ".." in parts or ":" in parts[0] or "\x00" in name:
        raise GroundTruthError(f"{gnd_file}: image name {name!r} is not a relative path inside {folder}")
    return folder / f"{name}.jpg"


def _box(value, where):
    if value is None:
        return None
    box = np.asarray(value).ravel()
    if box.shape != (4,) or box.dtype.kind not in "iuf" or not np.isfinite(box).all():
        raise GroundTruthError(f"{where}: 'bbx' must be 4 finite numbers (x1, y1, x2, y2); got {value!r}")
    return tuple(float(v) for v in box)


def _read_gnd(gnd_file) -> dict:
    """The ground-truth pickle, read safely and checked: lists 'imlist', 'qimlist' and one 'gnd' per query."""
    cfg = safe_load_pickle(gnd_file)
    if not isinstance(cfg, dict) or not {"imlist", "qimlist", "gnd"} <= set(cfg):
        raise GroundTruthError(f"{gnd_file}: expected a dict with 'imlist', 'qimlist' and 'gnd'")
    if not all(isinstance(cfg[k], (list, tuple)) for k in ("imlist", "qimlist", "gnd")):
        raise GroundTruthError(f"{gnd_file}: 'imlist', 'qimlist' and 'gnd' must be lists")
    if len(cfg["gnd"]) != len(cfg["qimlist"]):
        raise GroundTruthError(f"{gnd_file}: {len(cfg['gnd'])} 'gnd' entries for {len(cfg['qimlist'])} queries")
    return cfg


def load_revisited(
    root, name="roxford5k", protocol="medium", *, gnd_file=None, images=None, distractors=None
) -> RetrievalDataset:
    """Load ROxford5k or RParis6k from the official ``gnd_<name>.pkl`` and the images.

    Parameters
    ----------
    root : path-like
        Dataset folder, official layout: ``root/gnd_<name>.pkl`` and ``root/jpg/<image>.jpg``.
    name : {"roxford5k", "rparis6k"}
        Which dataset.
    protocol : {"easy", "medium", "hard"}
        Evaluation protocol (see :func:`revisited_ground_truth`).
    gnd_file, images : path-like or None
        Override the ground-truth pickle / image folder locations.
    distractors : path-like or None
        Folder of the revisitop 1M distractors (R1M), appended to the database.

    Returns
    -------
    RetrievalDataset
        Database = ``imlist`` order (4,993 / 6,322 images), queries = ``qimlist`` (70) with their
        boxes; queries are not database images in this protocol.

    Notes
    -----
    The ground truth is a pickle; it is read with a restricted unpickler that rebuilds only
    builtin containers and numpy arrays and refuses anything else, so a tampered file cannot run code.
    """
    if name not in REVISITED_NAMES:
        raise ValueError(f"name must be one of {REVISITED_NAMES}; got {name!r}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}; got {protocol!r}")
    root = Path(root)
    gnd_file = Path(gnd_file) if gnd_file is not None else root / f"gnd_{name}.pkl"
    image_folder = Path(images) if images is not None else root / "jpg"
    cfg = _read_gnd(gnd_file)
    database = [_image_path(image_folder, n, gnd_file) for n in cfg["imlist"]]
    queries = [_image_path(image_folder, n, gnd_file) for n in cfg["qimlist"]]
    missing = [str(p) for p in database + queries if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} images named in {gnd_file} are not in {image_folder}, e.g. {missing[:3]}"
        )
    ground_truth = [
        revisited_ground_truth(entry, protocol, n_database=len(database), where=f"{gnd_file}: gnd[{i}]")
        for i, entry in enumerate(cfg["gnd"])
    ]
    boxes = [_box(entry.get("bbx"), f"{gnd_file}: gnd[{i}]") for i, entry in enumerate(cfg["gnd"])]
    dataset = RetrievalDataset(
        name=f"{name}-{protocol}",
        root=root,
        database=database,
        queries=queries,
        ground_truth=ground_truth,
        query_boxes=boxes,
        info={"protocol": protocol, "gnd_file": str(gnd_file)},
    )
    if distractors is not None:
        dataset = dataset.with_distractors(distractors, name=f"{name}+r1m-{protocol}")
    return dataset
