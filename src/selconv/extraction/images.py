"""Image loading for ConvFeatureExtractor: any input -> oriented RGB uint8, cropped, resized, with SIFT keypoints.

Everything here runs in the extractor's decoding threads: Pillow and OpenCV release the GIL while they
decode, resize and detect, so threads scale without copying pixels between processes.
"""

from __future__ import annotations

import math
import numbers
import os
import stat
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Bicubic with Pillow's antialiasing support (the filter widens when downscaling), as MATLAB's imresize
# default that the authors' code used.
_RESAMPLE = Image.Resampling.BICUBIC


class ImageLoadError(ValueError):
    """An input image could not be read or converted; the message names the file (or input index)."""


class BoxedImage(NamedTuple):
    """An image with a bounding box to crop (a query), as accepted by ``ConvFeatureExtractor``.

    Parameters
    ----------
    image : str, os.PathLike, PIL.Image.Image or ndarray
        The image.
    box : tuple of 4 float
        ``(x1, y1, x2, y2)`` in pixels of the ORIGINAL image (after EXIF orientation); ``x2``/``y2``
        are exclusive. The crop is scaled by the factor the full image would get.
    """

    image: object
    box: tuple


@dataclass
class LoadedImage:
    """One decoded input, ready for the CNN: ``pixels`` (H, W, 3) uint8 of the resized (cropped) image, an ndarray,
    or a tensor when decoded on the device or staged in pinned memory for a CUDA run."""

    pixels: np.ndarray
    keypoints: np.ndarray | None
    source: str | None


def split_box(item):
    """Return ``(image, box or None)`` for an input item (``BoxedImage``, ``(image, box)`` or a bare image)."""
    if isinstance(item, BoxedImage):
        return item.image, _check_box(item.box)
    if isinstance(item, tuple) and len(item) == 2 and _looks_like_box(item[1]):
        return item[0], _check_box(item[1])
    return item, None


class InputItem(NamedTuple):
    """One input of the extractor, parsed once: its position, image, checked box, name in messages and file path."""

    position: int
    image: object
    box: tuple | None
    name: str
    path: str | None


def parse_item(item, position: int) -> InputItem:
    """Split off and check the box of one input (a malformed box raises ValueError) and name it."""
    image, box = split_box(item)
    path = os.fspath(image) if isinstance(image, (str, os.PathLike)) else None
    return InputItem(position, image, box, describe(image, position), path)


def parse_inputs(X, owner: str) -> list[InputItem]:
    """A list of inputs as InputItems; a single image, or no list at all, is a TypeError naming ``owner``, and a
    malformed box (a programming error) a ValueError, whatever ``on_error`` says."""
    if isinstance(X, (str, bytes, os.PathLike)) or (isinstance(X, np.ndarray) and X.ndim < 4 and X.dtype != object):
        raise TypeError(
            f"{owner} expects a list of images (paths, PIL images or arrays); got a single "
            f"{type(X).__name__}. Wrap it in a list: [image]."
        )
    try:
        items = list(X)
    except TypeError:
        raise TypeError(f"{owner} expects a list of images; got {type(X).__name__}.") from None
    return [parse_item(item, position) for position, item in enumerate(items)]


def _looks_like_box(value) -> bool:
    if isinstance(value, (str, bytes, os.PathLike, Image.Image)):
        return False
    try:
        values = list(value)
    except TypeError:
        return False
    return len(values) == 4 and all(isinstance(v, numbers.Real) for v in values)


def _check_box(box) -> tuple[float, float, float, float]:
    if not _looks_like_box(box):
        raise ValueError(f"A bounding box must be 4 numbers (x1, y1, x2, y2); got {box!r}.")
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
        raise ValueError(f"A bounding box must satisfy x1 < x2 and y1 < y2 (finite); got {box!r}.")
    return (x1, y1, x2, y2)


def describe(image, index: int) -> str:
    """How an input is named in messages: its path, or its position in the input list."""
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    return f"input {index} ({type(image).__name__})"


