"""A user's own images labelled by their sub-folder names: no ground-truth file to write.

Two layouts (docs/datasets.md, "Labels from sub-folder names"):

- one folder, ``root/<label>/*.jpg`` (the re-identification layout): every labelled image is a
  query against all the others; its positives are the other images of its label, and it is junk
  for itself. Images directly in ``root`` are unlabelled distractors.
- separate query and database folders, ``queries/<label>/*.jpg`` and ``database/<label>/*.jpg``:
  a query's positives are the database images of the same label.
"""

from __future__ import annotations

from pathlib import Path

from selconv.datasets.base import (
    GroundTruthError,
    RetrievalDataset,
    group_members,
    list_images,
    make_ground_truth,
    training_folder_in,
)


def _labels(folder: Path, images) -> list:
    """The first sub-folder of each image under `folder` (None for an image directly in `folder`)."""
    return [p.relative_to(folder).parts[0] if len(p.relative_to(folder).parts) > 1 else None for p in images]


def load_labelled_folder(root, *, training=None, name=None) -> RetrievalDataset:
    """Every image of ``root/<label>/`` is a query against the rest; labels are the sub-folder names.

    Parameters
    ----------
    root : path-like
        The image folder: one sub-folder per label (nested folders below it belong to it).
        Images directly in `root` are distractors.
    training : path-like or None
        A folder of training images (relative to `root` or absolute), kept out of the database
        when it lies inside `root`; its sub-folder name is then not a label.
    name : str or None
        Dataset name; default: the folder's name.

    Returns
    -------
    RetrievalDataset
        Database = every image (sorted by path); queries = every image whose label has another
        image; positives = the other images of its label; junk = the query itself.
        ``info["single_images"]`` counts images that are alone in their label (not queries).

    Raises
    ------
    GroundTruthError
        When no label has two images (nothing could be retrieved).
    """
    root = Path(root)
    training_folder = training_folder_in(root, training)
    database = list_images(root, exclude=training_folder)
    labels = _labels(root, database)
    members = group_members(labels)
    query_ids = [i for i, label in enumerate(labels) if label is not None and len(members[label]) > 1]
    if not query_ids:
        raise GroundTruthError(
            f"{root}: no sub-folder holds two images; put the images of each label in a sub-folder root/<label>/"
        )
    return RetrievalDataset(
        name=name or root.resolve().name,
        root=root,
        database=database,
        queries=[database[i] for i in query_ids],
        ground_truth=[make_ground_truth([j for j in members[labels[i]] if j != i], [i]) for i in query_ids],
        database_labels=labels,
        query_labels=[labels[i] for i in query_ids],
        training=list_images(training_folder) if training_folder is not None else [],
        info={"layout": "labelled sub-folders", "single_images": sum(len(m) == 1 for m in members.values())},
    )


def load_query_database_folders(queries, database, *, training=None, name=None) -> RetrievalDataset:
    """Queries from ``queries/<label>/``, database from ``database/<label>/``; labels match across both.

    Parameters
    ----------
    queries, database : path-like
        Folders with one sub-folder per label. Database images directly in `database` are
        distractors; query images must be in a label's sub-folder.
    training : path-like or None
        A folder of training images (absolute, or relative to `database`).
    name : str or None
        Dataset name; default: the database folder's name.

    Returns
    -------
    RetrievalDataset
        Positives of a query = the database images of its label; no junk (a query file that is also
        a database image is junk for itself). Queries whose label has no database image have no
        positives (counted by :attr:`RetrievalDataset.n_queries_without_positives`).

    Raises
    ------
    GroundTruthError
        A query image outside a label sub-folder, or no query label present in the database.
    """
    query_root, database_root = Path(queries), Path(database)
    training_folder = training_folder_in(database_root, training)
    database_images = list_images(database_root, exclude=training_folder)
    query_images = list_images(query_root, exclude=training_folder)
    database_labels, query_labels = _labels(database_root, database_images), _labels(query_root, query_images)
    unlabelled = [p for p, label in zip(query_images, query_labels) if label is None]
    if unlabelled:
        raise GroundTruthError(
            f"{query_root}: {len(unlabelled)} query images are not in a label sub-folder (e.g. {unlabelled[0]}); "
            "put each in queries/<label>/"
        )
    members = group_members(database_labels)
    if not set(query_labels) & set(members):
        raise GroundTruthError(
            f"no query label of {query_root} is a sub-folder of {database_root}: labels must match across both"
        )
    index = {p.resolve(): i for i, p in enumerate(database_images)}
    ground_truth = []
    for path, label in zip(query_images, query_labels):
        itself = index.get(path.resolve())
        positives = [i for i in members.get(label, []) if i != itself]
        ground_truth.append(make_ground_truth(positives, [] if itself is None else [itself]))
    return RetrievalDataset(
        name=name or database_root.resolve().name,
        root=database_root,
        database=database_images,
        queries=query_images,
        ground_truth=ground_truth,
        database_labels=database_labels,
        query_labels=query_labels,
        training=list_images(training_folder) if training_folder is not None else [],
        info={"layout": "query and database folders", "queries": str(query_root)},
    )
