"""The small real-image sample shipped with selconv, so that ``selconv demo`` runs with no data at all."""

from __future__ import annotations

from pathlib import Path

from selconv.datasets.base import RetrievalDataset
from selconv.datasets.custom import load_image_folder

#: Folder of the bundled sample (images/, training/, groundtruth.csv, PROVENANCE.md).
SAMPLE_ROOT = Path(__file__).resolve().parent / "sample"


def load_sample() -> RetrievalDataset:
    """45 Oxford Buildings photos (5 landmarks x 5 + 20 distractors) and 40 generic training photos.

    Every labelled image is a query (4 of them cropped to the official Oxford query box); its
    positives are the 4 other images of its landmark, and it is junk for itself. Images are at most
    512 px on their longest side. Sources and terms: ``sample/PROVENANCE.md``. The ground truth is
    in the user format of :func:`~selconv.datasets.load_image_folder` (``sample/groundtruth.csv``).
    """
    dataset = load_image_folder(
        SAMPLE_ROOT / "images", SAMPLE_ROOT / "groundtruth.csv", training=SAMPLE_ROOT / "training", name="sample"
    )
    dataset.root = SAMPLE_ROOT
    return dataset
