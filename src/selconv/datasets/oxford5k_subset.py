"""The Oxford5k subset benchmark: 1,008 Oxford Buildings images with two protocols, and its generic training photos.

A smaller Oxford5k for machines that cannot hold the full benchmark: the images listed in the
subset's ``images.txt``, with the official ground truth intersected with them. The project's tests
and benchmarks use the copy in ``shared/data`` (see its README); docs/datasets.md describes the layout.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from selconv.datasets.base import GroundTruthError, RetrievalDataset, list_images, make_ground_truth
from selconv.datasets.oxford_paris import database_index, read_oxford_ground_truth

PROTOCOLS = ("official-10", "loo-landmark")

#: Folders (under the shared data root) of the generic photographs used as the training set.
GENERIC_TRAINING_SOURCES = ("bsds500", "imagenet-sample-500")


def load_generic_training_images(root, *, sources=GENERIC_TRAINING_SOURCES) -> list[Path]:
    """The 1,000 generic photographs (500 BSDS500 + 500 ImageNet) used to learn parameters for Oxford.

    Parameters
    ----------
    root : path-like
        The shared data folder holding ``bsds500/jpg`` and ``imagenet-sample-500/jpg``.
    sources : tuple of str
        Which of those folders to use (report which training set a number used).
    """
    root = Path(root)
    images = []
    for source in sources:
        images += list_images(root / source / "jpg")
    return images


def load_oxford5k_subset(root, protocol="official-10", *, training_root="auto") -> RetrievalDataset:
    """The Oxford5k subset under `root` (e.g. ``shared/data/oxford5k-subset``) with one of its two protocols.

    Parameters
    ----------
    root : path-like
        The subset's folder (``images.txt``, ``jpg/``, ``groundtruth/``).
    protocol : {"official-10", "loo-landmark"}
        ``"official-10"``: the 10 official queries whose image is in the subset, cropped to their
        boxes; positives = good + ok present in the subset, junk = junk present.
        ``"loo-landmark"``: each of the 113 images labelled good/ok for a landmark is a full-image
        query; positives = the other good/ok images of its landmark (union over the landmark's 5
        queries), junk = the landmark's junk union (minus positives) plus the query itself. One image
        (all_souls_000183) is good for two landmarks: its positives and junk join both.
    training_root : path-like, "auto" or None
        Where :func:`load_generic_training_images` finds the training photos; ``"auto"`` uses the
        parent of `root` when it has them; None leaves ``training`` empty.

    Returns
    -------
    RetrievalDataset
        Database = the 1,008 images in ``images.txt`` order.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}; got {protocol!r}")
    root = Path(root)
    database = _listed_images(root)
    index = database_index(database, where=str(root / "images.txt"))
    parsed = read_oxford_ground_truth(root / "groundtruth")
    queries = (_official_queries if protocol == "official-10" else _landmark_queries)(parsed, index)
    if not queries:
        raise GroundTruthError(f"{root / 'groundtruth'}: no query of protocol {protocol!r} is among the images")
    if training_root == "auto":
        training_root = (
            root.parent if all((root.parent / s / "jpg").is_dir() for s in GENERIC_TRAINING_SOURCES) else None
        )
    training = load_generic_training_images(training_root) if training_root is not None else []
    return RetrievalDataset(
        name=f"oxford5k-subset-{protocol}",
        root=root,
        database=database,
        queries=[database[i] for i, _, _, _ in queries],
        ground_truth=[truth for _, _, _, truth in queries],
        query_boxes=[box for _, box, _, _ in queries],
        query_labels=[label for _, _, label, _ in queries],
        training=training,
        info={"protocol": protocol, "training": "bsds500+imagenet-sample-500" if training else None},
    )


def _listed_images(root: Path) -> list[Path]:
    names = (root / "images.txt").read_text().split()
    database = [root / "jpg" / f"{n}.jpg" for n in names]
    missing = [str(p) for p in database if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{root / 'images.txt'} lists {len(missing)} images that are not there, e.g. {missing[:3]}"
        )
    return database


def _present(index, image_names) -> list[int]:
    return [index[n] for n in image_names if n in index]


def _official_queries(parsed, index) -> list[tuple]:
    """(database position, box, landmark, ground truth) of each official query whose image is present."""
    return [
        (index[q.image], q.box, q.landmark, make_ground_truth(_present(index, q.good + q.ok), _present(index, q.junk)))
        for q in parsed
        if q.image in index
    ]


def _landmark_queries(parsed, index) -> list[tuple]:
    """(database position, None, landmarks, ground truth) of each image good/ok for a landmark (leave-one-out)."""
    positives, junk = defaultdict(set), defaultdict(set)
    for q in parsed:
        positives[q.landmark].update(_present(index, q.good + q.ok))
        junk[q.landmark].update(_present(index, q.junk))
    landmarks_of = defaultdict(list)
    for landmark in sorted(positives):
        for i in positives[landmark]:
            landmarks_of[i].append(landmark)
    queries = []
    for i in sorted(landmarks_of):
        pos = set().union(*(positives[lm] for lm in landmarks_of[i]))
        bad = set().union(*(junk[lm] for lm in landmarks_of[i]))
        truth = make_ground_truth(sorted(pos - {i}), sorted((bad - pos) | {i}))
        queries.append((i, None, "|".join(landmarks_of[i]), truth))
    return queries
