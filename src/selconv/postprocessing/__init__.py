"""Post-processing of image vectors (docs/how-it-works.md, sections 6-7): 2-D in, 2-D out, one module per step.

The paper's order is psi -> l2 -> rotation (RN) -> drop leading components -> power law -> l2:
:class:`RotationNormalizer` does the first three, :class:`PowerNormalizer` the last two. The baselines
post-process their pooled vectors with :class:`PCAWhitening` instead (l2 -> centre -> shrunk PCA-whitening -> l2).
"""

from selconv.postprocessing.power import PowerNormalizer
from selconv.postprocessing.rotation import RotationNormalizer
from selconv.postprocessing.whitening import PCAWhitening

__all__ = ["RotationNormalizer", "PowerNormalizer", "PCAWhitening"]
