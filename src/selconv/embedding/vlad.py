"""VLAD embedding of local features (Jegou et al., CVPR 2010), as an embedding stage: ragged in, ragged out.

docs/how-it-works.md, section 4: each local feature x is hard-assigned to its nearest codeword c_j of a
k-means codebook and embedded as its residual x - c_j in block j of a |C| d vector (zeros
elsewhere). Summing the embedded features of an image gives the classical VLAD; keeping embedding
and aggregation separate (the paper follows Do et al.) lets any aggregator, e.g. democratic
pooling, combine them. The authors use no whitening for VLAD and drop no component afterwards.
"""

from __future__ import annotations

import numbers

import numpy as np

from selconv._compat import Interval
from selconv.embedding._codebook import KMEANS_CONSTRAINTS, BaseCodebookEmbedding

__all__ = ["VLADEmbedding"]


class VLADEmbedding(BaseCodebookEmbedding):
    """Embed every local feature as its VLAD residual phi_VLAD (paper Table 2: d = 64, |C| = 66).

    ``fit`` learns a k-means codebook on a uniform random sample of at most ``max_samples`` training
    local features. ``transform`` maps x to the |C| d vector whose block j = argmin_k ||x - c_k|| is
    x - c_j and whose other blocks are 0 (not normalised: the residual's length is part of VLAD).

    Parameters
    ----------
    n_clusters : int, default=66
        Codebook size |C|; the embedding has dimension |C| d (the paper's VLAD: d = 64, |C| = 66,
        D = 4224).
    max_samples : int, default=100_000
        Most local features used by k-means; bounds its time and memory.
    kmeans_n_init : int, default=1
        Number of k-means++ restarts of :class:`sklearn.cluster.KMeans`.
    random_state : int, RandomState instance or None, default=None
        Draws the k-means sample and seeds k-means; fixed, the fit is reproducible bit for bit.

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features_in_), float32
        The codebook c_1..c_|C|.
    n_features_in_ : int
        Input dimension d.

    Examples
    --------
    >>> import numpy as np
    >>> from selconv.embedding import VLADEmbedding
    >>> rng = np.random.default_rng(0)
    >>> sets = [rng.standard_normal((30, 4)).astype(np.float32), np.zeros((0, 4), np.float32)]
    >>> vlad = VLADEmbedding(n_clusters=3, random_state=0).fit(sets)
    >>> [s.shape for s in vlad.transform(sets)]
    [(30, 12), (0, 12)]
    """

    _parameter_constraints: dict = {
        "n_clusters": [Interval(numbers.Integral, 1, None, closed="left")],
        **KMEANS_CONSTRAINTS,
    }

    def __init__(self, n_clusters=66, *, max_samples=100_000, kmeans_n_init=1, random_state=None):
        self.n_clusters = n_clusters
        self.max_samples = max_samples
        self.kmeans_n_init = kmeans_n_init
        self.random_state = random_state

    def assign(self, x: np.ndarray) -> np.ndarray:
        """Index of the nearest codeword of each row of ``x`` (n, d): (n,) int64."""
        centers = self.cluster_centers_
        # ||x - c||^2 up to the per-row constant ||x||^2: one GEMM.
        distances = np.einsum("kd,kd->k", centers, centers)[None, :] - 2.0 * (x @ centers.T)
        return distances.argmin(axis=1)

    def _embed(self, x: np.ndarray) -> np.ndarray:
        n_clusters, n_features = self.cluster_centers_.shape
        nearest = self.assign(x)
        embedded = np.zeros((len(x), n_clusters, n_features), dtype=np.float32)
        embedded[np.arange(len(x)), nearest] = x - self.cluster_centers_[nearest]
        return embedded.reshape(len(x), -1)

    def _embedding_dimension(self):
        return self.cluster_centers_.size
