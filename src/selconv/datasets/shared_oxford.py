"""The project's development benchmark: a 1,008-image Oxford5k subset with two protocols, and its training photos.

The data live in ``shared/data`` (see its README); they are for tests and benchmarks only.
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


def load_shared_oxford_subset(root, protocol="official-10", *, training_root="auto") -> RetrievalDataset:
    """The Oxford5k subset under ``shared/data/oxford5k-subset`` with one of its two protocols.

    Parameters
    ----------
    root : path-like
        The ``oxford5k-subset`` folder (``images.txt``, ``jpg/``, ``groundtruth/``).
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
    names = (root / "images.txt").read_text().split()
    database = [root / "jpg" / f"{n}.jpg" for n in names]
    missing = [str(p) for p in database if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{root / 'images.txt'} lists {len(missing)} images that are not there, e.g. {missing[:3]}"
        )
    index = database_index(database, where=str(root / "images.txt"))
    parsed = read_oxford_ground_truth(root / "groundtruth")

    def present(image_names):
        return [index[n] for n in image_names if n in index]

    queries, boxes, labels, ground_truth = [], [], [], []
    if protocol == "official-10":
        for q in parsed:
            if q.image in index:
                queries.append(database[index[q.image]])
                boxes.append(q.box)
                labels.append(q.landmark)
                ground_truth.append(make_ground_truth(present(q.good + q.ok), present(q.junk)))
    else:
        positives, junk = defaultdict(set), defaultdict(set)
        for q in parsed:
            positives[q.landmark].update(present(q.good + q.ok))
            junk[q.landmark].update(present(q.junk))
        landmarks_of = defaultdict(list)
        for landmark in sorted(positives):
            for i in positives[landmark]:
                landmarks_of[i].append(landmark)
        for i in sorted(landmarks_of):
            pos = set().union(*(positives[lm] for lm in landmarks_of[i]))
            bad = set().union(*(junk[lm] for lm in landmarks_of[i]))
            queries.append(database[i])
            boxes.append(None)
            labels.append("|".join(landmarks_of[i]))
            ground_truth.append(make_ground_truth(sorted(pos - {i}), sorted((bad - pos) | {i})))
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
        queries=queries,
        ground_truth=ground_truth,
        query_boxes=boxes,
        query_labels=labels,
        training=training,
        info={"protocol": protocol, "training": "bsds500+imagenet-sample-500" if training else None},
    )
