"""selconv: selective deep convolutional features for image retrieval.

Every stage of Do, Hoang et al., "Selective deep convolutional features for image retrieval", is a
scikit-learn estimator; compose them in a :class:`sklearn.pipeline.Pipeline`:

images -> ConvFeatureExtractor -> mask -> LocalPCA -> TriangulationEmbedding -> DemocraticAggregator
-> RotationNormalizer -> PowerNormalizer -> ITQHasher.

The main names are importable from the top level (``from selconv import MaxMask``); each is loaded
on first use, so ``import selconv`` stays light and does not import torch.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "ConvMap": "selconv.conv_map",
    "MultiScaleConvMap": "selconv.conv_map",
    "ConvFeatureExtractor": "selconv.extraction",
    "NoMask": "selconv.masks",
    "MaxMask": "selconv.masks",
    "SumMask": "selconv.masks",
    "SiftMask": "selconv.masks",
    "LocalPCA": "selconv.local_pca",
    "TriangulationEmbedding": "selconv.embedding",
    "VLADEmbedding": "selconv.embedding",
    "FisherVectorEmbedding": "selconv.embedding",
    "FAembEmbedding": "selconv.embedding",
    "DemocraticAggregator": "selconv.aggregation",
    "SumPooling": "selconv.aggregation",
    "AveragePooling": "selconv.aggregation",
    "MaxPooling": "selconv.aggregation",
    "GeneralizedMaxPooling": "selconv.aggregation",
    "EncodeAggregate": "selconv.encoding",
    "RotationNormalizer": "selconv.postprocessing",
    "PowerNormalizer": "selconv.postprocessing",
    "PCAWhitening": "selconv.postprocessing",
    "ITQHasher": "selconv.hashing",
    "KMeansHasher": "selconv.hashing",
    "RBAHasher": "selconv.hashing",
    "SPoC": "selconv.pooling",
    "MAC": "selconv.pooling",
    "RMAC": "selconv.pooling",
    "CroW": "selconv.pooling",
    "GeM": "selconv.pooling",
    "rmac_regions": "selconv.pooling",
    "make_baseline": "selconv.baselines",
    "make_paper_pipeline": "selconv.pipelines",
    "evaluate": "selconv.metrics",
    "AlphaQueryExpansion": "selconv.reranking",
    "DatabaseAugmentation": "selconv.reranking",
    "make_map_scorer": "selconv.model_selection",
    "map_scorer": "selconv.model_selection",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'selconv' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
