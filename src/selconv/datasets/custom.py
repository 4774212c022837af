"""A user's own retrieval dataset: a folder of images plus a small CSV or JSON ground-truth file.

The format is described in docs/datasets.md; in short:

CSV (``image,label`` + optional ``query``, ``x1,y1,x2,y2``, ``rotation`` columns)::

    image,label,query,x1,y1,x2,y2
    tower/001.jpg,tower,1,10,20,300,400
    tower/002.jpg,tower,0,,,,
    bridge/a.jpg,bridge,1,,,,
    bridge/b.jpg,bridge,0,,,,
    other/x.jpg,,0,,,,

Images with the same label are relevant to each other; an empty label is a distractor; images of
the folder not listed are distractors too. Without a ``query`` column every labelled image is a query
(leave-one-out). JSON lists each query's positives and junk explicitly.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path, PurePosixPath

from selconv.datasets.base import (
    VALID_ROTATIONS,
    GroundTruthError,
    RetrievalDataset,
    list_images,
    make_ground_truth,
    training_folder_in,
)

DEFAULT_GROUND_TRUTH_NAMES = ("groundtruth.csv", "groundtruth.json")
CSV_COLUMNS = ("image", "label", "query", "x1", "y1", "x2", "y2", "rotation")
_BOX = ("x1", "y1", "x2", "y2")
_TRUE = {"1", "true", "yes", "y", "x"}
_FALSE = {"", "0", "false", "no", "n"}


class _Folder:
    """Resolves the relative image paths a ground-truth file names, inside `root`."""

    def __init__(self, root):
        self.root = root

    def resolve(self, name, where):
        if not isinstance(name, str) or not name.strip():
            raise GroundTruthError(f"{where}: expected an image path relative to {self.root}, got {name!r}")
        relative = PurePosixPath(name.strip().replace("\\", "/"))
        # A lexical check, so that images symlinked from elsewhere are still accepted.
        if relative.is_absolute() or ".." in relative.parts:
            raise GroundTruthError(f"{where}: image {name!r} must be a path inside {self.root}")
        path = self.root.joinpath(*relative.parts)
        if not path.is_file():
            raise GroundTruthError(f"{where}: image {name!r} does not exist ({path})")
        return path


def _number(value, column, where):
    try:
        return float(value)
    except ValueError:
        raise GroundTruthError(f"{where}: column {column!r} must be a number, got {value!r}") from None


def _rotation(value, where):
    try:
        degrees = int(value) % 360
    except (TypeError, ValueError):
        degrees = None
    if degrees not in VALID_ROTATIONS:
        raise GroundTruthError(f"{where}: rotation must be 0, 90, 180 or 270 (clockwise degrees), got {value!r}")
    return degrees


def _box(values, where):
    if values is None or all(v in ("", None) for v in values):
        return None
    if any(v in ("", None) for v in values) or len(values) != 4:
        raise GroundTruthError(f"{where}: a box needs all four of x1, y1, x2, y2, got {list(values)}")
    box = tuple(_number(v, c, where) for v, c in zip(values, _BOX))
    if not (box[2] > box[0] and box[3] > box[1]):
        raise GroundTruthError(f"{where}: box {box} must have x2 > x1 and y2 > y1")
    return box


def _read_csv(path, folder):
    """Rows of a CSV ground truth: dicts with path, label, query flag, box, rotation and line number."""
    with open(path, newline="", encoding="utf-8") as fh:
        lines = (line for line in fh if not line.lstrip().startswith("#"))
        reader = csv.DictReader(lines)
        header = [c.strip() for c in reader.fieldnames or []]
        unknown = [c for c in header if c not in CSV_COLUMNS]
        if "image" not in header or "label" not in header or unknown:
            raise GroundTruthError(
                f"{path}: header must have the columns 'image' and 'label' and may add {CSV_COLUMNS[2:]}; "
                f"got {header}" + (f" (unknown: {unknown})" if unknown else "")
            )
        box_columns = [c for c in _BOX if c in header]
        if box_columns and len(box_columns) != 4:
            raise GroundTruthError(f"{path}: a box needs all four columns x1, y1, x2, y2; got {box_columns}")
        has_query = "query" in header
        rows, seen = [], {}
        for raw in reader:
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            number = reader.line_num
            where = f"{path}:{number}"
            if None in raw:
                raise GroundTruthError(f"{where}: more fields than the header has columns")
            image = folder.resolve(row["image"], where)
            key = image.resolve()
            if key in seen:
                raise GroundTruthError(f"{where}: {row['image']!r} is listed twice (first on line {seen[key]})")
            seen[key] = number
            flag = row.get("query", "").lower()
            if flag not in _TRUE | _FALSE:
                raise GroundTruthError(
                    f"{where}: column 'query' must be 1/0 (or yes/no, true/false), got {row['query']!r}"
                )
            label = row["label"] or None
            is_query = flag in _TRUE if has_query else label is not None
            box = _box([row[c] for c in _BOX] if box_columns else None, where)
            if box is not None and not is_query:
                raise GroundTruthError(f"{where}: only queries may have a box")
            if is_query and label is None:
                raise GroundTruthError(f"{where}: query {row['image']!r} has no label, so nothing is relevant to it")
            rows.append(
                {
                    "path": image,
                    "label": label,
                    "query": is_query,
                    "box": box,
                    "rotation": _rotation(row["rotation"], where) if row.get("rotation") else 0,
                    "where": where,
                }
            )
    if not rows:
        raise GroundTruthError(f"{path}: no image rows")
    return rows


def _from_csv(path, folder, database, queries_in_database, include_unlisted):
    rows = _read_csv(path, folder)
    query_rows = [r for r in rows if r["query"]]
    if not include_unlisted:
        listed = {r["path"].resolve() for r in rows}
        database = [p for p in database if p.resolve() in listed]
    if not queries_in_database:
        removed = {r["path"].resolve() for r in query_rows}
        database = [p for p in database if p.resolve() not in removed]
    index = {p.resolve(): i for i, p in enumerate(database)}
    labels = [None] * len(database)
    rotations = [0] * len(database)
    for r in rows:
        i = index.get(r["path"].resolve())
        if i is None:
            if queries_in_database or not r["query"]:
                raise GroundTruthError(
                    f"{r['where']}: {r['path']} is not a database image (is it in the training folder?)"
                )
            continue
        labels[i], rotations[i] = r["label"], r["rotation"]
    members = {}
    for i, label in enumerate(labels):
        if label is not None:
            members.setdefault(label, []).append(i)
    ground_truth = []
    for r in query_rows:
        self_index = index.get(r["path"].resolve())
        positives = [i for i in members.get(r["label"], []) if i != self_index]
        if not positives:
            raise GroundTruthError(
                f"{r['where']}: query {r['path'].name!r} has no positive: no other image has label {r['label']!r}"
            )
        ground_truth.append(make_ground_truth(positives, [] if self_index is None else [self_index]))
    return dict(
        database=database,
        queries=[r["path"] for r in query_rows],
        ground_truth=ground_truth,
        query_boxes=[r["box"] for r in query_rows],
        database_labels=labels,
        query_labels=[r["label"] for r in query_rows],
        database_rotations=rotations if any(rotations) else None,
        query_rotations=[r["rotation"] for r in query_rows] if any(rotations) else None,
    )


def _from_json(path, folder, database, training, include_unlisted):
    spec = _read_json(path)
    if "training" in spec:
        if training:
            raise GroundTruthError(f"{path}: lists 'training' images and a training folder was given too; use one")
        training = _path_list(spec["training"], folder, f"{path}: training")
    if "database" in spec:
        database = _path_list(spec["database"], folder, f"{path}: database")
        _check_disjoint(database, training, f"{path}: database")
    elif not include_unlisted:
        raise GroundTruthError(f"{path}: include_unlisted=False needs a 'database' list")
    else:
        # The folder's images minus the training ones: training images are never distractors.
        in_training = {p.resolve() for p in training}
        database = [p for p in database if p.resolve() not in in_training]
    index = {p.resolve(): i for i, p in enumerate(database)}
    entries = [
        _json_query(entry, f"{path}: queries[{q}]", folder, index, database) for q, entry in enumerate(spec["queries"])
    ]
    rotations = [e["rotation"] for e in entries]
    return dict(
        database=database,
        queries=[e["image"] for e in entries],
        ground_truth=[e["truth"] for e in entries],
        query_boxes=[e["box"] for e in entries],
        query_labels=[e["label"] for e in entries],
        query_rotations=rotations if any(rotations) else None,
    ), training


def _read_json(path) -> dict:
    """The JSON ground truth as a dict with a 'queries' list and no unknown key."""
    try:
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise GroundTruthError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("queries"), list):
        raise GroundTruthError(f"{path}: expected an object with a 'queries' list")
    unknown = set(spec) - {"database", "queries", "training"}
    if unknown:
        raise GroundTruthError(f"{path}: unknown keys {sorted(unknown)} (allowed: database, queries, training)")
    return spec


def _json_query(entry, where, folder, index, database) -> dict:
    """One JSON query entry checked: its image, box, label, rotation and ground truth."""
    if not isinstance(entry, dict) or "image" not in entry:
        raise GroundTruthError(
            f"{where}: expected an object with 'image', 'positives' and optional 'junk', 'bbox', 'rotation', 'label'"
        )
    unknown = set(entry) - {"image", "positives", "junk", "bbox", "rotation", "label"}
    if unknown:
        raise GroundTruthError(f"{where}: unknown keys {sorted(unknown)}")
    image = folder.resolve(entry["image"], where)
    indices = {}
    for kind in ("positives", "junk"):
        indices[kind] = []
        for j, name in enumerate(entry.get(kind, [])):
            i = index.get(folder.resolve(name, f"{where}.{kind}[{j}]").resolve())
            if i is None:
                raise GroundTruthError(f"{where}.{kind}[{j}]: {name!r} is not a database image")
            indices[kind].append(i)
    if not indices["positives"]:
        raise GroundTruthError(f"{where}: query {entry['image']!r} has no positives")
    both = set(indices["positives"]) & set(indices["junk"])
    if both:
        raise GroundTruthError(f"{where}: {[database[i].name for i in sorted(both)]} listed as both positive and junk")
    # A query that is also a database image would otherwise rank first as a false positive.
    self_index = index.get(image.resolve())
    if self_index is not None and self_index not in indices["positives"]:
        indices["junk"].append(self_index)
    bbox = entry.get("bbox")
    if bbox is not None and not isinstance(bbox, list):
        raise GroundTruthError(f"{where}: 'bbox' must be a list [x1, y1, x2, y2], got {bbox!r}")
    return {
        "image": image,
        "box": _box(bbox, where),
        "label": entry.get("label"),
        "rotation": _rotation(entry.get("rotation", 0), where),
        "truth": make_ground_truth(indices["positives"], indices["junk"]),
    }


def _check_disjoint(database, training, where):
    in_training = {p.resolve() for p in training}
    shared = [p for p in database if p.resolve() in in_training]
    if shared:
        raise GroundTruthError(
            f"{where}: {len(shared)} images are also training images (e.g. {shared[0]}); "
            "an image is either learned from or searched, not both"
        )


def _path_list(names, folder, where):
    if not isinstance(names, list):
        raise GroundTruthError(f"{where}: expected a list of image paths")
    paths = [folder.resolve(name, f"{where}[{j}]") for j, name in enumerate(names)]
    seen = {}
    for j, p in enumerate(paths):
        if p.resolve() in seen:
            raise GroundTruthError(f"{where}[{j}]: {names[j]!r} is listed twice (first at [{seen[p.resolve()]}])")
        seen[p.resolve()] = j
    return paths


def _ground_truth_file(root: Path, ground_truth):
    """The ground-truth file: as given (relative to `root` when it is there), else the default name in `root`."""
    if ground_truth is None:
        found = [root / n for n in DEFAULT_GROUND_TRUTH_NAMES if (root / n).is_file()]
        if len(found) > 1:
            raise GroundTruthError(f"{root}: both {DEFAULT_GROUND_TRUTH_NAMES} exist; pass ground_truth= to choose")
        return found[0] if found else None
    if not Path(ground_truth).is_absolute() and (root / ground_truth).exists():
        return root / ground_truth
    return ground_truth


def load_image_folder(
    root, ground_truth=None, *, training=None, queries_in_database=True, include_unlisted=True, name=None
) -> RetrievalDataset:
    """Load a folder of images with a CSV or JSON ground-truth file (format: docs/datasets.md).

    Parameters
    ----------
    root : path-like
        The image folder; ground-truth files name images by their path relative to it.
    ground_truth : path-like or None
        A ``.csv`` or ``.json`` file (relative paths are taken relative to `root`). None looks for
        ``groundtruth.csv`` / ``groundtruth.json`` in `root`; when neither exists the dataset has a
        database and no queries.
    training : path-like or None
        A folder of training images (relative to `root` or absolute). When it lies inside `root`
        its images are kept out of the database, as are the images a JSON file lists under
        ``"training"``: a training image is never a distractor, and a ``"database"`` list that
        names one is an error.
    queries_in_database : bool
        CSV only. True (default): query images stay in the database, where each is junk for itself
        (Holidays/Oxford practice). False: query images are removed from the database.
    include_unlisted : bool
        Images of the folder that the file does not mention join the database as distractors
        (default). False keeps only listed images (CSV) / the JSON ``database`` list.
    name : str or None
        Dataset name; default: the folder's name.

    Raises
    ------
    GroundTruthError
        Naming the file and line (CSV) or entry (JSON): a missing or duplicate image, an unknown
        column, a bad box or rotation, a query without label or without positives.
    """
    root = Path(root)
    training_folder = training_folder_in(root, training)
    training_images = list_images(training_folder) if training_folder is not None else []
    database = list_images(root, exclude=training_folder)
    folder = _Folder(root)

    ground_truth = _ground_truth_file(root, ground_truth)
    if ground_truth is None:
        fields = dict(database=database, queries=[], ground_truth=[])
    else:
        ground_truth = Path(ground_truth)
        if not ground_truth.is_file():
            raise FileNotFoundError(f"ground-truth file {ground_truth} does not exist")
        suffix = ground_truth.suffix.lower()
        if suffix == ".csv":
            fields = _from_csv(ground_truth, folder, database, queries_in_database, include_unlisted)
        elif suffix == ".json":
            fields, training_images = _from_json(ground_truth, folder, database, training_images, include_unlisted)
        else:
            raise GroundTruthError(f"{ground_truth}: ground truth must be a .csv or .json file")
    return RetrievalDataset(
        name=name or root.resolve().name,
        root=root,
        training=training_images,
        info={"ground_truth": None if ground_truth is None else str(ground_truth)},
        **fields,
    )
