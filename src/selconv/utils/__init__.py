"""Utilities for users who extend selconv: the version-stamped pickling mixin, estimator checks for ragged stages."""

from selconv._pickling import SelconvPickleMixin

__all__ = ["SelconvPickleMixin"]
