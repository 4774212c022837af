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

from selconv._compat import Interval
from selconv.embedding._codebook import (
    KMEANS_CONSTRAINTS,
    WHITENING_CONSTRAINTS,
    BaseWhitenedCodebookEmbedding,
    normalized_residuals,
)

__all__ = ["TriangulationEmbedding"]


class TriangulationEmbedding(BaseWhitenedCodebookEmbedding):
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
    shrinkage : float >= 0 or "ledoit-wolf", default=0.0
        Eigenvalue shrinkage of the whitening, a deviation from the paper for small or off-domain learning sets
        (docs/how-it-works.md, "Shrinkage"): P uses lambda_i + s * mean(lambda), the eigenvalues of the shrunk
        covariance (1 - delta) C + delta mean(lambda) I up to a common factor, s = delta / (1 - delta), before
        the clamping. 0 is the paper; "ledoit-wolf" chooses delta on the training local features alone (one
        more element-wise pass over their embedding), as :class:`~selconv.postprocessing.PCAWhitening` does.
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
    shrinkage_ : float
        The s used (inf when Ledoit-Wolf finds delta = 1: P is then a rotation, no whitening).
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
        **WHITENING_CONSTRAINTS,
        **KMEANS_CONSTRAINTS,
    }

    def __init__(
        self, n_clusters=20, *, n_clamped=33, shrinkage=0.0, max_samples=100_000, kmeans_n_init=1, random_state=None
    ):
        self.n_clusters = n_clusters
        self.n_clamped = n_clamped
        self.shrinkage = shrinkage
        self.max_samples = max_samples
        self.kmeans_n_init = kmeans_n_init
        self.random_state = random_state

    def _embed(self, x: np.ndarray) -> np.ndarray:
        """phi(x) for a chunk of rows: (n, d) float32 -> (n, |C| d) float32, blocks ordered by codeword."""
        return normalized_residuals(x, self.cluster_centers_).reshape(len(x), self.cluster_centers_.size)

    def _dimension_formula(self, n_features):
        return self.n_clusters * n_features, f"n_clusters * n_features = {self.n_clusters} * {n_features}"
