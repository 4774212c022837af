"""Paper presets: the full "mask -> local PCA -> Temb -> democratic pooling -> RN -> PN [-> ITQ]" pipeline.

:func:`make_paper_pipeline` builds the paper's default framework, M + phi_Delta + psi_d (Do, Hoang et al.,
sections 3-5), as one :class:`sklearn.pipeline.Pipeline` whose steps are the selconv estimators, so it can
be fitted, cloned, grid-searched and pickled like any scikit-learn model. :data:`PAPER_SETTINGS` is the
paper's Table 4: for each final dimension D the number d of local PCA components and the codebook size |C|
(D = d |C| - 128, the 128 leading rotated components being dropped).
"""

from __future__ import annotations

import numbers

from sklearn.pipeline import Pipeline

__all__ = [
    "PAPER_SETTINGS",
    "MASKS",
    "FIT_ON",
    "make_mask",
    "make_paper_pipeline",
    "paper_dimension",
    "rotation_settings",
]

#: Paper Table 4: final dimension D -> (d local PCA components, |C| Temb codewords).
PAPER_SETTINGS: dict[int, tuple[int, int]] = {
    512: (32, 20),
    1024: (64, 18),
    2048: (64, 34),
    4096: (64, 66),
    8064: (128, 64),
}

#: Mask names accepted by :func:`make_mask` and :func:`make_paper_pipeline`.
MASKS = ("max", "sum", "sift", "none")

#: Learning protocols: "training" (held-out images, paper default) or "database" (paper Table 9).
FIT_ON = ("training", "database")

#: Leading rotated components dropped after Temb + democratic pooling
#: (paper section 5.2.1; docs/how-it-works.md, section 6).
_PAPER_N_DROPPED = 128


def make_mask(name: str):
    """The mask estimator called ``name``: "max" (MaxMask), "sum" (SumMask), "sift" (SiftMask) or "none".

    Parameters
    ----------
    name : {"max", "sum", "sift", "none"}

    Returns
    -------
    mask : estimator
        A fresh, unfitted mask with the paper's defaults.
    """
    from selconv.masks import MaxMask, NoMask, SiftMask, SumMask

    masks = {"max": MaxMask, "sum": SumMask, "sift": SiftMask, "none": NoMask}
    if name not in masks:
        raise ValueError(f"mask must be one of {', '.join(repr(m) for m in MASKS)}; got {name!r}.")
    return masks[name]()


def paper_dimension(dim: int, *, fit_on: str = "training", n_dropped: int | None = None) -> int:
    """Output dimension of ``make_paper_pipeline(dim, fit_on=fit_on, n_dropped=n_dropped)``: d |C| - n_dropped."""
    n_components, n_clusters = _settings(dim)
    return n_components * n_clusters - _resolve_n_dropped(n_dropped, fit_on)


def _resolve_n_dropped(n_dropped, fit_on: str) -> int:
    if fit_on not in FIT_ON:
        raise ValueError(f"fit_on must be one of {', '.join(repr(f) for f in FIT_ON)}; got {fit_on!r}.")
    if n_dropped is None:
        return _PAPER_N_DROPPED if fit_on == "training" else 0
    return n_dropped


def rotation_settings(n_images: int, dim: int, *, fit_on: str = "training", n_dropped: int | None = None):
    """Rotation settings of the ``dim`` preset that ``n_images`` learning images can support, and why.

    The rotation (RN) of the paper's pipeline needs more learning images than its input dimension
    d |C| (n images determine at most n - 1 directions; see
    :class:`~selconv.postprocessing.RotationNormalizer`). With enough images this returns the paper's
    settings unchanged. With fewer, it skips the rotation (``undetermined="center"``: vectors are only
    centred, and nothing is dropped): a documented deviation, stated in the returned note, which the
    command line prints. On the bundled 40-image sample this retrieves far better than keeping the 39
    determined directions (``undetermined="drop"``; docs/how-it-works.md, "The demo").

    Parameters
    ----------
    n_images : int
        Number of learning images the pipeline will be fitted on.
    dim : {512, 1024, 2048, 4096, 8064}
        The preset.
    fit_on : {"training", "database"}, default="training"
    n_dropped : int or None, default=None
        The caller's choice (None: the protocol's default), kept when the images support the rotation.

    Returns
    -------
    settings : dict
        Keyword arguments for :func:`make_paper_pipeline`: ``n_dropped`` and ``undetermined``.
    note : str or None
        What was changed and why; None when the paper's settings stand.

    Examples
    --------
    >>> from selconv.pipelines import rotation_settings
    >>> rotation_settings(5000, 512)
    ({'n_dropped': 128, 'undetermined': 'raise'}, None)
    >>> rotation_settings(40, 512)[0]
    {'n_dropped': 0, 'undetermined': 'center'}
    """
    n_components, n_clusters = _settings(dim)
    n_dropped = _resolve_n_dropped(n_dropped, fit_on)
    rotated = n_components * n_clusters
    if n_images > rotated:
        return {"n_dropped": n_dropped, "undetermined": "raise"}, None
    note = (
        f"{n_images} learning images determine at most {max(n_images - 1, 0)} of the {rotated} directions of the "
        f"rotation (RN): it is skipped (vectors are only centred, nothing is dropped; the paper rotates and drops "
        f"the {n_dropped} leading directions of a basis learned on 5,000+ images), so descriptors have {rotated} "
        f"dimensions instead of {rotated - n_dropped}. Learn on more than {rotated} images for the paper's setting."
    )
    return {"n_dropped": 0, "undetermined": "center"}, note


