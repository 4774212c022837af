"""Aggregation of each image's embedded local features into one vector (docs/how-it-works.md, section 5).

Every aggregator maps a list of per-image local feature sets (n_i, D) to ONE 2-D float32 array
(n_images, D): democratic pooling (the paper's psi_d), sum, average, max and generalised max pooling.
An image without local features gets a zero row and an :class:`EmptyImageWarning`, never NaN; an
output that overflows float32 raises a :class:`~selconv.exceptions.NonFiniteError`.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
import scipy.linalg
from scipy.linalg.blas import get_blas_funcs
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from selconv._compat import Interval, fit_context
from selconv._linalg import l2_normalize_rows
from selconv._pickling import SelconvPickleMixin
from selconv._ragged import check_local_sets
from selconv.exceptions import OVERFLOW_HINT, NonFiniteError, check_finite

__all__ = [
    "EmptyImageWarning",
    "DemocraticAggregator",
    "SumPooling",
    "AveragePooling",
    "MaxPooling",
    "GeneralizedMaxPooling",
]


# The smallest row norm whose square does not underflow float32 (l2_normalize_rows's rule for a safe row).
_SAFE_NORM = np.sqrt(np.finfo(np.float32).tiny)


def _upper_gram(Y: np.ndarray) -> np.ndarray:
    """The upper triangle of ``Y @ Y.T`` (the strict lower one is zero), straight from BLAS syrk.

    ``Y @ Y.T`` calls syrk too, then copies the triangle into the other half; for an image's small Gram
    matrix (MAX mask: n about 230) that copy is a tenth of the democratic stage, and the Sinkhorn steps
    need only the triangle (BLAS symv).
    """
    (syrk,) = get_blas_funcs(("syrk",), (Y,))
    return syrk(1.0, Y.T, trans=1)  # Y.T of a C-ordered Y is Fortran-ordered: no copy


class EmptyImageWarning(UserWarning):
    """Some images have no local feature; their aggregated vector is all zeros."""


class _BaseAggregator(SelconvPickleMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Shared machinery: subclasses only define ``_aggregate(Y) -> (D,)`` for one non-empty image."""

    _parameter_constraints: dict = {}

    def _aggregate(self, Y: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    @fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Check the input and record its dimension; nothing is learned.

        Parameters
        ----------
        X : list of array-like of shape (n_local_i, n_features)
            Local feature sets, one per image; ``n_local_i`` may differ and may be 0.
        y : None
            Ignored.

        Returns
        -------
        self : object
        """
        check_local_sets(X, estimator=self, reset=True)
        self._n_features_out = self.n_features_in_
        return self

    def transform(self, X):
        """Aggregate each image's local features into one vector.

        Parameters
        ----------
        X : list of array-like of shape (n_local_i, n_features)
            Local feature sets, one per image, with the ``n_features_in_`` seen in ``fit``.

        Returns
        -------
        X_out : ndarray of shape (n_images, n_features), float32
            One row per image; all zeros for an image without local features
            (an :class:`EmptyImageWarning` then names those images).
        """
        check_is_fitted(self)
        self._validate_params()  # set_params after fit must not slip an out-of-range value through
        sets = check_local_sets(X, estimator=self, reset=False)
        aggregated = self._aggregate_sets(sets)
        warn_empty_images(self, [index for index, Y in enumerate(sets) if len(Y) == 0], len(sets))
        return aggregated

    def _aggregate_sets(self, sets: list[np.ndarray]) -> np.ndarray:
        """(n_images, D) float32 of validated sets; zero rows for empty images, without warning."""
        aggregated = np.zeros((len(sets), self.n_features_in_), dtype=np.float32)
        for index, Y in enumerate(sets):
            if len(Y):
                aggregated[index] = self._aggregate(Y)
        check_finite(aggregated, estimator=self, what="the aggregated vectors", hint=OVERFLOW_HINT)
        return aggregated


def warn_empty_images(estimator, empty: list[int], n_images: int) -> None:
    """One :class:`EmptyImageWarning` naming the images (indices ``empty``) that have no local feature."""
    if not empty:
        return
    shown = ", ".join(map(str, empty[:20])) + (", ..." if len(empty) > 20 else "")
    warnings.warn(
        f"{type(estimator).__name__}: {len(empty)} of {n_images} images have no local feature; "
        f"their aggregated vectors are zero (image indices: {shown}).",
        EmptyImageWarning,
        stacklevel=3,
    )


class DemocraticAggregator(_BaseAggregator):
    """Democratic aggregation psi_d (Jegou & Zisserman CVPR 2014; the paper's aggregation).

    Weights lambda_i >= 0 are chosen so that every (l2-normalised) local feature y_i contributes
    about the same share lambda_i y_i^T psi of psi^T psi, where psi = sum_i lambda_i y_i: bursts of
    similar features no longer dominate. (Exactly so at convergence when no similarity is negative.)
    The weights come from the authors' modified Sinkhorn iteration: G = Y^T Y with the local features
    as columns of Y, negative entries set to 0, lambda = 1, then ``n_iter`` times
    delta = (column sums of G)^-gamma, G <- diag(delta) G diag(delta), lambda <- lambda * delta.

    The iteration is run on lambda alone: after any number of steps G = diag(lambda) G_0 diag(lambda),
    so its column sums are lambda * (G_0 lambda), one matrix-vector product per step instead of
    rescaling the n x n matrix twice.

    Parameters
    ----------
    n_iter : int, default=10
        Number of Sinkhorn steps (authors: 10). 0 gives sum pooling of the normalised features.
    gamma : float in [0, 1], default=0.5
        Exponent of the column sums (authors: 0.5); 0 gives sum pooling. In log coordinates a step
        is log(lambda) <- log(lambda) - gamma * log(column sums), and along the overall scale of
        lambda it multiplies the distance to the fixed point by (1 - 2 gamma): the iteration
        converges for 0 < gamma < 1, alternates between two scales of the same (democratic)
        direction at gamma = 1, and diverges geometrically for gamma > 1 (by 2x per step at 1.5),
        overflowing float32 to NaN within a few steps. Hence the range [0, 1].

    Attributes
    ----------
    n_features_in_ : int
        Dimension D of the local features (and of the output).

    Examples
    --------
    >>> import numpy as np
    >>> from selconv.aggregation import DemocraticAggregator
    >>> Y = np.eye(3, dtype=np.float32)[[0, 0, 0, 1]]  # one feature repeated three times
    >>> DemocraticAggregator().democratic_weights(Y).round(3)  # each weighted copy contributes 1/3
    array([0.577, 0.577, 0.577, 1.   ], dtype=float32)
    >>> DemocraticAggregator().fit_transform([Y]).round(3)  # sum pooling would give [3, 1, 0]
    array([[1.732, 1.   , 0.   ]], dtype=float32)
    """

    _parameter_constraints: dict = {
        "n_iter": [Interval(numbers.Integral, 0, None, closed="left")],
        "gamma": [Interval(numbers.Real, 0, 1, closed="both")],
    }

    def __init__(self, n_iter=10, *, gamma=0.5):
        self.n_iter = n_iter
        self.gamma = gamma

    def democratic_weights(self, Y: np.ndarray) -> np.ndarray:
        """The weights lambda of one image's local features.

        Parameters
        ----------
        Y : ndarray of shape (n_local, n_features)
            One image's local features (rows; they are l2-normalised here).

        Returns
        -------
        weights : ndarray of shape (n_local,), float32
            lambda, so that the aggregate is ``weights @ normalised(Y)``; 0 for a zero row.
        """
        return self._weights(l2_normalize_rows(np.asarray(Y, dtype=np.float32)))

    def _weights(self, Y: np.ndarray) -> np.ndarray:
        gram = _upper_gram(Y)
        np.maximum(gram, 0, out=gram)
        # Only a zero local feature has a zero column sum (a unit one has G_ii = 1): it takes no
        # weight and drops out of the iteration, whose column sums are then all positive.
        kept = np.flatnonzero(np.diagonal(gram) > 0)
        if len(kept) == len(Y):
            return self._iterate(gram, np.ones(len(Y), dtype=np.float32))
        weights = np.zeros(len(Y), dtype=np.float32)
        weights[kept] = self._iterate(gram[np.ix_(kept, kept)], np.ones(len(kept), dtype=np.float32))
        return weights

    def _iterate(self, gram: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``n_iter`` steps from ``weights`` (modified in place, returned); ``gram``: its upper triangle."""
        if not len(weights):  # every local feature was zero; BLAS symv rejects an empty matrix
            return weights
        (symv,) = get_blas_funcs(("symv",), (gram, weights))
        for _ in range(self.n_iter):
            delta = symv(1.0, gram, weights)
            delta *= weights  # the column sums of diag(weights) G_0 diag(weights)
            np.power(delta, -self.gamma, out=delta)
            weights *= delta
        return weights

    def _aggregate(self, Y):
        # Without normalising the rows: with D = diag(1 / ||y_i||) the Gram matrix of the normalised rows is
        # D G D (G that of the raw rows, whose diagonal gives the norms), and the iteration on lambda over
        # D G D is the iteration on u = D lambda over G started from u = diag(D); psi = lambda @ (D Y) = u @ Y.
        # The same numbers to float rounding, without the pass over the n x D rows that normalising takes
        # (an image's Gram matrix is small: that pass was a third of the time). Rows whose sum of squares
        # under- or overflows, or is zero, take the normalising path (l2_normalize_rows's rescue).
        gram = _upper_gram(Y)
        norms = np.sqrt(np.diagonal(gram))
        if not (np.all(norms >= _SAFE_NORM) and np.all(np.isfinite(norms))):
            Y = l2_normalize_rows(Y)
            return self._weights(Y) @ Y
        np.maximum(gram, 0, out=gram)
        return self._iterate(gram, 1.0 / norms) @ Y


class SumPooling(_BaseAggregator):
    """Sum pooling: psi = sum_i y_i.

    Attributes
    ----------
    n_features_in_ : int
        Dimension D of the local features (and of the output).
    """

    def _aggregate(self, Y):
        return Y.sum(axis=0, dtype=np.float64)


class AveragePooling(_BaseAggregator):
    """Average pooling: psi = (1/n) sum_i y_i.

    Attributes
    ----------
    n_features_in_ : int
        Dimension D of the local features (and of the output).
    """

    def _aggregate(self, Y):
        return Y.mean(axis=0, dtype=np.float64)


class MaxPooling(_BaseAggregator):
    """Max pooling: psi_k = max_i y_ik, per dimension.

    Attributes
    ----------
    n_features_in_ : int
        Dimension D of the local features (and of the output).
    """

    def _aggregate(self, Y):
        return Y.max(axis=0)


class GeneralizedMaxPooling(_BaseAggregator):
    """Generalised max pooling (Murray & Perronnin CVPR 2014), in its dual (kernel) form.

    psi minimises ||Y psi - 1||^2 + reg ||psi||^2 over the rows y_i of Y, so that every local
    feature has similarity about 1 to psi: psi = Y^T a with (Y Y^T + reg I) a = 1 (docs/how-it-works.md,
    section 5, writes Y with features as columns: (Y^T Y + reg I) a = 1, psi = Y a). The local features are
    used as given (no normalisation).

    Parameters
    ----------
    reg : float, default=1.0
        Ridge regularisation lambda of Murray & Perronnin (> 0); large values tend to sum pooling
        divided by ``reg``.

    Attributes
    ----------
    n_features_in_ : int
        Dimension D of the local features (and of the output).
    """

    _parameter_constraints: dict = {"reg": [Interval(numbers.Real, 0, None, closed="neither")]}

    def __init__(self, reg=1.0):
        self.reg = reg

    def _aggregate(self, Y):
        Y = Y.astype(np.float64)  # the float32 Gram matrix overflows long before the float64 one
        kernel = Y @ Y.T
        kernel[np.diag_indices_from(kernel)] += self.reg
        try:
            coefficients = scipy.linalg.solve(kernel, np.ones(len(Y)), assume_a="pos")
        except (np.linalg.LinAlgError, ValueError) as error:  # singular, or non-finite from overflow
            raise NonFiniteError(
                f"GeneralizedMaxPooling(reg={self.reg!r}): the kernel system of an image with {len(Y)} local "
                f"features cannot be solved ({error}). Increase reg (it must dominate rounding errors of the "
                f"Gram matrix, whose largest entry is {np.abs(kernel).max():.3g}) or rescale the input."
            ) from None
        return coefficients @ Y