def open_regular_file(path, name: str):
    """Open `path` for binary reading, refusing anything but a regular, non-empty file before reading a byte.

    A FIFO, device, socket or folder would block the reader or never end; the open itself uses
    ``O_NONBLOCK`` (no effect on regular files) so that even a FIFO without a writer cannot block it, and
    the check is made on the opened descriptor, so the file cannot be swapped in between.
    Returns the file object and its ``os.stat_result``.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    try:
        descriptor = os.open(path, flags)
    except FileNotFoundError:
        raise ImageLoadError(f"{name}: no such file.") from None
    except OSError as exc:
        raise ImageLoadError(f"{name}: cannot be opened ({exc.strerror or exc}).") from None
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            kind = (
                "a folder"
                if stat.S_ISDIR(info.st_mode)
                else "a FIFO (named pipe)"
                if stat.S_ISFIFO(info.st_mode)
                else "a socket"
                if stat.S_ISSOCK(info.st_mode)
                else "a device"
                if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
                else "a special file"
            )
            raise ImageLoadError(f"{name}: is {kind}, not an image file.")
        if info.st_size == 0:
            raise ImageLoadError(f"{name}: the file is empty.")
        return os.fdopen(descriptor, "rb"), info
    except BaseException:
        os.close(descriptor)
        raise


def _open_pil(handle, name: str) -> Image.Image:
    """Decode an opened file with Pillow, every failure an ImageLoadError naming the file."""
    try:
        # Pillow warns (DecompressionBombWarning) between one and two times MAX_IMAGE_PIXELS, where
        # _check_pixel_count refuses the image anyway. The warning is not silenced here: this runs in the
        # extractor's worker threads, and warnings.catch_warnings is not thread-safe (it swaps process-wide
        # state, which broke a caller's own warning capture in the main thread).
        image = Image.open(handle)
    except UnidentifiedImageError:
        raise ImageLoadError(f"{name}: not an image file (or a format Pillow cannot read).") from None
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"{name}: refused as a possible decompression bomb ({exc}).") from None
    except OSError as exc:
        raise ImageLoadError(f"{name}: cannot be opened ({exc}).") from None
    _check_pixel_count(image.size, name)
    try:
        # Decode now, inside the try: truncated and corrupt files fail here. Pillow's
        # LOAD_TRUNCATED_IMAGES is left False, so a cut file is an error, never a grey-padded image.
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"{name}: corrupt or truncated image data ({exc}).") from None
    return image


def _read_file(path: str, name: str) -> np.ndarray:
    """Decode a file to RGB uint8. Plain JPEGs go through OpenCV, which releases the GIL for the whole
    decode (Pillow's threads stop scaling at about 3 cores); everything else, and any JPEG with an EXIF
    rotation or an unusual colour mode, through Pillow. Only regular files are opened (see open_regular_file)."""
    handle, _ = open_regular_file(path, name)
    with handle:
        try:
            header = Image.open(handle)  # reads the header only (see _open_pil about Pillow's warning)
        except Exception:
            header = None
        if header is not None:
            with header:
                fast = (
                    header.format == "JPEG"
                    and header.mode in ("RGB", "L")
                    and header.getexif().get(0x0112, 1) in (0, 1)
                )
                if fast:
                    _check_pixel_count(header.size, name)
        handle.seek(0)
        if header is None or not fast:
            with _open_pil(handle, name) as pil:
                return _to_rgb(_oriented(pil), name)
        raw = handle.read()
    import cv2

    # libjpeg only warns on a truncated file and fills the rest with grey; a complete JPEG has an
    # end-of-image marker after its first scan (the marker cannot occur inside entropy-coded data).
    start = raw.find(b"\xff\xda")
    if start < 0 or raw.find(b"\xff\xd9", start) < 0:
        raise ImageLoadError(f"{name}: corrupt or truncated JPEG data (no end-of-image marker).")
    bgr = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None or bgr.shape[1::-1] != header.size:
        raise ImageLoadError(f"{name}: corrupt JPEG data (OpenCV could not decode it).")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _check_pixel_count(size, name) -> None:
    # The header gives the size before any decoding, so a small file claiming a gigapixel image is
    # rejected without allocating it (Pillow itself only warns below twice this limit).
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and size[0] * size[1] > limit:
        raise ImageLoadError(
            f"{name}: {size[0]} x {size[1]} pixels exceeds PIL.Image.MAX_IMAGE_PIXELS = {limit}; "
            "refused as a possible decompression bomb (raise that limit if the image is genuine)."
        )


def _oriented(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; most photos have none, and then no copy is made."""
    if image.getexif().get(0x0112, 1) in (0, 1):
        return image
    return ImageOps.exif_transpose(image)


def _to_rgb(image: Image.Image, name: str) -> np.ndarray:
    """Pillow image of any mode -> (H, W, 3) uint8 RGB; transparency is composited over white."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit greyscale: Pillow's convert('RGB') would clip at 255 (an almost white image).
        values = np.asarray(image, dtype=np.float64)
        if mode == "I" and (values.min() < 0 or values.max() > 65535):
            raise ImageLoadError(f"{name}: 32-bit integer image with values outside 0..65535 is not supported.")
        grey = np.round(values * (255.0 / 65535.0)).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        raise ImageLoadError(f"{name}: floating-point images are ambiguous in range; pass a numpy array in [0, 1].")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    elif mode == "L" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    try:
        # CMYK (Pillow undoes Adobe's inverted CMYK JPEGs), YCbCr, L, 1 -> RGB.
        if image.mode != "RGB":
            image = image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageLoadError(f"{name}: cannot convert mode {mode!r} to RGB ({exc}).") from None
    return np.asarray(image)


def _array_to_rgb(array: np.ndarray, name: str) -> np.ndarray:
    """numpy image (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) -> (H, W, 3) uint8."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)) or 0 in array.shape:
        raise ImageLoadError(
            f"{name}: an image array must have shape (H, W), (H, W, 3) or (H, W, 4); got {array.shape}."
        )
    _check_pixel_count((array.shape[1], array.shape[0]), name)
    if array.dtype == np.uint8:
        values = array.astype(np.float64) / 255.0 if array.ndim == 3 and array.shape[2] == 4 else array
    elif array.dtype == np.uint16:
        values = array.astype(np.float64) / 65535.0
    elif np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float64)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise ImageLoadError(f"{name}: a floating-point image must hold finite values in [0, 1].")
    else:
        raise ImageLoadError(f"{name}: unsupported image dtype {array.dtype} (use uint8, uint16 or float in [0, 1]).")
    if values.dtype != np.uint8:
        if values.ndim == 3 and values.shape[2] == 4:
            alpha = values[:, :, 3:]
            values = values[:, :, :3] * alpha + (1.0 - alpha)  # over white, as for files
        values = np.round(values * 255.0).astype(np.uint8)
    if values.ndim == 2:
        values = np.repeat(values[:, :, None], 3, axis=2)
    return np.ascontiguousarray(values)


