"""Global poolings of conv maps, the baselines' first stage: SPoC, MAC, GeM, CroW and R-MAC.

docs/how-it-works.md, "Baselines". Each pooling estimator maps a list of conv maps (``ConvMap`` or (K, H, W)
arrays) to ONE 2-D float32 array (n_images, K) of l2-normalised pooled vectors, which
:class:`~selconv.postprocessing.PCAWhitening` then post-processes (:func:`selconv.baselines.make_baseline`
builds the two-step pipeline). These pool a whole conv map; the paper's aggregators, which pool a set of
embedded local features, are in :mod:`selconv.aggregation`.
"""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from selconv._compat import Interval, StrOptions, fit_context
from selconv._linalg import l2_normalize_rows
from selconv._pickling import SelconvPickleMixin
from selconv._ragged import check_conv_maps
from selconv._rmac_grid import rmac_regions
from selconv.conv_map import scale_maps
from selconv.postprocessing import PCAWhitening

__all__ = ["SPoC", "MAC", "RMAC", "CroW", "GeM", "rmac_regions"]


class _ConvMapPooling(SelconvPickleMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Shared machinery: subclasses define ``_pool(F) -> (K,)`` for one (K, H, W) float32 map.

    A :class:`~selconv.MultiScaleConvMap` is pooled scale by scale and the l2-normalised per-scale vectors
    are combined as ``scale_pooling`` says (``_combine_scales``).
    """

    _parameter_constraints: dict = {"scale_pooling": [StrOptions({"sum", "gem"})]}
    #: Pooling needs non-negative activations (post-ReLU maps); checked with a clear error.
    _requires_nonnegative = False

    def _pool(self, features: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _scale_power(self) -> float:
        """The power of ``scale_pooling="gem"``: 3, Radenovic et al.'s fixed GeM power (GeM uses its own p)."""
        return 3.0

    def _check_maps(self, X, *, reset: bool) -> list[list[np.ndarray]]:
        """Per image, the float32 features of each of its scales (one for a ConvMap)."""
        maps = check_conv_maps(X, estimator=self, reset=reset)
        arrays = []
        for index, item in enumerate(maps):
            scales = [np.asarray(conv_map.features, dtype=np.float32) for conv_map in scale_maps(item)]
            if self._requires_nonnegative and any(f.size and f.min() < 0 for f in scales):
                where = f" ({item.source})" if item.source else ""
                raise ValueError(
                    f"{type(self).__name__}: conv map {index}{where} has negative activations; it is defined "
                    f"for non-negative (post-ReLU) conv maps."
                )
            arrays.append(scales)
        return arrays

    @fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Check the conv maps and record their number of channels; nothing is learned.

        Parameters
        ----------
        X : list of ConvMap, MultiScaleConvMap or array-like of shape (n_channels, height, width)
            One conv map per image; grid sizes may differ.
        y : None
            Ignored.

        Returns
        -------
        self : object
        """
        self._check_maps(X, reset=True)
        self._n_features_out = self.n_features_in_
        return self

    def transform(self, X):
        """Pool each conv map into one l2-normalised vector.

        Parameters
        ----------
        X : list of ConvMap, MultiScaleConvMap or array-like of shape (n_channels, height, width)
            One conv map per image, with the ``n_features_in_`` channels seen in ``fit``. The scales of a
            :class:`~selconv.MultiScaleConvMap` are pooled one by one and combined by ``scale_pooling``.

        Returns
        -------
        X_out : ndarray of shape (n_images, n_channels), float32
            Unit-norm rows; an all-zero (or empty) map gives a zero row.
        """
        check_is_fitted(self)
        self._validate_params()  # set_params after fit must not slip an out-of-range value through
        maps = self._check_maps(X, reset=False)
        # float64 until normalised: sums over a map of large float32 activations overflow float32.
        pooled = np.zeros((len(maps), self._n_features_out), dtype=np.float64)
        for index, scales in enumerate(maps):
            vectors = np.zeros((len(scales), self._n_features_out), dtype=np.float64)
            for scale, features in enumerate(scales):
                if features.shape[1] * features.shape[2] > 0:
                    vectors[scale] = self._pool(features)
            pooled[index] = vectors[0] if len(scales) == 1 else _combine_scales(vectors, self)
        return l2_normalize_rows(pooled).astype(np.float32)


def _combine_scales(vectors: np.ndarray, pooling) -> np.ndarray:
    """One image's descriptor from its per-scale pooled vectors (n_scales, D), before the final l2-normalisation.

    Each scale's vector is l2-normalised (the pooling's own normalisation), then ``pooling.scale_pooling``
    decides: "sum" adds them (Gordo et al.'s multi-scale R-MAC); "gem" takes their generalised mean
    (mean_s v_s^p)^(1/p) with the pooling's power p (cirtorch's multi-scale GeM), as a signed power
    sign(v)|v|^p so that whitened R-MAC vectors, which have negative entries, keep their sign.
    """
    unit = l2_normalize_rows(vectors)
    if pooling.scale_pooling == "sum":
        return unit.sum(axis=0)
    power = pooling._scale_power()
    mean = np.mean(np.sign(unit) * np.abs(unit) ** power, axis=0)
    return np.sign(mean) * np.abs(mean) ** (1.0 / power)


def _center_prior(height: int, width: int) -> np.ndarray:
    """Babenko & Lempitsky's Gaussian centre prior on the grid (cell centres), sigma = 1/3 of the
    distance from the centre to the closest border."""
    sigma = min(height, width) / 2 / 3
    y = np.arange(height) - (height - 1) / 2
    x = np.arange(width) - (width - 1) / 2
    return np.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma**2))


class SPoC(_ConvMapPooling):
    """Sum pooling of conv features, SPoC (Babenko & Lempitsky, ICCV 2015).

    psi_k = sum_(x,y) alpha(x, y) F_k(x, y), l2-normalised; alpha = 1, or with ``center_prior`` a
    Gaussian centred on the map with sigma one third of the distance from the centre to the closest
    border (the paper's centre prior, computed on the grid's cell centres).

    Parameters
    ----------
    center_prior : bool, default=False
        Weight locations by the Gaussian centre prior.
    scale_pooling : {"sum", "gem"}, default="sum"
        How the scales of a :class:`~selconv.MultiScaleConvMap` combine: the sum of the l2-normalised
        per-scale vectors, or their generalised mean with power 3 (docs/how-it-works.md, "Multi-scale").
    """

    _parameter_constraints: dict = {**_ConvMapPooling._parameter_constraints, "center_prior": ["boolean"]}

    def __init__(self, *, center_prior=False, scale_pooling="sum"):
        self.center_prior = center_prior
        self.scale_pooling = scale_pooling

    def _pool(self, features):
        if not self.center_prior:
            return features.sum(axis=(1, 2), dtype=np.float64)
        weights = _center_prior(*features.shape[1:])
        return np.tensordot(features, weights, axes=([1, 2], [0, 1]))  # float64: float32 sums overflow


class MAC(_ConvMapPooling):
    """Maximum activation of convolutions, MAC (Tolias et al.; Razavian et al.): psi_k = max F_k, l2-normalised.

    Parameters
    ----------
    scale_pooling : {"sum", "gem"}, default="sum"
        How the scales of a :class:`~selconv.MultiScaleConvMap` combine: the sum of the l2-normalised
        per-scale vectors, or their generalised mean with power 3 (docs/how-it-works.md, "Multi-scale").
    """

    def __init__(self, *, scale_pooling="sum"):
        self.scale_pooling = scale_pooling

    def _pool(self, features):
        return features.max(axis=(1, 2))


class GeM(_ConvMapPooling):
    """Generalised-mean pooling, GeM (Radenovic, Tolias & Chum, TPAMI 2018).

    psi_k = (mean_(x,y) F_k(x, y)^p)^(1/p), l2-normalised: p = 1 is average pooling (SPoC after
    l2-normalisation), p -> infinity is MAC. Defined for non-negative (post-ReLU) maps; negative
    activations raise (cirtorch clamps them to 1e-6 instead).

    Parameters
    ----------
    p : float > 0, default=3.0
        The power (the value of Radenovic et al. for a fixed p).
    scale_pooling : {"sum", "gem"}, default="sum"
        How the scales of a :class:`~selconv.MultiScaleConvMap` combine: the sum of the l2-normalised
        per-scale vectors, or their generalised mean with power p (docs/how-it-works.md, "Multi-scale").
    """

    _parameter_constraints: dict = {
        **_ConvMapPooling._parameter_constraints,
        "p": [Interval(numbers.Real, 0, None, closed="neither")],
    }
    _requires_nonnegative = True

    def __init__(self, p=3.0, *, scale_pooling="sum"):
        self.p = p
        self.scale_pooling = scale_pooling

    def _scale_power(self):
        return self.p

    def _pool(self, features):
        flat = features.reshape(features.shape[0], -1).astype(np.float64)
        peak = flat.max(axis=1)
        # Scale each channel by its maximum first so that large p neither overflows nor underflows.
        ratio = np.divide(flat, peak[:, None], out=np.zeros_like(flat), where=peak[:, None] > 0)
        return peak * np.mean(ratio**self.p, axis=1) ** (1.0 / self.p)


class CroW(_ConvMapPooling):
    """Cross-dimensional weighting, CroW (Kalantidis, Mellina & Osindero, ECCVW 2016).

    Spatial weights from the channel sum S'(x, y) = sum_k F_k(x, y):
    S = (S' / ||S'||_a)^(1/b); channel weights from the sparsity of each channel, Q_k = fraction of
    non-zero locations, Omega_k = log(sum_h Q_h / Q_k) (0 for an all-zero channel);
    psi_k = Omega_k sum_(x,y) S(x, y) F_k(x, y), l2-normalised. As the authors' code, the weights
    come from each image's own map. Defined for non-negative (post-ReLU) maps.

    Parameters
    ----------
    a : float > 0, default=2
        Power of the spatial normalisation.
    b : float > 0, default=2
        Inverse power applied to the normalised spatial weights.
    scale_pooling : {"sum", "gem"}, default="sum"
        How the scales of a :class:`~selconv.MultiScaleConvMap` combine: the sum of the l2-normalised
        per-scale vectors, or their generalised mean with power 3 (docs/how-it-works.md, "Multi-scale").
    """

    _parameter_constraints: dict = {
        **_ConvMapPooling._parameter_constraints,
        "a": [Interval(numbers.Real, 0, None, closed="neither")],
        "b": [Interval(numbers.Real, 0, None, closed="neither")],
    }
    _requires_nonnegative = True

    def __init__(self, *, a=2, b=2, scale_pooling="sum"):
        self.a = a
        self.b = b
        self.scale_pooling = scale_pooling

    def _relative_spatial_weights(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(S' / max S')^(1/b) and S' / max S' for one map: S up to a per-image factor, in [0, 1]."""
        channel_sum = features.sum(axis=0, dtype=np.float64)
        peak = channel_sum.max()
        ratio = channel_sum / peak if peak > 0 else np.zeros_like(channel_sum)
        return ratio ** (1.0 / self.b), ratio

    def spatial_weights(self, features: np.ndarray) -> np.ndarray:
        """S for one (K, H, W) map: (H, W), zero where the map is all zero.

        Computed from S' / max S' (whose a-norm lies in [1, H W]), so no power overflows for any a, b > 0.
        """
        relative, ratio = self._relative_spatial_weights(features)
        if not ratio.any():
            return relative
        return relative * np.exp(-np.log(np.sum(ratio**self.a)) / (self.a * self.b))

    @staticmethod
    def channel_weights(features: np.ndarray) -> np.ndarray:
        """Omega for one (K, H, W) map: (K,), log inverse sparsity, 0 for an all-zero channel."""
        nonzero = np.count_nonzero(features.reshape(features.shape[0], -1), axis=1) / (
            features.shape[1] * features.shape[2]
        )
        total = nonzero.sum()
        return np.log(np.divide(total, nonzero, out=np.ones_like(nonzero), where=nonzero > 0))

    def _pool(self, features):
        # S up to its per-image factor ||S'||_a^(-1/b), which the final l2-normalisation cancels (and which
        # underflows for tiny a b): the pooled direction is CroW's for every a, b > 0.
        relative, _ = self._relative_spatial_weights(features)
        weighted = np.tensordot(features.astype(np.float64), relative, axes=([1, 2], [0, 1]))
        return weighted * self.channel_weights(features)


