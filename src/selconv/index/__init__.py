"""Search a photo collection: a fitted selconv encoder + a faiss index, persisted as a folder that runs no code on load.

:class:`ImageIndex` stores one descriptor (a real vector or a packed binary code) per image with an int64 id
and the image's path, searches them exactly (faiss ``IndexFlatIP`` / ``IndexBinaryFlat``) or approximately
(IVF, HNSW, IVF-PQ; binary IVF and HNSW), and saves everything atomically to a folder with a checksummed
manifest (:meth:`ImageIndex.save`, :func:`load_index`).
"""

from selconv.index._ids import SearchResult
from selconv.index._persistence import IndexFormatError, trusted_types
from selconv.index.image_index import ImageIndex, load_index

__all__ = ["ImageIndex", "SearchResult", "load_index", "IndexFormatError", "trusted_types"]
