"""PCA of local features followed by l2-normalisation (docs/how-it-works.md, section 3): ragged in, ragged out.

The paper reduces the masked local conv features to d dimensions before embedding them:
x' = U_d^T (x - mu), then x' / ||x'||. LocalPCA learns mu and U_d from a bounded uniform sample of
the training local features, so fitting on thousands of images needs memory for the sample only.
"""

from __future__ import annotations

import itertools
import numbers
from functools import partial

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.random import sample_without_replacement
from sklearn.utils.validation import check_is_fitted

from selconv._compat import Interval, fit_context
from selconv._linalg import l2_normalize_rows, mean_and_scatter, principal_axes, whitening_scale
from selconv._pickling import SelconvPickleMixin
from selconv._ragged import check_local_sets, image_blocks
from selconv._torch_kernels import check_device, is_torch_device, resolve_device
from selconv.exceptions import OVERFLOW_HINT, check_finite, check_fitted_finite

__all__ = ["LocalPCA"]

# Rows per block in the float64 covariance pass and the float32 transform: large enough for
# efficient GEMMs, small enough to bound the extra memory (8k rows x 512 channels = 16 MiB float32; measured:
# 64k-row blocks fall out of cache and were about 2x slower).
_BLOCK_ROWS = 1 << 13
# Rows per block copied to a torch device: larger, fewer copies and GEMMs (64k rows x 512 channels = 128 MiB float32).
_DEVICE_BLOCK_ROWS = 1 << 16


