"""The one dataset type every loader returns, and the file helpers the loaders share."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

#: File name endings (lower case) taken as images when a folder is listed.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

#: Rotations (degrees, clockwise) a dataset may ask for to make an image upright.
VALID_ROTATIONS = (0, 90, 180, 270)


class GroundTruthError(ValueError):
    """A ground-truth or dataset file is malformed; the message names the file (and line)."""


def list_images(folder, *, exclude=None) -> list[Path]:
    """Every image file under `folder` (recursively), sorted by path relative to `folder`.

    Parameters
    ----------
    folder : path-like
        Folder to list.
    exclude : path-like or None
        A sub-folder whose images are left out (e.g. a training folder kept inside the dataset).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    excluded = Path(exclude).resolve() if exclude is not None else None
    images = []
    for path in folder.rglob("*"):
        if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            continue
        if excluded is not None and path.resolve().is_relative_to(excluded):
            continue
        images.append(path)
    # Sorting by the relative POSIX path makes the database order identical on every OS and file system.
    return sorted(images, key=lambda p: p.relative_to(folder).as_posix())


def training_folder_in(root: Path, training) -> Path | None:
    """The training folder `training` (absolute, or relative to the dataset folder `root`), or None.

    Refused when it contains `root`: every image of the dataset would then be a training image.
    """
    if training is None:
        return None
    folder = Path(training) if Path(training).is_absolute() else Path(root) / training
    if Path(root).resolve().is_relative_to(folder.resolve()):
        raise GroundTruthError(
            f"training folder {folder} contains the dataset folder {root}: every image would be a training "
            "image; give a folder of training images only"
        )
    return folder


def shared_images(learning, searched) -> list[tuple[Path, Path]]:
    """Pairs (learning image, searched image) that are the same file or have identical bytes.

    Learning a pipeline's parameters on the very images it then searches inflates or collapses
    mAP (see docs/usage.md, "learning protocols"); the command line refuses such runs. Paths are
    compared resolved (links and ``..`` followed); files of equal size are compared by SHA-256 of
    their bytes, so copies under other names are found too.

    Parameters
    ----------
    learning, searched : sequence of path-like
        Image files; entries that are not paths (e.g. (path, box) tuples) use their path.

    Returns
    -------
    pairs : list of (Path, Path)
    """
    import hashlib

    def path_of(item):
        return Path(item[0] if isinstance(item, tuple) else item)

    digests: dict = {}

    def digest(path):
        if path not in digests:
            digests[path] = hashlib.sha256(path.read_bytes()).digest()
        return digests[path]

    searched_by_size, searched_by_path = {}, {}
    for item in searched:
        path = path_of(item)
        searched_by_path.setdefault(path.resolve(), path)
        searched_by_size.setdefault(path.stat().st_size, []).append(path)
    pairs = []
    for item in learning:
        path = path_of(item)
        same = searched_by_path.get(path.resolve())
        if same is None:
            candidates = searched_by_size.get(path.stat().st_size, [])
            same = next((c for c in candidates if digest(c) == digest(path)), None)
        if same is not None:
            pairs.append((path, same))
    return pairs


def index_names(names, index, *, missing="drop", context=""):
    """Database indices of `names` (sorted, unique) through the name -> index map `index`.

    ``missing="drop"`` skips names absent from `index` (lists of a larger set, e.g. a subset);
    ``missing="raise"`` raises a :class:`GroundTruthError` that includes `context`.
    """
    found = []
    for name in names:
        i = index.get(name)
        if i is None:
            if missing == "raise":
                raise GroundTruthError(f"{context}: image {name!r} is not in the database")
            continue
        found.append(i)
    return np.unique(np.asarray(found, dtype=np.int64))


def group_members(labels) -> dict:
    """``{label: [positions of that label, in order]}`` over `labels`; None (a distractor) is left out."""
    members = {}
    for i, label in enumerate(labels):
        if label is not None:
            members.setdefault(label, []).append(i)
    return members


def make_ground_truth(positives, junk=()):
    """One ground-truth entry, ``{"positives": int64 array, "junk": int64 array}``, sorted and unique."""
    return {
        "positives": np.unique(np.asarray(positives, dtype=np.int64)),
        "junk": np.unique(np.asarray(junk, dtype=np.int64)),
    }


