"""PCA-whitening of pooled vectors, the baselines' post-processing: 2-D in, 2-D out.

The usual post-processing of pooled CNN vectors: l2 -> centre -> PCA-whitening (learned on the TRAINING
set) -> l2. Whitening learned from a few hundred training images overfits: the smallest sample eigenvalues
are far below the true ones, and dividing by their square root amplifies noise directions until they
dominate the inner product. :class:`PCAWhitening` therefore shrinks the eigenvalues towards their
mean, lambda_i -> lambda_i + s * mean(lambda), with s chosen by default on the training vectors alone
by the Ledoit-Wolf formula (``shrinkage="ledoit-wolf"``), and optionally keeps only the leading
``n_components`` directions.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.covariance import ledoit_wolf_shrinkage
from sklearn.utils.validation import check_is_fitted

from selconv._compat import Interval, StrOptions, fit_context, validate_data
from selconv._linalg import eigenvalue_floor, l2_normalize_rows, principal_axes
from selconv._pickling import SelconvPickleMixin

__all__ = ["PCAWhitening"]


class PCAWhitening(SelconvPickleMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """l2-normalise, centre, PCA-whiten with shrunk eigenvalues, l2-normalise (2-D -> 2-D).

    The standard post-processing of pooled CNN vectors (Babenko & Lempitsky; Tolias et al.;
    Radenovic et al.), regularised so that it survives small training sets. ``fit`` l2-normalises the
    training vectors, takes their mean m and the eigen-decomposition lambda_i, v_i of their
    covariance; ``transform`` maps x to

        z_i = v_i^T (x / ||x|| - m) / sqrt(lambda_i + s * mean(lambda)),   i = 1..n_components,

    then l2-normalises z. s = 0 is plain PCA-whitening; s -> infinity is plain PCA projection
    (a rotation, no whitening). In between, whitening is the inverse square root of the shrunk
    covariance (1 - delta) C + delta * mean(lambda) I with s = delta / (1 - delta).

    Parameters
    ----------
    n_components : int or None, default=None
        Number of leading principal directions kept (dimension reduction); None keeps all
        ``n_features_in_``. With shrinkage > 0 keeping all directions is well defined even when the
        training set has fewer vectors than dimensions (the null space gets the largest, common scale).
    shrinkage : float >= 0 or "ledoit-wolf", default="ledoit-wolf"
        s above. "ledoit-wolf" estimates delta from the TRAINING vectors only with the Ledoit-Wolf
        formula (:func:`sklearn.covariance.ledoit_wolf_shrinkage`), which is large when the training
        set is small relative to the dimension (where plain whitening overfits) and tends to 0 when it
        is large (where plain whitening is what the literature uses). Never choose it on test queries.

    Attributes
    ----------
    mean_ : ndarray of shape (n_features_in_,), float64
        Mean of the l2-normalised training vectors.
    components_ : ndarray of shape (n_components_, n_features_in_), float64
        Principal directions by decreasing variance; each one's largest-magnitude entry is positive.
    explained_variance_ : ndarray of shape (n_components_,), float64
        Covariance eigenvalues lambda_i of the kept directions.
    scale_ : ndarray of shape (n_components_,), float64
        1 / sqrt(lambda_i + s * mean(lambda)), the whitening weights.
    shrinkage_ : float
        The s used (inf when Ledoit-Wolf finds delta = 1: no whitening).
    n_components_ : int
        Output dimension.
    n_features_in_ : int
        Input dimension.

    Examples
    --------
    >>> import numpy as np
    >>> from selconv.postprocessing import PCAWhitening
    >>> X = np.random.default_rng(0).random((50, 8))
    >>> PCAWhitening(n_components=4, shrinkage=0.1).fit_transform(X).shape
    (50, 4)
    """

    _parameter_constraints: dict = {
        "n_components": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "shrinkage": [Interval(numbers.Real, 0, None, closed="left"), StrOptions({"ledoit-wolf"})],
    }

    def __init__(self, n_components=None, *, shrinkage="ledoit-wolf"):
        self.n_components = n_components
        self.shrinkage = shrinkage

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    @fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Learn the mean, principal directions and shrunk whitening weights of the training vectors.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training vectors (e.g. pooled conv features of a held-out training set), n_samples >= 2.
        y : None
            Ignored.

        Returns
        -------
        self : object
        """
        X = validate_data(self, X, reset=True, dtype=[np.float64, np.float32], ensure_min_samples=2)
        n_samples, n_features = X.shape
        if self.n_components is not None and self.n_components > n_features:
            raise ValueError(
                f"PCAWhitening: n_components={self.n_components} must be at most the number of features {n_features}."
            )
        centred = l2_normalize_rows(X.astype(np.float64))
        self.mean_ = centred.mean(axis=0)
        centred -= self.mean_
        covariance = centred.T @ centred / n_samples
        eigenvalues, eigenvectors = principal_axes(covariance)
        eigenvalues = np.clip(eigenvalues, 0.0, None)
        mean_eigenvalue = eigenvalues.mean()

        if self.shrinkage == "ledoit-wolf":
            delta = float(ledoit_wolf_shrinkage(centred, assume_centered=True)) if mean_eigenvalue > 0 else 1.0
            self.shrinkage_ = np.inf if delta >= 1.0 else delta / (1.0 - delta)
        else:
            self.shrinkage_ = float(self.shrinkage)
        if self.shrinkage_ == 0 and n_samples <= n_features and (self.n_components or n_features) >= n_samples:
            warnings.warn(
                f"PCAWhitening: {n_samples} training vectors in {n_features} dimensions and no shrinkage: "
                f"the smallest eigenvalues are zero or noise and whitening will amplify them. Use "
                f"shrinkage > 0 or n_components < {n_samples}.",
                UserWarning,
                stacklevel=2,
            )

        n_components = n_features if self.n_components is None else self.n_components
        if np.isinf(self.shrinkage_):
            scale = np.ones(n_components)
        else:
            denominators = eigenvalues[:n_components] + self.shrinkage_ * mean_eigenvalue
            scale = 1.0 / np.sqrt(np.maximum(denominators, eigenvalue_floor(eigenvalues)))
        self.components_ = eigenvectors[:, :n_components].T
        self.explained_variance_ = eigenvalues[:n_components]
        self.scale_ = scale
        self.n_components_ = n_components
        self._n_features_out = n_components
        return self

    def transform(self, X):
        """l2 -> centre -> project and whiten -> l2.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        X_out : ndarray of shape (n_samples, n_components_)
            Unit-norm rows (a row equal to the training mean maps to 0); float32 unless X is float64.
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        dtype = X.dtype
        projection = (self.components_.T * self.scale_).astype(dtype)
        offset = (self.mean_ @ projection.astype(np.float64)).astype(dtype)
        return l2_normalize_rows(l2_normalize_rows(X) @ projection - offset)
