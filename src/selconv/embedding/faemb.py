"""F-FAemb, the fast function-approximation-based embedding of local features: ragged in, ragged out.

Do & Cheung, "Embedding based on function approximation for large scale image search", TPAMI 2018
(the fast version of Do, Tran & Cheung's FAemb, CVPR 2015), as the authors' public code computes it
(``learn_coeff_one_sample.m``, ``faemb.c``, ``projection_learn_batch.m`` in selectiveConvFeature):

1. Codebook (anchor points) v_1..v_|C| by k-means on the training local features.
2. Coefficients gamma(x) in R^|C| in closed form, minimising
   1/2 ||x - V gamma||^2 + mu/2 * a(x) ||gamma||^2 subject to sum_j gamma_j = 1,
   where a(x) = sum_j ||x - v_j||_1^3 (the locality term):
   gamma = M (V^T x - lambda 1), M = (V^T V + mu a(x) I)^-1, lambda = (1^T M V^T x - 1) / (1^T M 1).
3. With r_j = (x - v_j) / ||x - v_j||, phi(x) = [gamma_j(x) * upper(r_j r_j^T)]_j, the upper
   triangles (row-major, diagonal included) of the second-order terms: dimension |C| d (d + 1) / 2.
4. As for Temb: centre on the training mean of phi, whiten with P = diag(lambda^-1/2) V^T where the
   ``n_clamped`` smallest eigenvalues are clamped (authors: 129), l2-normalise.

After aggregation the paper drops the first d (d + 1) components of the rotated aggregate
(paper section 5.2.1, footnote to Table 2; the original FAemb dropped d (d + 1) / 2): in a pipeline that is
``RotationNormalizer(n_dropped=d * (d + 1))`` after the aggregator, giving the paper's final
dimension (|C| - 2) d (d + 1) / 2 (Table 2: d = 32, |C| = 10 -> 4224).
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

__all__ = ["FAembEmbedding"]


class FAembEmbedding(BaseWhitenedCodebookEmbedding):
    """Embed every local feature with F-FAemb (paper Table 2: d = 32, |C| = 10).

    ``fit`` learns a k-means codebook on a uniform random sample of at most ``max_samples`` training
    local features, then the mean and clamped whitening of phi over ALL of them (as
    :class:`~selconv.embedding.TriangulationEmbedding`). ``transform`` maps each local feature x to
    P (phi(x) - phibar) / ||P (phi(x) - phibar)|| (module docstring for phi).

    Parameters
    ----------
    n_clusters : int, default=10
        Codebook size |C|; the embedding has dimension |C| d (d + 1) / 2, the aggregate after the
        paper's truncation (|C| - 2) d (d + 1) / 2.
    mu : float > 0, default=1e-2
        Weight of the locality term in the coefficients (the authors' recommended 1e-2).
    n_clamped : int, default=129
        Number of smallest covariance eigenvalues clamped to the ``n_clamped``-th smallest (the
        authors' code: ``eigval(end-128:end) = eigval(end-128)``). 0 or 1 leaves them unchanged.
    shrinkage : float >= 0 or "ledoit-wolf", default=0.0
        Eigenvalue shrinkage of the whitening, as for :class:`~selconv.embedding.TriangulationEmbedding`: 0 is
        the authors' whitening; "ledoit-wolf" chooses it on the training local features (a deviation for small
        or off-domain learning sets).
    max_samples : int, default=100_000
        Most local features used by k-means. The mean and covariance use every training local feature.
    kmeans_n_init : int, default=1
        k-means++ restarts of :class:`sklearn.cluster.KMeans`, best inertia kept. (The authors run
        k-means 5 times and keep the codebook of lowest F-FAemb objective.)
    random_state : int, RandomState instance or None, default=None
        Draws the k-means sample and seeds k-means; fixed, the fit is reproducible bit for bit.

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features_in_), float32
        The anchor points v_1..v_|C|.
    mean_ : ndarray of shape (n_clusters * n_features_in_ * (n_features_in_ + 1) // 2,), float64
        phibar.
    eigenvalues_ : ndarray of the same shape, float64
        Covariance eigenvalues of phi in decreasing order, after clamping.
    projection_ : ndarray of shape (D, D), float32
        P = diag(eigenvalues_^-1/2) V^T.
    shrinkage_ : float
        The s used (inf when Ledoit-Wolf finds delta = 1: P is then a rotation, no whitening).
    n_samples_seen_ : int
        Number of training local features behind ``mean_`` and ``eigenvalues_``.
    n_features_in_ : int
        Input dimension d.

    Examples
    --------
    >>> import numpy as np
    >>> from selconv.embedding import FAembEmbedding
    >>> rng = np.random.default_rng(0)
    >>> sets = [rng.standard_normal((200, 3)).astype(np.float32), np.zeros((0, 3), np.float32)]
    >>> faemb = FAembEmbedding(n_clusters=4, n_clamped=2, random_state=0).fit(sets)
    >>> [s.shape for s in faemb.transform(sets)]
    [(200, 24), (0, 24)]
    """

    # Rows per chunk: the (rows, |C| d (d + 1) / 2) second-order block stays a few MiB at the paper's
    # d = 32, |C| = 10 (256 x 5280 float32 = 5.4 MiB).
    _chunk_rows = 256

    _parameter_constraints: dict = {
        "n_clusters": [Interval(numbers.Integral, 1, None, closed="left")],
        "mu": [Interval(numbers.Real, 0, None, closed="neither")],
        **WHITENING_CONSTRAINTS,
        **KMEANS_CONSTRAINTS,
    }

    def __init__(
        self,
        n_clusters=10,
        *,
        mu=1e-2,
        n_clamped=129,
        shrinkage=0.0,
        max_samples=100_000,
        kmeans_n_init=1,
        random_state=None,
    ):
        self.n_clusters = n_clusters
        self.mu = mu
        self.n_clamped = n_clamped
        self.shrinkage = shrinkage
        self.max_samples = max_samples
        self.kmeans_n_init = kmeans_n_init
        self.random_state = random_state

    def coefficients(self, x: np.ndarray) -> np.ndarray:
        """The closed-form coefficients gamma for the rows of ``x`` (n, d): (n, n_clusters) float64.

        Each row sums to 1. Solved for all rows at once through the eigen-decomposition
        V^T V = U diag(e) U^T: M = U diag(1 / (e + mu a(x))) U^T differs between rows by a scalar shift only.
        """
        anchors = self.cluster_centers_.astype(np.float64)
        x = x.astype(np.float64)
        locality = (np.abs(x[:, None, :] - anchors[None]).sum(axis=2) ** 3).sum(axis=1)
        gram_values, gram_vectors = np.linalg.eigh(anchors @ anchors.T)
        denominators = np.maximum(gram_values[None, :] + self.mu * locality[:, None], np.finfo(np.float64).tiny)
        ones_rotated = gram_vectors.sum(axis=0)  # U^T 1
        m_vx = (x @ anchors.T @ gram_vectors) / denominators  # U^T M V^T x
        m_one = ones_rotated[None, :] / denominators  # U^T M 1
        lagrange = (m_vx @ ones_rotated - 1.0) / (m_one @ ones_rotated)
        return (m_vx - lagrange[:, None] * m_one) @ gram_vectors.T

    def _embed(self, x: np.ndarray) -> np.ndarray:
        """phi(x) before centring and whitening: (n, |C| d (d + 1) / 2) float32."""
        n_features = x.shape[1]
        gamma = self.coefficients(x).astype(np.float32)
        residuals = normalized_residuals(x, self.cluster_centers_)
        rows, cols = np.triu_indices(n_features)
        products = residuals[:, :, rows] * residuals[:, :, cols]
        products *= gamma[:, :, None]
        return products.reshape(len(x), -1)

    def _dimension_formula(self, n_features):
        return (
            self.n_clusters * n_features * (n_features + 1) // 2,
            f"n_clusters * d (d + 1) / 2 = {self.n_clusters} * {n_features} * {n_features + 1} / 2",
        )
