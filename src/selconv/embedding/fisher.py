"""Fisher vector embedding of local features (Perronnin et al., improved FV): ragged in, ragged out.

docs/how-it-works.md, section 4: a diagonal-covariance GMM (weights w_k, means mu_k, standard deviations
sigma_k) is learned on training local features; each local feature x is embedded as its
gradients with respect to the means and the variances, normalised by the diagonal closed-form Fisher
information (Perronnin, Sanchez & Mensink, ECCV 2010; Sanchez et al., IJCV 2013):

    u_k(x) = q_k(x) / sqrt(w_k) * (x - mu_k) / sigma_k
    v_k(x) = q_k(x) / sqrt(2 w_k) * ((x - mu_k)^2 / sigma_k^2 - 1)

with q_k(x) the posterior of component k, stacked per component as [u_1, v_1, ..., u_|C|, v_|C|]
(D = 2 d |C|). The image's FV is the aggregate of its embedded features (the average for the
classical FV; the paper also pools them democratically). The other "improved" steps, power-law and
l2 normalisation, happen after aggregation (:mod:`selconv.postprocessing`). No component is dropped.
"""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.mixture import GaussianMixture

from selconv._compat import Interval
from selconv.embedding._codebook import BaseCodebookEmbedding

__all__ = ["FisherVectorEmbedding"]


class FisherVectorEmbedding(BaseCodebookEmbedding):
    """Embed every local feature as its Fisher vector phi_FV (paper Table 2: d = 48, |C| = 44).

    ``fit`` learns a :class:`sklearn.mixture.GaussianMixture` with ``covariance_type="diag"`` on a
    uniform random sample of at most ``max_samples`` training local features. ``transform`` maps each
    local feature to its Fisher-information-normalised gradients (module docstring).

    Parameters
    ----------
    n_components : int, default=44
        Number of Gaussians |C|; the embedding has dimension 2 d |C|.
    max_samples : int, default=100_000
        Most local features used to fit the GMM; bounds its time and memory.
    max_iter : int, default=100
        EM iterations (GaussianMixture's ``max_iter``).
    tol : float, default=1e-3
        EM convergence threshold on the lower bound (GaussianMixture's ``tol``).
    reg_covar : float > 0, default=1e-6
        Added to every variance (GaussianMixture's ``reg_covar``): keeps sigma_k > 0, which the
        embedding divides by (0, which GaussianMixture allows, would let a collapsed component
        make the embedding infinite).
    n_init : int, default=1
        EM restarts; the best lower bound wins.
    random_state : int, RandomState instance or None, default=None
        Draws the sample and seeds the GMM's k-means initialisation; fixed, the fit is reproducible.

    Attributes
    ----------
    weights_ : ndarray of shape (n_components,), float64
        Mixture weights w_k.
    means_ : ndarray of shape (n_components, n_features_in_), float64
        mu_k.
    variances_ : ndarray of shape (n_components, n_features_in_), float64
        sigma_k^2 (diagonal covariances).
    converged_ : bool
        Whether EM converged (a ConvergenceWarning is raised otherwise).
    n_features_in_ : int
        Input dimension d.

    Examples
    --------
    >>> import numpy as np
    >>> from selconv.embedding import FisherVectorEmbedding
    >>> rng = np.random.default_rng(0)
    >>> sets = [rng.standard_normal((40, 4)).astype(np.float32), np.zeros((0, 4), np.float32)]
    >>> fv = FisherVectorEmbedding(n_components=3, random_state=0).fit(sets)
    >>> [s.shape for s in fv.transform(sets)]
    [(40, 24), (0, 24)]
    """

    _codebook_param = "n_components"

    _parameter_constraints: dict = {
        "n_components": [Interval(numbers.Integral, 1, None, closed="left")],
        "max_samples": [Interval(numbers.Integral, 1, None, closed="left")],
        "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "tol": [Interval(numbers.Real, 0, None, closed="left")],
        "reg_covar": [Interval(numbers.Real, 0, None, closed="neither")],
        "n_init": [Interval(numbers.Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        n_components=44,
        *,
        max_samples=100_000,
        max_iter=100,
        tol=1e-3,
        reg_covar=1e-6,
        n_init=1,
        random_state=None,
    ):
        self.n_components = n_components
        self.max_samples = max_samples
        self.max_iter = max_iter
        self.tol = tol
        self.reg_covar = reg_covar
        self.n_init = n_init
        self.random_state = random_state

    def _learn_codebook(self, sample, rng, device):
        """The diagonal GMM, fitted on the sample (scikit-learn; ``device`` is always "cpu" here)."""
        gmm = GaussianMixture(
            n_components=self.n_components,
            covariance_type="diag",
            tol=self.tol,
            reg_covar=self.reg_covar,
            max_iter=self.max_iter,
            n_init=self.n_init,
            random_state=rng.randint(np.iinfo(np.int32).max),
        ).fit(sample.astype(np.float64))
        self.weights_ = gmm.weights_
        self.means_ = gmm.means_
        self.variances_ = gmm.covariances_
        self.converged_ = gmm.converged_

    def posteriors(self, x: np.ndarray) -> np.ndarray:
        """q_k(x) for the rows of ``x`` (n, d): (n, n_components) float64, rows summing to 1."""
        x = x.astype(np.float64)
        precisions = 1.0 / self.variances_
        # log N(x | mu_k, diag sigma_k^2) expanded so that the (n, |C|) terms are GEMMs.
        log_density = -0.5 * (
            (x**2) @ precisions.T
            - 2.0 * x @ (self.means_ * precisions).T
            + np.sum(self.means_**2 * precisions, axis=1)
            + np.sum(np.log(2.0 * np.pi * self.variances_), axis=1)
        )
        log_joint = log_density + np.log(self.weights_)
        log_joint -= log_joint.max(axis=1, keepdims=True)
        joint = np.exp(log_joint)
        return joint / joint.sum(axis=1, keepdims=True)

    def _embed(self, x: np.ndarray) -> np.ndarray:
        q = self.posteriors(x).astype(np.float32)
        sigma = np.sqrt(self.variances_).astype(np.float32)
        standardised = (x[:, None, :] - self.means_.astype(np.float32)[None]) / sigma[None]
        sqrt_weights = np.sqrt(self.weights_).astype(np.float32)[None, :, None]
        mean_gradient = q[:, :, None] / sqrt_weights * standardised
        variance_gradient = q[:, :, None] / (np.float32(np.sqrt(2.0)) * sqrt_weights) * (standardised**2 - 1.0)
        return np.concatenate([mean_gradient, variance_gradient], axis=2).reshape(len(x), -1)

    def _embedding_dimension(self):
        return 2 * self.means_.size
