"""Images -> conv maps: ConvFeatureExtractor, with its backbones, weight resolution and image loading."""

from selconv.extraction._results import (
    CacheRepairedWarning,
    Extraction,
    ExtractionStream,
    ImageSkippedWarning,
    SkippedInput,
)
from selconv.extraction.extractor import ConvFeatureExtractor
from selconv.extraction.images import BoxedImage, ImageLoadError
from selconv.extraction.weights import WeightsNotFoundError

__all__ = [
    "BoxedImage",
    "CacheRepairedWarning",
    "ConvFeatureExtractor",
    "Extraction",
    "ExtractionStream",
    "ImageLoadError",
    "ImageSkippedWarning",
    "SkippedInput",
    "WeightsNotFoundError",
]