class LocalPCA(SelconvPickleMixin, TransformerMixin, BaseEstimator):
    """Project local features on their top principal directions, then l2-normalise each one.

    ``fit`` draws at most ``max_samples`` local features uniformly at random over all images
    (without replacement; all of them when there are fewer), and learns their mean and the
    eigenvectors of their covariance in float64. ``transform`` maps every local feature x of every
    image to x' = U_d^T (x - mean), optionally whitened, then divides it by its l2 norm (a row of
    norm 0 stays 0). The number of local features per image is unchanged.

    Parameters
    ----------
    n_components : int, default=32
        Output dimension d; at most the input dimension K. The paper's d for each final dimension
        is in docs/how-it-works.md, section 4 (32 for D = 512).
    max_samples : int, default=100_000
        Most local features used to fit; bounds time and memory on large training sets.
    whiten : bool, default=False
        Divide each projected coordinate by the square root of its eigenvalue before the
        l2-normalisation (the paper does not).
    random_state : int, RandomState instance or None, default=None
        Draws the sample when there are more than ``max_samples`` local features.
    device : str, default="cpu"
        "cpu": numpy. "torch" (torch on the CPU), "cuda" or "cuda:<index>": the sampled local features are
        copied to the device in blocks, and the fit's mean and covariance (the GEMM over the sample) are
        accumulated there in float64, as numpy does (the eigendecomposition stays in numpy); ``transform``
        projects and normalises with the torch kernel (``selconv._torch_kernels.local_pca``, float32, TF32
        off). Same numbers as "cpu" to float rounding (the l2-normalisation does not rescue rows whose sum of
        squares under- or overflows float32, as numpy's does). Without CUDA, "cuda" falls back to the CPU with
        a warning.

    Attributes
    ----------
    mean_ : ndarray of shape (n_features_in_,), float64
        Mean of the sampled local features.
    components_ : ndarray of shape (n_components, n_features_in_), float64
        Principal directions, by decreasing variance; each one's largest-magnitude entry is positive.
    explained_variance_ : ndarray of shape (n_components,), float64
        Variance of the sample along each component (covariance with ``n - 1`` in the denominator).
    n_samples_seen_ : int
        Number of local features the fit used.
    n_features_in_ : int
        Input dimension K.

    Examples
    --------
    >>> import numpy as np
    >>> from selconv.local_pca import LocalPCA
    >>> rng = np.random.default_rng(0)
    >>> sets = [rng.random((30, 8)), np.zeros((0, 8)), rng.random((7, 8))]
    >>> out = LocalPCA(n_components=4, random_state=0).fit_transform(sets)
    >>> [s.shape for s in out]
    [(30, 4), (0, 4), (7, 4)]
    """

    _parameter_constraints: dict = {
        "n_components": [Interval(numbers.Integral, 1, None, closed="left")],
        "max_samples": [Interval(numbers.Integral, 1, None, closed="left")],
        "whiten": ["boolean"],
        "random_state": ["random_state"],
        "device": [str],
    }

    def __init__(self, n_components=32, *, max_samples=100_000, whiten=False, random_state=None, device="cpu"):
        self.n_components = n_components
        self.max_samples = max_samples
        self.whiten = whiten
        self.random_state = random_state
        self.device = device

    def _sample_rows(self, sets: list[np.ndarray]) -> list[np.ndarray]:
        """Row indices sampled from each image: uniform over all local features, sorted within an image."""
        counts = np.array([len(s) for s in sets], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        total = int(offsets[-1])
        if total <= self.max_samples:
            return [np.arange(n) for n in counts]
        rng = check_random_state(self.random_state)
        picked = np.sort(sample_without_replacement(total, self.max_samples, random_state=rng))
        bounds = np.searchsorted(picked, offsets)
        return [picked[bounds[i] : bounds[i + 1]] - offsets[i] for i in range(len(sets))]

    @fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Learn the mean and principal directions of (a sample of) the local features.

        Parameters
        ----------
        X : list of array-like of shape (n_local_i, n_features)
            Local feature sets, one per image; ``n_local_i`` may differ and may be 0.
        y : None
            Ignored.

        Returns
        -------
        self : object
        """
        check_device(self.device)
        sets = check_local_sets(X, estimator=self, reset=True)
        n_features = self.n_features_in_
        if self.n_components > n_features:
            raise ValueError(
                f"LocalPCA: n_components={self.n_components} must be at most the number of features "
                f"per local descriptor K={n_features}."
            )
        n_total = sum(len(s) for s in sets)
        if n_total == 0:
            raise ValueError(f"LocalPCA: none of the {len(sets)} images has a local feature; nothing to fit.")
        rows_per_image = self._sample_rows(sets)
        n_samples = sum(len(rows) for rows in rows_per_image)
        if n_samples < self.n_components:
            raise ValueError(
                f"LocalPCA needs at least n_components={self.n_components} local features to fit; got "
                f"{n_samples} (max_samples={self.max_samples}, {n_total} local features in {len(sets)} images)."
            )

        # One pass over the sample in float64 blocks, centred on the first block's mean.
        counts = np.array([len(rows) for rows in rows_per_image])
        on_device = is_torch_device(self.device)
        blocks = (
            np.concatenate([sets[i][rows_per_image[i]] for i in range(start, stop)])
            for start, stop in image_blocks(counts, _DEVICE_BLOCK_ROWS if on_device else _BLOCK_ROWS)
        )
        if on_device:
            self.mean_, scatter = _moments_on_device(blocks, self.device)
        else:
            blocks = (block.astype(np.float64) for block in blocks)
            first = next(block for block in blocks if len(block))
            self.mean_, scatter, _ = mean_and_scatter(itertools.chain([first], blocks), first.mean(axis=0))
        eigenvalues, eigenvectors = principal_axes(scatter / max(n_samples - 1, 1))
        self.components_ = eigenvectors[:, : self.n_components].T
        self.explained_variance_ = np.clip(eigenvalues[: self.n_components], 0.0, None)
        self.n_samples_seen_ = n_samples
        check_fitted_finite(self)
        return self

    def _projection(self) -> np.ndarray:
        """(n_features_in_, n_components) float32 matrix of the transform (whitened if asked)."""
        projection = self.components_.T
        if self.whiten:
            projection = projection / whitening_scale(self.explained_variance_)
        return projection.astype(np.float32)

    def transform(self, X):
        """Project every local feature and l2-normalise it.

        Parameters
        ----------
        X : list of array-like of shape (n_local_i, n_features)
            Local feature sets, one per image, with the ``n_features_in_`` seen in ``fit``.

        Returns
        -------
        local_sets : list of ndarray of shape (n_local_i, n_components), float32
            Unit-norm rows (zero rows where x equals the mean); same counts as ``X``.
        """
        check_is_fitted(self)
        sets = check_local_sets(X, estimator=self, reset=False)
        projection = self._projection()
        mean = self.mean_.astype(np.float32)
        if is_torch_device(self.device):
            project, block_rows = _projector_on_device(mean, projection, self.device), _DEVICE_BLOCK_ROWS
        else:
            project, block_rows = partial(_project, mean=mean, projection=projection), _BLOCK_ROWS

        counts = np.array([len(s) for s in sets])
        local_sets = []
        # Few large GEMMs over concatenated images instead of one small GEMM per image.
        for start, stop in image_blocks(counts, block_rows):
            projected = project(np.concatenate(sets[start:stop]))
            check_finite(projected, estimator=self, what="the projected local features", hint=OVERFLOW_HINT)
            local_sets.extend(np.split(projected, np.cumsum(counts[start:stop])[:-1]))
        return local_sets


def _project(block: np.ndarray, *, mean: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """l2((block - mean) @ projection) with numpy; ``block`` is a fresh copy, centred in place."""
    block -= mean
    projected = block @ projection
    return l2_normalize_rows(projected, out=projected)


def _projector_on_device(mean: np.ndarray, projection: np.ndarray, device):
    """:func:`_project` with the torch kernel on ``device``: a function of a host block, returning a host array."""
    import torch

    from selconv._torch_kernels import local_pca, strict_float32

    target = resolve_device(device)
    mean, projection = (torch.as_tensor(a, device=target) for a in (mean, projection))

    def project(block):
        with torch.no_grad(), strict_float32():
            return local_pca(torch.as_tensor(block, device=target), mean, projection).cpu().numpy()

    return project


def _moments_on_device(blocks, device) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scatter (float64) of the rows of host ``blocks``, each copied to ``device`` and accumulated there in
    float64, centred on the first non-empty block's mean (as the numpy path)."""
    import torch

    from selconv._torch_fit import mean_and_scatter

    target = resolve_device(device)
    with torch.no_grad():
        blocks = (torch.as_tensor(block, device=target).double() for block in blocks)
        first = next(block for block in blocks if len(block))
        mean, scatter, _ = mean_and_scatter(itertools.chain([first], blocks), first.mean(dim=0).cpu().numpy())
    return mean, scatter
