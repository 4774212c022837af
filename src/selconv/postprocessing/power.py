"""Power-law normalisation of aggregated image vectors (PN, docs/how-it-works.md, section 7): 2-D in, 2-D out."""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from selconv._compat import Interval, fit_context, validate_data
from selconv._linalg import l2_normalize_rows
from selconv._pickling import SelconvPickleMixin

__all__ = ["PowerNormalizer"]


class PowerNormalizer(SelconvPickleMixin, OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Power-law normalisation followed by l2-normalisation (PN): ``v <- sign(v) |v|^alpha``, ``v <- v / ||v||``.

    Nothing is learned; ``fit`` only checks the input. A zero row stays zero.

    Parameters
    ----------
    alpha : float, default=0.5
        Exponent (> 0); the paper uses 0.5 in all experiments, 1 leaves only the l2-normalisation.

    Attributes
    ----------
    n_features_in_ : int
        Input (and output) dimension.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of the input columns, when they all are strings.

    Examples
    --------
    >>> import numpy as np
    >>> from selconv.postprocessing import PowerNormalizer
    >>> PowerNormalizer().fit_transform(np.array([[9.0, -16.0], [0.0, 0.0]]))
    array([[ 0.6, -0.8],
           [ 0. ,  0. ]])
    """

    _parameter_constraints: dict = {"alpha": [Interval(numbers.Real, 0, None, closed="neither")]}

    def __init__(self, alpha=0.5):
        self.alpha = alpha

    @fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Check the input and record its dimension; nothing is learned.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : None
            Ignored.

        Returns
        -------
        self : object
        """
        validate_data(self, X, dtype=[np.float64, np.float32])
        return self

    def transform(self, X):
        """Apply ``sign(v) |v|^alpha``, then l2-normalise each row.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        X_out : ndarray of shape (n_samples, n_features)
            Unit-norm rows (zero rows stay zero); same floating dtype as ``X`` (float64 for other input).
        """
        check_is_fitted(self)
        self._validate_params()  # set_params after fit must not slip an out-of-range value through
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        # The l2-normalisation cancels any per-row factor, so each row is first divided by its
        # largest |v|: |v|^alpha then lies in [0, 1] and neither overflows (large alpha, large v)
        # nor underflows to an all-zero row (large alpha, small v), whatever alpha > 0 is.
        magnitude = np.abs(X)
        largest = magnitude.max(axis=1, keepdims=True)
        np.divide(magnitude, largest, out=magnitude, where=largest > 0)
        powered = np.copysign(np.power(magnitude, self.alpha, out=magnitude), X)
        return l2_normalize_rows(powered)
