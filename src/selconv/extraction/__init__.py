"""Images -> conv maps: ConvFeatureExtractor, with its backbones, weight resolution and image loading."""

from selconv.extraction.extractor import CacheRepairedWarning, ConvFeatureExtractor, ImageSkippedWarning
from selconv.extraction.images import BoxedImage, ImageLoadError
from selconv.extraction.weights import WeightsNotFoundError

__all__ = [
    "BoxedImage",
    "CacheRepairedWarning",
    "ConvFeatureExtractor",
    "ImageLoadError",
    "ImageSkippedWarning",
    "WeightsNotFoundError",
]
