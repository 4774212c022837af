"""The post-CNN stages as torch kernels, and the ``device`` parameter's values: the numpy estimators' numbers
(float32 throughout, as the numpy path, except ITQ's projection, float64 as there) on batches of images, so that
conv maps a CUDA extractor has produced never leave the GPU.

Local features are kept "packed" (all images' rows concatenated, in each image's row-major cell order) for the
per-feature stages, and padded to (n_images, max_n_local, D) with zero rows for the per-image democratic weights
(a zero row takes no weight, exactly as an all-zero local feature does in
:class:`~selconv.aggregation.DemocraticAggregator`). Used by :class:`selconv.torch_encoder.TorchEncoder` and by the
estimators' ``device`` parameter (masks, ``LocalPCA``, ``EncodeAggregate``, ``ITQHasher``).
"""

from __future__ import annotations

import warnings

import numpy as np

#: Values of the ``device`` parameter that select the torch path ("torch": torch on the CPU).
TORCH_DEVICES = "'torch' (torch on the CPU), 'cuda' or 'cuda:<index>'"


def is_torch_device(device: str) -> bool:
    """True when ``device`` selects the torch path; "cpu" is the numpy path."""
    return device == "torch" or device == "cuda" or device.startswith("cuda:")


def check_device(device, *, name: str = "device") -> None:
    """Error naming the accepted values when ``device`` is neither "cpu" nor a torch device."""
    if not isinstance(device, str) or not (device == "cpu" or is_torch_device(device)):
        raise ValueError(f"{name} must be 'cpu' (numpy) or {TORCH_DEVICES}; got {device!r}.")


def resolve_device(device: str):
    """The torch.device for ``device`` ("torch" -> CPU); CUDA without a GPU falls back to the CPU with a warning."""
    import torch

    if device == "torch":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        warnings.warn(
            f"device={device!r} but CUDA is not available; running the torch path on the CPU.",
            UserWarning,
            stacklevel=3,
        )
        return torch.device("cpu")
    return torch.device(device)


# ------------------------------------------------------------------------------------------- masks


def max_mask(maps, own=None):
    """(B, K, H, W) -> (B, H*W) bool: union of the per-channel argmax cells; all-zero channels skipped. With
    ``own`` ((B, H*W) bool), only each image's own cells count (the others are never selected)."""
    import torch

    flat = maps.flatten(2)
    n_cells = flat.shape[2]
    if own is None:
        live = flat.any(dim=2)
    else:
        live = ((flat != 0) & own[:, None, :]).any(dim=2)
        flat = torch.where(own[:, None, :], flat, -torch.inf)
    argmax = flat.argmax(dim=2)  # the first maximum in row-major order, as numpy.argmax
    argmax = torch.where(live, argmax, n_cells)  # an all-zero channel votes for a dump cell
    selected = torch.zeros(flat.shape[0], n_cells + 1, dtype=torch.bool, device=maps.device)
    selected.scatter_(1, argmax, True)
    return selected[:, :n_cells]


def sum_mask(maps, own=None):
    """(B, K, H, W) -> (B, H*W) bool: cells whose channel sum (float64) is at least its median (over each
    image's ``own`` cells only, when given)."""
    import torch

    channel_sum = maps.flatten(2).sum(dim=1, dtype=torch.float64)
    # Linear interpolation = numpy.median (the mean of the two middle values of an even count).
    if own is None:
        median = torch.quantile(channel_sum, 0.5, dim=1, keepdim=True, interpolation="linear")
        return channel_sum >= median
    ours = torch.where(own, channel_sum, torch.nan)
    median = torch.nanquantile(ours, 0.5, dim=1, keepdim=True, interpolation="linear")
    return (channel_sum >= median) & own


