"""Small numerical helpers shared by the estimators: row l2-normalisation, one-pass covariance, PCA bases."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager
from functools import cache

import numpy as np
from threadpoolctl import ThreadpoolController


@cache
def _thread_pools() -> ThreadpoolController:
    # Inspecting the loaded BLAS/OpenMP libraries takes milliseconds: done once per process.
    return ThreadpoolController()


@contextmanager
def single_threaded():
    """Run BLAS and OpenMP on one thread inside the block (restored after): thread-count-independent sums."""
    with _thread_pools().limit(limits=1):
        yield


def l2_normalize_rows(X: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """X with unit-norm rows (zero rows stay zero), in ``out`` (may be X itself) or a new array.

    Multiplies by the reciprocal norms: one pass over X, the norms computed once per row. A row
    holding NaN or infinity becomes all NaN, never a zero or unit row, so that the output checks
    downstream (:func:`selconv.exceptions.check_finite`) see it.
    """
    norms = np.sqrt(np.einsum("nd,nd->n", X, X))
    # The sum of squares under- or overflows for tiny or huge rows (rare): those rows are rescaled
    # by their largest entry first, so only all-zero rows keep a zero norm.
    unsafe = np.flatnonzero((norms < np.sqrt(np.finfo(X.dtype).tiny)) | ~np.isfinite(norms))
    rescued = X[unsafe]
    inverse = np.zeros_like(norms)
    np.divide(1.0, norms, out=inverse, where=norms > 0)
    with np.errstate(invalid="ignore"):  # inf * 0 in a non-finite row: set to NaN below
        out = np.multiply(X, inverse[:, None], out=out)
    if len(unsafe):
        with np.errstate(invalid="ignore"):
            largest = np.abs(rescued).max(axis=1, keepdims=True, initial=0)
            np.divide(rescued, largest, out=rescued, where=largest > 0)
            norms = np.sqrt(np.einsum("nd,nd->n", rescued, rescued))[:, None]
            rescued = np.divide(rescued, norms, out=np.zeros_like(rescued), where=norms > 0)
        rescued[~np.isfinite(largest[:, 0])] = np.nan
        out[unsafe] = rescued
    return out


def mean_and_scatter(blocks: Iterable[np.ndarray], shift: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean and centred scatter matrix sum((x - mean)(x - mean)^T) of the rows of ``blocks``, in one pass.

    Each block is centred on ``shift`` (in place, in the block's dtype) before its GEMM, and the
    sums are accumulated in float64: with ``shift`` near the mean (e.g. the mean of a first block)
    the shifted scatter is of the size of the covariance itself, which avoids the cancellation of
    sum(x x^T) - n mean mean^T, so float32 blocks (twice as fast) lose little.

    Parameters
    ----------
    blocks : iterable of ndarray of shape (n_i, d)
        Fresh arrays (they are modified); empty blocks are allowed, at least one row in all.
    shift : ndarray of shape (d,)
        Centre of the accumulation; float64 whose cast to the blocks' dtype is exact is best.

    Returns
    -------
    mean : ndarray of shape (d,), float64
    scatter : ndarray of shape (d, d), float64
    n_samples : int
    """
    shift = np.asarray(shift, dtype=np.float64)
    shifted_sum = np.zeros(len(shift))
    scatter = np.zeros((len(shift), len(shift)))
    n_samples = 0
    for block in blocks:
        block -= shift.astype(block.dtype)
        shifted_sum += block.sum(axis=0, dtype=np.float64)
        scatter += block.T @ block
        n_samples += len(block)
    shifted_mean = shifted_sum / n_samples
    return shift + shifted_mean, scatter - n_samples * np.outer(shifted_mean, shifted_mean), n_samples


def principal_axes(covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (decreasing) and eigenvectors (columns, same order) of a symmetric matrix.

    eigh's signs depend on the LAPACK build; each eigenvector is signed so that its
    largest-magnitude entry is positive, so fits agree across machines.
    """
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    return eigenvalues[::-1], sign_columns(eigenvectors[:, ::-1])


def sign_columns(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` with each column's sign set so that its largest-magnitude entry is positive.

    eigh and svd return directions whose signs depend on the LAPACK build; fixing them makes fits agree
    across machines.
    """
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
    signs[signs == 0] = 1.0
    return vectors * signs


def determined_directions(eigenvalues: np.ndarray, n_samples: int) -> int:
    """How many principal directions of n_samples vectors are determined by them.

    Centred, n vectors span at most n - 1 directions; of the eigenvalues (decreasing) of their
    covariance, those at or below ``n_features * eps * largest`` are rounding noise of a null
    direction (the rule of :func:`numpy.linalg.matrix_rank`, on variances).
    """
    tolerance = len(eigenvalues) * np.finfo(np.float64).eps * max(eigenvalues[0], 0.0)
    return int(min(max(n_samples - 1, 0), np.count_nonzero(eigenvalues > tolerance)))


def eigenvalue_floor(eigenvalues: np.ndarray) -> float:
    """The smallest variance a whitening divides by: eps * the largest of ``eigenvalues``, or 1 if none is positive.

    The one rule of every whitening in selconv (:func:`whitening_scale`, PCAWhitening, the clamped
    whitening of the codebook embeddings): a direction of a singular covariance, whose variance is
    zero or rounding noise, gets this variance instead, so the scale stays finite and relative to the data's.
    """
    largest = float(np.max(eigenvalues, initial=0.0))
    return np.finfo(np.float64).eps * largest if largest > 0 else 1.0


def whitening_scale(variances: np.ndarray) -> np.ndarray:
    """sqrt(variances), each variance raised to at least :func:`eigenvalue_floor` first."""
    return np.sqrt(np.maximum(variances, eigenvalue_floor(variances)))
