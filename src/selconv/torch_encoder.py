"""Conv maps on a device in, descriptors or codes out: a fitted paper pipeline's post-CNN stages as torch
operations (the kernels of ``selconv._torch_kernels``).

:class:`TorchEncoder` runs a fitted :func:`~selconv.pipelines.make_paper_pipeline` this way; the estimators'
``device`` parameter (``EncodeAggregate(device=...)`` and others) uses the same kernels in fit and transform.
"""

from __future__ import annotations

import numpy as np

from selconv._torch_kernels import (
    check_device,
    democratic,
    embedding_tensors,
    group_by_shape,
    itq_codes,
    local_pca,
    pad,
    power_normalize,
    resolve_device,
    rotate,
    select,
    strict_float32,
    triangulation_embed,
)

__all__ = ["TorchEncoder", "resolve_device"]


class TorchEncoder:
    """A fitted paper pipeline's post-CNN stages, run as torch operations on ``device``.

    Built from a fitted :func:`~selconv.pipelines.make_paper_pipeline` (mask "max", "sum" or "none";
    ``pca``, ``encode`` with a TriangulationEmbedding and a DemocraticAggregator, ``rotate``,
    ``power`` and optionally ``itq``); the fitted arrays are copied to the device once. Gives the
    pipeline's numbers to float32 rounding (masks identical; descriptors within about 1e-5 relative on
    well-conditioned data, about 2e-3 max-coordinate on real VGG16 maps, where the numpy path is itself that far
    from the exact result: docs/extraction.md, "Agreement of the torch post-CNN path with numpy").

    Parameters
    ----------
    pipeline : sklearn.pipeline.Pipeline
        Fitted; an ``extract`` step, if any, is ignored (pass conv maps).
    device : str, default="cuda"
        "cuda", "cuda:<index>" or "torch" (torch on the CPU). Without CUDA, "cuda" falls back to the
        CPU with a warning.
    projection_dtype : {"float32", "float64"}, default="float32"
        Arithmetic of the Temb whitening projection, the one ill-conditioned product of the chain.
        "float32" computes as the numpy pipeline does; "float64" (float32 values multiplied and summed in
        float64) brings the descriptors about twice nearer the exact (float64) result of the same fitted
        model, at the cost of a float64 GEMM (``docs/extraction.md``, "Agreement with numpy").

    Examples
    --------
    >>> encoder = TorchEncoder(fitted_pipeline, device="cuda")  # doctest: +SKIP
    >>> descriptors = encoder.transform(maps_on_gpu)  # (B, K, H, W) tensor -> (B, D) tensor  # doctest: +SKIP

    JPEG files in, codes out, the conv maps never leaving the GPU (``ConvFeatureExtractor.iter_extract``):

    >>> rows = extractor.iter_extract(paths, head=encoder.transform)  # doctest: +SKIP
    >>> codes = np.stack([row for _, row in rows])  # doctest: +SKIP
    """

    def __init__(self, pipeline, *, device: str = "cuda", projection_dtype: str = "float32"):
        import torch
        from sklearn.utils.validation import check_is_fitted

        from selconv.aggregation import DemocraticAggregator
        from selconv.embedding import TriangulationEmbedding

        check_device(device)
        if projection_dtype not in ("float32", "float64"):
            raise ValueError(f"projection_dtype must be 'float32' or 'float64'; got {projection_dtype!r}.")
        steps = dict(pipeline.steps)
        missing = [name for name in ("mask", "pca", "encode", "rotate", "power") if name not in steps]
        if missing:
            raise ValueError(f"TorchEncoder needs a paper pipeline (make_paper_pipeline); it has no step {missing}.")
        unknown = [name for name in steps if name not in ("extract", "mask", "pca", "encode", "rotate", "power", "itq")]
        if unknown:
            raise ValueError(f"TorchEncoder runs the paper pipeline's steps only; this one also has {unknown}.")
        for name in ("pca", "encode", "rotate", "power"):
            check_is_fitted(steps[name])
        if getattr(steps["mask"], "_kernel", None) is None:
            raise ValueError(f"TorchEncoder supports the MAX, SUM and no mask; got {type(steps['mask']).__name__}.")
        encode = steps["encode"]
        if not (
            isinstance(encode.embedding_, TriangulationEmbedding)
            and isinstance(encode.aggregator_, DemocraticAggregator)
        ):
            raise ValueError("TorchEncoder supports TriangulationEmbedding + DemocraticAggregator in 'encode'.")
        self.device = resolve_device(device)
        self.mask = steps["mask"]._kernel
        self.n_channels = steps["mask"].n_features_in_

        def tensor(array, dtype=torch.float32):
            return torch.as_tensor(np.ascontiguousarray(array), dtype=dtype, device=self.device)

        pca, rn = steps["pca"], steps["rotate"]
        self.pca = (tensor(pca.mean_), tensor(pca._projection()))
        centers, mean, projection_t = embedding_tensors(encode.embedding_, self.device)
        self.temb = (centers, mean, projection_t.to(getattr(torch, projection_dtype)))
        self.n_iter, self.gamma = encode.aggregator_.n_iter, encode.aggregator_.gamma
        self.rotation = (tensor(rn.mean_), tensor(rn._projection["float32"]), rn.normalize_input)
        self.alpha = steps["power"].alpha
        itq = steps.get("itq")
        self.itq = None
        if itq is not None:
            check_is_fitted(itq)
            self.itq = (tensor(itq.mean_, torch.float64), tensor(itq.projection_, torch.float64))

    def transform(self, maps, sizes=None):
        """Descriptors (or packed ITQ codes) of a batch of conv maps.

        Parameters
        ----------
        maps : torch.Tensor of shape (n_images, K, H, W), or list of ConvMap / ndarray (K, H_i, W_i)
            A tensor (any device; moved to ``device``) is one batch of equal grids; a list may mix grid
            sizes (images are grouped by grid). Single-scale only: a :class:`~selconv.MultiScaleConvMap`
            (``ConvFeatureExtractor(scales=...)``) raises a ValueError; use the numpy pipeline for those.
        sizes : torch.Tensor of shape (n_images, 2) or None
            With a tensor of ``maps``: each map's own (height, width), its top-left cells (a zero-padded batch,
            as ``ConvFeatureExtractor(pad_to_multiple=...)`` passes it to a head); the cells beyond are ignored,
            the result is each map's cropped to its own grid.

        Returns
        -------
        out : torch.Tensor (for tensor input) or ndarray (for a list), shape (n_images, D) float32 or
            (n_images, n_bits / 8) uint8 with ITQ.
        """
        import torch

        if isinstance(maps, torch.Tensor):
            if maps.ndim != 4 or maps.shape[1] != self.n_channels:
                raise ValueError(f"maps must have shape (n_images, {self.n_channels}, H, W); got {tuple(maps.shape)}.")
            own = None
            if sizes is not None:
                from selconv.extraction.backbones import valid_mask

                sizes = torch.as_tensor(sizes, device=self.device)
                if sizes.shape != (len(maps), 2):
                    raise ValueError(f"sizes must have shape ({len(maps)}, 2); got {tuple(sizes.shape)}.")
                own = valid_mask(sizes[:, 0], sizes[:, 1], maps.shape[-2:]).flatten(1)
            with torch.no_grad(), strict_float32():
                return self._encode(maps.to(self.device, torch.float32), own)
        if sizes is not None:
            raise ValueError("sizes goes with a tensor of maps; a list of maps has each map's own size.")
        from selconv._ragged import check_conv_maps

        checked = check_conv_maps(maps, estimator=self, reset=False, multiscale=False)
        out = None
        for indices in group_by_shape([conv_map.features for conv_map in checked]).values():
            batch = torch.as_tensor(np.stack([checked[i].features for i in indices]))
            codes = self.transform(batch).cpu().numpy()
            if out is None:
                out = np.zeros((len(checked), codes.shape[1]), dtype=codes.dtype)
            out[indices] = codes
        return out

    def transform_float64(self, maps) -> np.ndarray:
        """The same fitted model evaluated in float64 throughout, one map at a time: the exact result that the
        float32 paths (this encoder's and the numpy pipeline's) approximate, to measure their error.

        Parameters
        ----------
        maps : list of ConvMap or ndarray (K, H_i, W_i)

        Returns
        -------
        out : ndarray of shape (n_images, D), float64 (uint8 codes with ITQ)
        """
        import copy

        import torch

        from selconv._ragged import check_conv_maps

        exact = copy.copy(self)
        exact.pca = tuple(t.double() for t in self.pca)
        exact.temb = tuple(t.double() for t in self.temb)
        exact.rotation = (self.rotation[0].double(), self.rotation[1].double(), self.rotation[2])
        checked = check_conv_maps(maps, estimator=self, reset=False, multiscale=False)
        with torch.no_grad():
            return np.concatenate(
                [
                    exact._encode(torch.as_tensor(m.features[None]).to(self.device, torch.float64)).cpu().numpy()
                    for m in checked
                ]
            )

    @property
    def n_features_in_(self):  # for check_conv_maps's channel check
        return self.n_channels

    def _encode(self, maps, own=None):
        rows, image, counts = select(maps, self.mask, own)
        reduced = local_pca(rows, *self.pca)
        embedded = triangulation_embed(reduced, *self.temb)
        aggregated = democratic(pad(embedded, image, counts), self.n_iter, self.gamma)
        out = power_normalize(rotate(aggregated, *self.rotation), self.alpha)
        if self.itq is not None:
            out = itq_codes(out, *self.itq)
        return out
