"""The base classes of the codebook embeddings (Temb, VLAD, FV, F-FAemb) and the steps they share: a bounded
random sample of the training local features, a codebook learned on it, normalised residuals to the
codewords, the clamped PCA-whitening of embedded local features, and the chunked transform."""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.cluster import KMeans
from sklearn.utils import check_random_state
from sklearn.utils.random import sample_without_replacement
from sklearn.utils.validation import check_is_fitted

from selconv._compat import Interval, StrOptions, fit_context
from selconv._linalg import (
    eigenvalue_floor,
    l2_normalize_rows,
    mean_and_scatter,
    principal_axes,
    resolve_shrinkage,
    shrink_eigenvalues,
)
from selconv._pickling import SelconvPickleMixin
from selconv._ragged import check_local_sets
from selconv.exceptions import OVERFLOW_HINT, check_finite, check_fitted_finite

# Rows per chunk of the embedding: the (rows, |C| d) residual block and its product with P stay in
# the CPU caches for the paper's Temb dimensions (1024 x 640 float32 = 2.5 MiB), which keeps the
# element-wise steps from becoming memory-bound, and 1024 rows are plenty for an efficient GEMM.
CHUNK_ROWS = 1024
# Rows per chunk of the whitening fit's scatter-matrix pass: larger, so each float64 accumulation
# of the D x D scatter is amortised over a big float32 GEMM.
_FIT_CHUNK_ROWS = 8 * CHUNK_ROWS

#: Parameter constraints of the whitening shared by Temb and F-FAemb.
#: Parameters of the k-means codebook that Temb, VLAD and F-FAemb share (with ``n_clusters``).
KMEANS_CONSTRAINTS: dict = {
    "max_samples": [Interval(numbers.Integral, 1, None, closed="left")],
    "kmeans_n_init": [Interval(numbers.Integral, 1, None, closed="left")],
    "random_state": ["random_state"],
}
WHITENING_CONSTRAINTS: dict = {
    "n_clamped": [Interval(numbers.Integral, 0, None, closed="left")],
    "shrinkage": [Interval(numbers.Real, 0, None, closed="left"), StrOptions({"ledoit-wolf"})],
}


