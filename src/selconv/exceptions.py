"""Exceptions and the output check behind selconv's NaN policy: numerics never return NaN or infinity silently.

Inputs are checked where they enter (NaN or infinity in a local feature set, a conv map, a descriptor
or a keypoint is a ``ValueError`` naming the image or row). Parameters whose range would make an
estimator's arithmetic diverge are constrained (e.g. ``DemocraticAggregator(gamma)`` to [0, 1]).
What can still overflow with finite input in range (float32 values near its limit of 3.4e38, a
singular system) is caught where the numbers are produced: :func:`check_finite` raises a
:class:`NonFiniteError` that names the estimator, what overflowed and the parameters involved.
"""

from __future__ import annotations

import numpy as np

__all__ = ["NonFiniteError", "check_finite"]


class NonFiniteError(ValueError, ArithmeticError):
    """A computation produced NaN or infinity from finite input; the message names the estimator and the cause.

    A ``ValueError`` (the input or the parameters must change) and an ``ArithmeticError``.
    """


def check_finite(values, *, estimator, what: str, hint: str = "") -> None:
    """Raise :class:`NonFiniteError` if ``values`` (an array or a list of arrays) holds NaN or infinity.

    Parameters
    ----------
    values : ndarray or list of ndarray
        An estimator's output or fitted attribute; a list is checked per item (one per image).
    estimator : object
        Named in the message, with its parameters.
    what : str
        What ``values`` is, e.g. ``"the aggregated vectors"`` or ``"projection_"``.
    hint : str
        The likely cause and the fix, appended to the message.
    """
    items = values if isinstance(values, list) else [values]
    for index, item in enumerate(items):
        item = np.asarray(item)
        if not np.issubdtype(item.dtype, np.inexact) or np.isfinite(item).all():
            continue
        where = f" (image {index})" if isinstance(values, list) else ""
        if item.ndim == 2 and not isinstance(values, list):
            rows = np.flatnonzero(~np.isfinite(item).all(axis=1))
            where = f" (rows {rows[:10].tolist()}{', ...' if len(rows) > 10 else ''})"
        name = type(estimator).__name__
        params = ", ".join(f"{k}={v!r}" for k, v in sorted(estimator.get_params(deep=False).items()))
        raise NonFiniteError(
            f"{name}({params}) produced NaN or infinity in {what}{where} from finite input."
            + (f" {hint}" if hint else "")
        )


#: The usual cause of NaN or infinity from finite input in range: values near float32's limit.
OVERFLOW_HINT = (
    "The input values are too large for float32 arithmetic (the limit is about 3.4e38, and products or "
    "sums of squares reach it first): rescale the input."
)


def check_fitted_finite(estimator, *, hint: str = OVERFLOW_HINT) -> None:
    """:func:`check_finite` on every fitted array attribute (name ending in ``_``) of ``estimator``."""
    for name, value in vars(estimator).items():
        if name.endswith("_") and not name.startswith("_") and isinstance(value, np.ndarray):
            check_finite(value, estimator=estimator, what=f"the fitted {name}", hint=hint)