@dataclass
class RetrievalDataset:
    """An image retrieval benchmark: database images, queries and their ground truth.

    Every loader in :mod:`selconv.datasets` returns one. Images are given as file paths; nothing is
    decoded here (feature extraction is the only stage that touches pixels).

    Parameters
    ----------
    name : str
        Short name, e.g. ``"oxford5k"``, ``"roxford5k-medium"``.
    root : Path
        Folder the dataset was loaded from.
    database : list of Path
        Database images; ground-truth indices refer to positions in this list.
    queries : list of Path
        Query images (a query may also be a database image, as in Oxford5k and Holidays).
    ground_truth : list of dict
        One dict per query, ``{"positives": int ndarray, "junk": int ndarray}`` of database indices:
        the format :func:`selconv.metrics.evaluate` uses. Junk images are removed from the ranking
        before AP is computed; they count neither as positives nor as negatives.
    query_boxes : list of (tuple of 4 float or None)
        Per query, the region of interest ``(x1, y1, x2, y2)`` in pixels of the image FILE as stored
        (before any rotation), or None for the full image. The extractor crops to it.
    database_labels, query_labels : list of (str or None) or None
        Optional class / landmark / group name of each image (None: unlabelled distractor).
    training : list of Path
        Images the protocol sets aside for learning parameters (PCA, codebooks, rotation, hashing);
        empty when the protocol defines none.
    database_rotations, query_rotations : list of int or None
        Per image, clockwise rotation in degrees (0, 90, 180 or 270) that makes it upright, from a
        dataset's rotation list (Holidays). None means no image needs turning. Apply them when
        decoding, or write turned copies with :func:`apply_rotations`.
    info : dict
        Free-form facts about how the dataset was built (protocol, dropped entries, counts).
    scores : tuple of str
        The scores the benchmark reports: ``"mAP"`` always; UKBench adds ``"N-S"``
        (:func:`selconv.metrics.ns_score`).
    """

    name: str
    root: Path
    database: list
    queries: list
    ground_truth: list
    query_boxes: list = None
    database_labels: list | None = None
    query_labels: list | None = None
    training: list = field(default_factory=list)
    database_rotations: list | None = None
    query_rotations: list | None = None
    info: dict = field(default_factory=dict)
    scores: tuple = ("mAP",)

    def __post_init__(self):
        self.root = Path(self.root)
        self.database = [Path(p) for p in self.database]
        self.queries = [Path(p) for p in self.queries]
        self.training = [Path(p) for p in self.training]
        if self.query_boxes is None:
            self.query_boxes = [None] * len(self.queries)
        self.query_boxes = [None if b is None else tuple(float(v) for v in b) for b in self.query_boxes]
        self._check()

    def _check(self):
        n_db, n_q = len(self.database), len(self.queries)
        per_query = {
            "ground_truth": self.ground_truth,
            "query_boxes": self.query_boxes,
            "query_labels": self.query_labels,
            "query_rotations": self.query_rotations,
        }
        per_image = {"database_labels": self.database_labels, "database_rotations": self.database_rotations}
        for attr, values in per_query.items():
            if values is not None and len(values) != n_q:
                raise ValueError(f"{self.name}: {attr} has {len(values)} entries for {n_q} queries")
        for attr, values in per_image.items():
            if values is not None and len(values) != n_db:
                raise ValueError(f"{self.name}: {attr} has {len(values)} entries for {n_db} database images")
        for attr in ("database_rotations", "query_rotations"):
            bad = {r for r in getattr(self, attr) or () if r not in VALID_ROTATIONS}
            if bad:
                raise ValueError(
                    f"{self.name}: {attr} must be in {VALID_ROTATIONS} (clockwise degrees); got {sorted(bad)}"
                )
        for q, box in enumerate(self.query_boxes):
            if box is not None and (len(box) != 4 or not (box[2] > box[0] and box[3] > box[1])):
                raise ValueError(
                    f"{self.name}: query {q} ({self.queries[q]}) has an invalid box {box}; "
                    "expected (x1, y1, x2, y2) with x2 > x1 and y2 > y1"
                )
        for q, gt in enumerate(self.ground_truth):
            pos = np.asarray(gt["positives"])
            junk = np.asarray(gt["junk"])
            for kind, idx in (("positives", pos), ("junk", junk)):
                if idx.size and (idx.min() < 0 or idx.max() >= n_db):
                    raise ValueError(f"{self.name}: query {q} has {kind} outside the database (0..{n_db - 1})")
            if np.intersect1d(pos, junk).size:
                raise ValueError(f"{self.name}: query {q} ({self.queries[q]}) has images both positive and junk")

    @property
    def n_queries_without_positives(self) -> int:
        """How many queries have no positive at all (their AP is undefined; metrics report them)."""
        return sum(len(gt["positives"]) == 0 for gt in self.ground_truth)

    @property
    def needs_rotation(self) -> bool:
        """Whether some image must be turned upright first (see :func:`apply_rotations`)."""
        return any(self.database_rotations or ()) or any(self.query_rotations or ())

    def _require_upright(self):
        if self.needs_rotation:
            raise ValueError(
                f"{self.name}: some images must be rotated to be upright; call "
                "selconv.datasets.apply_rotations(dataset, folder) first (or turn them when decoding)"
            )

    def database_inputs(self) -> list:
        """Database images as :class:`~selconv.extraction.ConvFeatureExtractor` takes them (paths)."""
        self._require_upright()
        return list(self.database)

    def query_inputs(self) -> list:
        """Queries as the extractor takes them: a path, or ``(path, box)`` for a query with a box."""
        self._require_upright()
        return [path if box is None else (path, box) for path, box in zip(self.queries, self.query_boxes)]

    def summary(self) -> str:
        """One line: name, counts, training size."""
        return (
            f"{self.name}: {len(self.database)} database images, {len(self.queries)} queries "
            f"({self.n_queries_without_positives} without positives), {len(self.training)} training images"
        )

    def with_distractors(self, folder, *, name=None) -> RetrievalDataset:
        """This dataset with every image under `folder` appended to the database as a distractor.

        Ground-truth indices stay valid because distractors go after the existing database images.
        This is how Oxford105k / Paris106k (Flickr 100k), Holidays + Flickr1M and R1M are built.
        """
        present = {d.resolve() for d in self.database}
        extra = [p for p in list_images(folder) if p.resolve() not in present]
        if not extra:
            raise FileNotFoundError(f"no distractor images found under {folder}")
        return replace(
            self,
            name=name or f"{self.name}+{len(extra)}",
            database=self.database + extra,
            database_labels=None if self.database_labels is None else self.database_labels + [None] * len(extra),
            database_rotations=None if self.database_rotations is None else self.database_rotations + [0] * len(extra),
            info={**self.info, "n_distractors": len(extra), "distractor_folder": str(folder)},
        )


