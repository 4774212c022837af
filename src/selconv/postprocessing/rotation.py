"""Rotation normalisation of aggregated image vectors (RN, docs/how-it-works.md, section 6): 2-D in, 2-D out."""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from selconv._compat import Interval, StrOptions, fit_context, validate_data
from selconv._linalg import determined_directions, l2_normalize_rows, principal_axes, whitening_scale
from selconv._pickling import SelconvPickleMixin
from selconv.exceptions import check_finite, check_fitted_finite

__all__ = ["RotationNormalizer"]


_UNNORMALIZED_HINT = (
    "The input vectors are too large for the covariance in float64 (squares beyond 1e308): keep "
    "normalize_input=True or rescale them."
)


class RotationNormalizer(SelconvPickleMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Rotate aggregated vectors onto their training principal axes and drop the leading ones (RN).

    ``fit`` l2-normalises the training vectors (if ``normalize_input``), learns their mean m and the
    eigenvectors of their covariance (float64), all of them, by decreasing eigenvalue: a complete
    orthonormal basis, so the rotation keeps the dimension. ``transform`` computes v = P^T (psi - m)
    and drops the first ``n_dropped`` coordinates: the paper drops the 128 leading ones after Temb,
    which carry the burstiness shared by all images rather than what tells them apart.

    n training vectors determine at most n - 1 directions (their centred span): the rest of a
    complete basis would be arbitrary, and the power law that follows is not rotation-invariant, so
    an arbitrary completion changes the ranking. RN therefore needs more training images than
    dimensions (the authors use 5,000-6,400). With fewer, ``fit`` raises a ValueError that says so
    (``undetermined="raise"``, the default: in a grid search the candidate then scores NaN with
    that reason), keeps only the determined directions (``undetermined="drop"``: the output then
    has ``n_determined_ - n_dropped`` columns), or does not rotate at all (``undetermined="center"``:
    the vectors are only normalised and centred, which keeps every dimension and leaves the power
    law acting on the original coordinates; no leading direction can then be dropped). When the model is fitted
    on the test database itself (paper Table 9) the paper drops nothing: use ``n_dropped=0``.

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
    undetermined : {"raise", "drop", "center"}, default="raise"
        What ``fit`` does when the training vectors determine fewer directions than their dimension
        (fewer vectors than dimensions, or duplicates): "raise" a ValueError, "drop" the
        undetermined directions from the basis, or "center" only (no rotation; ``n_dropped`` must
        then be 0). The last two deviate from the paper, which keeps a complete basis; they only
        arise with fewer training images than the paper uses. With a few dozen images "center"
        retrieves far better than "drop", whose output has fewer dimensions than images.

    Attributes
    ----------
    mean_ : ndarray of shape (n_features_in_,), float64
        Mean m of the (normalised) training vectors.
    components_ : ndarray of shape (n_determined_, n_features_in_), float64
        The rotation P^T: rows are the principal directions by decreasing variance (each one's
        largest-magnitude entry positive); all ``n_features_in_`` of them unless ``undetermined="drop"``
        removed some. The identity when ``rotated_`` is False.
    explained_variance_ : ndarray of shape (n_determined_,), float64
        Training variance along each row of ``components_``.
    n_determined_ : int
        Number of directions the training vectors determine: at most n_samples - 1, and only those
        with a variance above ``n_features * eps * largest variance``.
    rotated_ : bool
        False when ``undetermined="center"`` skipped the rotation (too few training vectors).
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
        "undetermined": [StrOptions({"raise", "drop", "center"})],
    }

    def __init__(self, *, n_dropped=128, whiten=False, normalize_input=True, undetermined="raise"):
        self.n_dropped = n_dropped
        self.whiten = whiten
        self.normalize_input = normalize_input
        self.undetermined = undetermined

    def _prepare(self, X):
        return l2_normalize_rows(X) if self.normalize_input else X

    @fit_context(prefer_skip_nested_validation=True)
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
        X = self._prepare(X).astype(np.float64)
        self.mean_ = X.mean(axis=0)
        centred = X - self.mean_
        covariance = centred.T @ centred / n_samples
        check_finite(covariance, estimator=self, what="the training covariance", hint=_UNNORMALIZED_HINT)
        eigenvalues, eigenvectors = principal_axes(covariance)
        self.n_determined_ = determined_directions(eigenvalues, n_samples)
        self.rotated_ = not (self.n_determined_ < n_features and self.undetermined == "center")
        if not self.rotated_:
            if self.n_dropped:
                raise ValueError(
                    f"RotationNormalizer: undetermined='center' skips the rotation ({n_samples} training vectors "
                    f"determine only {self.n_determined_} of {n_features} directions), so no leading direction "
                    f"can be dropped: set n_dropped=0 (got {self.n_dropped})."
                )
            eigenvalues, eigenvectors = centred.var(axis=0), np.eye(n_features)
        elif self.n_determined_ < n_features:
            if self.undetermined == "raise":
                raise ValueError(
                    f"RotationNormalizer: n_samples = {n_samples} training vectors of dimension n_features = "
                    f"{n_features} determine only {self.n_determined_} directions of the rotation; the rest of "
                    f"the basis would be arbitrary and would change the ranking. Fit on more training images "
                    f"than dimensions (the paper uses 5,000-6,400), or set undetermined='drop' to keep only "
                    f"the determined directions, or undetermined='center' to skip the rotation."
                )
            eigenvalues, eigenvectors = eigenvalues[: self.n_determined_], eigenvectors[:, : self.n_determined_]
        if self.n_dropped >= len(eigenvalues):
            raise ValueError(
                f"RotationNormalizer: n_dropped={self.n_dropped} must be below the number of kept directions "
                f"{len(eigenvalues)} (dimension {n_features}, {self.n_determined_} determined by {n_samples} "
                f"training vectors), or nothing is left."
            )
        self.components_ = eigenvectors.T
        self.explained_variance_ = np.clip(eigenvalues, 0.0, None)
        projection = self.components_[self.n_dropped :].T
        if self.whiten:
            projection = projection / whitening_scale(self.explained_variance_[self.n_dropped :])
        # float32 copies made once here, not at every transform of one image; keyed by dtype name (plain
        # strings, so that skops.io can store the fitted state).
        self._projection = {"float64": projection, "float32": projection.astype(np.float32)}
        self._mean = {"float64": self.mean_, "float32": self.mean_.astype(np.float32)}
        self._n_features_out = len(eigenvalues) - self.n_dropped
        check_fitted_finite(self, hint=_UNNORMALIZED_HINT)
        return self

    def transform(self, X):
        """Rotate, drop the leading coordinates and optionally whiten.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        X_out : ndarray of shape (n_samples, n_determined_ - n_dropped)
            Same floating dtype as ``X`` (float64 for other input).
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        centred = self._prepare(X) - self._mean[X.dtype.name]
        rotated = centred @ self._projection[X.dtype.name]
        check_finite(rotated, estimator=self, what="the rotated vectors", hint=_UNNORMALIZED_HINT)
        return rotated
