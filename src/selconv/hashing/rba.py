"""Relaxed binary autoencoder (RBA, Do et al. CVPR 2017), implemented from the paper's formulation."""

from __future__ import annotations

import numbers

import numpy as np
from scipy.optimize import minimize

from selconv._compat import Interval
from selconv.hashing._base import BaseHasher
from selconv.hashing.itq import ITQHasher, sign_codes


def _rba_objective(theta, X, B, shapes, weights):
    """RBA objective for fixed codes B, and its gradient, with the parameters flattened into theta.

    ``Y = X W1 + c1`` (relaxed codes), reconstruction ``Y W2 + c2``::

        1/(2m) ||Y W2 + c2 - X||^2 + l1/2 (||W1||^2 + ||W2||^2) + l2/(2m) ||Y - B||^2
        + l3/2 ||Y^T Y / m - I||^2 + l4/(2m) ||Y^T 1||^2
    """
    weight_decay, binary, independence, balance = weights
    W1, c1, W2, c2 = _unflatten(theta, shapes)
    m, n_bits = X.shape[0], W1.shape[1]
    Y = X @ W1 + c1
    residual = Y @ W2 + c2 - X
    gap = Y - B
    correlation = Y.T @ Y / m - np.eye(n_bits)
    column_sums = Y.sum(axis=0)
    value = (
        (residual**2).sum() / (2 * m)
        + weight_decay / 2 * ((W1**2).sum() + (W2**2).sum())
        + binary / (2 * m) * (gap**2).sum()
        + independence / 2 * (correlation**2).sum()
        + balance / (2 * m) * (column_sums**2).sum()
    )
    d_residual = residual / m
    d_Y = d_residual @ W2.T + binary / m * gap + 2 * independence / m * Y @ correlation + balance / m * column_sums
    grads = (
        X.T @ d_Y + weight_decay * W1,
        d_Y.sum(axis=0),
        Y.T @ d_residual + weight_decay * W2,
        d_residual.sum(axis=0),
    )
    return value, np.concatenate([g.ravel() for g in grads])


def _unflatten(theta, shapes):
    arrays, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        arrays.append(theta[start : start + size].reshape(shape))
        start += size
    return arrays


