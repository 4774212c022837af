"""Oxford5k and Paris6k (Philbin et al.) from their official files, and the 105k/106k versions with Flickr
distractors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from selconv.datasets.base import GroundTruthError, RetrievalDataset, index_names, list_images, make_ground_truth

#: The 20 Paris6k files that are not images (HTML error pages); standard practice drops them
#: from the database and the ground truth (the list published next to the dataset, corrupt.txt).
PARIS_CORRUPT_IMAGES = (
    "paris_louvre_000136",
    "paris_louvre_000146",
    "paris_moulinrouge_000422",
    "paris_museedorsay_001059",
    "paris_notredame_000188",
    "paris_pantheon_000284",
    "paris_pantheon_000960",
    "paris_pantheon_000974",
    "paris_pompidou_000195",
    "paris_pompidou_000196",
    "paris_pompidou_000201",
    "paris_pompidou_000467",
    "paris_pompidou_000640",
    "paris_sacrecoeur_000299",
    "paris_sacrecoeur_000330",
    "paris_sacrecoeur_000353",
    "paris_triomphe_000662",
    "paris_triomphe_000833",
    "paris_triomphe_000863",
    "paris_triomphe_000867",
)

# Oxford query files name the query image "oxc1_<image>"; Paris query files give the bare image name.
_QUERY_PREFIX = "oxc1_"


@dataclass(frozen=True)
class OxfordQuery:
    """One query of the Oxford/Paris ground truth, as the official files give it."""

    name: str  # e.g. "all_souls_1"
    image: str  # image name without extension, prefix removed
    box: tuple  # (x1, y1, x2, y2) in original-image pixels
    good: tuple
    ok: tuple
    junk: tuple

    @property
    def landmark(self) -> str:
        """The landmark: the query name without its trailing number (``all_souls_1`` -> ``all_souls``)."""
        return self.name.rsplit("_", 1)[0]


def _read_names(path):
    if not path.is_file():
        raise FileNotFoundError(
            f"ground-truth file {path} is missing (every <query>_query.txt needs _good, _ok and _junk files)"
        )
    return tuple(line.split()[0] for line in path.read_text().splitlines() if line.strip())


def read_oxford_ground_truth(folder) -> list[OxfordQuery]:
    """Parse the official ``<query>_query.txt | _good.txt | _ok.txt | _junk.txt`` files, sorted by query name."""
    folder = Path(folder)
    query_files = sorted(folder.glob("*_query.txt"))
    if not query_files:
        raise FileNotFoundError(f"no *_query.txt ground-truth files in {folder}")
    queries = []
    for path in query_files:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        fields = lines[0].split() if len(lines) == 1 else []
        if len(fields) != 5:
            raise GroundTruthError(f"{path}:1: expected one line '<image> x1 y1 x2 y2', got {lines!r}")
        image = fields[0].removeprefix(_QUERY_PREFIX)
        try:
            box = tuple(float(v) for v in fields[1:])
        except ValueError as exc:
            raise GroundTruthError(f"{path}:1: box coordinates must be numbers ({exc})") from None
        name = path.name[: -len("_query.txt")]
        lists = (_read_names(folder / f"{name}_{kind}.txt") for kind in ("good", "ok", "junk"))
        queries.append(OxfordQuery(name, image, box, *lists))
    return queries


def _find_ground_truth_folder(root):
    folders = sorted({p.parent for p in Path(root).rglob("*_query.txt")})
    if len(folders) != 1:
        raise FileNotFoundError(
            f"expected one folder of *_query.txt ground-truth files under {root}, found {len(folders)}: "
            f"{[str(f) for f in folders]}; pass groundtruth= explicitly"
        )
    return folders[0]


def database_index(images, *, where):
    """Map image name (file name without extension) -> database position; duplicate names are an error."""
    index = {}
    for i, path in enumerate(images):
        if path.stem in index:
            raise GroundTruthError(f"{where}: two images named {path.stem!r}: {images[index[path.stem]]} and {path}")
        index[path.stem] = i
    return index


def _queries(parsed, index, *, exclude, missing, gt_folder, where):
    """``([(query, ground truth), ...], dropped query names)``: the parsed queries mapped to database positions."""
    kept, dropped = [], []
    for q in parsed:
        if q.image in exclude:
            continue
        if q.image not in index:
            if missing == "raise":
                raise GroundTruthError(
                    f"{gt_folder / (q.name + '_query.txt')}: query image {q.image!r} is not under {where}"
                )
            dropped.append(q.name)
            continue
        context = str(gt_folder / q.name)
        listed = {kind: [n for n in getattr(q, kind) if n not in exclude] for kind in ("good", "ok", "junk")}
        truth = make_ground_truth(
            index_names(listed["good"] + listed["ok"], index, missing=missing, context=context),
            index_names(listed["junk"], index, missing=missing, context=context),
        )
        kept.append((q, truth))
    return kept, dropped


def load_oxford_paris(root, *, name, images=None, groundtruth=None, exclude=(), distractors=None, missing="raise"):
    """Load Oxford5k, Paris6k or any dataset in their ground-truth format.

    Parameters
    ----------
    root : path-like
        Dataset folder.
    name : str
        Dataset name recorded in the result.
    images : path-like or None
        Folder of the images, searched recursively (Paris keeps one sub-folder per landmark).
        Default: `root`, minus the `distractors` folder.
    groundtruth : path-like or None
        Folder of the ``*_query.txt`` ... files. Default: the one folder under `root` that has them.
    exclude : iterable of str
        Image names (without extension) to leave out of the database and the ground truth.
    distractors : path-like or None
        Folder of distractor images appended to the database (Flickr 100k -> Oxford105k / Paris106k).
    missing : {"raise", "drop"}
        What to do with a ground-truth image that is not among the images: a sign of an incomplete
        download ("raise"), or intended when the images are a subset ("drop"; queries whose image
        is missing are then dropped too).

    Returns
    -------
    RetrievalDataset
        Queries are the official query images with their boxes (extractors crop to them); database =
        every image, sorted by path; positives = good + ok; junk = junk.
    """
    root = Path(root)
    exclude = set(exclude)
    image_folder = Path(images) if images is not None else root
    db = [p for p in list_images(image_folder, exclude=distractors) if p.stem not in exclude]
    index = database_index(db, where=str(image_folder))
    gt_folder = Path(groundtruth) if groundtruth is not None else _find_ground_truth_folder(root)
    parsed = read_oxford_ground_truth(gt_folder)
    kept, dropped = _queries(parsed, index, exclude=exclude, missing=missing, gt_folder=gt_folder, where=image_folder)
    dataset = RetrievalDataset(
        name=name,
        root=root,
        database=db,
        queries=[db[index[q.image]] for q, _ in kept],
        ground_truth=[truth for _, truth in kept],
        query_boxes=[q.box for q, _ in kept],
        query_labels=[q.landmark for q, _ in kept],
        info={"groundtruth": str(gt_folder), "dropped_queries": dropped, "excluded": sorted(exclude)},
    )
    if distractors is not None:
        dataset = dataset.with_distractors(distractors)
    return dataset


def load_oxford5k(root, *, distractors=None, **kwargs) -> RetrievalDataset:
    """Oxford5k: 5,063 images, 55 queries (11 landmarks x 5) with boxes; Oxford105k with `distractors`.

    Layout: the images of ``oxbuild_images.tgz`` and the files of ``gt_files_170407.tgz`` anywhere
    under `root` (e.g. ``root/jpg`` and ``root/groundtruth``). See :func:`load_oxford_paris`.
    """
    name = "oxford105k" if distractors is not None else "oxford5k"
    dataset = load_oxford_paris(root, name="oxford5k", distractors=distractors, **kwargs)
    dataset.name = name
    return dataset


def load_paris6k(root, *, distractors=None, exclude=PARIS_CORRUPT_IMAGES, **kwargs) -> RetrievalDataset:
    """Paris6k: 6,412 files (6,392 readable), 55 queries with boxes; Paris106k with `distractors`.

    Layout: ``paris_1.tgz`` + ``paris_2.tgz`` (``paris/<landmark>/*.jpg``) and ``paris_120310.tgz``
    under `root`. The 20 corrupt files (:data:`PARIS_CORRUPT_IMAGES`) are excluded by default.
    """
    name = "paris106k" if distractors is not None else "paris6k"
    dataset = load_oxford_paris(root, name="paris6k", distractors=distractors, exclude=exclude, **kwargs)
    dataset.name = name
    return dataset
