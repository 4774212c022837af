"""Post-processing of aggregated image vectors (ALGORITHMS.md section 6): 2-D in, 2-D out.

The authors' order is psi -> l2 -> rotation (RN) -> drop leading components -> power law -> l2:
:class:`RotationNormalizer` does the first three, :class:`PowerNormalizer` the last two.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from selconv._compat import Interval, _fit_context, validate_data
from selconv._linalg import l2_normalize_rows, principal_axes, whitening_scale
from selconv.base import SelconvPickleMixin

__all__ = ["RotationNormalizer", "PowerNormalizer"]


class RotationNormalizer(SelconvPickleMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Rotate aggregated vectors onto their training principal axes and drop the leading ones (RN).

    ``fit`` l2-normalises the training vectors (if ``normalize_input``), learns their mean m and the
    eigenvectors of their covariance (float64), all of them, by decreasing eigenvalue: a complete
    orthonormal basis, so the rotation keeps the dimension. ``transform`` computes v = P^T (psi - m)
    and drops the first ``n_dropped`` coordinates: the paper drops the 128 leading ones after Temb,
    which carry the burstiness shared by all images rather than what tells them apart.

    The basis beyond the number of training vectors is arbitrary (those directions have zero
    training variance), so RN needs many more training images than dimensions (the authors use
    5,000-6,400); ``fit`` warns when ``n_samples < n_features``. When the model is fitted on the
    test database itself (paper Table 9) the paper drops nothing: use ``n_dropped=0``.

    Parameters
    ----------
    n_dropped : int, default=128
        Number of leading rotated coordinates removed (paper: 128 for Temb, d(d+1) for F-FAemb,
        0 for FV/VLAD and when fitted on the database). Must be below the input dimension.
    whiten : bool, default=False
        Also divide each kept coordinate by the square root of its training variance (the authors
        only rotate). Variances below ``eps * max variance`` are raised to it, keeping the scale finite.
    normalize_input : bool, default=True
        l2-normalise each input vector first, in ``fit`` and ``transform`` (the authors' order).

    Attributes
    ----------
    mean_ : ndarray of shape (n_features_in_,), float64
        Mean m of the (normalised) training vectors.
    components_ : ndarray of shape (n_features_in_, n_features_in_), float64
        The rotation P^T: rows are the principal directions by decreasing variance (each one's
        largest-magnitude entry positive), completed to an orthonormal basis.
    explained_variance_ : ndarray of shape (n_features_in_,), float64
        Training variance along each row of ``components_``.
    n_features_in_ : int
        Input dimension D.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of the input columns, when they all are strings.

    Examples
    --------
    >>> import numpy as np
    >>> from selconv.postprocessing import RotationNormalizer
    >>> X = np.random.default_rng(0).standard_normal((50, 6))
    >>> RotationNormalizer(n_dropped=2).fit_transform(X).shape
    (50, 4)
    """

    _parameter_constraints: dict = {
        "n_dropped": [Interval(numbers.Integral, 0, None, closed="left")],
        "whiten": ["boolean"],
        "normalize_input": ["boolean"],
    }

    def __init__(self, *, n_dropped=128, whiten=False, normalize_input=True):
        self.n_dropped = n_dropped
        self.whiten = whiten
        self.normalize_input = normalize_input

    def _prepare(self, X):
        return l2_normalize_rows(X) if self.normalize_input else X

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Learn the mean and the complete principal basis of the training vectors.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Aggregated training vectors (one per training image).
        y : None
            Ignored.

        Returns
        -------
        self : object
        """
        X = validate_data(self, X, dtype=[np.float64, np.float32])
        n_samples, n_features = X.shape
        if self.n_dropped >= n_features:
            raise ValueError(
                f"RotationNormalizer: n_dropped={self.n_dropped} must be below the number of features "
                f"{n_features}, or nothing is left."
            )
        if n_samples < n_features:
            warnings.warn(
                f"RotationNormalizer fitted on {n_samples} vectors of dimension {n_features}: the principal "
                f"basis beyond the first {n_samples} directions is arbitrary. Fit on many more training "
                f"images than dimensions (the paper uses 5,000-6,400).",
                UserWarning,
                stacklevel=2,
            )
        X = self._prepare(X).astype(np.float64)
        self.mean_ = X.mean(axis=0)
        centred = X - self.mean_
        eigenvalues, eigenvectors = principal_axes(centred.T @ centred / n_samples)
        self.components_ = eigenvectors.T
        self.explained_variance_ = np.clip(eigenvalues, 0.0, None)
        projection = self.components_[self.n_dropped :].T
        if self.whiten:
            projection = projection / whitening_scale(self.explained_variance_[self.n_dropped :])
        # float32 copies made once here, not at every transform of one image.
        self._projection = {np.dtype(np.float64): projection, np.dtype(np.float32): projection.astype(np.float32)}
        self._mean = {np.dtype(np.float64): self.mean_, np.dtype(np.float32): self.mean_.astype(np.float32)}
        self._n_features_out = n_features - self.n_dropped
        return self

    def transform(self, X):
        """Rotate, drop the leading coordinates and optionally whiten.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        X_out : ndarray of shape (n_samples, n_features - n_dropped)
            Same floating dtype as ``X`` (float64 for other input).
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        centred = self._prepare(X) - self._mean[X.dtype]
        return centred @ self._projection[X.dtype]


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

    @_fit_context(prefer_skip_nested_validation=True)
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
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        powered = np.sign(X) * np.power(np.abs(X), self.alpha)
        return l2_normalize_rows(powered)
