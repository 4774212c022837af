"""Every private scikit-learn import lives here, so one file adapts to scikit-learn's releases."""

import functools

from sklearn.base import _fit_context
from sklearn.model_selection._split import BaseCrossValidator
from sklearn.utils._param_validation import HasMethods, Interval, Options, StrOptions
from sklearn.utils.validation import validate_data

from selconv._linalg import single_threaded

__all__ = [
    "_fit_context",
    "fit_context",
    "BaseCrossValidator",
    "HasMethods",
    "Interval",
    "Options",
    "StrOptions",
    "validate_data",
]


def fit_context(*, prefer_skip_nested_validation: bool):
    """scikit-learn's ``_fit_context`` (parameter validation), with the fit run on one thread.

    Multi-threaded BLAS and OpenMP kernels (GEMM, eigh, SVD, k-means) sum in an order that depends
    on the thread count, and an eigen-decomposition or a k-means run amplifies last-bit differences.
    Fitting on one thread makes every fitted attribute bit-identical for any BLAS thread count and
    any ``n_jobs`` on a given machine and library build; ``transform`` keeps all threads.
    """

    def decorator(fit):
        validated = _fit_context(prefer_skip_nested_validation=prefer_skip_nested_validation)(fit)

        @functools.wraps(fit)
        def fit_on_one_thread(estimator, *args, **kwargs):
            with single_threaded():
                return validated(estimator, *args, **kwargs)

        return fit_on_one_thread

    return decorator
