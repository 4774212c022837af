"""Images -> conv maps: ConvFeatureExtractor, with its backbones, weight resolution and image loading."""

from selconv.extraction.extractor import ConvFeatureExtractor, ImageSkippedWarning
from selconv.extraction.images import BoxedImage, ImageLoadError
from selconv.extraction.weights import WeightsNotFoundError

__all__ = ["BoxedImage", "ConvFeatureExtractor", "ImageLoadError", "ImageSkippedWarning", "WeightsNotFoundError"]
