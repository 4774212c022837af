"""The parts of fitting that run as torch operations on a device: the k-means codebook, ITQ's rotation and the
one-pass mean and scatter of the whitenings and LocalPCA.

``EncodeAggregate(device=...)`` learns Temb's codebook with :func:`kmeans`, and ``ITQHasher(device=...)`` runs
its iterations with :func:`itq_rotation`. The algorithms are the CPU path's:

* :func:`kmeans` is scikit-learn's ``KMeans(init="k-means++", algorithm="lloyd")``, random draws included
  (greedy k-means++ seeding with 2 + log(k) candidates per centre, drawn from a numpy RandomState seeded as
  scikit-learn seeds its own, distances in float64; Lloyd iterations until the labels stop changing or the
  centres move less than 1e-4 times the mean variance of the data, ``max_iter`` 300; the best of ``n_init``
  runs by inertia; an empty cluster takes the point farthest from its centre). It is NOT bit-identical to
  scikit-learn: the float32 sums run in another order, so the centres agree to float32 rounding, and where a
  rounding difference flips a k-means++ choice or a label the runs go on to another local minimum of about
  the same inertia (the tests check both on fixed samples).
* :func:`itq_rotation` is ITQHasher's iteration in float64: the same numbers as numpy to float64 rounding.
"""

from __future__ import annotations

import numpy as np

# Rows per block of the distance computations: bounds the (rows, k) distance matrix.
_BLOCK_ROWS = 1 << 16


def _assign(x, x_sq, centers):
    """Nearest centre of every row (argmin of ||c||^2 - 2 x.c, float32, as scikit-learn's Lloyd step) and
    its squared distance, in blocks of rows."""
    import torch

    labels = torch.empty(len(x), dtype=torch.long, device=x.device)
    distances = torch.empty(len(x), dtype=x.dtype, device=x.device)
    centers_sq = (centers * centers).sum(dim=1)
    for start in range(0, len(x), _BLOCK_ROWS):
        rows = slice(start, start + _BLOCK_ROWS)
        scores, labels[rows] = (centers_sq[None, :] - 2.0 * (x[rows] @ centers.T)).min(dim=1)
        distances[rows] = torch.clamp_min(scores + x_sq[rows], 0.0)
    return labels, distances


def _squared_distances64(x64, x64_sq, indices):
    """||x_i - x_j||^2 (float64, then float32: scikit-learn's upcast distances) of the rows j to the rows i,
    (len(indices), n)."""
    import torch

    products = x64[indices] @ x64.T
    return torch.clamp_min(x64_sq[indices, None] - 2.0 * products + x64_sq[None, :], 0.0).float()


def _kmeans_plus_plus(x, n_clusters: int, rng: np.random.RandomState):
    """Greedy k-means++ seeding, scikit-learn's ``_kmeans_plusplus`` with its random draws from ``rng``:
    indices of the initial centres."""
    import torch

    x64 = x.double()
    x64_sq = (x64 * x64).sum(dim=1)
    n_trials = 2 + int(np.log(n_clusters))
    weights = np.ones(len(x), dtype=np.float32)  # scikit-learn's unit sample weights, to draw as it does
    chosen = [int(rng.choice(len(x), p=weights / weights.sum()))]
    closest = _squared_distances64(x64, x64_sq, chosen)[0]
    potential = float(closest.sum())
    for _ in range(1, n_clusters):
        targets = torch.as_tensor(rng.uniform(size=n_trials) * potential, device=x.device)
        cumulative = torch.cumsum(closest, 0)
        candidates = torch.clamp(torch.searchsorted(cumulative, targets), max=len(x) - 1)
        trial = torch.minimum(closest[None, :], _squared_distances64(x64, x64_sq, candidates))
        trial_potential = trial.sum(dim=1)
        best = int(trial_potential.argmin())
        chosen.append(int(candidates[best]))
        closest, potential = trial[best], float(trial_potential[best])
    return chosen


