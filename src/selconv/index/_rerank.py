"""alpha-QE and DBA through an ImageIndex: the neighbours come from the index's own (exact or approximate) search."""

from __future__ import annotations

from selconv.index import _faiss


def rerank_with_index(index, estimator, expected: str, queries):
    """The queries expanded by an AlphaQueryExpansion, or (queries None) the stored vectors augmented by a
    DatabaseAugmentation, with this index's neighbours."""
    from selconv import reranking

    if not isinstance(estimator, getattr(reranking, expected)):
        raise TypeError(f"expected a selconv.reranking.{expected}; got {type(estimator).__name__}.")
    estimator._validate_params()
    if index.metric == "hamming":
        raise TypeError(f"{expected} applies to real-valued descriptors; this index holds binary codes.")
    if not len(index):
        return queries
    with _faiss.vector_lookup(index._index) as lookup:
        if queries is not None:
            return reranking.expand_against(queries, index._index, lookup, estimator.n_neighbors, estimator.alpha)
        ids = index._table.ids
        return reranking.expand_against(
            lookup(ids), index._index, lookup, estimator.n_neighbors, estimator.alpha, exclude=ids
        )