def target_size(width: int, height: int, max_size: int | None, upscale: bool) -> tuple[float, tuple[int, int]]:
    """Scale factor and resized ``(width, height)`` so that the longest side is ``max_size``."""
    if max_size is None or (not upscale and max(width, height) <= max_size):
        return 1.0, (width, height)
    scale = max_size / max(width, height)
    return scale, (max(1, round(width * scale)), max(1, round(height * scale)))


def _crop(rgb: np.ndarray, box, name: str) -> np.ndarray:
    height, width = rgb.shape[:2]
    # Pillow's crop convention: coordinates rounded to whole pixels; clipped to the image.
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, x2 = max(0, x1), min(width, x2)
    y1, y2 = max(0, y1), min(height, y2)
    if x2 <= x1 or y2 <= y1:
        raise ImageLoadError(f"{name}: bounding box {tuple(box)} lies outside the {width} x {height} image.")
    return rgb[y1:y2, x1:x2]


def sift_keypoints(rgb: np.ndarray) -> np.ndarray:
    """OpenCV SIFT keypoint positions ``(x, y)`` on the grey version of an RGB uint8 image, as (n, 2) float32."""
    import cv2

    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    found = cv2.SIFT_create().detect(grey, None)
    return np.array([kp.pt for kp in found], dtype=np.float32).reshape(-1, 2)


def load_image(item, index: int, *, max_size: int | None, upscale: bool, keypoints: str | None) -> LoadedImage:
    """Decode, orient, convert, crop and resize one input; raise ImageLoadError naming it on any failure.

    Parameters
    ----------
    item : path, PIL image, ndarray, BoxedImage or (image, box)
        One input of ``ConvFeatureExtractor.transform``.
    index : int
        Its position in the input (named in messages for non-file inputs).
    max_size, upscale, keypoints
        As in ``ConvFeatureExtractor``.
    """
    return load_item(parse_item(item, index), max_sizes=[max_size], upscale=upscale, keypoints=keypoints)[0]


def load_item(item: InputItem, *, max_sizes: list, upscale: bool, keypoints: str | None) -> list[LoadedImage]:
    """:func:`load_image` of an input already parsed by :func:`parse_item`, at each of ``max_sizes``.

    The image is decoded once; each size is resized (and its keypoints detected) from the decoded image
    exactly as a single call with that ``max_size`` would (the extractor's ``scales``).
    """
    image, name = item.image, item.name
    try:
        if item.path is not None:
            rgb = _read_file(item.path, name)
        elif isinstance(image, Image.Image):
            _check_pixel_count(image.size, name)
            rgb = _to_rgb(_oriented(image), name)
        elif isinstance(image, np.ndarray):
            rgb = _array_to_rgb(image, name)
        else:
            raise ImageLoadError(
                f"{name}: expected a file path, a PIL image, a numpy array or (image, box); got {type(image).__name__}."
            )
    except ImageLoadError:
        raise
    except (OSError, ValueError, SyntaxError, MemoryError) as exc:
        raise ImageLoadError(f"{name}: cannot be read ({type(exc).__name__}: {exc}).") from None
    if rgb.size == 0:
        raise ImageLoadError(f"{name}: the image has no pixels.")
    full_height, full_width = rgb.shape[:2]
    cropped = _crop(rgb, item.box, name) if item.box is not None else rgb
    loaded = []
    for max_size in max_sizes:
        scale, size = target_size(full_width, full_height, max_size, upscale)
        if item.box is not None:
            # Scale the crop by the factor of the FULL image (docs/how-it-works.md, section 1), not to max_size.
            size = (max(1, round(cropped.shape[1] * scale)), max(1, round(cropped.shape[0] * scale)))
        resized = cropped
        if size != (cropped.shape[1], cropped.shape[0]):
            resized = np.asarray(Image.fromarray(cropped).resize(size, _RESAMPLE))
        resized = np.ascontiguousarray(resized)
        points = sift_keypoints(resized) if keypoints == "sift" else None
        loaded.append(LoadedImage(pixels=resized, keypoints=points, source=item.path))
    return loaded