class RMAC(_ConvMapPooling):
    """Regional maximum activation of convolutions, R-MAC (Tolias, Sicre & Jegou, ICLR 2016).

    MAC vectors of the regions of :func:`rmac_regions` (L scales, ``overlap``), each l2-normalised
    and, with ``region_whitening``, PCA-whitened and l2-normalised again by a
    :class:`~selconv.postprocessing.PCAWhitening` learned in ``fit`` on the regions of the training maps
    (Tolias et al. learn it on regions of a held-out dataset); the region vectors are summed and the sum
    l2-normalised. As in Tolias et al. the whole map is not itself a region (cirtorch also adds its MAC vector).

    Parameters
    ----------
    levels : int, default=3
        Number of scales L.
    overlap : float in [0, 1), default=0.4
        Desired overlap of neighbouring regions.
    region_whitening : bool, default=True
        Whiten the region vectors (part of R-MAC's definition); False sums plain l2-normalised regions
        and ``fit`` learns nothing.
    n_components : int or None, default=None
        Output dimension of the regional whitening; None keeps n_channels. Ignored without
        ``region_whitening``.
    shrinkage : float >= 0 or "ledoit-wolf", default="ledoit-wolf"
        Eigenvalue shrinkage of the regional whitening; see :class:`~selconv.postprocessing.PCAWhitening`.
    scale_pooling : {"sum", "gem"}, default="sum"
        How the scales of a :class:`~selconv.MultiScaleConvMap` combine: the sum of the l2-normalised
        per-scale vectors, or their generalised mean with power 3 (docs/how-it-works.md, "Multi-scale").
        The regional whitening is learned on the regions of every scale.

    Attributes
    ----------
    region_whitening_ : PCAWhitening or None
        The fitted regional whitening.
    n_regions_seen_ : int
        Number of training regions it was learned on.
    """

    _parameter_constraints: dict = {
        **_ConvMapPooling._parameter_constraints,
        "levels": [Interval(numbers.Integral, 1, None, closed="left")],
        "overlap": [Interval(numbers.Real, 0, 1, closed="left")],
        "region_whitening": ["boolean"],
        "n_components": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "shrinkage": [Interval(numbers.Real, 0, None, closed="left"), StrOptions({"ledoit-wolf"})],
    }

    def __init__(
        self,
        *,
        levels=3,
        overlap=0.4,
        region_whitening=True,
        n_components=None,
        shrinkage="ledoit-wolf",
        scale_pooling="sum",
    ):
        self.levels = levels
        self.overlap = overlap
        self.region_whitening = region_whitening
        self.n_components = n_components
        self.shrinkage = shrinkage
        self.scale_pooling = scale_pooling

    def _region_vectors(self, features: np.ndarray) -> np.ndarray:
        """l2-normalised MAC vectors of one map's regions: (n_regions, K) float32."""
        regions = rmac_regions(*features.shape[1:], levels=self.levels, overlap=self.overlap)
        vectors = []
        # The regions of one side form a grid of top rows x left columns: take the max over each
        # needed band of rows once, then over each needed band of columns (a separable max filter).
        for side in np.unique(regions[:, 2]):
            at_side = regions[regions[:, 2] == side]
            rows, row_index = np.unique(at_side[:, 1], return_inverse=True)
            cols, col_index = np.unique(at_side[:, 0], return_inverse=True)
            row_max = np.lib.stride_tricks.sliding_window_view(features, side, axis=1)[:, rows].max(axis=-1)
            grid_max = np.lib.stride_tricks.sliding_window_view(row_max, side, axis=2)[:, :, cols].max(axis=-1)
            vectors.append(grid_max[:, row_index, col_index].T)
        if not vectors:
            return np.zeros((0, features.shape[0]), dtype=np.float32)
        return l2_normalize_rows(np.concatenate(vectors))

    @fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Learn the regional PCA-whitening on the regions of the training conv maps.

        Parameters
        ----------
        X : list of ConvMap or array-like of shape (n_channels, height, width)
            Training conv maps (a held-out set, never the test database's queries).
        y : None
            Ignored.

        Returns
        -------
        self : object
        """
        maps = self._check_maps(X, reset=True)
        self.region_whitening_ = None
        self.n_regions_seen_ = 0
        self._n_features_out = self.n_features_in_
        if not self.region_whitening:
            return self
        regions = np.concatenate([self._region_vectors(features) for scales in maps for features in scales])
        # All-zero regions carry no direction; they would only pull the mean towards 0.
        regions = regions[np.any(regions != 0, axis=1)]
        if len(regions) < 2:
            raise ValueError(
                f"RMAC: the training conv maps have {len(regions)} non-zero regions; the regional "
                f"whitening needs at least 2."
            )
        self.region_whitening_ = PCAWhitening(self.n_components, shrinkage=self.shrinkage).fit(regions)
        self.n_regions_seen_ = len(regions)
        self._n_features_out = self.region_whitening_.n_components_
        return self

    def _pool(self, features):
        regions = self._region_vectors(features)
        regions = regions[np.any(regions != 0, axis=1)]
        if len(regions) == 0:
            return np.zeros(self._n_features_out, dtype=np.float32)
        if self.region_whitening_ is not None:
            regions = self.region_whitening_.transform(regions)
        return regions.sum(axis=0, dtype=np.float64)
