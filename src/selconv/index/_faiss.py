"""The one nearest-neighbour search code path of selconv: faiss indexes, their parameters and their results.

Every search in selconv (:class:`selconv.index.ImageIndex`, :func:`selconv.search.rank`,
:func:`selconv.search.hamming_distances`) validates its input with :func:`as_vectors`, builds its faiss index
with :func:`new_index` and reads results with :func:`search`, so the conventions below hold everywhere:

- Real vectors: float32 rows compared by inner product (cosine similarity for l2-normalised rows).
- Binary codes: packed uint8 rows (:func:`numpy.packbits` layout), compared by Hamming distance.
- Scores are float32 and larger is better: the inner product, or the NEGATED Hamming distance (so that results
  of both metrics, and of several shards, sort and merge the same way; ``distance = -score``).
- Within a result row, equal scores are listed by increasing id. Missing results (fewer than k vectors, or an
  approximate index that found fewer) have id -1 and score -inf.
"""

from __future__ import annotations

import math
import numbers
from contextlib import contextmanager

import faiss
import numpy as np

#: Index kinds per metric and the parameters each takes (``index_params`` of ImageIndex), with defaults.
#: ``None`` defaults are resolved from the data (see :func:`resolve_params`).
KIND_PARAMS: dict[str, dict[str, object]] = {
    "flat": {},
    "ivf": {"nlist": None, "nprobe": 16},
    "hnsw": {"M": 32, "efConstruction": 80, "efSearch": 128},
    "pq": {"nlist": None, "nprobe": 16, "m": None, "nbits": 8},
}
KINDS = {"ip": ("flat", "ivf", "hnsw", "pq"), "hamming": ("flat", "ivf", "hnsw")}
METRICS = ("ip", "hamming")
#: Parameters that only change searching; they can be changed on a built index.
SEARCH_PARAMS = ("nprobe", "efSearch")

#: faiss k-means warns below 39 training points per centroid; the default nlist keeps to that.
MIN_POINTS_PER_CENTROID = 39

_KIND_DESCRIPTIONS = {
    ("ip", "flat"): "exact inner product (faiss IndexFlatIP)",
    ("ip", "ivf"): "inverted file with nlist k-means cells, nprobe visited (faiss IndexIVFFlat)",
    ("ip", "hnsw"): "HNSW graph with M links per node (faiss IndexHNSWFlat)",
    ("ip", "pq"): "inverted file + product quantisation to m codes of nbits bits (faiss IndexIVFPQ)",
    ("hamming", "flat"): "exact Hamming distance (faiss IndexBinaryFlat)",
    ("hamming", "ivf"): "binary inverted file with nlist cells, nprobe visited (faiss IndexBinaryIVF)",
    ("hamming", "hnsw"): "binary HNSW graph with M links per node (faiss IndexBinaryHNSW)",
}


def describe(metric: str, kind: str) -> str:
    """One line saying what faiss structure a (metric, kind) pair is."""
    return _KIND_DESCRIPTIONS[(metric, kind)]


def check_kind_and_metric(kind, metric) -> None:
    """Raise a ValueError for an unknown kind or metric, or a kind the metric does not offer."""
    if kind not in KIND_PARAMS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, KIND_PARAMS))}; got {kind!r}.")
    if metric not in ("auto", *METRICS):
        raise ValueError(f"metric must be 'auto', 'ip' or 'hamming'; got {metric!r}.")
    if metric != "auto" and kind not in KINDS[metric]:
        raise ValueError(
            f"kind={kind!r} is not available for metric={metric!r}; "
            f"choose one of {', '.join(map(repr, KINDS[metric]))}."
        )


