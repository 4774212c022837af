"""INRIA Holidays (Jegou et al., ECCV 2008), its manual rotation list, and Holidays + Flickr1M."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from selconv.datasets.base import (
    VALID_ROTATIONS,
    GroundTruthError,
    RetrievalDataset,
    group_members,
    list_images,
    make_ground_truth,
)


def read_rotation_list(path) -> dict[str, int]:
    """Read a rotation list: one ``<image> <degrees>`` per line, degrees CLOCKWISE to make it upright.

    The image is named with or without its extension (``100301.jpg 90`` or ``100301 90``); blank
    lines and ``#`` comments are skipped; -90 means 270. Returns ``{image name without extension: degrees}``.
    """
    path = Path(path)
    rotations = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        try:
            if len(fields) != 2:
                raise ValueError
            degrees = int(fields[1]) % 360
        except ValueError:
            raise GroundTruthError(f"{path}:{number}: expected '<image> <degrees clockwise>', got {line!r}") from None
        if degrees not in VALID_ROTATIONS:
            raise GroundTruthError(f"{path}:{number}: rotation must be a multiple of 90 degrees, got {fields[1]}")
        name = Path(fields[0]).stem
        if name in rotations:
            raise GroundTruthError(f"{path}:{number}: {fields[0]} is listed twice")
        rotations[name] = degrees
    return rotations


def _rotations_of(database, rotations, image_folder) -> list[int]:
    """Clockwise degrees per database image from a rotation list (file or mapping); unlisted images get 0."""
    table = dict(rotations) if isinstance(rotations, Mapping) else read_rotation_list(rotations)
    unknown = sorted(set(table) - {p.stem for p in database})
    if unknown:
        raise GroundTruthError(
            f"rotation list names {len(unknown)} images that are not in {image_folder}: {unknown[:5]}"
        )
    return [int(table.get(p.stem, 0)) % 360 for p in database]


def load_holidays(root, *, rotations=None, images=None, distractors=None) -> RetrievalDataset:
    """INRIA Holidays: 1,491 images in 500 groups; the first image of each group is its query.

    Parameters
    ----------
    root : path-like
        Dataset folder; images (``jpg1.tar.gz`` + ``jpg2.tar.gz`` extracted) in ``root/jpg`` or anywhere under `root`.
    rotations : path-like, mapping or None
        The manual rotation list that turns the sideways photos upright: a file for
        :func:`read_rotation_list` or a mapping ``{image name: clockwise degrees}``. Published results
        (the paper's included) use the upright ("rotated") Holidays. The degrees end up in
        ``database_rotations`` / ``query_rotations``; images not listed get 0.
    images : path-like or None
        The image folder, if not ``root/jpg`` (or `root` when there is no ``jpg``).
    distractors : path-like or None
        Folder of the Flickr1M distractors, appended to the database (Holidays + Flickr1M).

    Returns
    -------
    RetrievalDataset
        Database = all images sorted by name, queries included (queries = images whose 6-digit id
        ends in ``00``); positives = the other images of the query's group (id // 100);
        junk = the query itself.
    """
    root = Path(root)
    image_folder = Path(images) if images is not None else (root / "jpg" if (root / "jpg").is_dir() else root)
    database = list_images(image_folder, exclude=distractors)
    groups = []
    for path in database:
        if not (path.stem.isdigit() and len(path.stem) == 6):
            raise GroundTruthError(f"{path}: Holidays image names are 6-digit ids (e.g. 100000.jpg)")
        groups.append(int(path.stem) // 100)
    members = group_members(groups)
    query_ids = [i for i, path in enumerate(database) if path.stem.endswith("00")]
    ground_truth = [make_ground_truth([j for j in members[groups[i]] if j != i], [i]) for i in query_ids]

    database_rotations = None if rotations is None else _rotations_of(database, rotations, image_folder)
    dataset = RetrievalDataset(
        name="holidays",
        root=root,
        database=database,
        queries=[database[i] for i in query_ids],
        ground_truth=ground_truth,
        database_labels=[str(g) for g in groups],
        query_labels=[str(groups[i]) for i in query_ids],
        database_rotations=database_rotations,
        query_rotations=None if database_rotations is None else [database_rotations[i] for i in query_ids],
        info={"n_rotated": sum(r != 0 for r in database_rotations or [])},
    )
    if distractors is not None:
        dataset = dataset.with_distractors(distractors, name="holidays+flickr1m")
    return dataset
