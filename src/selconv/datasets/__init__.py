"""Loaders for image retrieval benchmarks, a user's own image folder, and the bundled sample.

Every loader returns a :class:`RetrievalDataset`: database and query image paths, query boxes and the
ground truth ``[{"positives": int array, "junk": int array}, ...]`` that :func:`selconv.metrics.evaluate`
takes. See docs/datasets.md for layouts, protocols and the ground-truth file format; :func:`load_dataset`
loads any of them by name (the registry :data:`DATASETS` says what each takes).
"""

from selconv.datasets.base import GroundTruthError, RetrievalDataset, apply_rotations, list_images, shared_images
from selconv.datasets.bundled import SAMPLE_ROOT, load_sample
from selconv.datasets.custom import load_image_folder
from selconv.datasets.download import (
    ChecksumError,
    CorruptArchiveError,
    UnsafeArchiveError,
    download,
    download_dataset,
    extract,
)
from selconv.datasets.holidays import load_holidays, read_rotation_list
from selconv.datasets.labelled import load_labelled_folder, load_query_database_folders
from selconv.datasets.oxford5k_subset import load_generic_training_images, load_oxford5k_subset
from selconv.datasets.oxford_paris import PARIS_CORRUPT_IMAGES, load_oxford5k, load_oxford_paris, load_paris6k
from selconv.datasets.registry import DATASETS, DatasetSpec, load_dataset
from selconv.datasets.revisited import load_revisited
from selconv.datasets.ukbench import load_ukbench

__all__ = [
    "ChecksumError",
    "CorruptArchiveError",
    "DATASETS",
    "DatasetSpec",
    "GroundTruthError",
    "PARIS_CORRUPT_IMAGES",
    "RetrievalDataset",
    "SAMPLE_ROOT",
    "UnsafeArchiveError",
    "apply_rotations",
    "download",
    "download_dataset",
    "extract",
    "list_images",
    "load_dataset",
    "load_generic_training_images",
    "load_holidays",
    "load_image_folder",
    "load_labelled_folder",
    "load_oxford5k",
    "load_oxford5k_subset",
    "load_oxford_paris",
    "load_paris6k",
    "load_query_database_folders",
    "load_revisited",
    "load_sample",
    "load_ukbench",
    "read_rotation_list",
    "shared_images",
]
