"""Ranking and exact nearest-neighbour search: inner product on real descriptors, Hamming on packed codes.

Conventions shared by every function here: a larger inner product and a smaller Hamming distance are
better; ties are broken by the lower database index (the order a stable sort gives), so rankings are
reproducible and agree between :func:`rank` and the top-k indexes. Binary codes are packed uint8 rows
(``n_bits / 8`` bytes, :func:`numpy.packbits` layout, as :mod:`selconv.hashing` produces them).
"""

from __future__ import annotations

import numbers

import numpy as np

from selconv._linalg import l2_normalize_rows

# Bound on the elements of any (n_queries x database-chunk [x bytes]) work array (about 64 MB of int32/float32).
_WORK_ELEMENTS = 1 << 24

_POPCOUNT_TABLE = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount_by_table(a: np.ndarray) -> np.ndarray:
    """Set bits per element with a byte lookup table: the fallback for numpy < 2.0 (no ``bitwise_count``)."""
    return _POPCOUNT_TABLE[a.view(np.uint8)].reshape(*a.shape, a.itemsize).sum(axis=-1, dtype=np.uint8)


_popcount = getattr(np, "bitwise_count", _popcount_by_table)


def _as_2d(array, name: str, *, codes: bool) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (one row per item); got shape {array.shape}.")
    if codes:
        if array.dtype != np.uint8:
            raise TypeError(f"{name} must hold packed binary codes of dtype uint8; got {array.dtype}.")
        return np.ascontiguousarray(array)
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise TypeError(f"{name} must be a real-valued array; got dtype {array.dtype}.")
    with np.errstate(over="ignore"):
        converted = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(converted).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        beyond = " (values beyond the float32 range)" if np.isfinite(array[rows]).all() else ""
        raise ValueError(
            f"{name} contains NaN or infinity{beyond} in rows {rows[:10].tolist()}"
            f"{', ...' if len(rows) > 10 else ''}: such descriptors cannot be ranked."
        )
    return converted