def check_params(kind: str, params) -> dict:
    """``params`` merged over the defaults of ``kind``; unknown names and bad values are one-line errors."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise TypeError(f"index_params must be a dict; got {type(params).__name__}.")
    defaults = KIND_PARAMS[kind]
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        allowed = ", ".join(defaults) if defaults else "none"
        raise ValueError(f"index_params {unknown} do not apply to kind={kind!r} (it takes: {allowed}).")
    merged = {**defaults, **params}
    for name, value in merged.items():
        if value is None and defaults[name] is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"index_params[{name!r}] must be a positive integer; got {value!r}.")
        merged[name] = int(value)
    if merged.get("nbits") is not None and not 1 <= merged["nbits"] <= 16:
        raise ValueError(f"index_params['nbits'] must be between 1 and 16 (bits per PQ code); got {merged['nbits']}.")
    return merged


def resolve_params(kind: str, params: dict, dimension: int, n_train: int | None) -> dict:
    """Fill the data-dependent defaults: ``nlist`` from the training-set size, ``m`` from the dimension."""
    params = dict(params)
    if "nlist" in params:
        if params["nlist"] is None:
            # faiss' rule of thumb is 4 sqrt(N) cells, each wanting >= 39 training points.
            params["nlist"] = max(1, min(round(4 * math.sqrt(n_train)), n_train // MIN_POINTS_PER_CENTROID))
        if n_train is not None and n_train < params["nlist"]:
            raise ValueError(
                f"kind={kind!r} with nlist={params['nlist']} needs at least {params['nlist']} training vectors "
                f"({MIN_POINTS_PER_CENTROID * params['nlist']} recommended); got {n_train}."
            )
    if kind == "pq":
        if params["m"] is None:
            params["m"] = max(m for m in range(1, max(1, dimension // 8) + 1) if dimension % m == 0)
        if dimension % params["m"]:
            raise ValueError(
                f"index_params['m']={params['m']} must divide the dimension {dimension} (sub-vectors of equal length)."
            )
        if n_train is not None and n_train < 2 ** params["nbits"]:
            raise ValueError(
                f"kind='pq' with nbits={params['nbits']} needs at least {2 ** params['nbits']} training vectors "
                f"(one per PQ centroid; {MIN_POINTS_PER_CENTROID * 2 ** params['nbits']} recommended); got {n_train}."
            )
    return params


def needs_training(kind: str) -> bool:
    return kind in ("ivf", "pq")


def new_index(kind: str, metric: str, dimension: int, params: dict):
    """An empty faiss index that stores caller-given int64 ids (``add_with_ids``, ``remove_ids``).

    ``dimension`` is floats per vector or bits per code; ``params`` must be resolved (:func:`resolve_params`).
    Flat and HNSW structures are wrapped in ``IndexIDMap`` / ``IndexBinaryIDMap``; inverted files keep ids natively.
    """
    if metric == "ip":
        if kind == "flat":
            index = faiss.IndexIDMap(faiss.IndexFlatIP(dimension))
        elif kind == "hnsw":
            inner = faiss.IndexHNSWFlat(dimension, params["M"], faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = params["efConstruction"]
            index = faiss.IndexIDMap(inner)
        elif kind == "ivf":
            index = faiss.IndexIVFFlat(
                faiss.IndexFlatIP(dimension), dimension, params["nlist"], faiss.METRIC_INNER_PRODUCT
            )
        else:
            index = faiss.IndexIVFPQ(
                faiss.IndexFlatIP(dimension),
                dimension,
                params["nlist"],
                params["m"],
                params["nbits"],
                faiss.METRIC_INNER_PRODUCT,
            )
    else:
        if kind == "flat":
            index = faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(dimension))
        elif kind == "hnsw":
            inner = faiss.IndexBinaryHNSW(dimension, params["M"])
            inner.hnsw.efConstruction = params["efConstruction"]
            index = faiss.IndexBinaryIDMap(inner)
        else:
            index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(dimension), dimension, params["nlist"])
    apply_search_params(index, kind, params)
    return index


def _structure(index):
    """The index under an id map (where the search parameters live)."""
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexBinaryIDMap)):
        return (
            faiss.downcast_index(index.index)
            if isinstance(index, faiss.IndexIDMap)
            else faiss.downcast_IndexBinary(index.index)
        )
    return index


def apply_search_params(index, kind: str, params: dict) -> None:
    structure = _structure(index)
    if kind in ("ivf", "pq") and params.get("nlist") is not None:
        structure.nprobe = min(params["nprobe"], params["nlist"])
    elif kind == "hnsw":
        structure.hnsw.efSearch = params["efSearch"]


def is_binary(index) -> bool:
    return isinstance(index, faiss.IndexBinary)


def stored_vectors(index) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, ids) held by an id-mapped flat or HNSW index, in storage order."""
    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    return _structure(index).reconstruct_n(0, index.ntotal), ids


