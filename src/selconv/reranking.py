"""Re-ranking of real-valued descriptors: alpha-query expansion and database-side augmentation (DBA).

Radenovic, Tolias & Chum, "Fine-tuning CNN image retrieval with no human annotation", TPAMI 2018, section
5.3: a vector v is replaced by the l2-normalised weighted sum of itself and its k nearest database vectors,

    v' = l2(v + sum_{i <= k} max(s_i, 0)^alpha d_i),

d_i the i-th neighbour by inner product and s_i = v . d_i its similarity (the cosine for the l2-normalised
descriptors selconv produces). :class:`AlphaQueryExpansion` does it to queries, :class:`DatabaseAugmentation`
to every database vector (its neighbours are the other database vectors). ``alpha = 0`` weights every
neighbour 1 (``0 ** 0 = 1``, whatever the sign of s_i): average query expansion
(:func:`selconv.search.average_query_expansion`, which is this computation with the neighbours given).

Both work on any real descriptors, as arrays (:func:`selconv.metrics.evaluate` takes them too) or through a
search index (:meth:`selconv.index.ImageIndex.search_descriptors` with ``query_expansion=``,
:meth:`selconv.index.ImageIndex.augment_database`), whose own top-k search (exact or approximate) then finds
the neighbours. Binary codes are refused: these are sums of real vectors.
"""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from selconv._compat import Interval, fit_context, validate_data
from selconv._linalg import l2_normalize_rows
from selconv.index import _faiss

__all__ = ["AlphaQueryExpansion", "DatabaseAugmentation"]

# Bound on the elements of a (rows-chunk x n_neighbors x n_features) block of neighbour vectors.
_WORK_ELEMENTS = 1 << 23


def check_real(estimator, X, *, reset: bool) -> np.ndarray:
    """``X`` validated (sets or checks ``n_features_in_``) as a C-contiguous float32 array of real descriptors; a
    TypeError for packed binary codes (uint8), which validation would otherwise turn into floats."""
    if getattr(X, "dtype", None) == np.uint8 or (isinstance(X, list) and np.asarray(X).dtype == np.uint8):
        raise TypeError(
            f"{type(estimator).__name__}: got packed binary codes (uint8); query expansion and database augmentation "
            "sum real-valued descriptors: apply them before hashing, or rank codes without them."
        )
    return np.ascontiguousarray(validate_data(estimator, X, reset=reset, dtype=np.float32))


def expand(vectors: np.ndarray, neighbours: np.ndarray, scores: np.ndarray, alpha: float) -> np.ndarray:
    """l2(v + sum_i w_i d_i) for every row v, with w_i = max(s_i, 0)^alpha (0 for a missing neighbour, score -inf).

    Parameters
    ----------
    vectors : ndarray of shape (n, D), float32
    neighbours : ndarray of shape (n, k, D), float32
        Each row's neighbour vectors, best first.
    scores : ndarray of shape (n, k)
        Their similarities to the row; -inf marks a missing neighbour (its vector is ignored).
    alpha : float
        0 gives every present neighbour weight 1 (average query expansion).

    Returns
    -------
    expanded : ndarray of shape (n, D), float32
        A row whose sum is zero stays zero.
    """
    weights = np.power(np.maximum(scores, 0.0), alpha).astype(np.float32)
    weights[~np.isfinite(scores)] = 0.0
    # Weights times vectors, then summed over the neighbours in order: with weights of 1 (alpha = 0) this is
    # bit for bit the plain sum of average query expansion.
    expanded = vectors + (neighbours * weights[:, :, None]).sum(axis=1)
    return l2_normalize_rows(expanded, out=expanded)