def _settings(dim) -> tuple[int, int]:
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or int(dim) not in PAPER_SETTINGS:
        raise ValueError(
            f"dim must be one of the paper's final dimensions {sorted(PAPER_SETTINGS)} (Table 4); got {dim!r}."
        )
    return PAPER_SETTINGS[int(dim)]


def make_paper_pipeline(
    dim: int = 512,
    *,
    mask: str = "max",
    n_bits: int | None = None,
    extractor=None,
    n_dropped: int | None = None,
    alpha: float = 0.5,
    random_state=0,
    fit_on: str = "training",
    undetermined: str = "raise",
    shrinkage=0.0,
    device: str = "cpu",
) -> Pipeline:
    """The paper's framework M + Temb + democratic pooling (+ ITQ) with the Table 4 setting for ``dim``.

    Steps (names usable in ``set_params`` and grid searches): ``extract`` (only when ``extractor`` is
    given), ``mask``, ``pca`` (:class:`~selconv.local_pca.LocalPCA`), ``encode``
    (:class:`~selconv.encoding.EncodeAggregate`: its ``embedding``, a
    :class:`~selconv.embedding.TriangulationEmbedding`, and its ``aggregator``, a
    :class:`~selconv.aggregation.DemocraticAggregator`, applied a chunk of images at a time, so the
    embedded local features never exist for all images at once; grid-search them as
    ``encode__embedding__n_clusters`` or ``encode__aggregator__n_iter``), ``rotate``
    (:class:`~selconv.postprocessing.RotationNormalizer`), ``power``
    (:class:`~selconv.postprocessing.PowerNormalizer`) and, when ``n_bits`` is given, ``itq``
    (:class:`~selconv.hashing.ITQHasher`).

    Parameters
    ----------
    dim : {512, 1024, 2048, 4096, 8064}, default=512
        Final real-valued dimension D of the paper's Table 4; selects (d, |C|) from
        :data:`PAPER_SETTINGS`. The output has ``d * |C| - n_dropped`` columns (= D with the default
        ``n_dropped`` and ``fit_on="training"``).
    mask : {"max", "sum", "sift", "none"}, default="max"
        Which local features to keep (paper section 3.2). "sift" needs conv maps carrying SIFT
        keypoints (``ConvFeatureExtractor(keypoints="sift")``).
    n_bits : int or None, default=None
        If given, append an ITQ hasher producing ``n_bits``-bit codes packed in ``n_bits / 8`` uint8
        bytes per image (paper section 5.3.2: 512-D real -> 64..512 bits; rank by Hamming distance).
    extractor : None, True or ConvFeatureExtractor, default=None
        None: the pipeline starts at conv maps (a list of :class:`~selconv.conv_map.ConvMap`).
        True: prepend ``ConvFeatureExtractor()`` with its defaults (VGG16 pool5, 1024 px; SIFT keypoints
        when ``mask="sift"``), so the pipeline takes image paths. An extractor instance is used as is.
    n_dropped : int or None, default=None
        Leading rotated components dropped by ``rotate``. None means the paper's choice for ``fit_on``:
        128 for "training", 0 for "database".
    alpha : float, default=0.5
        Power-law exponent of ``power`` (paper: 0.5 in all experiments).
    random_state : int, RandomState instance or None, default=0
        Seeds every random stage (PCA sampling, k-means, ITQ rotation), so a fit is reproducible.
    fit_on : {"training", "database"}, default="training"
        The protocol the pipeline will be fitted under. "training": a held-out training set (paper
        default). "database": the test database itself (paper Table 9, the SCDA comparison); the paper
        then does not truncate, because the database's own leading directions are what tell its images
        apart (docs/how-it-works.md, "Learned stages"), hence ``n_dropped`` defaults to 0. The pipeline is fitted on
        whatever data ``fit`` receives; this parameter only selects the protocol's settings.
    undetermined : {"raise", "drop", "center"}, default="raise"
        What ``rotate`` does when its learning images are too few to determine the rotation (fewer
        than d |C|): raise a ValueError, keep only the determined directions, or skip the rotation
        (see :class:`~selconv.postprocessing.RotationNormalizer`; :func:`rotation_settings` picks
        settings for a given number of learning images).
    shrinkage : float >= 0 or "ledoit-wolf", default=0.0
        Covariance shrinkage of the learned whitenings, passed to the Temb whitening
        (``encode__embedding__shrinkage``) and to ``rotate`` (``rotate__shrinkage``, which acts only with
        ``rotate__whiten=True``). 0 is the paper; "ledoit-wolf" chooses it on the learning set, for small or
        off-domain learning sets (docs/how-it-works.md, "Shrinkage").
    device : str, default="cpu"
        Where the post-CNN stages that take a ``device`` compute, fit and transform: "cpu" (numpy), or
        "torch" (torch on the CPU), "cuda" or "cuda:<index>" (the torch kernels of
        :mod:`selconv.torch_encoder`). Sets ``mask__device`` (not for "sift", whose mask is numpy only),
        ``pca__device``, ``encode__device`` and ``itq__device``; ``rotate``, ``power`` and the extractor (its own
        ``device``) are unchanged. Each can be changed afterwards with ``set_params``. Same descriptors as "cpu"
        to float32 rounding (the k-means codebook and ITQ codes: see
        :class:`~selconv.encoding.EncodeAggregate` and :class:`~selconv.hashing.ITQHasher`).

    Returns
    -------
    pipeline : sklearn.pipeline.Pipeline
        Unfitted.

    Examples
    --------
    >>> from selconv.pipelines import make_paper_pipeline
    >>> pipeline = make_paper_pipeline(512, mask="max")
    >>> [name for name, _ in pipeline.steps]
    ['mask', 'pca', 'encode', 'rotate', 'power']
    >>> pipeline.get_params()["encode__embedding__n_clusters"]
    20
    >>> make_paper_pipeline(512, n_bits=64, device="cuda").get_params()["itq__device"]
    'cuda'
    """
    # Long only by its docstring (eleven parameters and the step names that grid searches address); the
    # steps are built by _local_feature_steps and _vector_steps.
    from selconv._torch_kernels import check_device

    check_device(device)
    n_components, n_clusters = _settings(dim)
    n_dropped = _resolve_n_dropped(n_dropped, fit_on)
    steps = _local_feature_steps(mask, n_components, n_clusters, random_state, shrinkage)
    if extractor is not None and extractor is not False:
        steps.insert(0, ("extract", _resolve_extractor(extractor, mask=mask)))
    steps += _vector_steps(n_dropped, undetermined, alpha, n_bits, random_state, shrinkage)
    for name, step in steps:
        if name != "extract" and "device" in step.get_params(deep=False):
            step.set_params(device=device)
    return Pipeline(steps)


