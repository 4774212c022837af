"""Retrieval evaluation: Oxford/Paris average precision with junk, mAP, UKBench N-S score, :func:`evaluate`.

Ground truth (shared with every dataset loader): a list with one dict per query,
``{"positives": int array of database indices, "junk": int array of database indices}``
(``"junk"`` may be omitted). Rankings are (n_queries, n_ranked) arrays of database indices, best
first, e.g. from :func:`selconv.search.rank`; a ranking may be shorter than the database, and a
positive that is not ranked then contributes nothing (it still counts in the number of positives).
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass

import numpy as np

from selconv.search import average_query_expansion, rank, resolve_metric, similarities

# Bound on the elements of a (queries-chunk x database) work array.
_WORK_ELEMENTS = 1 << 23


class NoPositiveWarning(UserWarning):
    """A query has no positive image: its AP is undefined (NaN) and it is left out of the mAP."""


def _check_rankings(rankings) -> np.ndarray:
    rankings = np.asarray(rankings)
    if rankings.ndim == 1:
        rankings = rankings[None, :]
    if rankings.ndim != 2 or not np.issubdtype(rankings.dtype, np.integer):
        raise ValueError(
            f"rankings must be an integer array of shape (n_queries, n_ranked) holding database indices; "
            f"got dtype {rankings.dtype} and shape {rankings.shape}."
        )
    if rankings.size and rankings.min() < 0:
        raise ValueError("rankings must hold non-negative database indices.")
    return rankings.astype(np.int64, copy=False)


def _index_array(values, what: str) -> np.ndarray:
    array = np.asarray([] if values is None else values).ravel()
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{what} must hold integer database indices; got dtype {array.dtype}.")
    if array.min() < 0:
        raise ValueError(f"{what} holds a negative database index ({array.min()}).")
    return array.astype(np.int64)


def _check_ground_truth(ground_truth, n_queries: int, n_database=None) -> list[tuple[np.ndarray, np.ndarray]]:
    if isinstance(ground_truth, dict) or not hasattr(ground_truth, "__len__"):
        raise TypeError(
            'ground_truth must be a list with one dict per query, {"positives": int array, "junk": int array}.'
        )
    if len(ground_truth) != n_queries:
        raise ValueError(f"ground_truth has {len(ground_truth)} entries but there are {n_queries} queries.")
    checked = []
    for q, entry in enumerate(ground_truth):
        if not isinstance(entry, dict) or "positives" not in entry:
            raise ValueError(f'ground_truth[{q}] must be a dict with a "positives" key (and optionally "junk").')
        positives = _index_array(entry["positives"], f'ground_truth[{q}]["positives"]')
        junk = _index_array(entry.get("junk"), f'ground_truth[{q}]["junk"]')
        for kind, indices in (("positives", positives), ("junk", junk)):
            if n_database is not None and indices.size and indices.max() >= n_database:
                raise ValueError(
                    f'ground_truth[{q}]["{kind}"] holds database index {indices.max()}, but the database has '
                    f"{n_database} images (indices 0..{n_database - 1}): the ground truth refers to another "
                    f"database (a dropped image, e.g. by on_error='skip', shifts every later index)."
                )
        checked.append((positives, junk))
    return checked


def _ranked_relevance(rankings, positive_mask, junk_mask):
    """Positive / junk flags of each ranked item. An image listed both as positive and as junk is junk,
    skipped in the ranking but still counted among the positives, as the official Oxford Buildings
    program ``compute_ap.cpp`` does (it tests the junk set first)."""
    junk = np.take_along_axis(junk_mask, rankings, axis=1)
    positive = np.take_along_axis(positive_mask, rankings, axis=1) & ~junk
    return positive, junk


def _average_precision_rows(rankings, positive_mask, junk_mask):
    """Oxford AP of each row (NaN where the row has no positive), vectorised over queries.

    r_j = 0-based rank of the j-th positive among non-junk items; AP = mean_j (P0 + P1) / 2 with
    P0 = j / r_j (1 if r_j = 0) and P1 = (j + 1) / (r_j + 1).
    """
    positive, junk = _ranked_relevance(rankings, positive_mask, junk_mask)
    r = np.cumsum(~junk, axis=1) - 1
    j = np.cumsum(positive, axis=1) - 1
    # r = -1 before the first non-junk item: those entries are junk, never positive, and masked below.
    with np.errstate(divide="ignore", invalid="ignore"):
        p0 = np.where(r == 0, 1.0, j / r)
        p1 = (j + 1) / (r + 1)
    total = np.where(positive, (p0 + p1) / 2, 0.0).sum(axis=1)
    return _divide_by_positives(total, positive_mask)


def _divide_by_positives(total, positive_mask):
    n_positives = positive_mask.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n_positives > 0, total / n_positives, np.nan)


def _tie_aware_average_precision_rows(scores, positive_mask, junk_mask):
    """Oxford AP of each row of a score matrix (larger is better), averaged over the orders of tied scores.

    The expectation over all orders of each group of equal scores (McSherry & Najork, ECIR 2008) has a
    closed form: a group of n non-junk items holding p positives, after s items holding c positives,
    has a positive at its t-th place with probability p / n, and then (p - 1) t / (n - 1) positives
    before it in the group on average; both precisions of the Oxford formula are linear in that count.
    Without ties this is exactly :func:`_average_precision_rows` of the descending ranking.
    """
    n_rows, n_items = scores.shape
    # Junk last, then by decreasing score: the first n_rows - junk entries are the ranking without junk.
    order = np.lexsort((-scores, junk_mask), axis=1)
    sorted_scores = np.take_along_axis(scores, order, axis=1)
    junk = np.take_along_axis(junk_mask, order, axis=1)
    positive = np.take_along_axis(positive_mask, order, axis=1) & ~junk
    rank = np.broadcast_to(np.arange(n_items), (n_rows, n_items))
    starts = np.ones((n_rows, n_items), dtype=bool)
    starts[:, 1:] = (sorted_scores[:, 1:] != sorted_scores[:, :-1]) | junk[:, 1:]
    # Group ids numbered across rows, so that one bincount computes every row's group statistics.
    group = np.cumsum(starts.ravel()) - 1
    size = np.bincount(group)
    n_pos = np.bincount(group, weights=positive.ravel())
    start = rank.ravel()[starts.ravel()]
    before = (np.cumsum(positive, axis=1) - positive).ravel()[starts.ravel()]
    size, n_pos, start, before = (a[group].reshape(n_rows, n_items) for a in (size, n_pos, start, before))
    t = rank - start
    with np.errstate(divide="ignore", invalid="ignore"):
        above = before + np.where(size > 1, t * (n_pos - 1) / (size - 1), 0.0)
        p0 = np.where(rank == 0, 1.0, above / rank)
        p1 = (above + 1) / (rank + 1)
    total = np.where(~junk, n_pos / size * (p0 + p1) / 2, 0.0).sum(axis=1)
    return _divide_by_positives(total, positive_mask)


def _masks_from_ground_truth(checked, rows, n_database):
    positive_mask = np.zeros((len(rows), n_database), dtype=bool)
    junk_mask = np.zeros((len(rows), n_database), dtype=bool)
    for row, q in enumerate(rows):
        positives, junk = checked[q]
        positive_mask[row, positives] = True
        junk_mask[row, junk] = True
    return positive_mask, junk_mask


def _per_query(rankings, ground_truth, row_function, n_database=None):
    """Apply ``row_function(rankings_chunk, positive_mask, junk_mask)`` over chunks of queries."""
    rankings = _check_rankings(rankings)
    if n_database is not None and rankings.size and rankings.max() >= n_database:
        raise ValueError(f"rankings hold database index {rankings.max()}; the database has {n_database} images.")
    checked = _check_ground_truth(ground_truth, len(rankings), n_database)
    if n_database is None:
        largest = [rankings.max(initial=-1)] + [a.max(initial=-1) for pair in checked for a in pair]
        n_database = int(max(largest)) + 1
    step = max(1, _WORK_ELEMENTS // max(1, n_database))
    out = []
    for start in range(0, len(rankings), step):
        rows = range(start, min(start + step, len(rankings)))
        masks = _masks_from_ground_truth(checked, rows, n_database)
        out.append(row_function(rankings[start : start + step], *masks))
    return np.concatenate(out) if out else np.zeros(0)


def _warn_no_positives(queries) -> None:
    if len(queries):
        warnings.warn(
            f"{len(queries)} quer{'y has' if len(queries) == 1 else 'ies have'} no positive image and "
            f"{'is' if len(queries) == 1 else 'are'} left out of the mAP (AP = NaN): query indices "
            f"{np.asarray(queries).tolist()}.",
            NoPositiveWarning,
            stacklevel=3,
        )


def average_precision(ranking, positives, junk=()) -> float:
    """Average precision of one ranking, exactly as the Oxford/Paris evaluation code computes it.

    Junk images are removed from the ranking first; with r_j the 0-based rank of the j-th positive
    (j = 0..N-1) among the remaining images, ``AP = sum_j (P0 + P1) / (2 N)``, ``P0 = j / r_j``
    (1 if r_j = 0) and ``P1 = (j + 1) / (r_j + 1)`` (the trapezoid rule over recall steps).

    Parameters
    ----------
    ranking : array-like of shape (n_ranked,)
        Database indices, best first.
    positives : array-like of int
        Database indices of the relevant images (N of them).
    junk : array-like of int, default=()
        Database indices ignored by the evaluation.

    Returns
    -------
    ap : float
        In [0, 1]; NaN (with a :class:`NoPositiveWarning`) when there is no positive.
    """
    ranking = np.asarray(ranking)
    if ranking.ndim != 1:
        raise ValueError(f"ranking must be 1-D (database indices, best first); got shape {ranking.shape}.")
    ap = average_precisions(ranking[None, :], [{"positives": positives, "junk": junk}])[0]
    if np.isnan(ap):
        warnings.warn("The query has no positive image: AP is undefined (NaN).", NoPositiveWarning, stacklevel=2)
    return float(ap)


def average_precisions(rankings, ground_truth, *, n_database=None) -> np.ndarray:
    """Average precision of every query (NaN for a query without positives), vectorised.

    Parameters
    ----------
    rankings : array-like of shape (n_queries, n_ranked)
        Database indices, best first.
    ground_truth : list of dict
        One ``{"positives": ..., "junk": ...}`` per query.
    n_database : int or None, default=None
        Size of the database the rankings rank; given, an index of the ground truth or of the
        rankings beyond it is a ``ValueError`` naming the query (:func:`evaluate` always passes it).

    Returns
    -------
    aps : ndarray of shape (n_queries,)
    """
    return _per_query(rankings, ground_truth, _average_precision_rows, n_database)


def tie_aware_average_precisions(scores, ground_truth) -> np.ndarray:
    """Average precision of every query from its similarity scores, fair to tied scores (NaN without positives).

    A ranking must order items of equal score somehow, and any fixed order (e.g. by database index)
    favours whichever images come first: constant descriptors would score well above chance on a
    database sorted by landmark. This returns the Oxford AP averaged over every order of each group
    of tied scores (McSherry & Najork, "Computing information retrieval performance measures
    efficiently in the presence of tied scores", ECIR 2008), in closed form; without ties it equals
    :func:`average_precisions` of the descending ranking.

    Parameters
    ----------
    scores : array-like of shape (n_queries, n_database)
        Larger is better (inner products, or minus Hamming distances: :func:`selconv.search.similarities`).
    ground_truth : list of dict
        One ``{"positives": ..., "junk": ...}`` per query.

    Returns
    -------
    aps : ndarray of shape (n_queries,)
    """
    scores = np.asarray(scores)
    if scores.ndim != 2 or not np.issubdtype(scores.dtype, np.number):
        raise ValueError(f"scores must be a numeric array of shape (n_queries, n_database); got {scores.shape}.")
    if np.issubdtype(scores.dtype, np.floating) and not np.isfinite(scores).all():
        raise ValueError("scores hold NaN or infinite values; check the descriptors for NaN or inf.")
    checked = _check_ground_truth(ground_truth, len(scores), scores.shape[1])
    step = max(1, _WORK_ELEMENTS // max(1, scores.shape[1]))
    out = [np.zeros(0)]
    for start in range(0, len(scores), step):
        rows = range(start, min(start + step, len(scores)))
        masks = _masks_from_ground_truth(checked, rows, scores.shape[1])
        out.append(_tie_aware_average_precision_rows(scores[start : start + step], *masks))
    return np.concatenate(out)


def mean_average_precision(rankings, ground_truth, *, n_database=None) -> float:
    """mAP over the queries that have positives; a :class:`NoPositiveWarning` names the others.

    Parameters
    ----------
    rankings : array-like of shape (n_queries, n_ranked)
    ground_truth : list of dict
    n_database : int or None, default=None
        See :func:`average_precisions`.

    Returns
    -------
    map : float
        NaN if no query has a positive.
    """
    aps = average_precisions(rankings, ground_truth, n_database=n_database)
    return _mean_reporting_missing(aps)


def _mean_reporting_missing(aps) -> float:
    missing = np.flatnonzero(np.isnan(aps))
    _warn_no_positives(missing)
    return float(np.mean(aps[~np.isnan(aps)])) if len(missing) < len(aps) else float("nan")


def ns_score(rankings, ground_truth, *, top: int = 4) -> float:
    """UKBench N-S score: mean number of positives among the first ``top`` ranked (non-junk) images.

    For the standard score (0..4) the ground truth of a UKBench query lists its whole group of 4
    images as positives, the query itself included, and the query is ranked against the database
    that contains it.

    Parameters
    ----------
    rankings : array-like of shape (n_queries, n_ranked)
    ground_truth : list of dict
    top : int, default=4

    Returns
    -------
    score : float
    """
    if not isinstance(top, numbers.Integral) or top <= 0:
        raise ValueError(f"top must be a positive integer; got {top!r}.")

    def hits(rankings_chunk, positive_mask, junk_mask):
        positive, junk = _ranked_relevance(rankings_chunk, positive_mask, junk_mask)
        within_top = np.cumsum(~junk, axis=1) <= top
        return (positive & within_top).sum(axis=1)

    return float(np.mean(_per_query(rankings, ground_truth, hits)))


@dataclass
class RetrievalResult:
    """Outcome of :func:`evaluate`.

    Attributes
    ----------
    map : float
        Mean AP over the queries with positives (NaN if none has).
    average_precisions : ndarray of shape (n_queries,)
        Per-query AP; NaN for a query without positives.
    rankings : ndarray of shape (n_queries, n_database)
        Database indices, best first (after query expansion, if any).
    metric : str
        "ip" or "hamming", the metric actually used.
    queries_without_positives : ndarray of int
        Indices of the queries left out of the mAP.
    """

    map: float
    average_precisions: np.ndarray
    rankings: np.ndarray
    metric: str
    queries_without_positives: np.ndarray


def evaluate(query_descriptors, database_descriptors, ground_truth, *, metric="auto", query_expansion=0):
    """Rank the database for each query and compute the Oxford AP / mAP (tie-aware).

    AP is :func:`tie_aware_average_precisions` of the similarity scores: images with equal scores
    (duplicate descriptors, equal Hamming distances) share their expected rank instead of being
    ordered by database index. ``rankings`` in the result order ties by database index.

    Parameters
    ----------
    query_descriptors : array-like of shape (n_queries, D)
        Real descriptors or packed uint8 hash codes.
    database_descriptors : array-like of shape (n_database, D)
    ground_truth : list of dict
        One ``{"positives": ..., "junk": ...}`` per query, indices into ``database_descriptors``
        (an index beyond it is a ``ValueError``; so are NaN or infinite descriptors).
    metric : {"auto", "ip", "hamming"}, default="auto"
        "auto": Hamming distance for uint8 codes, inner product otherwise.
    query_expansion : int, default=0
        If > 0, average query expansion with that many top images, then rank again (the authors use 5;
        real-valued descriptors only).

    Returns
    -------
    result : RetrievalResult
    """
    metric = resolve_metric(metric, query_descriptors, database_descriptors)
    if not isinstance(query_expansion, numbers.Integral) or query_expansion < 0:
        raise ValueError(f"query_expansion must be a non-negative integer; got {query_expansion!r}.")
    rankings = rank(query_descriptors, database_descriptors, metric=metric)
    if query_expansion:
        if metric == "hamming":
            raise ValueError("query_expansion applies to real-valued descriptors, not to Hamming ranking of codes.")
        query_descriptors = average_query_expansion(
            query_descriptors, database_descriptors, rankings, top=query_expansion
        )
        rankings = rank(query_descriptors, database_descriptors, metric="ip")
    aps = tie_aware_average_precisions(
        similarities(query_descriptors, database_descriptors, metric=metric), ground_truth
    )
    return RetrievalResult(
        map=_mean_reporting_missing(aps),
        average_precisions=aps,
        rankings=rankings,
        metric=metric,
        queries_without_positives=np.flatnonzero(np.isnan(aps)),
    )
