"""Masks that select local features from conv maps: NoMask, MaxMask, SumMask, SiftMask (paper section 3.2).

Each mask maps a list of conv maps (:class:`~selconv.conv_map.ConvMap` or (K, H, W) arrays) to a list of
local feature sets, one (n_i, K) float32 array per image (n_i may be 0). Rows are the selected grid
cells in row-major (y, x) order, the order of :meth:`ConvMap.local_features`. The masks hold no
learned state: ``fit`` only records the number of channels.
"""

from __future__ import annotations

import numbers

import numpy as np
from scipy import ndimage
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from selconv._compat import Interval, StrOptions, fit_context
from selconv._pickling import SelconvPickleMixin
from selconv._ragged import check_conv_maps
from selconv._torch_kernels import check_device, is_torch_device, resolve_device, select_on_device
from selconv.conv_map import ConvMap, MultiScaleConvMap, scale_maps

__all__ = ["NoMask", "MaxMask", "SumMask", "SiftMask"]


class _BaseMask(SelconvPickleMixin, TransformerMixin, BaseEstimator):
    """Shared machinery: subclasses only define ``_select(conv_map) -> (H, W) bool``."""

    _parameter_constraints: dict = {}
    #: Name of the mask's torch kernel in ``selconv._torch_kernels.select`` (None: numpy only).
    _kernel: str | None = None

    def _select(self, conv_map: ConvMap) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_maps(self, maps: list) -> None:
        """Hook for mask-specific input requirements (SiftMask needs keypoints)."""

    def _validate(self, X, *, reset: bool) -> list:
        maps = check_conv_maps(X, estimator=self, reset=reset)
        self._check_maps(maps)
        return maps

    def _select_cells(self, conv_map: ConvMap) -> np.ndarray:
        # A grid without cells (height or width 0) has nothing to select, whatever the mask.
        if conv_map.features[0].size:
            return self._select(conv_map)
        return np.zeros(conv_map.features.shape[1:], dtype=bool)

    def _selections(self, X) -> tuple[list, list[list[np.ndarray]]]:
        """The maps and, per image, the selected cells of each of its scales (one for a ConvMap)."""
        self._validate_params()  # get_selected_locations may run before (or without) fit
        maps = self._validate(X, reset=False)
        return maps, [[self._select_cells(m) for m in scale_maps(item)] for item in maps]

    @fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Check the input and record ``n_features_in_`` (the number of channels K); nothing is learned.

        Parameters
        ----------
        X : list of ConvMap, MultiScaleConvMap or ndarray of shape (n_channels, height, width)
            One conv map per image; grid sizes may differ between images.
        y : None
            Ignored.

        Returns
        -------
        self : object
        """
        self._validate(X, reset=True)
        return self

    def transform(self, X):
        """Keep the local features at the selected grid cells.

        Parameters
        ----------
        X : list of ConvMap, MultiScaleConvMap or ndarray of shape (n_channels, height, width)
            One conv map per image, with the number of channels seen in ``fit``. A
            :class:`~selconv.MultiScaleConvMap` is masked scale by scale, each by the mask's rule, and
            its scales' local features are concatenated (in the order of its scales) into the image's set.

        Returns
        -------
        local_sets : list of ndarray of shape (n_selected_i, n_channels), float32
            The selected local features of each image, rows in row-major (y, x) order (scale after
            scale for a multi-scale map); ``n_selected_i`` may be 0.
        """
        check_is_fitted(self)
        self._validate_params()
        maps = self._validate(X, reset=False)
        rows = iter(self._selected_rows([conv_map for item in maps for conv_map in scale_maps(item)]))
        local_sets = []
        for item in maps:
            parts = [next(rows) for _ in scale_maps(item)]
            local_sets.append(parts[0] if len(parts) == 1 else np.concatenate(parts))
        return local_sets

    def _selected_rows(self, conv_maps: list) -> list[np.ndarray]:
        """The selected local features of each single-scale map, float32 (n_selected, K), computed with numpy."""
        # Gather rows of each (H*W, K) view: already in row-major (y, x) order.
        return [
            np.ascontiguousarray(
                conv_map.features.reshape(conv_map.n_channels, -1).T[np.flatnonzero(self._select_cells(conv_map))],
                np.float32,
            )
            for conv_map in conv_maps
        ]

    def get_selected_locations(self, X) -> list:
        """The selected grid cells of each image, for analysis and plots; does not need ``fit``.

        Parameters
        ----------
        X : list of ConvMap, MultiScaleConvMap or ndarray of shape (n_channels, height, width)

        Returns
        -------
        selections : list of ndarray of shape (height_i, width_i), bool
            True where the local feature is kept; for a :class:`~selconv.MultiScaleConvMap`, a tuple of
            such arrays, one per scale.
        """
        maps, selections = self._selections(X)
        return [
            cells[0] if not isinstance(item, MultiScaleConvMap) else tuple(cells)
            for item, cells in zip(maps, selections)
        ]

    def selected_fraction(self, X) -> np.ndarray:
        """Share of each image's local features that the mask keeps (paper Fig. 3a); does not need ``fit``.

        Parameters
        ----------
        X : list of ConvMap, MultiScaleConvMap or ndarray of shape (n_channels, height, width)

        Returns
        -------
        fractions : ndarray of shape (n_images,), float64
            Number of selected cells divided by H*W (summed over the scales of a multi-scale map), per
            image; ``fractions.mean()`` is the average share.
        """
        fractions = []
        for cells in self._selections(X)[1]:
            n_cells = sum(c.size for c in cells)
            fractions.append(sum(int(c.sum()) for c in cells) / n_cells if n_cells else np.nan)
        return np.array(fractions, dtype=np.float64)


class _DeviceMask(_BaseMask):
    """A mask with a torch kernel: ``transform`` selects with it on a torch ``device``, with numpy on "cpu"."""

    _parameter_constraints: dict = {"device": [str]}

    def __init__(self, *, device="cpu"):
        self.device = device

    def _validate(self, X, *, reset: bool) -> list:
        check_device(self.device)
        return super()._validate(X, reset=reset)

    def _selected_rows(self, conv_maps):
        if not is_torch_device(self.device):
            return super()._selected_rows(conv_maps)
        device = resolve_device(self.device)
        return select_on_device([conv_map.features for conv_map in conv_maps], self._kernel, device)


class NoMask(_DeviceMask):
    """Keep every local feature: all H*W cells of each conv map (the paper's "no mask" baseline).

    Parameters
    ----------
    device : str, default="cpu"
        Where ``transform`` selects: "cpu" (numpy), or "torch" (torch on the CPU), "cuda" or "cuda:<index>"
        (the torch kernel, on batches of maps; same output; see the module's docstring). Without CUDA,
        "cuda" falls back to the CPU with a warning.

    Attributes
    ----------
    n_features_in_ : int
        Number of channels K of the conv maps seen in ``fit``.

    Examples
    --------
    >>> import numpy as np
    >>> from selconv.masks import NoMask
    >>> maps = [np.ones((4, 2, 3), dtype=np.float32), np.ones((4, 1, 5), dtype=np.float32)]
    >>> [s.shape for s in NoMask().fit_transform(maps)]
    [(6, 4), (5, 4)]
    """

    _kernel = "none"

    def _select(self, conv_map):
        return np.ones(conv_map.features.shape[1:], dtype=bool)


class MaxMask(_DeviceMask):
    """MAX-mask: keep, for every channel k, the location of that channel's maximum (paper eq. 3).

    The mask is the union of the per-channel argmax locations, so at most K cells are kept.
    A channel that is zero everywhere has no maximum and contributes no location (the authors'
    MATLAB ``max`` would pick the first cell). Ties between equal maxima go to the first cell in
    row-major (y, x) order, as ``numpy.argmax`` and MATLAB's ``max`` both do.

    Parameters
    ----------
    device : str, default="cpu"
        Where ``transform`` selects: "cpu" (numpy), or "torch" (torch on the CPU), "cuda" or "cuda:<index>"
        (the torch kernel, on batches of maps; same output; see the module's docstring). Without CUDA,
        "cuda" falls back to the CPU with a warning.

    Attributes
    ----------
    n_features_in_ : int
        Number of channels K of the conv maps seen in ``fit``.
    """

    _kernel = "max"

    def _select(self, conv_map):
        features = conv_map.features
        flat = features.reshape(features.shape[0], -1)
        argmax = flat.argmax(axis=1)
        selected = np.zeros(flat.shape[1], dtype=bool)
        selected[argmax[flat.any(axis=1)]] = True
        return selected.reshape(features.shape[1:])


class SumMask(_DeviceMask):
    """SUM-mask: keep the cells whose activation summed over channels is at least its median (paper eq. 4).

    With S(x, y) = sum_k F_k(x, y) (accumulated in float64), the kept cells are those with
    S >= median(S); the median of an even number of cells is the mean of the two middle values
    (numpy and MATLAB agree), and ties at the median are kept, so at least half of the cells survive.

    Parameters
    ----------
    device : str, default="cpu"
        Where ``transform`` selects: "cpu" (numpy), or "torch" (torch on the CPU), "cuda" or "cuda:<index>"
        (the torch kernel, on batches of maps; same output; see the module's docstring). Without CUDA,
        "cuda" falls back to the CPU with a warning.

    Attributes
    ----------
    n_features_in_ : int
        Number of channels K of the conv maps seen in ``fit``.
    """

    _kernel = "sum"

    def _select(self, conv_map):
        channel_sum = conv_map.features.sum(axis=0, dtype=np.float64)
        return channel_sum >= np.median(channel_sum)


def _round_half_away(values: np.ndarray) -> np.ndarray:
    """MATLAB's ``round`` (halves away from zero); ``numpy.round`` would round halves to even."""
    return np.sign(values) * np.floor(np.abs(values) + 0.5)


class SiftMask(_BaseMask):
    """SIFT-mask: keep the cells under SIFT keypoints, with a square neighbourhood (paper eq. 1).

    The paper maps a keypoint at (x, y) of the W_I x H_I image the CNN saw to the grid cell
    (round(x W / W_I), round(y H / H_I)) of the W x H grid. The authors' keypoints come from
    VLFeat's MATLAB ``vl_sift``, whose frames are 1-based (the mex adds 1 to the C library's
    0-based coordinates: the first pixel's centre is (1, 1)), and the cell is a 1-based MATLAB index.
    ``ConvMap.keypoints`` follow OpenCV (``KeyPoint.pt``, 0-based: the first pixel's centre is 0), so
    ``cell_rule="authors"`` shifts each keypoint by +1 pixel, applies that formula with MATLAB's
    ``round`` (halves away from zero), clips to the grid and shifts back to a 0-based cell: the
    authors' cells exactly. Geometrically that is half a cell up and left of the cell whose pixel
    span holds the keypoint, floor((x + 1/2) W / W_I) in 0-based terms, which
    ``cell_rule="containing"`` selects instead (a deviation from the authors, offered as an option).

    Parameters
    ----------
    radius : int, default=1
        Also keep every cell within this Chebyshev distance of a keypoint's cell, clipped at the
        grid border. 1 (a 3x3 neighbourhood) is what the authors' code does; 0 keeps only the
        keypoints' own cells, as in the paper's equation.
    fallback : {"all", "empty"}, default="all"
        What an image with no keypoint (an empty ``keypoints`` array) gets: "all" keeps every cell,
        i.e. no mask, as in the paper; "empty" keeps none.
    cell_rule : {"authors", "containing"}, default="authors"
        How a keypoint picks its cell (see above): the authors' rounding of 1-based coordinates, or
        the cell containing the keypoint.

    Attributes
    ----------
    n_features_in_ : int
        Number of channels K of the conv maps seen in ``fit``.

    Notes
    -----
    Conv maps must carry keypoints: extract them with ``ConvFeatureExtractor(keypoints="sift")``.
    Plain (K, H, W) arrays and maps with ``keypoints=None`` are rejected.
    """

    _parameter_constraints: dict = {
        "radius": [Interval(numbers.Integral, 0, None, closed="left")],
        "fallback": [StrOptions({"all", "empty"})],
        "cell_rule": [StrOptions({"authors", "containing"})],
    }

    def __init__(self, radius=1, *, fallback="all", cell_rule="authors"):
        self.radius = radius
        self.fallback = fallback
        self.cell_rule = cell_rule

    def _check_maps(self, maps):
        for index, item in enumerate(maps):
            if any(conv_map.keypoints is None for conv_map in scale_maps(item)):
                where = f" ({item.source})" if item.source else ""
                raise ValueError(
                    f"SiftMask needs SIFT keypoints, but conv map {index}{where} has keypoints=None "
                    f"(plain arrays never have them). Extract the conv maps with "
                    f"ConvFeatureExtractor(keypoints='sift')."
                )

    def _select(self, conv_map):
        height, width = conv_map.features.shape[1:]
        keypoints = conv_map.keypoints
        if len(keypoints) == 0:
            return np.full((height, width), self.fallback == "all")
        image_width, image_height = conv_map.image_size
        x = keypoints[:, 0].astype(np.float64)
        y = keypoints[:, 1].astype(np.float64)
        if self.cell_rule == "authors":
            # float64 and (x * W) / W_I in MATLAB's order, so halves land where the authors' do.
            columns = np.clip(_round_half_away((x + 1.0) * width / image_width), 1, width).astype(np.intp) - 1
            rows = np.clip(_round_half_away((y + 1.0) * height / image_height), 1, height).astype(np.intp) - 1
        else:
            columns = np.clip(np.floor((x + 0.5) * width / image_width), 0, width - 1).astype(np.intp)
            rows = np.clip(np.floor((y + 0.5) * height / image_height), 0, height - 1).astype(np.intp)
        selected = np.zeros((height, width), dtype=bool)
        selected[rows, columns] = True
        if self.radius > 0:
            size = 2 * self.radius + 1
            # Cells outside the grid count as unselected, which clips the neighbourhood at the border.
            selected = ndimage.binary_dilation(selected, structure=np.ones((size, size), dtype=bool))
        return selected
