"""Checks for estimators whose input is ragged (a list of per-image arrays).

scikit-learn's ``parametrize_with_checks`` feeds 2-D arrays, which ragged stages reject by design.
These checks cover what applies to any estimator without data (clone, repr, get/set_params, nothing
computed in ``__init__``) and, given sample input, fit/transform hygiene. 2-D stages use
``sklearn.utils.estimator_checks.parametrize_with_checks`` instead.
"""

from __future__ import annotations

import pickle

import numpy as np
from sklearn.base import clone
from sklearn.exceptions import NotFittedError


def check_data_free(estimator) -> None:
    """clone, repr, get_params/set_params round trip, ``__init__`` stores parameters only."""
    params = estimator.get_params(deep=False)
    cloned = clone(estimator)
    assert cloned.get_params(deep=False).keys() == params.keys()
    for key, value in params.items():
        assert cloned.get_params(deep=False)[key] is value or repr(cloned.get_params(deep=False)[key]) == repr(value), (
            key
        )
    assert isinstance(repr(estimator), str) and type(estimator).__name__ in repr(estimator)
    fresh = type(estimator)(**params)
    public_state = {k for k in vars(fresh) if not k.startswith("_")}
    assert public_state == set(params), (
        f"__init__ sets attributes other than its parameters: {public_state ^ set(params)}"
    )
    assert not [k for k in vars(fresh) if k.endswith("_") and not k.startswith("_")], "__init__ sets fitted attributes"
    assert fresh.set_params(**params) is fresh


def check_fit_transform(estimator, X, y=None) -> None:
    """transform before fit raises NotFittedError; fit keeps parameters; output survives pickling."""
    estimator = clone(estimator)
    if hasattr(estimator, "transform"):
        try:
            estimator.transform(X)
        except NotFittedError:
            pass
        else:  # pragma: no cover - reported through the assertion
            raise AssertionError(f"{type(estimator).__name__}.transform did not raise NotFittedError before fit")
    before = {k: repr(v) for k, v in estimator.get_params(deep=False).items()}
    assert estimator.fit(X, y) is estimator, "fit must return self"
    after = {k: repr(v) for k, v in estimator.get_params(deep=False).items()}
    assert before == after, "fit changed a parameter"
    if not hasattr(estimator, "transform"):
        return
    out = estimator.transform(X)
    loaded = pickle.loads(pickle.dumps(estimator))
    assert_same_output(out, loaded.transform(X))


def assert_same_output(a, b) -> None:
    """Assert two transform outputs are equal: 2-D arrays, or ragged lists of per-image arrays, element by element."""
    if isinstance(a, list):
        assert len(a) == len(b), f"{len(a)} per-image outputs against {len(b)}"
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    else:
        np.testing.assert_array_equal(a, b)
