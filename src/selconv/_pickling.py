"""Behaviour shared by every selconv estimator: version-stamped pickles."""

from __future__ import annotations

import inspect
import warnings


class SelconvPickleMixin:
    """Record the selconv version in pickles and warn when one is loaded under another version.

    Put it left of scikit-learn's mixins: ``class MaxMask(SelconvPickleMixin, TransformerMixin, BaseEstimator)``.
    scikit-learn does the same for its own version (``_sklearn_version``).
    """

    def __getstate__(self):
        from selconv import __version__

        state = super().__getstate__()
        state = dict(state) if state is not None else dict(self.__dict__)
        state["_selconv_version"] = __version__
        return state

    def __setstate__(self, state):
        from selconv import __version__

        pickled_version = state.pop("_selconv_version", None)
        if pickled_version is not None and pickled_version != __version__:
            warnings.warn(
                f"This {type(self).__name__} was pickled with selconv {pickled_version} and is being "
                f"loaded with selconv {__version__}; results may differ. Refit it to be safe.",
                UserWarning,
                stacklevel=2,
            )
        # Persisted models (pickle, skops) written before a parameter existed (e.g. ``scales``, ``shrinkage``) lack
        # it: it takes its default, which every added parameter chooses to keep the earlier behaviour, so that
        # saved encoders keep loading and get_params, repr and clone work on them.
        for name, parameter in inspect.signature(type(self).__init__).parameters.items():
            if name != "self" and parameter.default is not inspect.Parameter.empty:
                state.setdefault(name, parameter.default)
        super().__setstate__(state)
