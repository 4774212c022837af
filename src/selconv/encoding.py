"""Embedding and aggregation fused into one streaming step: ragged local features in, one 2-D array out.

Embedded local features are the largest intermediate of the method (|C| times the size of the
PCA-reduced ones: about 2.8 GB for 5,000 images at 512-D, 36 GB at 8064-D). :class:`EncodeAggregate`
embeds and aggregates a chunk of images at a time, so they never exist for all images at once: its
memory is bounded by ``working_memory``, not by the number of images, in ``fit`` as in ``transform``.
"""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin, clone
from sklearn.utils.validation import check_is_fitted

from selconv._compat import HasMethods, Interval, fit_context
from selconv._pickling import SelconvPickleMixin
from selconv._ragged import check_local_sets, image_blocks
from selconv._torch_kernels import check_device, is_torch_device

__all__ = ["EncodeAggregate"]


class EncodeAggregate(SelconvPickleMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Embed every image's local features and aggregate them, one chunk of images at a time.

    Equivalent to ``aggregator.transform(embedding.transform(X))`` (the same numbers), but the
    embedded local features of at most ``working_memory`` MiB exist at any time. ``fit`` fits a
    clone of ``embedding`` on all of ``X`` (the embeddings stream their own fit over chunks of rows),
    then a clone of ``aggregator`` on the embedded first chunk: selconv's aggregators learn nothing
    but the dimension. Images without local features skip both stages and get a zero row, with one
    :class:`~selconv.aggregation.EmptyImageWarning` naming them all.

    Parameters
    ----------
    embedding : estimator or None, default=None
        Ragged-in, ragged-out embedding (:class:`~selconv.embedding.TriangulationEmbedding`, VLAD,
        Fisher vector, F-FAemb). None: ``TriangulationEmbedding()``. Its parameters are reached as
        ``embedding__<name>`` (in a pipeline step named "encode": ``encode__embedding__n_clusters``).
    aggregator : estimator or None, default=None
        Ragged-in, 2-D-out aggregator (:class:`~selconv.aggregation.DemocraticAggregator`, sum, max,
        ...). None: ``DemocraticAggregator()``. Parameters: ``aggregator__<name>``.
    working_memory : float, default=64
        MiB of embedded local features (float32) per chunk: a chunk holds as many whole images as
        fit, and at least one. Larger chunks make fewer, larger GEMMs; 64 MiB is about 26,000 local
        features (120 MAX-masked images) at 512-D and 2,000 (9 images) at 8064-D. On a GPU, larger
        chunks (e.g. 1024 MiB) keep it busier.
    device : str, default="cpu"
        "cpu": the numpy estimators. "cuda", "cuda:<index>" or "torch" (torch on the CPU): the torch
        kernels of ``selconv._torch_kernels``, for selconv's codebook embeddings (others are rejected).
        In ``fit``: the k-means codebook (Temb, VLAD, F-FAemb; scikit-learn's algorithm and random draws
        in torch, ``selconv._torch_fit.kmeans``; the Fisher vector's GMM stays on the CPU) and, for the
        whitened embeddings (Temb, F-FAemb), the pass over all local features that accumulates the
        covariance of the embedding. In ``transform``: the embedding and its whitening of a whole chunk of
        images at once, and democratic pooling (another aggregator runs on the host). Temb embeds on the
        device; the others embed on the host (numpy), their products with the whitening run on the
        device. Same numbers as "cpu" to float32 rounding (k-means: where a rounding difference flips a
        choice, another codebook of about the same inertia). Without CUDA, "cuda" falls back to the CPU
        with a warning.

    Attributes
    ----------
    embedding_ : estimator
        The fitted clone of ``embedding``.
    aggregator_ : estimator
        The fitted clone of ``aggregator``.
    n_embedded_features_ : int
        Dimension of the embedded local features (the aggregator's input).
    n_features_in_ : int
        Dimension of the input local features.

    Examples
    --------
    >>> import numpy as np
    >>> from selconv.embedding import TriangulationEmbedding
    >>> from selconv.encoding import EncodeAggregate
    >>> rng = np.random.default_rng(0)
    >>> sets = [rng.standard_normal((n, 4)).astype(np.float32) for n in (300, 20, 41)]
    >>> encode = EncodeAggregate(TriangulationEmbedding(3, n_clamped=2, random_state=0)).fit(sets)
    >>> encode.transform(sets).shape
    (3, 12)
    """

    _parameter_constraints: dict = {
        "embedding": [HasMethods(["fit", "transform"]), None],
        "aggregator": [HasMethods(["fit", "transform"]), None],
        "working_memory": [Interval(numbers.Real, 0, None, closed="neither")],
        "device": [str],
    }

    def __init__(self, embedding=None, aggregator=None, *, working_memory=64, device="cpu"):
        self.embedding = embedding
        self.aggregator = aggregator
        self.working_memory = working_memory
        self.device = device

    def _chunks(self, sets: list[np.ndarray]):
        """Ranges [start, stop) of the non-empty images (indices into ``nonempty``) per chunk, and those indices."""
        counts = np.array([len(s) for s in sets])
        nonempty = np.flatnonzero(counts)
        rows = max(1, int(self.working_memory * 2**20) // (4 * self.n_embedded_features_))
        return nonempty, image_blocks(counts[nonempty], rows)

    @fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None):
        """Fit the embedding on all local features, then the aggregator on the embedded first chunk.

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
        from selconv.aggregation import DemocraticAggregator
        from selconv.embedding import TriangulationEmbedding
        from selconv.embedding._codebook import BaseCodebookEmbedding

        check_device(self.device)
        sets = check_local_sets(X, estimator=self, reset=True)
        embedding = clone(TriangulationEmbedding() if self.embedding is None else self.embedding)
        aggregator = clone(DemocraticAggregator() if self.aggregator is None else self.aggregator)
        if is_torch_device(self.device):
            if not isinstance(embedding, BaseCodebookEmbedding):
                raise ValueError(
                    f"EncodeAggregate: device={self.device!r} supports selconv's codebook embeddings (Temb, VLAD, "
                    f"Fisher vector, F-FAemb); got {type(embedding).__name__}. Use device='cpu' for others."
                )
            embedding._validate_params()
            embedding.n_features_in_ = self.n_features_in_
            self.embedding_ = embedding._fit(sets, device=self.device)
        else:
            self.embedding_ = embedding.fit(sets)
        # An image without local features embeds to a (0, D) array: the embedding's dimension, for free.
        self.n_embedded_features_ = self.embedding_.transform([sets[0][:0]])[0].shape[1]
        nonempty, chunks = self._chunks(sets)
        start, stop = next(chunks)  # the embedding's fit needed a local feature: there is a non-empty image
        first = self.embedding_.transform([sets[i] for i in nonempty[start:stop]])
        self.aggregator_ = aggregator.fit(first)
        self._n_features_out = self.aggregator_.transform(first[:1]).shape[1]
        return self

    def transform(self, X):
        """Embed and aggregate the local features of every image, chunk by chunk.

        Parameters
        ----------
        X : list of array-like of shape (n_local_i, n_features)
            Local feature sets, one per image, with the ``n_features_in_`` seen in ``fit``.

        Returns
        -------
        X_out : ndarray of shape (n_images, n_features_out), float32
            One aggregated vector per image; zeros for an image without local features.
        """
        from selconv.aggregation import warn_empty_images

        check_is_fitted(self)
        sets = check_local_sets(X, estimator=self, reset=False)
        out = np.zeros((len(sets), self._n_features_out), dtype=np.float32)
        nonempty, chunks = self._chunks(sets)
        encode = self._torch_encoder() if is_torch_device(self.device) else self._numpy_encode
        for start, stop in chunks:
            images = nonempty[start:stop]
            out[images] = encode([sets[i] for i in images])
        warn_empty_images(self, [i for i, s in enumerate(sets) if len(s) == 0], len(sets))
        return out

    def _numpy_encode(self, sets: list[np.ndarray]) -> np.ndarray:
        return self.aggregator_.transform(self.embedding_.transform(sets))

    def _torch_encoder(self):
        """A function: non-empty sets -> their aggregated vectors. A whitened embedding (Temb, F-FAemb) is whitened
        on the torch device, the others embed on the host (their numpy transform); democratic pooling runs on the
        device, any other aggregator on the host (so an unwhitened embedding with one is the numpy path)."""
        import torch

        from selconv import _torch_kernels as kernels
        from selconv.aggregation import DemocraticAggregator

        whitening = self.embedding_._whitening()
        democratic = isinstance(self.aggregator_, DemocraticAggregator)
        if whitening is None and not democratic:
            return self._numpy_encode
        device = kernels.resolve_device(self.device)
        if whitening is not None:
            phi, chunk_rows = kernels.embedding_phi(self.embedding_, device)
            mean, projection = (torch.as_tensor(a.astype(np.float32), device=device) for a in whitening)
            projection_t = projection.T.contiguous()

        def encode(sets):
            with torch.no_grad(), kernels.strict_float32():
                if whitening is None:
                    embedded = torch.as_tensor(np.concatenate(self.embedding_.transform(sets)), device=device)
                else:
                    rows = torch.as_tensor(np.concatenate(sets), device=device)
                    embedded = kernels.whitened_embed(rows, phi, mean, projection_t, chunk_rows)
                if not democratic:
                    local = np.split(embedded.cpu().numpy(), np.cumsum([len(s) for s in sets])[:-1])
                    return self.aggregator_.transform(local)
                counts = torch.as_tensor([len(s) for s in sets], device=device)
                image = torch.repeat_interleave(torch.arange(len(sets), device=device), counts)
                padded = kernels.pad(embedded, image, counts)
                return kernels.democratic(padded, self.aggregator_.n_iter, self.aggregator_.gamma).cpu().numpy()

        return encode