def _inner_products(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """queries @ database.T, refusing the infinities (and NaN) that float32 overflow would rank silently."""
    with np.errstate(over="ignore", invalid="ignore"):
        scores = queries @ database.T
    if not np.isfinite(scores).all():
        raise ValueError(
            "inner products of the descriptors overflow float32 (values near 3.4e38 or products beyond it): "
            "l2-normalise or rescale the descriptors before ranking."
        )
    return scores


def _check_same_width(queries: np.ndarray, database: np.ndarray, what: str) -> None:
    if queries.shape[1] != database.shape[1]:
        raise ValueError(
            f"queries have {queries.shape[1]} {what} per row but the database has {database.shape[1]}."
        )


def _as_words(codes: np.ndarray) -> np.ndarray:
    """View packed codes as 64-bit words when the byte count allows it (8x fewer XOR/popcount ops)."""
    if codes.shape[1] % 8 == 0:
        return codes.view(np.uint64)
    return codes


def _hamming_block(query_words: np.ndarray, database_words: np.ndarray) -> np.ndarray:
    return _popcount(query_words[:, None, :] ^ database_words[None, :, :]).sum(axis=2, dtype=np.int32)


def _chunk_rows(n_queries: int, width: int) -> int:
    return max(1, _WORK_ELEMENTS // max(1, n_queries * width))


def hamming_distances(query_codes, database_codes) -> np.ndarray:
    """Hamming distances between packed binary codes.

    Parameters
    ----------
    query_codes : array-like of shape (n_queries, n_bytes), dtype uint8
        Packed codes (a single 1-D code is treated as one query).
    database_codes : array-like of shape (n_database, n_bytes), dtype uint8

    Returns
    -------
    distances : ndarray of shape (n_queries, n_database), dtype int32

    Notes
    -----
    XOR + population count (:func:`numpy.bitwise_count`) on 64-bit words where ``n_bytes`` is a
    multiple of 8, else on bytes. The database is processed in chunks, so the temporary
    (n_queries, chunk, words) array stays under about 64 MB whatever the database size; only the
    returned matrix grows with it (use :class:`BinaryIndex` for top-k without that matrix).
    """
    queries = _as_2d(query_codes, "query_codes", codes=True)
    database = _as_2d(database_codes, "database_codes", codes=True)
    _check_same_width(queries, database, "bytes")
    query_words, database_words = _as_words(queries), _as_words(database)
    distances = np.empty((queries.shape[0], database.shape[0]), dtype=np.int32)
    step = _chunk_rows(queries.shape[0], query_words.shape[1])
    for start in range(0, database.shape[0], step):
        distances[:, start : start + step] = _hamming_block(query_words, database_words[start : start + step])
    return distances


def is_binary_codes(array) -> bool:
    """True for packed binary codes (uint8), the dtype every selconv hasher outputs."""
    return np.asarray(array).dtype == np.uint8


def resolve_metric(metric: str, *arrays) -> str:
    """The metric to use: 'ip' or 'hamming' as given, or for 'auto' 'hamming' when all arrays are uint8 codes."""
    if metric == "auto":
        return "hamming" if all(is_binary_codes(a) for a in arrays) else "ip"
    if metric not in ("ip", "hamming"):
        raise ValueError(f"metric must be 'auto', 'ip' or 'hamming'; got {metric!r}.")
    return metric


def rank(query, database, *, metric: str = "ip") -> np.ndarray:
    """Rank the whole database for each query, best first.

    Parameters
    ----------
    query : array-like of shape (n_queries, n_features) or (n_queries, n_bytes)
        Real descriptors (``metric="ip"``) or packed uint8 codes (``metric="hamming"``); a 1-D row
        is one query.
    database : array-like of shape (n_database, n_features) or (n_database, n_bytes)
    metric : {"ip", "hamming", "auto"}, default="ip"
        Inner product (descending; cosine similarity for l2-normalised descriptors) or Hamming distance
        (ascending). "auto" picks "hamming" when both inputs are uint8 codes.

    Returns
    -------
    ranking : ndarray of shape (n_queries, n_database), dtype int64
        Database indices; ties keep the lower index first.
    """
    metric = resolve_metric(metric, query, database)
    codes = metric == "hamming"
    queries = _as_2d(query, "query", codes=codes)
    db = _as_2d(database, "database", codes=codes)
    _check_same_width(queries, db, "bytes" if codes else "features")
    ranking = np.empty((queries.shape[0], db.shape[0]), dtype=np.int64)
    step = _chunk_rows(db.shape[0], 1)
    for start in range(0, queries.shape[0], step):
        block = queries[start : start + step]
        keys = hamming_distances(block, db) if codes else -_inner_products(block, db)
        ranking[start : start + step] = np.argsort(keys, axis=1, kind="stable")
    return ranking


def similarities(query, database, *, metric: str = "ip") -> np.ndarray:
    """Similarity of every query to every database item, larger is better: what :func:`rank` sorts.

    Parameters
    ----------
    query : array-like of shape (n_queries, n_features) or (n_queries, n_bytes)
    database : array-like of shape (n_database, n_features) or (n_database, n_bytes)
    metric : {"ip", "hamming", "auto"}, default="ip"
        Inner product (float32), or minus the Hamming distance between packed codes (int32).

    Returns
    -------
    scores : ndarray of shape (n_queries, n_database)
    """
    metric = resolve_metric(metric, query, database)
    codes = metric == "hamming"
    queries = _as_2d(query, "query", codes=codes)
    db = _as_2d(database, "database", codes=codes)
    _check_same_width(queries, db, "bytes" if codes else "features")
    return -hamming_distances(queries, db) if codes else queries @ db.T


def _merge_top_k(best_scores, best_indices, scores, indices, k):
    """Keep the k largest scores per row, ties to the lower index, sorted best first.

    ``best_*`` (n_q, <=k) hold earlier, lower database indices in sorted order; ``scores``/``indices``
    (n_q, m) a later chunk in index order. Then among equal scores the column order is the index order,
    which lets the tie-break be done with a cumulative count instead of a sort.
    """
    scores = np.concatenate([best_scores, scores], axis=1)
    indices = np.concatenate([best_indices, indices], axis=1)
    if scores.shape[1] > k:
        kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]
        above = scores > kth
        tied = scores == kth
        room = k - above.sum(axis=1, keepdims=True)
        keep = above | (tied & (np.cumsum(tied, axis=1) <= room))
        scores = scores[keep].reshape(len(scores), k)
        indices = indices[keep].reshape(len(indices), k)
    order = np.lexsort((indices, -scores), axis=1)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(indices, order, axis=1)


class _ExactIndex:
    """Shared storage and chunked top-k search; subclasses define validation and the score of a chunk."""

    _codes: bool
    _width_name: str

    def __init__(self, *, chunk_size: int = 65536):
        if not isinstance(chunk_size, numbers.Integral) or chunk_size <= 0:
            raise ValueError(f"chunk_size must be a positive integer; got {chunk_size!r}.")
        self.chunk_size = int(chunk_size)
        self._blocks: list[np.ndarray] = []
        self.ntotal = 0

    @property
    def width(self) -> int | None:
        """Features (FlatIndex) or bytes (BinaryIndex) per row; None while empty."""
        return self._blocks[0].shape[1] if self._blocks else None

    def add(self, items) -> _ExactIndex:
        """Append rows to the database (their indices continue from ``ntotal``); returns self."""
        items = _as_2d(items, "items", codes=self._codes)
        if self.width is not None and items.shape[1] != self.width:
            raise ValueError(
                f"items have {items.shape[1]} {self._width_name} per row; the index holds {self.width}."
            )
        if len(items):
            self._blocks.append(items.copy())
            self.ntotal += len(items)
        return self

    def reset(self) -> None:
        """Remove every row."""
        self._blocks.clear()
        self.ntotal = 0

    def _chunks(self):
        offset = 0
        for block in self._blocks:
            for start in range(0, len(block), self.chunk_size):
                chunk = block[start : start + self.chunk_size]
                yield offset + start, chunk
            offset += len(block)

    def _search(self, queries, k, score_chunk):
        if not isinstance(k, numbers.Integral) or k <= 0:
            raise ValueError(f"k must be a positive integer; got {k!r}.")
        queries = _as_2d(queries, "queries", codes=self._codes)
        if self.width is not None and queries.shape[1] != self.width:
            raise ValueError(
                f"queries have {queries.shape[1]} {self._width_name} per row; the index holds {self.width}."
            )
        k = min(int(k), self.ntotal)
        n_queries = len(queries)
        best_scores = np.empty((n_queries, 0), dtype=np.float32 if not self._codes else np.int32)
        best_indices = np.empty((n_queries, 0), dtype=np.int64)
        for offset, chunk in self._chunks():
            scores = score_chunk(queries, chunk)
            indices = np.broadcast_to(np.arange(offset, offset + len(chunk), dtype=np.int64), scores.shape)
            best_scores, best_indices = _merge_top_k(best_scores, best_indices, scores, indices, k)
        return best_scores, best_indices


class FlatIndex(_ExactIndex):
    """Exact inner-product search over float32 vectors (faiss ``IndexFlatIP`` semantics).

    The database is scanned in chunks of ``chunk_size`` rows and only the running top-k is kept
    (partial selection with :func:`numpy.partition`, then a sort of the k survivors), so the memory
    is O(n_queries x (chunk_size + k)) whatever the number of vectors.

    Parameters
    ----------
    chunk_size : int, default=65536
        Database rows scored at once.

    Examples
    --------
    >>> import numpy as np
    >>> index = FlatIndex().add(np.eye(3))
    >>> scores, indices = index.search(np.array([[0.0, 1.0, 0.2]]), k=2)
    >>> indices.tolist()
    [[1, 2]]
    """

    _codes = False
    _width_name = "features"

    def search(self, queries, k: int):
        """The k database vectors with the largest inner product with each query.

        Parameters
        ----------
        queries : array-like of shape (n_queries, n_features)
        k : int
            Neighbours per query (clipped to ``ntotal``).

        Returns
        -------
        scores : ndarray of shape (n_queries, k), float32, descending
        indices : ndarray of shape (n_queries, k), int64; ties: lower index first
        """
        return self._search(queries, k, _inner_products)


class BinaryIndex(_ExactIndex):
    """Exact Hamming search over packed uint8 codes (faiss ``IndexBinaryFlat`` semantics).

    Chunked like :class:`FlatIndex`: memory O(n_queries x (chunk_size + k)), never the full
    (n_queries, n_database) distance matrix.

    Parameters
    ----------
    chunk_size : int, default=65536
        Database codes compared at once.
    """

    _codes = True
    _width_name = "bytes"

    def search(self, queries, k: int):
        """The k database codes nearest in Hamming distance to each query.

        Parameters
        ----------
        queries : array-like of shape (n_queries, n_bytes), dtype uint8
        k : int
            Neighbours per query (clipped to ``ntotal``).

        Returns
        -------
        distances : ndarray of shape (n_queries, k), int32, ascending
        indices : ndarray of shape (n_queries, k), int64; ties: lower index first
        """
        negated, indices = self._search(queries, k, lambda q, chunk: -hamming_distances(q, chunk))
        return -negated, indices


def average_query_expansion(query, database, ranking, top: int = 5) -> np.ndarray:
    """Average query expansion: each query plus its ``top`` first database vectors, summed and l2-normalised.

    The authors use ``top=5`` (ALGORITHMS.md section 6). Rank again with the returned queries.

    Parameters
    ----------
    query : array-like of shape (n_queries, n_features)
        Real-valued descriptors (query expansion does not apply to binary codes).
    database : array-like of shape (n_database, n_features)
    ranking : array-like of shape (n_queries, >= top)
        Database indices, best first (e.g. from :func:`rank` or an index's ``search``).
    top : int, default=5

    Returns
    -------
    expanded : ndarray of shape (n_queries, n_features), float32
        A query whose sum is zero stays zero.
    """
    if is_binary_codes(query) or is_binary_codes(database):
        raise TypeError("average_query_expansion needs real-valued descriptors, not packed binary codes.")
    if not isinstance(top, numbers.Integral) or top < 0:
        raise ValueError(f"top must be a non-negative integer; got {top!r}.")
    queries = _as_2d(query, "query", codes=False)
    db = _as_2d(database, "database", codes=False)
    _check_same_width(queries, db, "features")
    ranking = np.asarray(ranking)
    if ranking.ndim == 1:
        ranking = ranking[None, :]
    if ranking.ndim != 2 or ranking.shape[0] != queries.shape[0] or ranking.shape[1] < top:
        raise ValueError(
            f"ranking must have one row per query and at least top={top} columns; got shape {ranking.shape} "
            f"for {queries.shape[0]} queries."
        )
    used = ranking[:, :top]
    if not np.issubdtype(ranking.dtype, np.integer):
        raise ValueError(f"ranking must hold integer database indices; got dtype {ranking.dtype}.")
    if used.size and (used.min() < 0 or used.max() >= len(db)):
        raise ValueError(
            f"ranking must hold database indices in 0..{len(db) - 1}; got values {used.min()}..{used.max()}."
        )
    expanded = queries + db[ranking[:, :top]].sum(axis=1)
    return l2_normalize_rows(expanded, out=expanded)
