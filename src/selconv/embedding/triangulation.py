"""Triangulation embedding (Temb) of local features, Jegou & Zisserman CVPR 2014: ragged in, ragged out.

docs/how-it-works.md, section 4: a k-means codebook c_1..c_|C| is learned on the (l2-normalised, PCA-reduced)
training local features; each local feature x is mapped to the concatenation of its normalised
residuals phi(x) = [(x - c_j) / ||x - c_j||]_j in R^{|C| d}, centred on the training mean phibar and
whitened by P = diag(lambda^-1/2) V^T, where the smallest ``n_clamped`` eigenvalues of the training
covariance are clamped; the result y = P (phi(x) - phibar) is l2-normalised.
"""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from selconv._compat import Interval, fit_context
from selconv._pickling import SelconvPickleMixin
from selconv._ragged import check_local_sets
from selconv.embedding._codebook import CHUNK_ROWS as _CHUNK_ROWS  # read at each transform (tests vary it)
from selconv.embedding._codebook import (
    check_enough_features,
    check_whitening_fit,
    clamped_whitening,
    embed_sets,
    kmeans_codebook,
    learn_clamped_whitening,
    normalized_residuals,
    sample_features,
    whitening_shift,
)
from selconv.exceptions import check_fitted_finite

__all__ = ["TriangulationEmbedding"]


