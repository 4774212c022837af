"""ImageIndex: a fitted encoder + a faiss index + the ids and paths of what was added, saved as a folder."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from selconv.index import _faiss
from selconv.index._persistence import (
    ENCODER_FILE,
    FORMAT,
    FORMAT_VERSION,
    IDS_FILE,
    INDEX_FILE,
    MANIFEST,
    PATHS_FILE,
    IndexFormatError,
    encoder_from_file,
    encoder_to_bytes,
    read_manifest,
    write_folder,
)


@dataclass(frozen=True)
class SearchResult:
    """Top-k results of a batch of queries, best first.

    Attributes
    ----------
    scores : ndarray of shape (n_queries, k), float32
        Larger is better: the inner product for real vectors (cosine similarity for the l2-normalised
        descriptors selconv pipelines produce), the NEGATED Hamming distance for binary codes
        (``distance = -score``). -inf where there is no result.
    ids : ndarray of shape (n_queries, k), int64
        Ids of the results; -1 where fewer than k were found. Equal scores are listed by increasing id.
    paths : list of list of str or None
        The path stored with each result (None for descriptors added without a path, and for missing results).
    """

    scores: np.ndarray
    ids: np.ndarray
    paths: list


def _item_path(item) -> str | None:
    """The file an input item names: a path, the image of an ``(image, box)`` pair, or a ConvMap's source."""
    image = item[0] if isinstance(item, tuple) and len(item) == 2 else item  # (image, box) or BoxedImage
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    source = getattr(image, "source", None)
    return source if isinstance(source, str) else None