class RaggedRows:
    """The rows of ragged local feature sets read as one (n, d) array, without concatenating them all.

    The fit of an embedding reads its training local features through this view: in chunks of rows
    (each chunk one fresh array, the rows of the concatenation with the same boundaries) and by row
    index (the k-means sample), so the fit's memory is bounded by the chunk and the sample, not by
    the number of images.
    """

    def __init__(self, sets: list[np.ndarray]):
        self.sets = [s for s in sets if len(s)]
        self.offsets = np.cumsum([0] + [len(s) for s in self.sets])
        self.shape = (int(self.offsets[-1]), sets[0].shape[1])

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the concatenation, a fresh array."""
        stop = min(stop, len(self))
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        pieces = []
        while start < stop:
            local = start - self.offsets[first]
            piece = self.sets[first][local : local + stop - start]
            pieces.append(piece)
            start += len(piece)
            first += 1
        return np.concatenate(pieces) if pieces else np.empty((0, self.shape[1]), np.float32)

    def chunks(self, size: int):
        """Fresh arrays of ``size`` consecutive rows (the last one shorter)."""
        return (self.rows(start, start + size) for start in range(0, len(self), size))

    def take(self, indices: np.ndarray) -> np.ndarray:
        """The rows at the increasing ``indices``, in that order."""
        which = np.searchsorted(self.offsets, indices, side="right") - 1
        bounds = np.searchsorted(which, np.arange(len(self.sets) + 1))
        return np.concatenate(
            [self.sets[i][indices[a:b] - self.offsets[i]] for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]
        )


def sample_features(features: RaggedRows, max_samples: int, rng: np.random.RandomState) -> np.ndarray:
    """At most ``max_samples`` rows drawn uniformly without replacement (kept in order), or all rows."""
    if len(features) <= max_samples:
        return features.rows(0, len(features))
    return features.take(np.sort(sample_without_replacement(len(features), max_samples, random_state=rng)))


def check_enough_features(
    n_samples: int, n_clusters: int, *, estimator, n_images: int, param: str = "n_clusters"
) -> None:
    """Clear error when there are fewer training local features than codewords (the parameter ``param``)."""
    if n_samples < n_clusters:
        raise ValueError(
            f"{type(estimator).__name__}: X has {n_samples} local features in {n_images} images, fewer than "
            f"{param}={n_clusters}; the codebook needs at least one local feature per codeword."
        )


def check_whitening_fit(n_samples: int, dim: int, n_clamped: int, *, estimator, dim_formula: str) -> None:
    """Error when ``n_clamped`` exceeds the embedding dimension; warning when the covariance is singular and
    not shrunk (``estimator.shrinkage`` 0).

    ``dim_formula`` spells out how the dimension comes about, e.g. ``"n_clusters * n_features = 20 * 32"``.
    """
    name = type(estimator).__name__
    if n_clamped > dim:
        raise ValueError(f"{name}: n_clamped={n_clamped} exceeds the embedding dimension {dim_formula} = {dim}.")
    if n_samples <= dim and estimator.shrinkage == 0:
        warnings.warn(
            f"{name}: {n_samples} training local features for a {dim}-dimensional embedding: the covariance "
            f"is singular and the whitening of its null space is arbitrary. Fit on more local features "
            f"(typically many times {dim}), or shrink the covariance (shrinkage='ledoit-wolf').",
            UserWarning,
            stacklevel=3,
        )


def kmeans_codebook(
    sample: np.ndarray, n_clusters: int, *, n_init: int, rng: np.random.RandomState, device: str = "cpu"
) -> np.ndarray:
    """k-means (k-means++ seeding, ``n_init`` restarts, seeded from ``rng``) codebook, float32 (n_clusters, d).

    scikit-learn's KMeans on "cpu"; on a torch ``device`` the same algorithm in torch
    (:func:`selconv._torch_fit.kmeans`: a codebook of the same quality, not the same numbers).
    """
    if device != "cpu":
        from selconv._torch_fit import kmeans
        from selconv._torch_kernels import resolve_device

        return kmeans(sample, n_clusters, n_init=n_init, rng=rng, device=resolve_device(device))
    kmeans = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=rng.randint(np.iinfo(np.int32).max))
    return kmeans.fit(sample).cluster_centers_.astype(np.float32)


def normalized_residuals(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """(x - c_j) / ||x - c_j|| for every row x of ``x`` (n, d) and codeword c_j: (n, n_clusters, d) float32.

    A feature equal to a codeword has no direction to it: that residual stays zero instead of NaN.
    """
    residuals = x[:, None, :] - centers[None, :, :]
    norms = np.sqrt(np.einsum("nkd,nkd->nk", residuals, residuals))
    # Multiplying by the reciprocal is cheaper than dividing every entry.
    inverse = np.zeros_like(norms)
    np.divide(1.0, norms, out=inverse, where=norms > 0)
    residuals *= inverse[:, :, None]
    return residuals


def learn_clamped_whitening(embed, features: RaggedRows, sample: np.ndarray, n_clamped: int, shrinkage=0.0):
    """Mean and whitening projection of ``embed(features)``, with the smallest eigenvalues clamped.

    Jegou & Zisserman's whitening of embedded local features, as the authors' code also does for
    F-FAemb: phibar = mean of phi, covariance eigenvalues lambda (decreasing) and eigenvectors V,
    the ``n_clamped`` smallest lambda set to the ``n_clamped``-th smallest (which stops the
    near-null directions from dominating), P = diag(lambda^-1/2) V^T. One pass over all features
    in float32 chunks of ``embed`` (float32 GEMMs, twice as fast), accumulated in float64 and
    centred on the mean of phi over the first chunk of ``sample`` (see
    :func:`selconv._linalg.mean_and_scatter`).

    Parameters
    ----------
    embed : callable
        Maps an (n, d) float32 chunk to a fresh (n, D) float32 embedding.
    features : RaggedRows of shape (n_samples, d), float32
        All training local features.
    sample : ndarray of shape (n_sampled, d), float32
        A uniform random sample of them (the k-means sample), for the centre of the accumulation.
    n_clamped : int
        0 or 1 leaves the spectrum unchanged; at most D.
    shrinkage : float >= 0 or "ledoit-wolf", default=0.0
        The estimator's parameter (see :func:`whitening_of_moments`).

    Returns
    -------
    mean : ndarray of shape (D,), float64
    eigenvalues : ndarray of shape (D,), float64
        Decreasing, after clamping.
    projection : ndarray of shape (D, D), float32
        P; its rows are the whitened principal directions.
    shrinkage : float
        The eigenvalue shrinkage s used.
    """
    shift = whitening_shift(embed, sample)
    mean, scatter, n_samples = mean_and_scatter(_embedded_chunks(embed, features), shift)
    return whitening_of_moments(embed, features, mean, scatter / n_samples, n_clamped, shrinkage)


def _embedded_chunks(embed, features: RaggedRows):
    return (embed(chunk) for chunk in features.chunks(_FIT_CHUNK_ROWS))


def whitening_of_moments(embed, features, mean: np.ndarray, covariance: np.ndarray, n_clamped: int, shrinkage):
    """``(mean, eigenvalues, projection, s)`` of :func:`learn_clamped_whitening` from the mean and covariance of
    ``embed(features)``, the shrinkage parameter resolved into s (:func:`selconv._linalg.resolve_shrinkage`):
    "ledoit-wolf" reads the embedded features once more, centred on ``mean`` in float64 (element-wise work,
    no GEMM), to choose it on these training features alone."""
    centred = (chunk - mean for chunk in _embedded_chunks(embed, features))
    s = resolve_shrinkage(shrinkage, covariance, len(features), centred)
    return (*clamped_whitening(mean, covariance, n_clamped, s), s)


def whitening_shift(embed, sample: np.ndarray) -> np.ndarray:
    """Centre of the scatter accumulation: mean of ``embed`` over the sample's first chunk, float64.

    Rounded to float32 so that the shift the float32 chunks are centred on is exactly the one added back.
    """
    return embed(sample[:_FIT_CHUNK_ROWS]).mean(axis=0, dtype=np.float64).astype(np.float32).astype(np.float64)


def clamped_whitening(mean: np.ndarray, covariance: np.ndarray, n_clamped: int, shrinkage: float = 0.0):
    """``(mean, eigenvalues, projection)`` of :func:`learn_clamped_whitening` from the mean and covariance and
    the eigenvalue shrinkage s: the eigenvalues are shrunk (:func:`selconv._linalg.shrink_eigenvalues`, which
    commutes with the clamping), then clamped."""
    eigenvalues, eigenvectors = principal_axes(covariance)
    eigenvalues = shrink_eigenvalues(eigenvalues, shrinkage)
    dim = len(eigenvalues)
    if n_clamped > 0:
        eigenvalues[dim - n_clamped :] = eigenvalues[dim - n_clamped]
    # A singular covariance (too few features) would divide by zero; keep the scale finite.
    eigenvalues = np.maximum(eigenvalues, eigenvalue_floor(eigenvalues))
    projection = (eigenvectors / np.sqrt(eigenvalues)).T.astype(np.float32)
    return mean, eigenvalues, projection


def embed_sets(
    sets: list[np.ndarray], embed, dim: int, *, estimator, chunk_rows: int = CHUNK_ROWS, whitening=None
) -> list[np.ndarray]:
    """Apply ``embed`` ((n, d) -> (n, dim) float32) to every image's local features, ragged out.

    The images are concatenated and embedded in chunks of ``chunk_rows`` rows written into one
    preallocated output, so the work is a few large array operations (GEMMs) whatever the number of
    local features per image; an image with no local feature gets a (0, dim) array.

    ``whitening=(mean, projection)`` (from :func:`learn_clamped_whitening`) maps each embedded row
    phi to P (phi - mean) / ||P (phi - mean)|| (a row that whitening maps to 0 stays 0); ``embed``
    must then return a fresh array. A NaN or infinity in the output raises a
    :class:`~selconv.exceptions.NonFiniteError` naming ``estimator``.
    """
    features = np.concatenate(sets)
    if whitening is not None:
        mean32 = whitening[0].astype(np.float32)
        projection_t = whitening[1].T
    embedded = np.empty((len(features), dim), dtype=np.float32)
    for start in range(0, len(features), chunk_rows):
        out = embedded[start : start + chunk_rows]
        block = embed(features[start : start + chunk_rows])
        if whitening is None:
            out[...] = block
            continue
        # Centre before the GEMM: P phi - P phibar would cancel badly in float32 along the
        # low-variance directions, where P phibar is large.
        block -= mean32
        np.matmul(block, projection_t, out=out)
        l2_normalize_rows(out, out=out)
    check_finite(embedded, estimator=estimator, what="the embedded local features", hint=OVERFLOW_HINT)
    return np.split(embedded, np.cumsum([len(s) for s in sets])[:-1])


class BaseCodebookEmbedding(SelconvPickleMixin, TransformerMixin, BaseEstimator):
    """Base class of the codebook embeddings: ragged local feature sets in, ragged embedded sets out.

    ``fit`` validates the sets, draws a uniform random sample of at most ``max_samples`` of the training
    local features (seeded by ``random_state``), learns the codebook on it (``_learn_codebook``: k-means
    here) and then whatever else the embedding learns over all of them (``_learn_statistics``);
    ``transform`` embeds every image's local features in chunks of ``_chunk_rows`` rows (``_embed``).
    Subclasses define ``_embed(x)`` ((n, d) float32 -> fresh (n, D) float32) and ``_embedding_dimension()``
    (D, from the fitted state), and have the parameters ``max_samples``, ``random_state`` and the one named
    by ``_codebook_param`` (plus ``kmeans_n_init`` for the default k-means codebook).
    """

    #: The parameter that sets the codebook size: there must be at least that many training local features.
    _codebook_param = "n_clusters"
    #: Rows per chunk of ``transform`` (see :data:`CHUNK_ROWS`).
    _chunk_rows = CHUNK_ROWS

    def _embed(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _embedding_dimension(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_features(self, features: RaggedRows, n_images: int) -> None:
        n_codewords = getattr(self, self._codebook_param)
        check_enough_features(len(features), n_codewords, estimator=self, n_images=n_images, param=self._codebook_param)

    def _learn_codebook(self, sample: np.ndarray, rng: np.random.RandomState, device: str) -> None:
        """The codebook, learned on the sample; a torch ``device`` only for Temb (``EncodeAggregate(device=...)``)."""
        self.cluster_centers_ = kmeans_codebook(
            sample, self.n_clusters, n_init=self.kmeans_n_init, rng=rng, device=device
        )

    def _learn_statistics(self, features: RaggedRows, sample: np.ndarray, device: str) -> None:
        """What is learned over all training local features once the codebook exists: nothing here."""

    def _whitening(self):
        """``(mean, projection)`` applied to the embedded rows in ``transform``, or None."""
        return None

    @fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Learn the codebook (and, for the whitened embeddings, the mean of phi and the whitening projection).

        Parameters
        ----------
        X : list of array-like of shape (n_local_i, n_features)
            Training local feature sets, one per image (typically LocalPCA output); ``n_local_i`` may
            differ and may be 0.
        y : None
            Ignored.

        Returns
        -------
        self : object
        """
        return self._fit(check_local_sets(X, estimator=self, reset=True))

    def _fit(self, sets: list[np.ndarray], device: str = "cpu"):
        """fit on validated sets; a torch ``device`` is for the embeddings that have a torch kernel (see
        :class:`TriangulationEmbedding`, ``EncodeAggregate(device=...)``)."""
        features = RaggedRows(sets)
        self._check_features(features, len(sets))
        rng = check_random_state(self.random_state)
        sample = sample_features(features, self.max_samples, rng)
        self._learn_codebook(sample, rng, device)
        self._learn_statistics(features, sample, device)
        check_fitted_finite(self)
        return self

    def transform(self, X):
        """Embed (and, for the whitened embeddings, whiten and l2-normalise) every local feature of every image.

        The images are concatenated and processed in chunks of rows, so the work is a few large array
        operations whatever the number of local features per image.

        Parameters
        ----------
        X : list of array-like of shape (n_local_i, n_features)
            Local feature sets, one per image, with the ``n_features_in_`` seen in ``fit``.

        Returns
        -------
        local_sets : list of ndarray of shape (n_local_i, n_embedded_features), float32
            The embedded local features (the class docstring gives their dimension); same counts as ``X``.
        """
        check_is_fitted(self)
        sets = check_local_sets(X, estimator=self, reset=False)
        return embed_sets(
            sets,
            self._embed,
            self._embedding_dimension(),
            estimator=self,
            chunk_rows=self._chunk_rows,
            whitening=self._whitening(),
        )


