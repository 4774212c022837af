"""The ids and paths of the items of an ImageIndex: checked, assigned, removed, and looked up for search results."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SearchResult:
    """Top-k results of a batch of queries, best first.

    Attributes
    ----------
    scores : ndarray of shape (n_queries, k), float32
        Larger is better: the inner product for real vectors (cosine similarity for the l2-normalised
        descriptors selconv pipelines produce), the NEGATED Hamming distance for binary codes
        (``distance = -score``). -inf where there is no result.
    ids : ndarray of shape (n_queries, k), int64
        Ids of the results; -1 where fewer than k were found. Equal scores are listed by increasing id.
    paths : list of list of str or None
        The path stored with each result (None for descriptors added without a path, and for missing results).
    """

    scores: np.ndarray
    ids: np.ndarray
    paths: list


def item_path(item) -> str | None:
    """The file an input item names: a path, the image of an ``(image, box)`` pair, or a ConvMap's source."""
    image = item[0] if isinstance(item, tuple) and len(item) == 2 else item  # (image, box) or BoxedImage
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    source = getattr(image, "source", None)
    return source if isinstance(source, str) else None


class IdTable:
    """The id (int64 >= 0) and path (or None) of every stored item, in the order they were added, and the next id.

    ``next_id`` is one past the largest id ever added (removed ids are not given again).
    """

    def __init__(self, ids=None, paths=None, next_id: int = 0):
        self.ids = np.zeros(0, dtype=np.int64) if ids is None else ids
        self.paths: list[str | None] = [] if paths is None else paths
        self.next_id = next_id
        self._sorter: np.ndarray | None = None  # argsort of ids, computed when needed

    def __len__(self) -> int:
        return len(self.ids)

    @staticmethod
    def check(ids, n: int) -> np.ndarray:
        """``ids`` as n unique non-negative int64, else a ValueError."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or len(ids) != n or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"ids must be {n} integers (one per item); got {ids.dtype} of shape {ids.shape}.")
        ids = ids.astype(np.int64)
        if ids.size and ids.min() < 0:
            raise ValueError(f"ids must be non-negative; got {ids.min()}.")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("ids hold duplicates.")
        return ids

    def next_ids(self, n: int) -> np.ndarray:
        return np.arange(self.next_id, self.next_id + n, dtype=np.int64)

    def refuse_stored(self, ids: np.ndarray) -> None:
        """A ValueError naming the first of ``ids`` already stored."""
        if len(ids) and len(self) and ids.min() <= self.ids.max():
            present = np.isin(ids, self.ids)
            if present.any():
                raise ValueError(f"id {int(ids[present][0])} is already in the index; remove it first.")

    def append(self, ids: np.ndarray, paths: list) -> None:
        self._sorter = None
        self.ids = np.concatenate([self.ids, ids])
        self.paths.extend(paths)
        self.next_id = max(self.next_id, int(ids.max()) + 1)

    def remove(self, present: np.ndarray) -> None:
        """Drop the items where the boolean mask ``present`` (aligned with ``ids``) is True."""
        self.ids = self.ids[~present]
        self.paths = [p for p, gone in zip(self.paths, present) if not gone]
        self._sorter = None

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        """Positions in ``ids`` of stored ids."""
        if self._sorter is None:
            # Consecutive ids (the usual case) are their own order: no argsort of a million ids.
            increasing = bool(np.all(self.ids[1:] > self.ids[:-1]))
            self._sorter = np.arange(0) if increasing else np.argsort(self.ids, kind="stable")
        if len(self._sorter) == 0:
            return np.searchsorted(self.ids, ids)
        return self._sorter[np.searchsorted(self.ids, ids, sorter=self._sorter)]

    def paths_of(self, ids: np.ndarray) -> list:
        """The path of each id of a (n_queries, k) result, None where the id is -1 (no result)."""
        found = ids >= 0
        positions = np.zeros(ids.shape, dtype=np.int64)
        if found.any():
            positions[found] = self._positions(ids[found])
        paths = self.paths
        return [
            [paths[p] if ok else None for p, ok in zip(row_positions.tolist(), row_found.tolist())]
            for row_positions, row_found in zip(positions, found)
        ]
