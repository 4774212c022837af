"""Learning steps shared by the codebook embeddings: a bounded random sample of the training local
features, a k-means codebook on it, and the clamped PCA-whitening of embedded local features."""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans
from sklearn.utils.random import sample_without_replacement

# Rows per chunk of the scatter-matrix pass: each float64 accumulation of the D x D scatter is
# amortised over a large float32 GEMM.
_FIT_CHUNK_ROWS = 8192


def sample_features(features: np.ndarray, max_samples: int, rng: np.random.RandomState) -> np.ndarray:
    """At most ``max_samples`` rows drawn uniformly without replacement (kept in order), or all rows."""
    if len(features) <= max_samples:
        return features
    return features[np.sort(sample_without_replacement(len(features), max_samples, random_state=rng))]


def check_enough_features(n_samples: int, n_clusters: int, *, estimator, n_images: int) -> None:
    """Clear error when there are fewer training local features than codewords."""
    if n_samples < n_clusters:
        raise ValueError(
            f"{type(estimator).__name__}: X has {n_samples} local features in {n_images} images, fewer than "
            f"the {n_clusters} codewords; the codebook needs at least one local feature per codeword."
        )


def kmeans_codebook(sample: np.ndarray, n_clusters: int, *, n_init: int, rng: np.random.RandomState) -> np.ndarray:
    """k-means (k-means++ seeding, ``n_init`` restarts, seeded from ``rng``) codebook, float32 (n_clusters, d)."""
    kmeans = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=rng.randint(np.iinfo(np.int32).max))
    return kmeans.fit(sample).cluster_centers_.astype(np.float32)


def learn_clamped_whitening(embed, features: np.ndarray, dim: int, n_clamped: int):
    """Mean and whitening projection of ``embed(features)``, with the smallest eigenvalues clamped.

    Jegou & Zisserman's whitening of embedded local features, as the authors' code also does for
    F-FAemb: phibar = mean of phi, covariance eigenvalues lambda (decreasing) and eigenvectors V,
    the ``n_clamped`` smallest lambda set to the ``n_clamped``-th smallest,
    P = diag(lambda^-1/2) V^T. One pass over all features in float32 chunks of ``embed``,
    accumulated in float64.

    Parameters
    ----------
    embed : callable
        Maps an (n, d) float32 chunk to its (n, dim) float32 embedding.
    features : ndarray of shape (n_samples, d), float32
    dim : int
        Embedding dimension.
    n_clamped : int
        0 or 1 leaves the spectrum unchanged; at most ``dim``.

    Returns
    -------
    mean : ndarray of shape (dim,), float64
    eigenvalues : ndarray of shape (dim,), float64
        Decreasing, after clamping.
    projection : ndarray of shape (dim, dim), float32
        P; its rows are the whitened principal directions.
    """
    n_samples = len(features)
    # Centre on the mean of the first chunk: the shifted scatter sum((phi - s)(phi - s)^T) has small
    # entries, so the float32 GEMM per chunk loses nothing the float64 sum would keep.
    shift = embed(features[:_FIT_CHUNK_ROWS]).mean(axis=0, dtype=np.float64)
    shift32 = shift.astype(np.float32)
    shifted_sum = np.zeros(dim)
    scatter = np.zeros((dim, dim))
    for start in range(0, n_samples, _FIT_CHUNK_ROWS):
        block = embed(features[start : start + _FIT_CHUNK_ROWS])
        block -= shift32
        shifted_sum += block.sum(axis=0, dtype=np.float64)
        scatter += block.T @ block
    shifted_mean = shifted_sum / n_samples
    covariance = scatter / n_samples - np.outer(shifted_mean, shifted_mean)

    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
    if n_clamped > 0:
        eigenvalues[dim - n_clamped :] = eigenvalues[dim - n_clamped]
    # A singular covariance (too few features) would divide by zero; keep the scale finite.
    eigenvalues = np.maximum(eigenvalues, np.finfo(np.float64).eps * max(eigenvalues[0], 1e-300))
    # eigh's signs depend on the LAPACK build; fix them so fits agree across machines.
    signs = np.sign(eigenvectors[np.abs(eigenvectors).argmax(axis=0), np.arange(dim)])
    eigenvectors *= signs
    projection = (eigenvectors / np.sqrt(eigenvalues)).T.astype(np.float32)
    return shift + shifted_mean, eigenvalues, projection


def embed_sets(sets: list[np.ndarray], embed, dim: int, *, chunk_rows: int = 1024) -> list[np.ndarray]:
    """Apply ``embed`` ((n, d) -> (n, dim) float32) to every image's local features, ragged out.

    The images are concatenated and embedded in chunks of ``chunk_rows`` rows, so the work is a few
    large array operations whatever the number of local features per image; an image with no
    local feature gets a (0, dim) array.
    """
    features = np.concatenate(sets)
    embedded = np.empty((len(features), dim), dtype=np.float32)
    for start in range(0, len(features), chunk_rows):
        embedded[start : start + chunk_rows] = embed(features[start : start + chunk_rows])
    return np.split(embedded, np.cumsum([len(s) for s in sets])[:-1])
