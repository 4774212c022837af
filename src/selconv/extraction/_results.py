"""What one extraction call reports: the maps, the positions they come from, the inputs skipped, the cache repairs.

These live in the objects a call returns, never in the estimator: ``transform`` and ``extract`` leave a
fitted ConvFeatureExtractor unchanged, so one extractor can serve concurrent calls.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import NamedTuple


class ImageSkippedWarning(UserWarning):
    """``transform`` with ``on_error="skip"`` left out unreadable inputs; the message names them."""


class CacheRepairedWarning(UserWarning):
    """Some entries of ``cache_dir`` were damaged (or could not be written) and were recomputed;
    the message names them."""


class SkippedInput(NamedTuple):
    """An input without a map (skipped), or whose cache entry was repaired: its position, name and why."""

    position: int
    name: str
    reason: str


@dataclass
class Extraction:
    """The outcome of :meth:`ConvFeatureExtractor.extract`.

    Attributes
    ----------
    maps : list of ConvMap
        One per readable input, in input order.
    kept : list of int
        The input position of each map: ``maps[i]`` is the map of ``X[kept[i]]``.
    skipped : list of SkippedInput
        ``(position, name, reason)`` of each input left out (only with ``on_error="skip"``), by position.
    cache_repaired : list of SkippedInput
        ``(position, name, reason)`` of each input whose cache entry was damaged or could not be written;
        its map was computed afresh (and is in ``maps``).
    """

    maps: list
    kept: list
    skipped: list = field(default_factory=list)
    cache_repaired: list = field(default_factory=list)


class ExtractionStream:
    """The maps of :meth:`ConvFeatureExtractor.iter_extract`, as ``(position, ConvMap)`` pairs in input order.

    ``skipped`` and ``cache_repaired`` (lists of :class:`SkippedInput`, as in :class:`Extraction`) grow
    while the stream is consumed and are complete once it is exhausted. A stream is consumed once.
    """

    def __init__(self, run):
        self.skipped: list = []
        self.cache_repaired: list = []
        self._pairs = run(self)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._pairs)

    def close(self) -> None:
        """Stop early: no new image is decoded; work already running finishes in the background."""
        self._pairs.close()

    def finish(self) -> None:
        """Sort the reports by position and warn about repaired cache entries (called by the run at its end)."""
        self.skipped.sort(key=lambda entry: entry.position)
        self.cache_repaired.sort(key=lambda entry: entry.position)
        if self.cache_repaired:
            warnings.warn(
                f"{len(self.cache_repaired)} cache entries were damaged or could not be written; their maps were "
                f"computed afresh: {listing(self.cache_repaired, 3, names=False)}.",
                CacheRepairedWarning,
                stacklevel=4,
            )


def listing(entries, shown: int, *, names: bool = True) -> str:
    """The first ``shown`` of ``entries`` (SkippedInput) for a message, and how many more there are."""
    text = "; ".join(f"{e.name}: {e.reason}" if names else e.reason for e in entries[:shown])
    return text + (f" (and {len(entries) - shown} more)" if len(entries) > shown else "")
