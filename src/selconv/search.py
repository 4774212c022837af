"""Ranking of a whole database for evaluation, and average query expansion (:mod:`selconv.reranking`).

Searching goes through faiss, the same code path as :class:`selconv.index.ImageIndex` (whose conventions hold:
:mod:`selconv.index._faiss`): inner product on real descriptors, Hamming distance on packed uint8 codes
(``n_bits / 8`` bytes, :func:`numpy.packbits` layout, as :mod:`selconv.hashing` produces them). A larger inner
product and a smaller Hamming distance are better; ties are broken by the lower database index, so rankings
are reproducible. To search a collection (top-k, ids, paths, saving), use :class:`selconv.index.ImageIndex`.
"""

from __future__ import annotations

import numbers

import numpy as np

from selconv.index import _faiss
from selconv.reranking import expand


def is_binary_codes(array) -> bool:
    """True for packed binary codes (uint8), the dtype every selconv hasher outputs."""
    return np.asarray(array).dtype == np.uint8


def resolve_metric(metric: str, *arrays) -> str:
    """The metric to use: 'ip' or 'hamming' as given, or for 'auto' 'hamming' when all arrays are uint8 codes."""
    if metric == "auto":
        return "hamming" if all(is_binary_codes(a) for a in arrays) else "ip"
    if metric not in _faiss.METRICS:
        raise ValueError(f"metric must be 'auto', 'ip' or 'hamming'; got {metric!r}.")
    return metric


def _full_search(query, database, metric: str, query_name: str, database_name: str):
    """Scores (larger better) and database indices of every database row for each query, best first."""
    database = _faiss.as_vectors(database, database_name, metric)
    dimension = database.shape[1] * (8 if metric == "hamming" else 1)
    queries = _faiss.as_vectors(query, query_name, metric)
    if queries.shape[1] != database.shape[1]:
        unit = "bytes" if metric == "hamming" else "features"
        raise ValueError(f"queries have {queries.shape[1]} {unit} per row but the database has {database.shape[1]}.")
    index = _faiss.new_index("flat", metric, dimension, {})
    index.add_with_ids(database, np.arange(len(database), dtype=np.int64))
    if len(database) == 0:
        return np.zeros((len(queries), 0), dtype=np.float32), np.zeros((len(queries), 0), dtype=np.int64)
    return _faiss.search(index, queries, len(database))


def _score_matrix(query, database, metric: str, query_name: str, database_name: str) -> np.ndarray:
    """Scores (larger better) of every database row for each query, in database order."""
    scores, ranking = _full_search(query, database, metric, query_name, database_name)
    matrix = np.empty(ranking.shape, dtype=scores.dtype)
    np.put_along_axis(matrix, ranking, scores, axis=1)
    return matrix


def rank(query, database, *, metric: str = "ip", return_scores: bool = False):
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
    return_scores : bool, default=False
        Also return the score of every ranked item (e.g. to treat tied scores as ties).

    Returns
    -------
    ranking : ndarray of shape (n_queries, n_database), dtype int64
        Database indices; ties keep the lower index first.
    scores : ndarray of shape (n_queries, n_database), dtype float32
        Only with ``return_scores``: aligned with ``ranking``, larger is better (the inner product, or the
        negated Hamming distance).
    """
    metric = resolve_metric(metric, query, database)
    scores, ranking = _full_search(query, database, metric, "query", "database")
    return (ranking, scores) if return_scores else ranking


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
        Use :class:`selconv.index.ImageIndex` for the top-k without this matrix.
    """
    return (0 - _score_matrix(query_codes, database_codes, "hamming", "query_codes", "database_codes")).astype(np.int32)


def similarities(query, database, *, metric: str = "ip") -> np.ndarray:
    """Similarity of every query to every database item, larger is better: what :func:`rank` sorts.

    Parameters
    ----------
    query : array-like of shape (n_queries, n_features) or (n_queries, n_bytes)
    database : array-like of shape (n_database, n_features) or (n_database, n_bytes)
    metric : {"ip", "hamming", "auto"}, default="ip"
        Inner product, or minus the Hamming distance between packed codes.

    Returns
    -------
    scores : ndarray of shape (n_queries, n_database), float32, in database order
    """
    return _score_matrix(query, database, resolve_metric(metric, query, database), "query", "database")


def average_query_expansion(query, database, ranking, top: int = 5) -> np.ndarray:
    """Average query expansion: each query plus its ``top`` first database vectors, summed and l2-normalised.

    The authors use ``top=5`` (docs/how-it-works.md, "Evaluation"). Rank again with the returned queries.
    The query itself counts once, with the ``top`` database vectors of ``ranking`` (which may include the
    query's own database entry). :class:`selconv.reranking.AlphaQueryExpansion` with ``alpha=0`` computes the
    same from the database alone; this function takes the neighbours given by ``ranking``.

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
    queries = _faiss.as_vectors(query, "query", "ip")
    db = _faiss.as_vectors(database, "database", "ip", dimension=queries.shape[1])
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
    return expand(queries, db[used], np.ones(used.shape, dtype=np.float32), alpha=0.0)
