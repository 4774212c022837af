"""The baselines the paper compares with, as pipelines: a global pooling of conv maps, then PCA-whitening.

docs/how-it-works.md, "Baselines". The poolings (SPoC, MAC, R-MAC, CroW, GeM) are in :mod:`selconv.pooling`,
the whitening in :mod:`selconv.postprocessing`; :func:`make_baseline` puts one of each into a
:class:`sklearn.pipeline.Pipeline`.
"""

from __future__ import annotations

from sklearn.pipeline import Pipeline

from selconv.pooling import MAC, RMAC, CroW, GeM, SPoC
from selconv.postprocessing import PCAWhitening

__all__ = ["make_baseline"]

_POOLINGS = {"spoc": SPoC, "mac": MAC, "rmac": RMAC, "crow": CroW, "gem": GeM}


def make_baseline(name, *, n_components=None, whitening=True, shrinkage="ledoit-wolf", **pooling_params):
    """The pipeline [pooling, PCAWhitening] of one of the paper's baselines.

    Parameters
    ----------
    name : {"spoc", "mac", "rmac", "crow", "gem"}
        The pooling: :class:`~selconv.pooling.SPoC`, :class:`~selconv.pooling.MAC`, :class:`~selconv.pooling.RMAC`,
        :class:`~selconv.pooling.CroW` or :class:`~selconv.pooling.GeM`.
    n_components : int or None, default=None
        Output dimension of the final whitening (dimension reduction); None keeps n_channels.
    whitening : bool, default=True
        Learn the final l2 -> centre -> PCA-whitening -> l2 on the training set (and, for R-MAC, the
        regional whitening too). False gives the plain l2-normalised pooled vectors
        (the ``"whitening"`` step is then ``"passthrough"``).
    shrinkage : float >= 0 or "ledoit-wolf", default="ledoit-wolf"
        Eigenvalue shrinkage of every whitening in the pipeline; see :class:`~selconv.postprocessing.PCAWhitening`.
    **pooling_params
        Passed to the pooling estimator (e.g. ``p=3.0`` for GeM, ``center_prior=True`` for SPoC,
        ``scale_pooling="gem"`` for how the scales of multi-scale conv maps combine).

    Returns
    -------
    pipeline : sklearn.pipeline.Pipeline
        Steps ``"pooling"`` and ``"whitening"``; fit it on TRAINING conv maps.

    Examples
    --------
    >>> from selconv.baselines import make_baseline
    >>> pipeline = make_baseline("gem", n_components=256, p=3.0)
    >>> [name for name, _ in pipeline.steps], pipeline[-1].n_components
    (['pooling', 'whitening'], 256)
    """
    if name not in _POOLINGS:
        raise ValueError(f"make_baseline: unknown baseline name {name!r}; choose one of {sorted(_POOLINGS)}.")
    if name == "rmac":
        pooling_params = {"region_whitening": whitening, "shrinkage": shrinkage, **pooling_params}
    pooling = _POOLINGS[name](**pooling_params)
    final = PCAWhitening(n_components, shrinkage=shrinkage) if whitening else "passthrough"
    return Pipeline([("pooling", pooling), ("whitening", final)])
