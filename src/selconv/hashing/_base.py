"""What every hasher shares: input validation, the n_bits rules, chunked encoding and bit packing.

Codes are packed with :func:`numpy.packbits` in big-endian bit order: bit ``t`` of a code is bit
``7 - t % 8`` of byte ``t // 8``, ``n_bits / 8`` bytes per code: the layout faiss binary indexes
(``IndexBinaryFlat``, used by :class:`selconv.index.ImageIndex`) take.
"""

from __future__ import annotations

import numbers
from abc import ABCMeta, abstractmethod

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from selconv._compat import Interval, fit_context, validate_data
from selconv._linalg import determined_directions, sign_columns
from selconv._pickling import SelconvPickleMixin
from selconv.exceptions import check_fitted_finite

# Rows encoded at once in transform: bounds the float work array (rows x n_bits) for millions of images.
_TRANSFORM_CHUNK_ROWS = 65536


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Pack (n, n_bits) 0/1 values into (n, n_bits / 8) uint8 codes, big-endian bit order."""
    return np.packbits(np.asarray(bits, dtype=np.uint8), axis=1, bitorder="big")


def leading_principal_directions(X: np.ndarray, n_components: int, *, estimator=None, param: str = "n_bits"):
    """Mean, leading principal directions and their variances of the rows of X (float64), by SVD of the data.

    (:func:`selconv._linalg.principal_axes` is the eigen-decomposition of a covariance matrix instead.)

    Returns ``(mean, axes, variances)`` with ``axes`` of shape (n_features, n_components), columns
    sorted by decreasing variance, each column's sign fixed (largest |entry| positive) so that the
    result does not depend on the LAPACK build. Raises a ValueError naming ``estimator`` and ``param``
    when X determines fewer than ``n_components`` directions (see
    :func:`selconv._linalg.determined_directions`): the remaining axes would be arbitrary.
    """
    mean = X.mean(axis=0)
    _, singular, vt = np.linalg.svd(X - mean, full_matrices=False)
    all_variances = singular**2 / max(X.shape[0] - 1, 1)
    n_determined = determined_directions(all_variances, X.shape[0])
    if n_components > n_determined:
        raise ValueError(
            f"{type(estimator).__name__}: {param}={n_components} needs {n_components} principal directions, but the "
            f"n_samples = {X.shape[0]} training vectors determine only {n_determined}; fit on more vectors "
            f"(distinct, more than {param}) or lower {param}."
        )
    return mean, sign_columns(vt[:n_components].T), all_variances[:n_components]


def unpack_bits(codes: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_bits`: (n, n_bytes) uint8 -> (n, 8 * n_bytes) uint8 0/1."""
    return np.unpackbits(np.asarray(codes, dtype=np.uint8), axis=1, bitorder="big")


def check_packable(n_bits: int, name: str | None = None) -> None:
    """The one rule on a code length: a multiple of 8, since codes are stored packed (n_bits / 8 bytes)."""
    if n_bits % 8:
        raise ValueError(
            (f"{name}: " if name else "")
            + f"n_bits must be a multiple of 8 (codes are stored packed, n_bits / 8 bytes); got n_bits={n_bits}."
        )


class BaseHasher(
    SelconvPickleMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator, metaclass=ABCMeta
):
    """Base class of the hashers: 2-D real descriptors -> packed binary codes.

    Subclasses implement ``_fit(X)`` (X validated, float64, n_bits checked) and
    ``_encode(X)`` returning an (n, n_bits) boolean array for one chunk of rows. ``transform`` packs
    the bits (``n_bits / 8`` uint8 per row); ``transform_bits`` returns them unpacked.
    """

    _parameter_constraints: dict = {
        "n_bits": [Interval(numbers.Integral, 8, None, closed="left")],
    }

    @abstractmethod
    def _fit(self, X: np.ndarray):
        """Learn the hash function from validated float64 X; return self."""

    @abstractmethod
    def _encode(self, X: np.ndarray) -> np.ndarray:
        """(n, n_features) float64 -> (n, n_bits) bool."""

    def _validate_fit_input(self, X) -> np.ndarray:
        X = validate_data(self, X, reset=True, dtype=np.float64, ensure_min_samples=1)
        n_samples, n_features = X.shape
        name = type(self).__name__
        check_packable(self.n_bits, name)
        if self.n_bits > n_features:
            raise ValueError(
                f"{name}: n_bits={self.n_bits} exceeds the number of features of X (n_features = {n_features}); "
                f"the codes come from a projection to n_bits dimensions."
            )
        if self.n_bits > n_samples:
            raise ValueError(
                f"{name}: n_bits={self.n_bits} exceeds the number of training samples (n_samples = {n_samples}); "
                f"the PCA needs at least n_bits samples."
            )
        return X

    @fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Learn the hash function.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training descriptors; ``n_bits <= min(n_samples, n_features)``.
        y : None
            Ignored.

        Returns
        -------
        self
        """
        self._fit(self._validate_fit_input(X))
        check_fitted_finite(
            self,
            hint="The training descriptors are too large for float64 products (beyond about 1e154) or a "
            "penalty/weight parameter is extreme: rescale the descriptors (e.g. l2-normalise them) or use "
            "milder parameters.",
        )
        return self

    def transform_bits(self, X) -> np.ndarray:
        """Binary codes, unpacked.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        bits : ndarray of shape (n_samples, n_bits), dtype uint8, values 0/1
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        bits = np.empty((X.shape[0], self.n_bits), dtype=np.uint8)
        for start in range(0, X.shape[0], _TRANSFORM_CHUNK_ROWS):
            stop = start + _TRANSFORM_CHUNK_ROWS
            bits[start:stop] = self._encode(X[start:stop])
        return bits

    def transform(self, X) -> np.ndarray:
        """Binary codes, packed (big-endian bit order, the layout of faiss binary indexes).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        codes : ndarray of shape (n_samples, n_bits // 8), dtype uint8
        """
        return pack_bits(self.transform_bits(X))

    @property
    def _n_features_out(self):
        return self.n_bits // 8

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Output is always uint8 codes, whatever the input float dtype.
        tags.transformer_tags.preserves_dtype = []
        return tags
