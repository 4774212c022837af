"""Utilities for users who extend selconv: estimator checks for ragged stages."""