@contextmanager
def vector_lookup(index):
    """Inside the block, a function mapping an int64 array of ids (any shape; -1 gives a zero row) to the stored
    vectors, float32 of shape ``ids.shape + (D,)``, of a real-vector index.

    Exact for flat, HNSW and inverted-file indexes; a product-quantised index gives its approximations.
    """
    if isinstance(index, faiss.IndexIDMap):
        vectors, stored = stored_vectors(index)
        order = np.argsort(stored, kind="stable")

        def rows(present_ids):
            return vectors[order[np.searchsorted(stored, present_ids, sorter=order)]]

    else:  # an inverted file keeps its ids: looked up through a temporary id -> entry table
        index.set_direct_map_type(faiss.DirectMap.Hashtable)

        def rows(present_ids):
            return index.reconstruct_batch(np.ascontiguousarray(present_ids))

    def lookup(ids: np.ndarray) -> np.ndarray:
        flat = ids.ravel()
        out = np.zeros((len(flat), index.d), dtype=np.float32)
        out[flat >= 0] = rows(flat[flat >= 0])
        return out.reshape(*ids.shape, index.d)

    try:
        yield lookup
    finally:
        if not isinstance(index, faiss.IndexIDMap):
            index.set_direct_map_type(faiss.DirectMap.NoMap)


def remove_ids(index, kind: str, metric: str, dimension: int, params: dict, ids: np.ndarray):
    """Remove ``ids`` from ``index``; returns the index (a rebuilt one for HNSW, whose graphs cannot delete)."""
    if kind != "hnsw":
        index.remove_ids(ids)
        return index
    vectors, stored = stored_vectors(index)
    keep = ~np.isin(stored, ids)
    return replace_vectors(index, kind, metric, dimension, params, np.ascontiguousarray(vectors[keep]), stored[keep])


def replace_vectors(index, kind: str, metric: str, dimension: int, params: dict, vectors: np.ndarray, ids: np.ndarray):
    """An index of ``kind`` holding ``vectors`` with ``ids`` instead of what ``index`` held: ``index`` itself,
    emptied, for an inverted file (it keeps its training), else a new one."""
    if needs_training(kind):
        index.reset()
    else:
        index = new_index(kind, metric, dimension, params)
    if len(ids):
        index.add_with_ids(vectors, ids)
    return index


def as_vectors(array, name: str, metric: str, *, dimension: int | None = None) -> np.ndarray:
    """``array`` as a C-contiguous 2-D float32 (metric "ip") or uint8 (metric "hamming") array, or a one-line error.

    A 1-D array is one row. ``dimension`` (floats, or bits for codes) is checked when given. Real vectors must
    be finite: faiss would rank NaN rows arbitrarily.
    """
    array = np.asarray(array)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (one row per item); got shape {array.shape}.")
    if metric == "hamming":
        if array.dtype != np.uint8:
            raise TypeError(
                f"{name} must hold packed binary codes of dtype uint8 (metric 'hamming'); got {array.dtype}."
            )
        width = array.shape[1] * 8
        unit = "bits"
    else:
        real = np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
        if not real or array.dtype == np.uint8:
            raise TypeError(
                f"{name} must hold real vectors (metric 'ip'); got dtype {array.dtype}"
                + (
                    ": uint8 arrays are packed binary codes, compared by Hamming distance."
                    if array.dtype == np.uint8
                    else "."
                )
            )
        array = array.astype(np.float32, copy=False)
        if not np.isfinite(array).all():
            row = int(np.flatnonzero(~np.isfinite(array).all(axis=1))[0])
            raise ValueError(f"{name} row {row} holds NaN or infinity.")
        width = array.shape[1]
        unit = "floats"
    if width == 0:
        raise ValueError(f"{name} has rows of width 0.")
    if dimension is not None and width != dimension:
        raise ValueError(f"{name} have {width} {unit} per row but the index holds {dimension}.")
    return np.ascontiguousarray(array)


def check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k <= 0:
        raise ValueError(f"k must be a positive integer; got {k!r}.")
    return int(k)


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of validated ``queries`` in ``index`` (None: empty): float32 scores (larger better), int64 ids,
    (n_queries, k).

    Equal scores are listed by increasing id; missing results are id -1 with score -inf (module docstring).
    """
    n_queries = len(queries)
    if index is None or index.ntotal == 0 or n_queries == 0:
        return np.full((n_queries, k), -np.inf, dtype=np.float32), np.full((n_queries, k), -1, dtype=np.int64)
    distances, ids = index.search(queries, k)
    # 0 - d, not -d: a distance of 0 is a score of +0.0, not -0.0.
    scores = (0 - distances).astype(np.float32) if is_binary(index) else distances
    missing = ids < 0
    if not np.isfinite(scores[~missing]).all():
        raise ValueError(
            "inner products of the descriptors overflow float32 (values near 3.4e38 or products beyond it): "
            "l2-normalise or rescale the descriptors before searching."
        )
    if missing.any():
        scores[missing] = -np.inf
    # Sort by (score descending, id ascending); missing results (-inf) stay last, id -1 mapped above any id.
    order = np.lexsort((np.where(missing, np.iinfo(np.int64).max, ids), -scores), axis=1)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
