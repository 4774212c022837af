"""UKBench (Nister & Stewenius, CVPR 2006): 10,200 images, 2,550 objects photographed 4 times each."""

from __future__ import annotations

import re
from pathlib import Path

from selconv.datasets.base import GroundTruthError, RetrievalDataset, group_members, list_images, make_ground_truth

_NAME = re.compile(r"ukbench(\d{5})")

#: UKBench reports N-S (mean number of the group's 4 images in the top 4, query included) beside mAP.
SCORES = ("mAP", "N-S")


def load_ukbench(root, *, images=None) -> RetrievalDataset:
    """UKBench: every image is a query; its positives are the 4 images of its group, ITSELF INCLUDED.

    Group = image number // 4 (``ukbench00000`` ... ``ukbench00003`` are object 0). The query counts
    among its own positives because the benchmark's N-S score is the mean number of the group's
    4 images in the top 4 of the ranking (maximum 4); there is no junk.

    Parameters
    ----------
    root : path-like
        Dataset folder; images (``ukbench*.jpg``) in ``root/full`` or anywhere under `root`.
    images : path-like or None
        The image folder, if elsewhere.
    """
    root = Path(root)
    image_folder = Path(images) if images is not None else (root / "full" if (root / "full").is_dir() else root)
    database = list_images(image_folder)
    groups = []
    for path in database:
        match = _NAME.fullmatch(path.stem)
        if match is None:
            raise GroundTruthError(f"{path}: UKBench image names are ukbenchNNNNN")
        groups.append(int(match.group(1)) // 4)
    members = group_members(groups)
    incomplete = [g for g, m in members.items() if len(m) != 4]
    if incomplete:
        raise GroundTruthError(
            f"{image_folder}: {len(incomplete)} UKBench groups do not have 4 images, e.g. object {incomplete[0]}"
        )
    return RetrievalDataset(
        name="ukbench",
        root=root,
        database=database,
        queries=list(database),
        ground_truth=[make_ground_truth(members[g]) for g in groups],
        database_labels=[str(g) for g in groups],
        query_labels=[str(g) for g in groups],
        scores=SCORES,
    )