def _lloyd(x, x_sq, centers, max_iter: int, tol: float):
    """Lloyd iterations from ``centers``: (centres, inertia)."""
    import torch

    n_clusters = len(centers)
    labels = None
    for _ in range(max_iter):
        new_labels, distances = _assign(x, x_sq, centers)
        sums = torch.zeros_like(centers).index_add_(0, new_labels, x)
        counts = torch.bincount(new_labels, minlength=n_clusters)
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty):  # scikit-learn's relocation: the farthest points leave their clusters for the empty ones
            far = torch.topk(distances, len(empty)).indices
            sums.index_add_(0, new_labels[far], -x[far])
            counts.index_add_(0, new_labels[far], -torch.ones_like(far))
            sums[empty], counts[empty] = x[far], 1
        new_centers = sums / counts[:, None].to(x.dtype)
        shift = float(((new_centers - centers) ** 2).sum())
        converged = labels is not None and bool(torch.equal(labels, new_labels))
        centers, labels = new_centers, new_labels
        if converged or shift <= tol:
            break
    _, distances = _assign(x, x_sq, centers)
    return centers, float(distances.sum(dtype=torch.float64))


def kmeans(sample: np.ndarray, n_clusters: int, *, n_init: int, rng: np.random.RandomState, device, max_iter=300):
    """k-means codebook of ``sample`` (n, d) float32 computed on the torch ``device``: float32 (n_clusters, d).

    scikit-learn's algorithm (see the module docstring): the data are centred on their mean first, as
    scikit-learn does, and ``tol`` = 1e-4 times their mean variance.
    """
    import torch

    from selconv._torch_kernels import strict_float32

    seed = rng.randint(np.iinfo(np.int32).max)  # one draw from the estimator's rng, as the CPU path
    draws = np.random.RandomState(seed)
    mean = sample.mean(axis=0, dtype=np.float64)
    tol = 1e-4 * float(np.mean(np.var(sample, axis=0, dtype=np.float64)))
    with torch.no_grad(), strict_float32():
        x = torch.as_tensor(sample - mean.astype(np.float32), device=device)
        x_sq = (x * x).sum(dim=1)
        best = None
        for _ in range(n_init):
            start = x[_kmeans_plus_plus(x, n_clusters, draws)]
            centers, inertia = _lloyd(x, x_sq, start, max_iter, tol)
            if best is None or inertia < best[1]:
                best = (centers, inertia)
        return (best[0].cpu().numpy().astype(np.float64) + mean).astype(np.float32)


def itq_rotation(V: np.ndarray, rotation: np.ndarray, n_iter: int, device):
    """ITQHasher's iterations on the torch ``device`` in float64: (rotation, quantisation losses (n_iter + 1))."""
    import torch

    V = torch.as_tensor(V, dtype=torch.float64, device=device)
    rotation = torch.as_tensor(rotation, dtype=torch.float64, device=device)
    losses = []
    for _ in range(n_iter + 1):
        projected = V @ rotation
        codes = torch.where(projected >= 0, 1.0, -1.0).to(torch.float64)
        losses.append(((codes - projected) ** 2).sum())
        if len(losses) > n_iter:
            break
        u, _, vt = torch.linalg.svd(codes.T @ V)
        rotation = vt.T @ u.T
    return rotation.cpu().numpy(), torch.stack(losses).cpu().numpy()


def mean_and_scatter(blocks, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`selconv._linalg.mean_and_scatter` of ``blocks`` (tensors on one device): mean, centred scatter
    sum((x - mean)(x - mean)^T) and number of rows, float64 ndarrays.

    Each block is centred on ``shift`` (float64, cast to the blocks' dtype) before its GEMM, which runs in the
    blocks' dtype (float32: TF32 off) and is accumulated in float64, as on the CPU.
    """
    import torch

    from selconv._torch_kernels import strict_float32

    shifted_sum = scatter = None
    n_samples = 0
    with strict_float32():
        for block in blocks:
            block = block - torch.as_tensor(shift, dtype=block.dtype, device=block.device)
            if scatter is None:
                shifted_sum = torch.zeros(block.shape[1], dtype=torch.float64, device=block.device)
                scatter = torch.zeros(block.shape[1], block.shape[1], dtype=torch.float64, device=block.device)
            shifted_sum += block.sum(dim=0, dtype=torch.float64)
            scatter += (block.T @ block).double()
            n_samples += len(block)
    shifted_mean = shifted_sum.cpu().numpy() / n_samples
    return shift + shifted_mean, scatter.cpu().numpy() - n_samples * np.outer(shifted_mean, shifted_mean), n_samples
