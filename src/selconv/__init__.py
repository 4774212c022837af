"""selconv: selective deep convolutional features for image retrieval.

Every stage of Do, Hoang et al., "Selective deep convolutional features for image retrieval", is a
scikit-learn estimator; compose them in a :class:`sklearn.pipeline.Pipeline`:

images -> ConvFeatureExtractor -> mask -> LocalPCA -> TriangulationEmbedding -> DemocraticAggregator
-> PowerNormalizer (with rotation) -> ITQHasher.
"""

__version__ = "0.1.0"

from selconv.conv_map import ConvMap  # noqa: E402

__all__ = ["ConvMap", "__version__"]