def _rows_per_chunk(k: int, dimension: int) -> int:
    return max(1, _WORK_ELEMENTS // max(1, k * dimension))


def _exact_index(database: np.ndarray):
    index = _faiss.new_index("flat", "ip", database.shape[1], {})
    index.add_with_ids(database, np.arange(len(database), dtype=np.int64))
    return index


def expand_against(vectors: np.ndarray, index, lookup, k: int, alpha: float, *, exclude=None) -> np.ndarray:
    """:func:`expand` of every row of ``vectors`` with its top-k in the faiss ``index``, in chunks of rows.

    ``lookup(ids)`` returns the vectors of ids (-1: any row, its weight is 0). ``exclude`` (one id per row, or
    None) is left out of that row's neighbours (DBA: a database vector is not its own neighbour): k + 1 are
    searched and the excluded id, or else the last, dropped.
    """
    out = np.empty_like(vectors)
    extra = 0 if exclude is None else 1
    step = _rows_per_chunk(k + extra, vectors.shape[1])
    for start in range(0, len(vectors), step):
        chunk = vectors[start : start + step]
        scores, ids = _faiss.search(index, chunk, k + extra)
        if exclude is not None:
            own = ids == exclude[start : start + step, None]
            own[~own.any(axis=1), -1] = True
            keep = ~own
            scores, ids = scores[keep].reshape(len(chunk), k), ids[keep].reshape(len(chunk), k)
        out[start : start + step] = expand(chunk, lookup(ids), scores, alpha)
    return out


class _Reranking(TransformerMixin, BaseEstimator):
    """The parameters and their validation, shared by both re-ranking estimators."""

    _parameter_constraints: dict = {
        "n_neighbors": [Interval(numbers.Integral, 1, None, closed="left")],
        "alpha": [Interval(numbers.Real, 0, None, closed="left")],
    }

    def __init__(self, n_neighbors=10, *, alpha=3.0):
        self.n_neighbors = n_neighbors
        self.alpha = alpha

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


class AlphaQueryExpansion(_Reranking):
    """alpha-query expansion (alpha-QE, Radenovic et al. 2018): each query plus its k best database matches.

    ``transform`` maps a query q to l2(q + sum_{i <= k} max(s_i, 0)^alpha d_i) over its ``n_neighbors`` nearest
    database vectors d_i by inner product (ties: the lower database index first), s_i = q . d_i; rank again
    with the result. ``alpha=0`` is average query expansion (the authors of the paper selconv implements use
    5 neighbours: ``AlphaQueryExpansion(5, alpha=0)``).

    Parameters
    ----------
    n_neighbors : int, default=10
        k, the database vectors added to each query (Radenovic et al.: 10 for their GeM descriptors).
    alpha : float >= 0, default=3.0
        Exponent of the similarity weights (Radenovic et al.: 3); 0 weights every neighbour 1.

    Attributes
    ----------
    database_ : ndarray of shape (n_database, n_features_in_), float32
        The database given to ``fit`` (real-valued descriptors, l2-normalised for cosine weights).
    n_features_in_ : int

    See Also
    --------
    DatabaseAugmentation : the same expansion, applied to every database vector.
    selconv.index.ImageIndex.search_descriptors : takes ``query_expansion=`` and finds the neighbours with the
        index's own (possibly approximate) search.

    Examples
    --------
    >>> import numpy as np
    >>> from selconv.reranking import AlphaQueryExpansion
    >>> database = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    >>> AlphaQueryExpansion(1, alpha=1.0).fit(database).transform([[0.6, 0.8]]).round(3)
    array([[0.351, 0.936]], dtype=float32)
    """

    @fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Store the database the queries are expanded with.

        Parameters
        ----------
        X : array-like of shape (n_database, n_features)
            Real-valued database descriptors (packed uint8 codes are a TypeError).
        y : None
            Ignored.

        Returns
        -------
        self : object
        """
        self.database_ = check_real(self, X, reset=True).copy()
        return self

    def transform(self, X):
        """The expanded queries.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features_in_)
            Real-valued query descriptors.

        Returns
        -------
        X_expanded : ndarray of shape (n_queries, n_features_in_), float32
            Unit-norm rows (a row whose sum is zero stays zero).
        """
        check_is_fitted(self)
        queries = check_real(self, X, reset=False)
        database = self.database_
        return expand_against(queries, _exact_index(database), database.__getitem__, self.n_neighbors, self.alpha)


class DatabaseAugmentation(_Reranking):
    """Database-side augmentation (alpha-weighted DBA, Radenovic et al. 2018): each database vector plus its
    k nearest other database vectors.

    Stateless: ``transform(X)`` takes the WHOLE database X and returns every row x_j replaced by
    l2(x_j + sum_{i <= k} max(s_i, 0)^alpha x_i) over the ``n_neighbors`` rows nearest to x_j other than
    itself (inner product, ties by lower index). Apply it to the database only, once, then search it with the
    queries as they are or after :class:`AlphaQueryExpansion` against the augmented database (Radenovic et
    al.'s "DBA + alpha-QE"). ``fit`` only checks the parameters and the input; ``fit_transform(X)`` is
    ``transform(X)``. A collection that grows must be augmented again (:meth:`ImageIndex.augment_database
    <selconv.index.ImageIndex.augment_database>` for a search index).

    Parameters
    ----------
    n_neighbors : int, default=10
        k, the other database vectors added to each one.
    alpha : float >= 0, default=3.0
        Exponent of the similarity weights; 0 weights every neighbour 1 (average DBA).

    Attributes
    ----------
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from selconv.reranking import DatabaseAugmentation
    >>> database = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=np.float32)
    >>> DatabaseAugmentation(1, alpha=1.0).fit_transform(database).round(3)
    array([[0.943, 0.333],
           [0.351, 0.936],
           [0.281, 0.96 ]], dtype=float32)
    """

    @fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Check the input (nothing is learned).

        Parameters
        ----------
        X : array-like of shape (n_database, n_features)
            Real-valued database descriptors.
        y : None
            Ignored.

        Returns
        -------
        self : object
        """
        check_real(self, X, reset=True)
        return self

    def transform(self, X):
        """The augmented database.

        Parameters
        ----------
        X : array-like of shape (n_database, n_features_in_)
            The whole database (each row's neighbours are the other rows).

        Returns
        -------
        X_augmented : ndarray of shape (n_database, n_features_in_), float32
        """
        check_is_fitted(self)
        database = check_real(self, X, reset=False)
        own = np.arange(len(database), dtype=np.int64)
        return expand_against(
            database, _exact_index(database), database.__getitem__, self.n_neighbors, self.alpha, exclude=own
        )


def check_reranking_options(query_expansion, database_augmentation, metric: str) -> None:
    """Errors for :func:`selconv.metrics.evaluate`'s ``query_expansion`` (an int >= 0 or an AlphaQueryExpansion) and
    ``database_augmentation`` (a DatabaseAugmentation or None), and for either with Hamming ranking."""
    if not isinstance(query_expansion, (AlphaQueryExpansion, numbers.Integral)) or (
        not isinstance(query_expansion, AlphaQueryExpansion) and query_expansion < 0
    ):
        raise ValueError(
            f"query_expansion must be a non-negative integer or an AlphaQueryExpansion; got {query_expansion!r}."
        )
    if database_augmentation is not None and not isinstance(database_augmentation, DatabaseAugmentation):
        raise TypeError(
            f"database_augmentation must be a DatabaseAugmentation or None; got {type(database_augmentation).__name__}."
        )
    reranked = isinstance(query_expansion, AlphaQueryExpansion) or query_expansion or database_augmentation is not None
    if reranked and metric == "hamming":
        raise ValueError(
            "query_expansion and database_augmentation apply to real-valued descriptors, not to Hamming ranking."
        )