class RBAHasher(BaseHasher):
    """RelaxedBinaryAutoencoder (RBA) hasher: a linear autoencoder whose codes are pushed towards {-1, +1}.

    Named ``RelaxedBinaryAutoencoder`` in selconv 0.1.

    Do, Le, Hoang, Le, Nguyen & Cheung, "Simultaneous feature aggregating and hashing for large-scale
    image search", CVPR 2017. Encoder ``Y = W1^T x + c1`` (bits: ``Y > 0``), decoder
    ``x ~ W2^T Y + c2``. The binary constraint on the codes is relaxed with a penalty that ties the
    real codes Y to binary codes B; independence (``Y^T Y / m ~ I``) and balance (``Y^T 1 ~ 0``) are
    also penalised. Alternating optimisation: with B fixed, (W1, c1, W2, c2) by L-BFGS; with the
    network fixed, ``B = sign(Y)``.

    Parameters
    ----------
    n_bits : int, default=64
        Code length; a multiple of 8, at most the number of features and of training samples.
    n_iter : int, default=10
        Alternations (B step + network step).
    max_lbfgs_iter : int, default=50
        L-BFGS iterations of each network step.
    weight_decay : float, default=1e-5
        l1, weight decay on W1 and W2.
    binary_penalty : float, default=5e-2
        l2, weight of ``||Y - B||^2 / (2m)``, the relaxed binary constraint.
    independence_penalty : float, default=1e-2
        l3, weight of ``||Y^T Y / m - I||^2 / 2``.
    balance_penalty : float, default=1e-6
        l4, weight of ``||Y^T 1||^2 / (2m)``.
    random_state : int, RandomState instance or None, default=None
        Seeds the ITQ initialisation; a fixed value gives bit-identical codes.

    Attributes
    ----------
    mean_ : ndarray of shape (n_features,)
    encoder_weights_ : ndarray of shape (n_features, n_bits)
    encoder_bias_ : ndarray of shape (n_bits,)
    decoder_weights_ : ndarray of shape (n_bits, n_features)
    decoder_bias_ : ndarray of shape (n_features,)
    objective_ : ndarray of shape (n_iter + 1,)
        Objective value after the initialisation, then after each network step.
    n_features_in_ : int

    Notes
    -----
    No public code exists; this follows the paper's formulation as we read it, with these choices:

    - X is centred with the training mean before encoding; with the biases c1, c2 this changes the
      parametrisation only, and it conditions L-BFGS better.
    - Initialisation from ITQ (as the authors' earlier UH-BDNN does): W1 is ITQ's projection, each
      column scaled so that ``mean |Y_t| = 1``; W2 is the least-squares decoder of that Y (c1 = c2 = 0).
    - The default penalty weights are those of the authors' UH-BDNN (ECCV 2016), whose single-layer
      linear case this model is; we could not confirm the CVPR 2017 values. ``n_iter`` and
      ``max_lbfgs_iter`` are our choices.

    Output layout as :class:`selconv.hashing.ITQHasher`: packed uint8, big-endian bit order.
    """

    _parameter_constraints: dict = {
        **BaseHasher._parameter_constraints,
        "n_iter": [Interval(numbers.Integral, 0, None, closed="left")],
        "max_lbfgs_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "weight_decay": [Interval(numbers.Real, 0, None, closed="left")],
        "binary_penalty": [Interval(numbers.Real, 0, None, closed="left")],
        "independence_penalty": [Interval(numbers.Real, 0, None, closed="left")],
        "balance_penalty": [Interval(numbers.Real, 0, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        n_bits=64,
        *,
        n_iter=10,
        max_lbfgs_iter=50,
        weight_decay=1e-5,
        binary_penalty=5e-2,
        independence_penalty=1e-2,
        balance_penalty=1e-6,
        random_state=None,
    ):
        self.n_bits = n_bits
        self.n_iter = n_iter
        self.max_lbfgs_iter = max_lbfgs_iter
        self.weight_decay = weight_decay
        self.binary_penalty = binary_penalty
        self.independence_penalty = independence_penalty
        self.balance_penalty = balance_penalty
        self.random_state = random_state

    def _fit(self, X):
        itq = ITQHasher(n_bits=self.n_bits, random_state=self.random_state).fit(X)
        self.mean_ = itq.mean_
        Xc = X - self.mean_
        projected = Xc @ itq.projection_
        W1 = itq.projection_ / np.maximum(np.abs(projected).mean(axis=0), np.finfo(np.float64).tiny)
        c1 = np.zeros(self.n_bits)
        Y = Xc @ W1
        # Xc and hence Y have zero mean, so the least-squares decoder needs no bias.
        W2 = np.linalg.lstsq(Y, Xc, rcond=None)[0]
        c2 = np.zeros(X.shape[1])
        shapes = [W1.shape, c1.shape, W2.shape, c2.shape]
        theta = np.concatenate([W1.ravel(), c1, W2.ravel(), c2])
        weights = (self.weight_decay, self.binary_penalty, self.independence_penalty, self.balance_penalty)
        objective = [_rba_objective(theta, Xc, sign_codes(Y), shapes, weights)[0]]
        for _ in range(self.n_iter):
            W1, c1, _, _ = _unflatten(theta, shapes)
            B = sign_codes(Xc @ W1 + c1)
            result = minimize(
                _rba_objective,
                theta,
                args=(Xc, B, shapes, weights),
                jac=True,
                method="L-BFGS-B",
                options={"maxiter": self.max_lbfgs_iter},
            )
            theta = result.x
            objective.append(result.fun)
        W1, c1, W2, c2 = _unflatten(theta, shapes)
        self.encoder_weights_, self.encoder_bias_ = W1, c1
        self.decoder_weights_, self.decoder_bias_ = W2, c2
        self.objective_ = np.asarray(objective)
        return self

    def _encode(self, X):
        return (X - self.mean_) @ self.encoder_weights_ + self.encoder_bias_ > 0