def rotate_box(box, rotation, width, height):
    """`box` (x1, y1, x2, y2) in an image of `width` x `height` after turning it `rotation` degrees clockwise."""
    x1, y1, x2, y2 = box
    if rotation == 90:
        return (height - y2, x1, height - y1, x2)
    if rotation == 180:
        return (width - x2, height - y2, width - x1, height - y1)
    if rotation == 270:
        return (y1, width - x2, y2, width - x1)
    return tuple(box)


def apply_rotations(dataset: RetrievalDataset, out_dir, *, quality=95) -> RetrievalDataset:
    """Write upright copies of the images that need turning; return the dataset pointing at them.

    For extractors that only take file paths. Images with rotation 0 keep their original path; turned
    ones are saved (JPEG, `quality`) under `out_dir` with the same relative path, and query boxes are
    turned with them. EXIF orientation tags are ignored: rotation lists refer to the stored pixels.

    Returns
    -------
    RetrievalDataset
        A copy with ``database_rotations`` / ``query_rotations`` set to None.
    """
    from PIL import Image

    out_dir = Path(out_dir)
    rotated = {}

    def upright(path, rotation):
        if not rotation:
            return path, None
        if path not in rotated:
            try:
                rel = path.resolve().relative_to(dataset.root.resolve())
            except ValueError:  # an image outside root (e.g. a distractor folder): keep only its name
                rel = Path(path.name)
            target = out_dir / rel.with_suffix(".jpg")
            target.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(path) as img:
                size = img.size
                img.convert("RGB").rotate(-rotation, expand=True).save(target, quality=quality)
            rotated[path] = (target, size)
        return rotated[path]

    db_rotations = dataset.database_rotations or [0] * len(dataset.database)
    query_rotations = dataset.query_rotations or [0] * len(dataset.queries)
    database = [upright(p, r)[0] for p, r in zip(dataset.database, db_rotations)]
    queries, boxes = [], []
    for path, rotation, box in zip(dataset.queries, query_rotations, dataset.query_boxes):
        target, size = upright(path, rotation)
        queries.append(target)
        boxes.append(box if box is None or size is None else rotate_box(box, rotation, *size))
    return replace(
        dataset,
        database=database,
        queries=queries,
        query_boxes=boxes,
        database_rotations=None,
        query_rotations=None,
        info={**dataset.info, "rotated_copies": str(out_dir)},
    )
