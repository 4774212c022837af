"""The datasets selconv can load by name, with what each one takes: folders, protocols, rotation list, scores.

:func:`load_dataset` is the one place that checks a dataset's options (the ``selconv evaluate``
command calls it with its arguments): an option a dataset does not use is an error, not ignored,
and a protocol is checked against the dataset's own list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from selconv.datasets import oxford5k_subset, revisited, ukbench
from selconv.datasets.base import RetrievalDataset
from selconv.datasets.bundled import load_sample
from selconv.datasets.custom import load_image_folder
from selconv.datasets.holidays import load_holidays
from selconv.datasets.labelled import load_labelled_folder, load_query_database_folders
from selconv.datasets.oxford_paris import load_oxford5k, load_paris6k

#: Options of :func:`load_dataset` that name a folder or file, and whether each is a folder (a folder
#: dataset's ground-truth file may be named relative to its folder: its loader finds it).
_PATH_OPTIONS = {"data_dir": True, "queries": True, "database": True, "rotations": False}


@dataclass(frozen=True)
class DatasetSpec:
    """What :func:`load_dataset` knows about one dataset.

    Parameters
    ----------
    name : str
        The name ``selconv evaluate --dataset`` takes.
    summary : str
        One line: what it is.
    load : callable
        ``load(**options)`` -> RetrievalDataset, with the options below (``protocol`` included).
    options : tuple of str
        The options it takes among ``data_dir``, ``queries``, ``database``, ``ground_truth``,
        ``rotations`` and ``protocol``.
    required : tuple of str
        The options it cannot do without.
    protocols : tuple of str
        Its evaluation protocols (empty: one protocol).
    default_protocol : str or None
        The protocol used when none is given.
    scores : tuple of str
        The scores its benchmark reports (``RetrievalDataset.scores``).
    takes_training_folder : bool
        Whether a training folder inside its folder is kept out of its database.
    """

    name: str
    summary: str
    load: Callable[..., RetrievalDataset]
    options: tuple = ("data_dir",)
    required: tuple = ("data_dir",)
    protocols: tuple = ()
    default_protocol: str | None = None
    scores: tuple = ("mAP",)
    takes_training_folder: bool = False


def _revisited(name):
    return DatasetSpec(
        name,
        f"Revisited {'Oxford' if name == 'roxford5k' else 'Paris'} (gnd_{name}.pkl + jpg/)",
        lambda data_dir, protocol: revisited.load_revisited(data_dir, name, protocol),
        options=("data_dir", "protocol"),
        protocols=revisited.PROTOCOLS,
        default_protocol="medium",
    )


_SPECS = (
    DatasetSpec("sample", "the bundled sample (no folder needed)", lambda: load_sample(), options=(), required=()),
    DatasetSpec(
        "folder",
        "your images with a CSV/JSON ground-truth file (docs/datasets.md)",
        lambda data_dir, ground_truth=None, training=None: load_image_folder(data_dir, ground_truth, training=training),
        options=("data_dir", "ground_truth"),
        takes_training_folder=True,
    ),
    DatasetSpec(
        "subfolders",
        "your images in DATA_DIR/<label>/: each image a query against the rest",
        lambda data_dir, training=None: load_labelled_folder(data_dir, training=training),
        takes_training_folder=True,
    ),
    DatasetSpec(
        "query-folders",
        "your queries in QUERIES/<label>/ searched in DATABASE/<label>/",
        lambda queries, database, training=None: load_query_database_folders(queries, database, training=training),
        options=("queries", "database"),
        required=("queries", "database"),
        takes_training_folder=True,
    ),
    DatasetSpec("oxford5k", "Oxford Buildings (official files)", lambda data_dir: load_oxford5k(data_dir)),
    DatasetSpec("paris6k", "Paris (official files)", lambda data_dir: load_paris6k(data_dir)),
    _revisited("roxford5k"),
    _revisited("rparis6k"),
    DatasetSpec(
        "holidays",
        "INRIA Holidays (optional manual rotation list)",
        lambda data_dir, rotations=None: load_holidays(data_dir, rotations=rotations),
        options=("data_dir", "rotations"),
    ),
    DatasetSpec(
        "ukbench", "UKBench (N-S score)", lambda data_dir: ukbench.load_ukbench(data_dir), scores=ukbench.SCORES
    ),
    DatasetSpec(
        "oxford5k-subset",
        "the 1,008-image Oxford5k subset (images.txt, jpg/, groundtruth/)",
        lambda data_dir, protocol: oxford5k_subset.load_oxford5k_subset(data_dir, protocol),
        options=("data_dir", "protocol"),
        protocols=oxford5k_subset.PROTOCOLS,
        default_protocol="official-10",
    ),
)

#: Every dataset :func:`load_dataset` knows, by name.
DATASETS = {spec.name: spec for spec in _SPECS}


def load_dataset(name: str, *, training=None, distractors=None, **options) -> RetrievalDataset:
    """Load dataset `name` of :data:`DATASETS` with its options, checked against what it takes.

    Parameters
    ----------
    name : str
        A key of :data:`DATASETS`.
    training : path-like or None
        The training folder, kept out of the database of the datasets that take one
        (``takes_training_folder``); ignored by the others, whose folders hold no training images.
    distractors : path-like or None
        A folder of distractor images appended to the database.
    **options
        ``data_dir``, ``queries``, ``database``, ``ground_truth``, ``rotations``, ``protocol``;
        None means not given.

    Raises
    ------
    ValueError
        An unknown name, a given option the dataset does not take, a missing required one, a
        protocol not among its protocols, or a path that is not the folder or file it should be.
    """
    spec = _spec(name)
    given = {key: value for key, value in options.items() if value is not None}
    _check_options(spec, given)
    for key in set(given) & set(_PATH_OPTIONS):
        given[key] = _existing(Path(given[key]), key, folder=_PATH_OPTIONS[key])
    if spec.protocols:
        given.setdefault("protocol", spec.default_protocol)
    if training is not None and spec.takes_training_folder:
        given["training"] = Path(training).resolve()
    dataset = spec.load(**given)
    if distractors is not None:
        dataset = dataset.with_distractors(_existing(Path(distractors), "distractors", folder=True))
    return dataset


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")
    return DATASETS[name]


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def _check_options(spec: DatasetSpec, given: dict) -> None:
    for option in given:
        if option not in spec.options:
            users = [s.name for s in _SPECS if option in s.options]
            raise ValueError(
                f"{_flag(option)} does not apply to dataset {spec.name} (only to {', '.join(users)}); drop it."
            )
    missing = [_flag(option) for option in spec.required if option not in given]
    if missing:
        raise ValueError(f"dataset {spec.name!r} needs {' and '.join(missing)}.")
    protocol = given.get("protocol")
    if protocol is not None and protocol not in spec.protocols:
        raise ValueError(
            f"--protocol {protocol!r} is not valid for {spec.name}; choose one of {', '.join(spec.protocols)}."
        )


def _existing(path: Path, option: str, *, folder: bool) -> Path:
    if not path.exists():
        raise ValueError(f"{_flag(option)} {path} does not exist.")
    if folder and not path.is_dir():
        raise ValueError(f"{_flag(option)} {path} is not a folder.")
    if not folder and not path.is_file():
        raise ValueError(f"{_flag(option)} {path} is not a file.")
    return path
