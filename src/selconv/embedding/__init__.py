"""Embeddings of local features (docs/how-it-works.md, section 4): ragged in, ragged out, one module per method.

Each embedding maps a list of per-image local feature sets (n_i, d) to a list of embedded sets
(n_i, D); aggregation into one vector per image is the separate next stage
(:mod:`selconv.aggregation`), so any embedding can be pooled democratically.
"""

from selconv.embedding.faemb import FAembEmbedding
from selconv.embedding.fisher import FisherVectorEmbedding
from selconv.embedding.triangulation import TriangulationEmbedding
from selconv.embedding.vlad import VLADEmbedding

__all__ = ["TriangulationEmbedding", "VLADEmbedding", "FisherVectorEmbedding", "FAembEmbedding"]