class BaseWhitenedCodebookEmbedding(BaseCodebookEmbedding):
    """A :class:`BaseCodebookEmbedding` whose embedded local features are centred, whitened with the ``n_clamped``
    smallest eigenvalues clamped (:func:`learn_clamped_whitening`) and l2-normalised (Temb, F-FAemb).

    Subclasses have the parameters ``n_clamped`` and ``shrinkage`` (validated by :data:`WHITENING_CONSTRAINTS`);
    ``fit`` sets ``shrinkage_``.

    Subclasses also define ``_dimension_formula(n_features) -> (D, text)``: the embedding dimension that
    the parameters give, and how it comes about (for the error and warning of :func:`check_whitening_fit`).
    """

    def _dimension_formula(self, n_features: int) -> tuple[int, str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_features(self, features, n_images):
        super()._check_features(features, n_images)
        dim, formula = self._dimension_formula(features.shape[1])
        check_whitening_fit(len(features), dim, self.n_clamped, estimator=self, dim_formula=formula)

    def _learn_statistics(self, features, sample, device):
        """The mean and clamped whitening of phi; on a torch ``device`` (``EncodeAggregate(device=...)``) the pass
        over all local features that accumulates the covariance of phi runs there (its GEMMs; phi itself too for
        Temb: ``selconv._torch_kernels.embedding_phi``)."""
        if device == "cpu":
            whitening = learn_clamped_whitening(self._embed, features, sample, self.n_clamped, self.shrinkage)
        else:
            whitening = self._learn_whitening_on(device, features, sample)
        self.mean_, self.eigenvalues_, self.projection_, self.shrinkage_ = whitening
        self.n_samples_seen_ = len(features)

    def _learn_whitening_on(self, device, features, sample):
        """:func:`learn_clamped_whitening` with the scatter accumulated on the torch ``device``."""
        import torch

        from selconv._torch_fit import mean_and_scatter
        from selconv._torch_kernels import embedding_phi, resolve_device

        target = resolve_device(device)
        shift = whitening_shift(self._embed, sample)
        phi, chunk_rows = embedding_phi(self, target)
        with torch.no_grad():
            # Moved chunk by chunk: the device never holds more than one chunk of embedded features.
            blocks = (phi(torch.as_tensor(rows, device=target)) for rows in features.chunks(chunk_rows))
            mean, scatter, n_samples = mean_and_scatter(blocks, shift)
        return whitening_of_moments(self._embed, features, mean, scatter / n_samples, self.n_clamped, self.shrinkage)

    def _embedding_dimension(self):
        return len(self.mean_)

    def _whitening(self):
        return self.mean_, self.projection_
