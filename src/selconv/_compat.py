"""Every private scikit-learn import lives here, so one file adapts to scikit-learn's releases."""

from sklearn.base import _fit_context
from sklearn.utils._param_validation import HasMethods, Interval, Options, StrOptions
from sklearn.utils.validation import validate_data

__all__ = ["_fit_context", "HasMethods", "Interval", "Options", "StrOptions", "validate_data"]
