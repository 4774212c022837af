"""Triangulation embedding (Temb) of local features, Jegou & Zisserman CVPR 2014: ragged in, ragged out.

ALGORITHMS.md section 4: a k-means codebook c_1..c_|C| is learned on the (l2-normalised, PCA-reduced)
training local features; each local feature x is mapped to the concatenation of its normalised
residuals phi(x) = [(x - c_j) / ||x - c_j||]_j in R^{|C| d}, centred on the training mean phibar and
whitened by P = diag(lambda^-1/2) V^T, where the smallest ``n_clamped`` eigenvalues of the training
covariance are clamped; the result y = P (phi(x) - phibar) is l2-normalised.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.cluster import KMeans
from sklearn.utils import check_random_state
from sklearn.utils.random import sample_without_replacement
from sklearn.utils.validation import check_is_fitted

from selconv._compat import Interval, _fit_context
from selconv._ragged import check_local_sets
from selconv.base import SelconvPickleMixin
from selconv.postprocessing import _l2_normalize_rows

__all__ = ["TriangulationEmbedding"]

# Rows per chunk of the embedding: the (rows, |C| d) residual block and its product with P stay in
# the CPU caches for the paper's dimensions (1024 x 640 float32 = 2.5 MiB), which keeps the
# element-wise steps from becoming memory-bound, and 1024 rows are plenty for an efficient GEMM.
_CHUNK_ROWS = 1024
# Rows per chunk of the fit's scatter-matrix pass: larger, so each float64 accumulation of the
# (|C| d)^2 scatter is amortised over a big float32 GEMM.
_FIT_CHUNK_ROWS = 8 * _CHUNK_ROWS


class TriangulationEmbedding(SelconvPickleMixin, TransformerMixin, BaseEstimator):
    """Embed every local feature with the triangulation embedding phi_Delta (paper section 4.1).

    ``fit`` learns, on the training local features (typically the output of
    :class:`~selconv.local.LocalPCA`): a k-means codebook on a uniform random sample of at most
    ``max_samples`` of them, then the mean ``phibar`` and the covariance (float64) of phi over ALL
    of them, whose eigen-decomposition gives the whitening projection
    P = diag(lambda^-1/2) V^T with the ``n_clamped`` smallest eigenvalues set to the
    ``n_clamped``-th smallest (the authors' choice, which stops the near-null directions from
    dominating). ``transform`` maps each local feature x to P (phi(x) - phibar) / ||P (phi(x) - phibar)||.

    Parameters
    ----------
    n_clusters : int, default=20
        Codebook size |C|; the embedding has dimension |C| d for d-dimensional input. The paper's
        (d, |C|) per final dimension are in ALGORITHMS.md section 6 (20 for D = 512).
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
        residuals = x[:, None, :] - self.cluster_centers_[None, :, :]
        norms = np.sqrt(np.einsum("nkd,nkd->nk", residuals, residuals))
        # A feature equal to a codeword has no direction to it: its block stays zero instead of NaN.
        # (Multiplying by the reciprocal is cheaper than dividing every entry.)
        inverse = np.zeros_like(norms)
        np.divide(1.0, norms, out=inverse, where=norms > 0)
        residuals *= inverse[:, :, None]
        return residuals.reshape(len(x), residuals.shape[1] * residuals.shape[2])

    @_fit_context(prefer_skip_nested_validation=True)
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
        sets = check_local_sets(X, estimator=self, reset=True)
        features = np.concatenate(sets)
        n_samples, n_features = features.shape
        dim = self.n_clusters * n_features
        if n_samples < self.n_clusters:
            raise ValueError(
                f"TriangulationEmbedding: X has {n_samples} local features in {len(sets)} images, fewer than "
                f"n_clusters={self.n_clusters}; k-means needs at least one local feature per codeword."
            )
        if self.n_clamped > dim:
            raise ValueError(
                f"TriangulationEmbedding: n_clamped={self.n_clamped} exceeds the embedding dimension "
                f"n_clusters * n_features = {self.n_clusters} * {n_features} = {dim}."
            )
        if n_samples <= dim:
            warnings.warn(
                f"TriangulationEmbedding: {n_samples} training local features for a {dim}-dimensional "
                f"embedding: the covariance is singular and the whitening of its null space is arbitrary. "
                f"Fit on more local features (typically many times {dim}).",
                UserWarning,
                stacklevel=2,
            )

        rng = check_random_state(self.random_state)
        if n_samples > self.max_samples:
            sample = features[np.sort(sample_without_replacement(n_samples, self.max_samples, random_state=rng))]
        else:
            sample = features
        kmeans = KMeans(
            n_clusters=self.n_clusters,
            n_init=self.kmeans_n_init,
            random_state=rng.randint(np.iinfo(np.int32).max),
        ).fit(sample)
        self.cluster_centers_ = kmeans.cluster_centers_.astype(np.float32)

        # One pass over all features in float32 chunks (float32 GEMMs, twice as fast), accumulated in
        # float64. Centring on s, the mean of phi over a first chunk, avoids the cancellation of
        # sum(phi phi^T) - n phibar phibar^T: the shifted scatter sum((phi - s)(phi - s)^T) is of the
        # size of the covariance itself, so float32 rounding stays small relative to it.
        shift32 = self._triangulate(sample[:_FIT_CHUNK_ROWS]).mean(axis=0, dtype=np.float64).astype(np.float32)
        shift = shift32.astype(np.float64)
        shifted_sum = np.zeros(dim)
        scatter = np.zeros((dim, dim))
        for start in range(0, n_samples, _FIT_CHUNK_ROWS):
            block = self._triangulate(features[start : start + _FIT_CHUNK_ROWS])
            block -= shift32
            shifted_sum += block.sum(axis=0, dtype=np.float64)
            scatter += block.T @ block
        shifted_mean = shifted_sum / n_samples
        covariance = scatter / n_samples - np.outer(shifted_mean, shifted_mean)

        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
        if self.n_clamped > 0:
            eigenvalues[dim - self.n_clamped :] = eigenvalues[dim - self.n_clamped]
        # A singular covariance (too few features) would divide by zero; keep the scale finite.
        eigenvalues = np.maximum(eigenvalues, np.finfo(np.float64).eps * eigenvalues[0] if eigenvalues[0] > 0 else 1.0)
        # eigh's signs depend on the LAPACK build; fix them so fits agree across machines.
        signs = np.sign(eigenvectors[np.abs(eigenvectors).argmax(axis=0), np.arange(dim)])
        eigenvectors *= signs
        self.mean_ = shift + shifted_mean
        self.eigenvalues_ = eigenvalues
        projection = (eigenvectors / np.sqrt(eigenvalues)).T
        self.projection_ = projection.astype(np.float32)
        self._mean32 = self.mean_.astype(np.float32)  # made once here, not at every transform
        self.n_samples_seen_ = n_samples
        return self

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
        features = np.concatenate(sets)
        projection_t = self.projection_.T
        embedded = np.empty((len(features), projection_t.shape[1]), dtype=np.float32)
        for start in range(0, len(features), _CHUNK_ROWS):
            out = embedded[start : start + _CHUNK_ROWS]
            # Centre before the GEMM: P phi - P phibar would cancel badly in float32 along the
            # low-variance directions, where P phibar is large.
            centred = self._triangulate(features[start : start + _CHUNK_ROWS])
            centred -= self._mean32
            np.matmul(centred, projection_t, out=out)
            _l2_normalize_rows(out, out=out)
        return np.split(embedded, np.cumsum([len(s) for s in sets])[:-1])