class ImageIndex:
    """Search a collection of images with a fitted selconv encoder and a faiss index.

    The encoder turns images (or conv maps) into one real vector or one packed binary code each; the
    index stores them with an int64 id and the image's path, searches them, and saves everything to a
    folder that loads without running code (:meth:`save`, :meth:`load`).

    Parameters
    ----------
    encoder : fitted estimator or None, default=None
        A fitted selconv pipeline (e.g. ``make_paper_pipeline(512, extractor=True)`` after ``fit``) whose
        ``transform`` maps a list of images to float vectors (compared by inner product, which is the cosine
        similarity for the l2-normalised output of selconv pipelines) or to packed uint8 codes (compared by
        Hamming distance). None: only descriptors are added and searched (:meth:`add_descriptors`,
        :meth:`search_descriptors`).
    kind : {"flat", "ivf", "hnsw", "pq"}, default="flat"
        ``"flat"``: exact search (faiss ``IndexFlatIP`` / ``IndexBinaryFlat``). Approximate, for large
        collections: ``"ivf"`` (inverted file: ``IndexIVFFlat`` / ``IndexBinaryIVF``; needs :meth:`train`),
        ``"hnsw"`` (graph: ``IndexHNSWFlat`` / ``IndexBinaryHNSW``; no training), ``"pq"`` (real vectors only:
        inverted file + product quantisation, ``IndexIVFPQ``, compressed to ``m * nbits`` bits per vector;
        needs :meth:`train`).
    metric : {"auto", "ip", "hamming"}, default="auto"
        ``"auto"``: Hamming for uint8 codes, inner product for float vectors, decided by the first data.
    index_params : dict or None, default=None
        Parameters of ``kind`` (faiss' names), the defaults filled in:

        - ``"ivf"``: ``nlist`` (cells; None = ``4 * sqrt(n_train)``, at most ``n_train / 39``), ``nprobe=16``
          (cells visited per query).
        - ``"hnsw"``: ``M=32`` (links per node), ``efConstruction=80``, ``efSearch=128`` (candidates kept while
          searching; at least k is used).
        - ``"pq"``: ``nlist``, ``nprobe`` as for ``"ivf"``; ``m`` (sub-quantisers; must divide the dimension;
          None = the largest divisor of the dimension not above dimension / 8) and ``nbits=8`` (bits per
          sub-quantiser code).

        ``nprobe`` and ``efSearch`` trade speed for recall and can be changed later with :meth:`set_search_params`.

    Attributes
    ----------
    dimension : int or None
        Floats per vector, or bits per code; None until the first data is seen.
    metric : str
        ``"ip"`` or ``"hamming"`` once known (``"auto"`` before).
    index_params : dict
        The parameters in use (data-dependent defaults resolved after training).

    Notes
    -----
    Ids are int64 >= 0, given by the caller or assigned consecutively after the largest id so far. An HNSW
    graph cannot delete nodes, so :meth:`remove` on ``kind="hnsw"`` rebuilds the graph from the remaining
    vectors (time of a fresh build). Within a result row, equal scores are listed by increasing id; which of
    several items tied at the k-th place is returned is faiss' choice.

    Examples
    --------
    >>> import numpy as np
    >>> from selconv.index import ImageIndex
    >>> index = ImageIndex()
    >>> index.add_descriptors(np.eye(3, dtype=np.float32), paths=["a.jpg", "b.jpg", "c.jpg"]).tolist()
    [0, 1, 2]
    >>> result = index.search_descriptors(np.array([[0.0, 1.0, 0.2]], dtype=np.float32), k=2)
    >>> result.ids.tolist(), result.paths
    ([[1, 2]], [['b.jpg', 'c.jpg']])
    """

    def __init__(self, encoder=None, *, kind="flat", metric="auto", index_params=None):
        _faiss.check_kind_and_metric(kind, metric)
        if kind == "pq" and metric == "auto":
            metric = "ip"
        self.encoder = encoder
        self.kind = kind
        self.metric = metric
        self.index_params = _faiss.check_params(kind, index_params)
        self.dimension: int | None = None
        self._index = None
        self._ids = np.zeros(0, dtype=np.int64)
        self._paths: list[str | None] = []
        self._next_id = 0
        self._sorter: np.ndarray | None = None  # argsort of _ids, computed when needed

    # ------------------------------------------------------------------ state
    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return (
            f"ImageIndex(kind={self.kind!r}, metric={self.metric!r}, dimension={self.dimension}, "
            f"n_images={len(self)}, encoder={type(self.encoder).__name__ if self.encoder is not None else None})"
        )

    @property
    def ids(self) -> np.ndarray:
        """Ids of the stored items, in the order they were added (a copy)."""
        return self._ids.copy()

    @property
    def paths(self) -> list:
        """Paths of the stored items (None where none was given), aligned with :attr:`ids` (a copy)."""
        return list(self._paths)

    @property
    def is_trained(self) -> bool:
        """True when vectors can be added: always for ``"flat"`` and ``"hnsw"``, after :meth:`train` otherwise."""
        return not _faiss.needs_training(self.kind) or (self._index is not None and self._index.is_trained)

    def set_search_params(self, **params) -> ImageIndex:
        """Change search-time parameters (``nprobe`` for ``"ivf"``/``"pq"``, ``efSearch`` for ``"hnsw"``);
        returns self."""
        unknown = sorted(set(params) - (set(_faiss.SEARCH_PARAMS) & set(self.index_params)))
        if unknown:
            raise ValueError(f"{unknown} are not search parameters of kind={self.kind!r}.")
        checked = _faiss.check_params(self.kind, params)
        self.index_params = {**self.index_params, **{name: checked[name] for name in params}}
        if self._index is not None:
            _faiss.apply_search_params(self._index, self.kind, self.index_params)
        return self

    def _bind(self, metric: str, dimension: int) -> None:
        """Fix the metric and dimension from the first data (checks kind availability)."""
        _faiss.check_kind_and_metric(self.kind, metric)
        self.metric, self.dimension = metric, dimension

    def _validate(self, descriptors, name: str) -> np.ndarray:
        metric = self.metric
        if metric == "auto":
            metric = "hamming" if np.asarray(descriptors).dtype == np.uint8 else "ip"
        array = _faiss.as_vectors(descriptors, name, metric, dimension=self.dimension)
        if self.dimension is None:
            self._bind(metric, array.shape[1] * (8 if metric == "hamming" else 1))
        return array

    def _validate_queries(self, queries) -> np.ndarray:
        if self.metric == "auto":
            raise ValueError("the index is empty and has no metric yet: add descriptors before searching.")
        return _faiss.as_vectors(queries, "queries", self.metric, dimension=self.dimension)

    # ------------------------------------------------------------------ encoding
    def encode(self, images) -> np.ndarray:
        """Descriptors of ``images`` by the encoder (``encoder.transform(images)``), validated.

        Parameters
        ----------
        images : list
            Whatever the encoder takes: image paths, ``(path, (x1, y1, x2, y2))`` queries, conv maps, ...

        Returns
        -------
        descriptors : ndarray of shape (n_images, dimension) float32 or (n_images, dimension / 8) uint8
            Images the encoder skipped (``ConvFeatureExtractor(on_error="skip")``) have no row.
        """
        if self.encoder is None:
            raise ValueError("this index has no encoder: use add_descriptors / search_descriptors, or pass encoder=.")
        descriptors = np.asarray(self.encoder.transform(images))
        metric = self.metric if self.metric != "auto" else ("hamming" if descriptors.dtype == np.uint8 else "ip")
        try:
            return _faiss.as_vectors(descriptors, "the encoder's output", metric, dimension=self.dimension)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"encoder/index mismatch: {exc}") from None

    def _kept(self, images) -> list[int]:
        """Positions of ``images`` the encoder did not skip (its extractor's ``skipped_``)."""
        steps = getattr(self.encoder, "steps", None)
        first = steps[0][1] if steps else self.encoder
        skipped = {index for index, *_ in getattr(first, "skipped_", [])}
        return [i for i in range(len(images)) if i not in skipped]

    # ------------------------------------------------------------------ building
    def train(self, descriptors) -> ImageIndex:
        """Learn the structure of an approximate index (k-means cells, PQ codebooks) on representative descriptors.

        A no-op for ``"flat"`` and ``"hnsw"`` apart from fixing the metric and the dimension. Train on a
        random sample of the collection (at least 39 x nlist vectors); training an index that already holds
        vectors is refused, since their cells would change.

        Parameters
        ----------
        descriptors : array-like of shape (n_train, n_features) float, or (n_train, n_bytes) uint8

        Returns
        -------
        self : ImageIndex
        """
        if len(self):
            raise ValueError("this index already holds vectors; train a new index (and add them again) instead.")
        descriptors = self._validate(descriptors, "training descriptors")
        if not _faiss.needs_training(self.kind):
            return self
        params = _faiss.resolve_params(self.kind, self.index_params, self.dimension, len(descriptors))
        index = _faiss.new_index(self.kind, self.metric, self.dimension, params)
        index.train(descriptors)
        self.index_params, self._index = params, index
        return self

    def add(self, images, *, ids=None) -> np.ndarray:
        """Encode ``images`` and add them, with their paths; returns the ids of the added images.

        Parameters
        ----------
        images : list
            Inputs of the encoder (usually image paths). The path stored for each is the file it names
            (the image of a ``(path, box)`` pair; a conv map's ``source``), else None.
        ids : array-like of int or None, default=None
            One id per image; None assigns consecutive ids. Ids of images the encoder skipped are not used.

        Returns
        -------
        ids : ndarray of int64
            Ids of the images added (skipped images have none).
        """
        images = list(images)
        if ids is not None:
            ids = self._check_ids(ids, len(images))
        descriptors = self.encode(images)
        kept = list(range(len(images))) if len(descriptors) == len(images) else self._kept(images)
        if len(kept) != len(descriptors):
            raise ValueError(
                f"the encoder returned {len(descriptors)} descriptors for {len(images)} images and did not say which "
                "it skipped."
            )
        return self.add_descriptors(
            descriptors, ids=None if ids is None else ids[kept], paths=[_item_path(images[i]) for i in kept]
        )

    def _check_ids(self, ids, n: int) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim != 1 or len(ids) != n or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"ids must be {n} integers (one per item); got {ids.dtype} of shape {ids.shape}.")
        ids = ids.astype(np.int64)
        if ids.size and ids.min() < 0:
            raise ValueError(f"ids must be non-negative; got {ids.min()}.")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("ids hold duplicates.")
        return ids

    def add_descriptors(self, descriptors, *, ids=None, paths=None) -> np.ndarray:
        """Add descriptors (real vectors or packed codes), with optional ids and paths; returns their ids.

        Parameters
        ----------
        descriptors : array-like of shape (n, n_features) float or (n, n_bytes) uint8
        ids : array-like of int or None, default=None
            Unique non-negative ids not in the index yet; None assigns ``next_id, next_id + 1, ...`` where
            ``next_id`` is one past the largest id ever added.
        paths : list of str or None, default=None
            One path (or None) per descriptor.

        Returns
        -------
        ids : ndarray of shape (n,), int64
        """
        descriptors = self._validate(descriptors, "descriptors")
        n = len(descriptors)
        ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64) if ids is None else self._check_ids(ids, n)
        if paths is None:
            paths = [None] * n
        else:
            paths = [None if p is None else os.fspath(p) for p in paths]
            if len(paths) != n:
                raise ValueError(f"paths has {len(paths)} entries for {n} descriptors.")
        if n and len(self) and ids.min() <= self._ids.max():
            present = np.isin(ids, self._ids)
            if present.any():
                raise ValueError(f"id {int(ids[present][0])} is already in the index; remove it first.")
        if self._index is None:
            if _faiss.needs_training(self.kind):
                raise ValueError(
                    f"kind={self.kind!r} must be trained before adding: call train(descriptors) with a representative "
                    "sample of the collection."
                )
            self._index = _faiss.new_index(self.kind, self.metric, self.dimension, self.index_params)
        if n:
            self._index.add_with_ids(descriptors, ids)
            self._sorter = None
            self._ids = np.concatenate([self._ids, ids])
            self._paths.extend(paths)
            self._next_id = max(self._next_id, int(ids.max()) + 1)
        return ids

    def remove(self, ids) -> int:
        """Remove the items with these ids (ids not in the index are ignored); returns how many were removed."""
        ids = np.unique(np.asarray(ids, dtype=np.int64).ravel())
        present = np.isin(self._ids, ids)
        n_removed = int(present.sum())
        if n_removed:
            self._index = _faiss.remove_ids(self._index, self.kind, self.metric, self.dimension, self.index_params, ids)
            self._ids = self._ids[~present]
            self._paths = [p for p, gone in zip(self._paths, present) if not gone]
            self._sorter = None
        return n_removed

    # ------------------------------------------------------------------ searching
    def search(self, images, k: int = 10) -> SearchResult:
        """Encode query images and return their k best matches (see :meth:`search_descriptors`).

        Parameters
        ----------
        images : list
            Inputs of the encoder; a query with a box is ``(path, (x1, y1, x2, y2))``.
        k : int, default=10
        """
        k = _faiss.check_k(k)
        return self.search_descriptors(self.encode(list(images)), k)

    def search_descriptors(self, queries, k: int = 10) -> SearchResult:
        """The k stored items that best match each query descriptor.

        Parameters
        ----------
        queries : array-like of shape (n_queries, n_features) float or (n_queries, n_bytes) uint8
            One query per row (a 1-D array is one query).
        k : int, default=10

        Returns
        -------
        result : SearchResult
            Scores (larger better; negated Hamming distance for codes), ids (-1 where missing) and paths.
        """
        k = _faiss.check_k(k)
        queries = self._validate_queries(queries)
        scores, ids = _faiss.search(self._index, queries, k)
        return SearchResult(scores=scores, ids=ids, paths=self._paths_of(ids))

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        """Positions in ``_ids`` of stored ids."""
        if self._sorter is None:
            # Consecutive ids (the usual case) are their own order: no argsort of a million ids.
            increasing = bool(np.all(self._ids[1:] > self._ids[:-1]))
            self._sorter = np.arange(0) if increasing else np.argsort(self._ids, kind="stable")
        if len(self._sorter) == 0:
            return np.searchsorted(self._ids, ids)
        return self._sorter[np.searchsorted(self._ids, ids, sorter=self._sorter)]

    def _paths_of(self, ids: np.ndarray) -> list:
        found = ids >= 0
        positions = np.zeros(ids.shape, dtype=np.int64)
        if found.any():
            positions[found] = self._positions(ids[found])
        paths = self._paths
        return [
            [paths[p] if ok else None for p, ok in zip(row_positions.tolist(), row_found.tolist())]
            for row_positions, row_found in zip(positions, found)
        ]

    # ------------------------------------------------------------------ persistence
    def save(self, folder) -> Path:
        """Write the index to ``folder`` atomically (a crash leaves the previous index or the new one); returns it.

        The folder holds ``manifest.json``, ``index.faiss`` (faiss' format), ``ids.npy``, ``paths.jsonl`` and
        ``encoder.skops`` (see ``selconv.index._persistence``). An existing index folder is replaced;
        any other non-empty folder is refused.
        """
        if self.dimension is None:
            raise ValueError("nothing to save: the index has no data yet (add or train first).")
        if self._index is None:
            if _faiss.needs_training(self.kind):
                raise ValueError(f"nothing to save: kind={self.kind!r} is not trained yet.")
            self._index = _faiss.new_index(self.kind, self.metric, self.dimension, self.index_params)
        from selconv import __version__

        index = self._index
        writers = {
            INDEX_FILE: lambda p: (faiss.write_index_binary if _faiss.is_binary(index) else faiss.write_index)(
                index, str(p)
            ),
            IDS_FILE: lambda p: np.save(p, self._ids, allow_pickle=False),
            PATHS_FILE: lambda p: p.write_text("".join(json.dumps(x) + "\n" for x in self._paths), encoding="utf-8"),
        }
        encoder = None
        if self.encoder is not None:
            blob = encoder_to_bytes(self.encoder)
            writers[ENCODER_FILE] = lambda p: p.write_bytes(blob)
            encoder = {
                "file": ENCODER_FILE,
                "class": type(self.encoder).__qualname__,
                "description": repr(self.encoder),
            }
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "selconv_version": __version__,
            "faiss_version": faiss.__version__,
            "kind": self.kind,
            "structure": _faiss.describe(self.metric, self.kind),
            "metric": self.metric,
            "dimension": self.dimension,
            "index_params": self.index_params,
            "count": len(self),
            "next_id": self._next_id,
            "encoder": encoder,
        }
        return write_folder(folder, writers, manifest)

    @classmethod
    def load(cls, folder) -> ImageIndex:
        """Read an index written by :meth:`save`, checking every file against the manifest first.

        Raises
        ------
        IndexFormatError
            Naming the file that is missing, truncated, changed, of another format version, or inconsistent
            with the rest (a ValueError).
        FileNotFoundError
            When ``folder`` does not exist.
        """
        from selconv import __version__

        folder, manifest = read_manifest(folder)
        manifest_path = folder / MANIFEST
        try:
            kind, metric, dimension = manifest["kind"], manifest["metric"], int(manifest["dimension"])
            count, next_id = int(manifest["count"]), int(manifest["next_id"])
            index = cls(kind=kind, metric=metric, index_params=manifest["index_params"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFormatError(f"{manifest_path}: bad or missing entry ({exc}).") from None
        if manifest.get("selconv_version") != __version__:
            warnings.warn(
                f"{manifest_path}: written by selconv {manifest.get('selconv_version')}, loaded by {__version__}; "
                "the encoder may behave differently. Rebuild the index to be safe.",
                UserWarning,
                stacklevel=2,
            )
        path = folder / INDEX_FILE
        try:
            reader = faiss.read_index_binary if metric == "hamming" else faiss.read_index
            faiss_index = reader(str(path))
        except RuntimeError as exc:
            raise IndexFormatError(f"{path}: not a faiss {metric} index ({str(exc).splitlines()[0]}).") from None
        if faiss_index.d != dimension or faiss_index.ntotal != count:
            raise IndexFormatError(
                f"{path}: holds {faiss_index.ntotal} vectors of dimension {faiss_index.d}; "
                f"{manifest_path} says {count} "
                f"of dimension {dimension}."
            )
        path = folder / IDS_FILE
        try:
            ids = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise IndexFormatError(f"{path}: not a numpy array file ({exc}).") from None
        if ids.dtype != np.int64 or ids.shape != (count,):
            raise IndexFormatError(f"{path}: expected {count} int64 ids; got {ids.dtype} of shape {ids.shape}.")
        path = folder / PATHS_FILE
        try:
            paths = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IndexFormatError(f"{path}: not one JSON string per line ({exc}).") from None
        if len(paths) != count or not all(p is None or isinstance(p, str) for p in paths):
            raise IndexFormatError(f"{path}: expected {count} lines each holding a JSON string or null.")
        if manifest.get("encoder"):
            index.encoder = encoder_from_file(folder / ENCODER_FILE)
        index._bind(metric, dimension)
        _faiss.apply_search_params(faiss_index, kind, index.index_params)
        index._index, index._ids, index._paths = faiss_index, ids, paths
        index._next_id = next_id
        return index


load_index = ImageIndex.load