class TriangulationEmbedding(SelconvPickleMixin, TransformerMixin, BaseEstimator):
    """Embed every local feature with the triangulation embedding phi_Delta (paper section 4.1).

    ``fit`` learns, on the training local features (typically the output of
    :class:`~selconv.local_pca.LocalPCA`): a k-means codebook on a uniform random sample of at most
    ``max_samples`` of them, then the mean ``phibar`` and the covariance (float64) of phi over ALL
    of them, whose eigen-decomposition gives the whitening projection
    P = diag(lambda^-1/2) V^T with the ``n_clamped`` smallest eigenvalues set to the
    ``n_clamped``-th smallest (the authors' choice, which stops the near-null directions from
    dominating). ``transform`` maps each local feature x to P (phi(x) - phibar) / ||P (phi(x) - phibar)||.

    Parameters
    ----------
    n_clusters : int, default=20
        Codebook size |C|; the embedding has dimension |C| d for d-dimensional input. The paper's
        (d, |C|) per final dimension are in docs/how-it-works.md, section 4 (20 for D = 512).
    n_clamped : int, default=33
        Number of smallest covariance eigenvalues clamped to the ``n_clamped``-th smallest (paper and
        Jegou & Zisserman: 33). 0 or 1 leaves the spectrum unchanged. At most |C| d.
    max_samples : int, default=100_000
        Most local features used by k-means; bounds its time and memory. The mean and covariance
        always use every training local feature.
    kmeans_n_init : int, default=1
        Number of k-means++ restarts of :class:`sklearn.cluster.KMeans` (its default for k-means++).
    random_state : int, RandomState instance or None, default=None
        Draws the k-means sample and seeds k-means; fixed, the fit is reproducible bit for bit.

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features_in_), float32
        The codebook c_1..c_|C|.
    mean_ : ndarray of shape (n_clusters * n_features_in_,), float64
        phibar, the mean of phi over the training local features.
    eigenvalues_ : ndarray of shape (n_clusters * n_features_in_,), float64
        Covariance eigenvalues in decreasing order, after clamping.
    projection_ : ndarray of shape (n_clusters * n_features_in_, n_clusters * n_features_in_), float32
        P = diag(eigenvalues_^-1/2) V^T; its rows are the whitened principal directions.
    n_samples_seen_ : int
        Number of training local features behind ``mean_`` and ``eigenvalues_``.
    n_features_in_ : int
        Input dimension d.

    Examples
    --------
    >>> import numpy as np
    >>> from selconv.embedding import TriangulationEmbedding
    >>> rng = np.random.default_rng(0)
    >>> sets = [rng.standard_normal((300, 4)).astype(np.float32), np.zeros((0, 4), np.float32)]
    >>> temb = TriangulationEmbedding(n_clusters=3, n_clamped=2, random_state=0).fit(sets)
    >>> [s.shape for s in temb.transform(sets)]
    [(300, 12), (0, 12)]
    """

    _parameter_constraints: dict = {
        "n_clusters": [Interval(numbers.Integral, 1, None, closed="left")],
        "n_clamped": [Interval(numbers.Integral, 0, None, closed="left")],
        "max_samples": [Interval(numbers.Integral, 1, None, closed="left")],
        "kmeans_n_init": [Interval(numbers.Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(self, n_clusters=20, *, n_clamped=33, max_samples=100_000, kmeans_n_init=1, random_state=None):
        self.n_clusters = n_clusters
        self.n_clamped = n_clamped
        self.max_samples = max_samples
        self.kmeans_n_init = kmeans_n_init
        self.random_state = random_state

    def _triangulate(self, x: np.ndarray) -> np.ndarray:
        """phi(x) for a chunk of rows: (n, d) float32 -> (n, |C| d) float32, blocks ordered by codeword."""
        return normalized_residuals(x, self.cluster_centers_).reshape(len(x), self.cluster_centers_.size)

    @fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Learn the codebook, the mean of phi and the whitening projection.

        Parameters
        ----------
        X : list of array-like of shape (n_local_i, n_features)
            Training local feature sets, one per image; ``n_local_i`` may differ and may be 0.
        y : None
            Ignored.

        Returns
        -------
        self : object
        """
        return self._fit(check_local_sets(X, estimator=self, reset=True))

    def _fit(self, sets: list[np.ndarray], device: str = "cpu"):
        """fit on validated sets; a torch ``device`` (see :mod:`selconv.torch_encoder`) runs the pass over
        all local features that accumulates the covariance of phi there (``EncodeAggregate(device=...)``)."""
        features = np.concatenate(sets)
        n_samples, n_features = features.shape
        check_enough_features(n_samples, self.n_clusters, estimator=self, n_images=len(sets))
        check_whitening_fit(
            n_samples,
            self.n_clusters * n_features,
            self.n_clamped,
            estimator=self,
            dim_formula=f"n_clusters * n_features = {self.n_clusters} * {n_features}",
        )
        rng = check_random_state(self.random_state)
        sample = sample_features(features, self.max_samples, rng)
        self.cluster_centers_ = kmeans_codebook(sample, self.n_clusters, n_init=self.kmeans_n_init, rng=rng)
        if device == "cpu":
            whitening = learn_clamped_whitening(self._triangulate, features, sample, self.n_clamped)
        else:
            whitening = self._torch_whitening(features, sample, device)
        self.mean_, self.eigenvalues_, self.projection_ = whitening
        self.n_samples_seen_ = n_samples
        check_fitted_finite(self)
        return self

    def _torch_whitening(self, features, sample, device):
        import torch

        from selconv.torch_encoder import resolve_device, whitening_scatter

        target = resolve_device(device)
        shift = whitening_shift(self._triangulate, sample)
        with torch.no_grad():
            shifted_sum, scatter = whitening_scatter(
                torch.as_tensor(features, device=target),
                torch.as_tensor(self.cluster_centers_, device=target),
                torch.as_tensor(shift.astype(np.float32), device=target),
            )
        n_samples = len(features)
        shifted_mean = shifted_sum.cpu().numpy() / n_samples
        scatter = scatter.cpu().numpy() - n_samples * np.outer(shifted_mean, shifted_mean)
        return clamped_whitening(shift + shifted_mean, scatter / n_samples, self.n_clamped)

    def transform(self, X):
        """Embed and l2-normalise every local feature of every image.

        The images are concatenated and processed in chunks of rows, so the work is a few large
        GEMMs with ``projection_`` (the dominant cost) whatever the number of local features per image.

        Parameters
        ----------
        X : list of array-like of shape (n_local_i, n_features)
            Local feature sets, one per image, with the ``n_features_in_`` seen in ``fit``.

        Returns
        -------
        local_sets : list of ndarray of shape (n_local_i, n_clusters * n_features), float32
            Unit-norm embedded local features (a row that whitening maps to 0 stays 0); same counts as ``X``.
        """
        check_is_fitted(self)
        sets = check_local_sets(X, estimator=self, reset=False)
        return embed_sets(
            sets,
            self._triangulate,
            len(self.mean_),
            estimator=self,
            chunk_rows=_CHUNK_ROWS,
            whitening=(self.mean_, self.projection_),
        )
