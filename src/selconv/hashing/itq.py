"""Iterative quantization (ITQ, Gong & Lazebnik CVPR 2011): the paper's default hash function."""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.utils import check_random_state

from selconv._compat import Interval
from selconv._torch_kernels import check_device, is_torch_device, resolve_device
from selconv.hashing._base import BaseHasher, leading_principal_directions


def random_rotation(n: int, random_state) -> np.ndarray:
    """A random n x n orthogonal matrix (QR of a Gaussian matrix, column signs fixed by R's diagonal)."""
    rng = check_random_state(random_state)
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


def sign_codes(V: np.ndarray) -> np.ndarray:
    """B = sign(V) in {-1, +1}, with sign(0) = +1: the ITQ iteration needs every entry in {-1, +1}."""
    return np.where(V >= 0, 1.0, -1.0)


class ITQHasher(BaseHasher):
    """Iterative quantization: PCA to ``n_bits`` dimensions, then a learned rotation.

    Algorithm (docs/how-it-works.md, section 8): centre X; project it on its ``n_bits`` leading principal
    directions, ``V = (X - mean) W`` (no whitening); start from a random orthogonal ``R`` drawn from
    ``random_state``; ``n_iter`` times: ``B = sign(V R)``, then ``R`` from the SVD of ``B^T V``
    (orthogonal Procrustes), which minimises the quantisation loss ``||B - V R||_F^2``.
    Bit ``t`` of a code is ``(x - mean) W R[:, t] > 0``.

    Parameters
    ----------
    n_bits : int, default=64
        Code length; a multiple of 8, at most the number of features and of training samples.
    n_iter : int, default=50
        ITQ iterations (the authors use 50-100).
    random_state : int, RandomState instance or None, default=None
        Seeds the initial rotation; a fixed value gives bit-identical codes.
    device : str, default="cpu"
        Where ``fit`` runs the iterations: "cpu" (numpy), or "cuda", "cuda:<index>" or "torch" (torch on the
        CPU), float64 as numpy: the same rotation to float64 rounding (a code bit can flip only where a
        projection is within rounding of 0). The PCA and ``transform`` stay numpy. Without CUDA, "cuda"
        falls back to the CPU with a warning.

    Attributes
    ----------
    mean_ : ndarray of shape (n_features,)
    projection_ : ndarray of shape (n_features, n_bits)
        ``W R``: principal directions followed by the learned rotation.
    rotation_ : ndarray of shape (n_bits, n_bits)
    explained_variance_ : ndarray of shape (n_bits,)
        Variance along each kept principal direction.
    quantization_loss_ : ndarray of shape (n_iter + 1,)
        ``||B - V R||_F^2 / n_samples`` for the initial random rotation, then after each iteration.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when X has string column names.

    Notes
    -----
    ``transform`` returns packed codes, ``n_bits / 8`` uint8 per row in big-endian bit order
    (:func:`numpy.packbits`, the layout of faiss binary indexes); ``transform_bits`` returns the
    (n, n_bits) 0/1 bits. Rank them by Hamming distance with :mod:`selconv.search`.

    Examples
    --------
    >>> import numpy as np
    >>> from selconv.hashing import ITQHasher
    >>> X = np.random.default_rng(0).standard_normal((200, 32))
    >>> ITQHasher(n_bits=16, random_state=0).fit_transform(X).shape
    (200, 2)
    """

    _parameter_constraints: dict = {
        **BaseHasher._parameter_constraints,
        "n_iter": [Interval(numbers.Integral, 0, None, closed="left")],
        "random_state": ["random_state"],
        "device": [str],
    }

    def __init__(self, n_bits=64, *, n_iter=50, random_state=None, device="cpu"):
        self.n_bits = n_bits
        self.n_iter = n_iter
        self.random_state = random_state
        self.device = device

    def _fit(self, X):
        check_device(self.device)
        self.mean_, axes, self.explained_variance_ = leading_principal_directions(X, self.n_bits, estimator=self)
        V = (X - self.mean_) @ axes
        rotation = random_rotation(self.n_bits, self.random_state)
        if is_torch_device(self.device):
            from selconv._torch_fit import itq_rotation

            rotation, losses = itq_rotation(V, rotation, self.n_iter, resolve_device(self.device))
        else:
            rotation, losses = self._iterate(V, rotation)
        self.rotation_ = rotation
        self.projection_ = axes @ rotation
        self.quantization_loss_ = np.asarray(losses) / X.shape[0]
        return self

    def _iterate(self, V, rotation):
        losses = []
        for _ in range(self.n_iter):
            B = sign_codes(V @ rotation)
            losses.append(np.sum((B - V @ rotation) ** 2))
            u, _, vt = np.linalg.svd(B.T @ V)
            rotation = vt.T @ u.T
        losses.append(np.sum((sign_codes(V @ rotation) - V @ rotation) ** 2))
        return rotation, losses

    def _encode(self, X):
        return (X - self.mean_) @ self.projection_ > 0