def select(maps, mask: str, own=None):
    """Packed local features of the selected cells: rows (n, K), image index per row, count per image. With
    ``own`` ((B, H*W) bool), cells outside each image's own grid are never selected (a zero-padded batch)."""
    import torch

    batch, n_channels = maps.shape[:2]
    if mask == "max":
        selected = max_mask(maps, own)
    elif mask == "sum":
        selected = sum_mask(maps, own)
    elif own is None:
        selected = torch.ones(batch, maps.shape[2] * maps.shape[3], dtype=torch.bool, device=maps.device)
    else:
        selected = own
    image, cell = selected.nonzero(as_tuple=True)  # row-major: by image, then cell (y, x)
    rows = maps.flatten(2)[image, :, cell]  # (n, K)
    return rows, image, selected.sum(dim=1)


def group_by_shape(arrays) -> dict:
    """Indices of ``arrays`` by (shape, dtype), in order of first appearance: the batches of equal grids."""
    groups: dict = {}
    for index, array in enumerate(arrays):
        groups.setdefault((array.shape, array.dtype), []).append(index)
    return groups


def select_on_device(arrays, mask: str, device, batch_bytes: int = 1 << 28) -> list[np.ndarray]:
    """:func:`select` of host maps (K, H, W) on the torch ``device``: the selected rows of each map, float32 (n_i, K).

    Maps of one shape and dtype are copied, one by one, into device batches of at most ``batch_bytes`` (at least
    one map), so that each kernel launch masks many maps; their dtype is kept (float64 maps are masked in float64,
    as numpy does). A grid without cells selects nothing.
    """
    import torch

    out = [None] * len(arrays)
    for (shape, dtype), indices in group_by_shape(arrays).items():
        if shape[1] * shape[2] == 0:
            for index in indices:
                out[index] = np.zeros((0, shape[0]), dtype=np.float32)
            continue
        per_batch = max(1, batch_bytes // (int(np.prod(shape)) * dtype.itemsize))
        for start in range(0, len(indices), per_batch):
            batch = indices[start : start + per_batch]
            maps = torch.empty((len(batch), *shape), dtype=getattr(torch, dtype.name), device=device)
            with warnings.catch_warnings():  # read-only arrays (memory-mapped caches): only read by the copy
                warnings.simplefilter("ignore", UserWarning)
                for position, index in enumerate(batch):  # straight into the device batch: no host staging copy
                    maps[position].copy_(torch.as_tensor(arrays[index]))
            with torch.no_grad():
                rows, _, counts = select(maps, mask)
                rows = rows.to(torch.float32).cpu().numpy()
            for index, part in zip(batch, np.split(rows, np.cumsum(counts.cpu().numpy())[:-1])):
                out[index] = part
    return out


# ---------------------------------------------------------------------------------- per-feature stages


def l2_normalize(x):
    """Rows of unit norm; zero rows stay zero."""
    import torch

    norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return x * torch.where(norms > 0, 1.0 / norms, torch.zeros_like(norms))


def local_pca(rows, mean, projection):
    """LocalPCA.transform on packed rows: l2((x - mean) @ projection)."""
    return l2_normalize((rows - mean) @ projection)


def triangulate(rows, centers):
    """phi(x) for packed rows (n, d): the normalised residuals to the codewords, (n, |C| d)."""
    residuals = rows[:, None, :] - centers[None, :, :]
    return l2_normalize(residuals).flatten(1)


def triangulation_embed(rows, centers, mean, projection_t, chunk_rows: int = 1 << 16):
    """TriangulationEmbedding.transform on packed rows: l2((phi(x) - mean) @ P^T), in chunks of rows.

    The product runs in ``projection_t``'s dtype: float64 there (float32 values, float64 arithmetic) takes
    the float32 rounding of the sum out of the result, the stage that dominates the float32 path's error
    (the whitening projection's entries reach ~100 and its terms cancel).
    """
    return whitened_embed(rows, lambda block: triangulate(block, centers), mean, projection_t, chunk_rows)


def whitened_embed(rows, phi, mean, projection_t, chunk_rows: int):
    """A whitened codebook embedding's transform on packed rows: l2((phi(x) - mean) @ P^T), in chunks of rows.

    ``phi`` maps a chunk of rows (a tensor) to its embedding on the rows' device; the output has the rows' dtype.
    """
    import torch

    out = torch.empty(rows.shape[0], projection_t.shape[1], dtype=rows.dtype, device=rows.device)
    for start in range(0, rows.shape[0], chunk_rows):
        block = phi(rows[start : start + chunk_rows]) - mean
        out[start : start + chunk_rows] = l2_normalize(block.to(projection_t.dtype) @ projection_t)
    return out


def embedding_phi(embedding, device):
    """``(phi, chunk_rows)`` of a fitted codebook embedding on ``device``: phi maps a chunk of packed rows (a
    tensor on ``device``) to its embedded rows before any whitening, a float32 tensor on ``device``.

    Temb's phi is a torch kernel (:func:`triangulate`); the other embeddings' is their numpy ``_embed`` on
    the host, its output moved to ``device`` (their GEMMs, the whitening's, still run there), in chunks of
    8,192 rows so that the host's block stays about 170 MiB at F-FAemb's 5,280 dimensions.
    """
    import torch

    from selconv.embedding import TriangulationEmbedding

    if isinstance(embedding, TriangulationEmbedding):
        centers = torch.as_tensor(embedding.cluster_centers_, device=device)
        return (lambda rows: triangulate(rows, centers)), 1 << 16

    def phi(rows):
        return torch.as_tensor(embedding._embed(rows.cpu().numpy()), device=device)

    return phi, 1 << 13


# ----------------------------------------------------------------------------------- aggregation


def pad(rows, image, counts):
    """Packed rows -> (B, max count, D) with zero rows after each image's own."""
    import torch

    batch = counts.shape[0]
    width = int(counts.max()) if batch else 0
    offsets = torch.cumsum(counts, 0) - counts
    position = torch.arange(rows.shape[0], device=rows.device) - offsets[image]
    padded = torch.zeros(batch, width, rows.shape[1], dtype=rows.dtype, device=rows.device)
    padded[image, position] = rows
    return padded


def democratic(padded, n_iter: int = 10, gamma: float = 0.5):
    """DemocraticAggregator on padded sets (B, N, D): psi = lambda @ l2(Y), batched over images."""
    import torch

    Y = l2_normalize(padded)
    gram = torch.bmm(Y, Y.transpose(1, 2)).clamp_min_(0)
    # Zero rows (padding or all-zero features) have G_ii = 0: no weight, out of the iteration.
    kept = torch.diagonal(gram, dim1=1, dim2=2) > 0
    weights = kept.to(Y.dtype)
    for _ in range(n_iter):
        delta = torch.bmm(gram, weights[:, :, None])[:, :, 0] * weights
        weights = weights * torch.where(kept, delta.clamp_min(torch.finfo(Y.dtype).tiny).pow(-gamma), 0.0)
    return torch.bmm(weights[:, None, :], Y)[:, 0, :]


# ------------------------------------------------------------------------------ 2-D post-processing


def rotate(X, mean, projection, normalize_input: bool = True):
    """RotationNormalizer.transform: (l2(X) - mean) @ projection."""
    return ((l2_normalize(X) if normalize_input else X) - mean) @ projection


def power_normalize(X, alpha: float):
    """PowerNormalizer.transform: l2(sign(v) |v|^alpha)."""
    import torch

    return l2_normalize(torch.sign(X) * X.abs().pow(alpha))


def itq_codes(X, mean, projection):
    """ITQHasher.transform: bits (X - mean) @ projection > 0 in float64, packed big-endian into uint8."""
    import torch

    bits = ((X.double() - mean) @ projection > 0).to(torch.uint8)
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=X.device)
    return (bits.view(bits.shape[0], -1, 8) * weights).sum(dim=2, dtype=torch.uint8)


class strict_float32:
    """Context in which CUDA float32 matmuls do not use TF32 (the results must match numpy's float32)."""

    def __enter__(self):
        import torch

        self._saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc):
        import torch

        torch.backends.cuda.matmul.allow_tf32 = self._saved


def embedding_tensors(temb, device):
    """(centers, mean, P^T) of a fitted TriangulationEmbedding on ``device``, float32."""
    import torch

    return tuple(
        torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=device)
        for a in (temb.cluster_centers_, temb.mean_.astype(np.float32), temb.projection_.T)
    )