def _local_feature_steps(mask: str, n_components: int, n_clusters: int, random_state, shrinkage=0.0) -> list:
    """Conv maps -> one vector per image: mask, LocalPCA, then Temb and democratic pooling fused (EncodeAggregate)."""
    from selconv.aggregation import DemocraticAggregator
    from selconv.embedding import TriangulationEmbedding
    from selconv.encoding import EncodeAggregate
    from selconv.local_pca import LocalPCA

    embedding = TriangulationEmbedding(n_clusters, shrinkage=shrinkage, random_state=random_state)
    return [
        ("mask", make_mask(mask)),
        ("pca", LocalPCA(n_components, random_state=random_state)),
        ("encode", EncodeAggregate(embedding, DemocraticAggregator())),
    ]


def _vector_steps(n_dropped: int, undetermined: str, alpha: float, n_bits, random_state, shrinkage=0.0) -> list:
    """Image vectors -> descriptors: rotation (RN), power law (PN) and, with ``n_bits``, ITQ codes."""
    from selconv.postprocessing import PowerNormalizer, RotationNormalizer

    steps = [
        ("rotate", RotationNormalizer(n_dropped=n_dropped, undetermined=undetermined, shrinkage=shrinkage)),
        ("power", PowerNormalizer(alpha=alpha)),
    ]
    if n_bits is not None:
        from selconv.hashing import ITQHasher

        steps.append(("itq", ITQHasher(n_bits, random_state=random_state)))
    return steps


def _resolve_extractor(extractor, *, mask: str):
    from selconv.extraction import ConvFeatureExtractor

    if extractor is True:
        return ConvFeatureExtractor(keypoints="sift" if mask == "sift" else None)
    if not isinstance(extractor, ConvFeatureExtractor):
        raise TypeError(f"extractor must be None, True or a ConvFeatureExtractor; got {type(extractor).__name__}.")
    if mask == "sift" and extractor.get_params().get("keypoints") is None:
        raise ValueError('mask="sift" needs SIFT keypoints: pass ConvFeatureExtractor(keypoints="sift") as extractor.')
    return extractor
