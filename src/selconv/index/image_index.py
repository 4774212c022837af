"""ImageIndex: a fitted encoder + a faiss index + the ids and paths of what was added, saved as a folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from selconv.index import _faiss
from selconv.index._ids import IdTable, SearchResult, item_path
from selconv.index._persistence import read_index, write_index
from selconv.index._rerank import rerank_with_index


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
        self._table = IdTable()

    # ------------------------------------------------------------------ state
    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        return (
            f"ImageIndex(kind={self.kind!r}, metric={self.metric!r}, dimension={self.dimension}, "
            f"n_images={len(self)}, encoder={type(self.encoder).__name__ if self.encoder is not None else None})"
        )

    @property
    def ids(self) -> np.ndarray:
        """Ids of the stored items, in the order they were added (a copy)."""
        return self._table.ids.copy()

    @property
    def paths(self) -> list:
        """Paths of the stored items (None where none was given), aligned with :attr:`ids` (a copy)."""
        return list(self._table.paths)

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

    def _metric_for(self, descriptors) -> str:
        """The metric, or before the first data the one ``descriptors`` call for (Hamming for uint8 codes)."""
        if self.metric != "auto":
            return self.metric
        return "hamming" if np.asarray(descriptors).dtype == np.uint8 else "ip"

    def _validate(self, descriptors, name: str) -> np.ndarray:
        metric = self._metric_for(descriptors)
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
        return self._checked(self._encoder().transform(images))

    def _encoder(self):
        if self.encoder is None:
            raise ValueError("this index has no encoder: use add_descriptors / search_descriptors, or pass encoder=.")
        return self.encoder

    def _checked(self, descriptors) -> np.ndarray:
        """The encoder's output as vectors of this index's metric and dimension."""
        descriptors = np.asarray(descriptors)
        try:
            metric = self._metric_for(descriptors)
            return _faiss.as_vectors(descriptors, "the encoder's output", metric, dimension=self.dimension)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"encoder/index mismatch: {exc}") from None

    def _encode_kept(self, images: list):
        """Descriptors of ``images`` and the position of the image each comes from: an encoder starting with a
        ConvFeatureExtractor runs through its ``extract`` (which says what it kept); others give one row an image."""
        steps = getattr(self._encoder(), "steps", None)
        # Duck-typed (a ConvFeatureExtractor, or any first step with its extract contract): importing the
        # extractor's module to check the class would import torch for encoders of conv maps too.
        if steps and len(steps) > 1 and callable(getattr(steps[0][1], "extract", None)):
            extraction = steps[0][1].extract(images)
            return self._checked(self.encoder[1:].transform(extraction.maps)), extraction.kept
        descriptors = self._checked(self.encoder.transform(images))
        if len(descriptors) != len(images):
            raise ValueError(
                f"the encoder returned {len(descriptors)} descriptors for {len(images)} images and did not say which "
                "it skipped."
            )
        return descriptors, list(range(len(images)))

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
            ids = IdTable.check(ids, len(images))
        descriptors, kept = self._encode_kept(images)
        return self.add_descriptors(
            descriptors, ids=None if ids is None else ids[kept], paths=[item_path(images[i]) for i in kept]
        )

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
        ids = self._table.next_ids(n) if ids is None else IdTable.check(ids, n)
        if paths is None:
            paths = [None] * n
        else:
            paths = [None if p is None else os.fspath(p) for p in paths]
            if len(paths) != n:
                raise ValueError(f"paths has {len(paths)} entries for {n} descriptors.")
        self._table.refuse_stored(ids)
        if self._index is None:
            if _faiss.needs_training(self.kind):
                raise ValueError(
                    f"kind={self.kind!r} must be trained before adding: call train(descriptors) with a representative "
                    "sample of the collection."
                )
            self._index = _faiss.new_index(self.kind, self.metric, self.dimension, self.index_params)
        if n:
            self._index.add_with_ids(descriptors, ids)
            self._table.append(ids, paths)
        return ids

    def remove(self, ids) -> int:
        """Remove the items with these ids (ids not in the index are ignored); returns how many were removed."""
        ids = np.unique(np.asarray(ids, dtype=np.int64).ravel())
        present = np.isin(self._table.ids, ids)
        n_removed = int(present.sum())
        if n_removed:
            self._index = _faiss.remove_ids(self._index, self.kind, self.metric, self.dimension, self.index_params, ids)
            self._table.remove(present)
        return n_removed

    # ------------------------------------------------------------------ searching
    def search(self, images, k: int = 10, *, query_expansion=None) -> SearchResult:
        """Encode query images and return their k best matches (see :meth:`search_descriptors`).

        Parameters
        ----------
        images : list
            Inputs of the encoder; a query with a box is ``(path, (x1, y1, x2, y2))``.
        k : int, default=10
        query_expansion : AlphaQueryExpansion or None, default=None
            See :meth:`search_descriptors`.
        """
        k = _faiss.check_k(k)
        return self.search_descriptors(self.encode(list(images)), k, query_expansion=query_expansion)

    def search_descriptors(self, queries, k: int = 10, *, query_expansion=None) -> SearchResult:
        """The k stored items that best match each query descriptor.

        Parameters
        ----------
        queries : array-like of shape (n_queries, n_features) float or (n_queries, n_bytes) uint8
            One query per row (a 1-D array is one query).
        k : int, default=10
        query_expansion : :class:`~selconv.reranking.AlphaQueryExpansion` or None, default=None
            Expand each query with its ``n_neighbors`` best matches in this index first (found by this index's
            own search, exact or approximate; a ``"pq"`` index adds its approximations of their vectors), then
            search with the expanded queries. Real-valued indexes only; the estimator need not be fitted.

        Returns
        -------
        result : SearchResult
            Scores (larger better; negated Hamming distance for codes), ids (-1 where missing) and paths.
        """
        k = _faiss.check_k(k)
        queries = self._validate_queries(queries)
        if query_expansion is not None:
            queries = rerank_with_index(self, query_expansion, "AlphaQueryExpansion", queries)
        scores, ids = _faiss.search(self._index, queries, k)
        return SearchResult(scores=scores, ids=ids, paths=self._table.paths_of(ids))

    def augment_database(self, augmentation) -> ImageIndex:
        """Replace every stored vector by its database-side augmentation; returns self.

        Each vector x becomes l2(x + sum of its ``n_neighbors`` nearest other stored vectors, weighted by
        max(similarity, 0) ** alpha), the neighbours found by this index's own search (see
        :class:`~selconv.reranking.DatabaseAugmentation`). The augmented vectors are what is stored, searched and
        saved from then on; vectors added later are not augmented (augment again, from the original descriptors,
        after the collection grew). Real-valued indexes only.

        Parameters
        ----------
        augmentation : :class:`~selconv.reranking.DatabaseAugmentation`
            Its ``n_neighbors`` and ``alpha`` are used; it need not be fitted.

        Returns
        -------
        self : ImageIndex
        """
        if len(self):
            vectors = rerank_with_index(self, augmentation, "DatabaseAugmentation", None)
            self._index = _faiss.replace_vectors(
                self._index, self.kind, self.metric, self.dimension, self.index_params, vectors, self._table.ids
            )
        return self

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
        return write_index(
            folder,
            self._index,
            ids=self._table.ids,
            paths=self._table.paths,
            encoder=self.encoder,
            settings={
                "kind": self.kind,
                "structure": _faiss.describe(self.metric, self.kind),
                "metric": self.metric,
                "dimension": self.dimension,
                "index_params": self.index_params,
                "next_id": self._table.next_id,
            },
        )

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
        stored = read_index(folder, lambda kind, metric, params: cls(kind=kind, metric=metric, index_params=params))
        index = stored.index
        index.encoder = stored.encoder
        index._bind(stored.metric, stored.dimension)
        _faiss.apply_search_params(stored.faiss_index, index.kind, index.index_params)
        index._index, index._table = stored.faiss_index, IdTable(stored.ids, stored.paths, stored.next_id)
        return index


load_index = ImageIndex.load
