"""JPEG files decoded and resized on the extractor's device (``ConvFeatureExtractor(decode="device")``).

torchvision's ``decode_jpeg`` runs nvJPEG on a CUDA device (libjpeg-turbo on the CPU), and the resize is
``torch.nn.functional.interpolate`` (bicubic, antialiased: the Pillow filter the CPU path uses, in two
passes rounded to uint8 as Pillow's). Only what the CPU path would send to OpenCV comes here: baseline or progressive
JPEG files in RGB or grey with no EXIF rotation, without a box or keypoints; everything else (CMYK, EXIF
orientation, other formats, files torchvision cannot decode) goes through the CPU path. The pixels differ from
the CPU path's by the GPU decoder's IDCT and chroma upsampling and by at most one grey level of resize
arithmetic (measured in benchmarks/results/gpu_pipeline.md).

Streams (CUDA): torchvision allocates each decoded image on the calling thread's current stream but has nvJPEG
write it on a stream of its own, ordered after nothing on the current stream. On the default stream, shared with
the network, the caching allocator may hand out memory that the network's queued kernels still read or write
(freed on the host, not yet on the GPU): decoded bytes land in live activations (a bfloat16 NaN is two 0xFF
bytes) or the network overwrites the pixels. So decoding and resizing run here on a side stream whose memory only
this module allocates, one call at a time, synchronised before the images are returned; the consumer records its
stream on them (``Tensor.record_stream``) so that their memory is not reused before it has read them.

Batching: the extractor's worker threads each ask for one image (:func:`decode_one`); the requests that arrive
while a decode runs are decoded together by the next thread to get the lock, in one ``decode_jpeg`` call
(nvJPEG's batched decoder: on an A100, H100 or H200 its hardware JPEG engine for baseline files). The batch grows
with the arrival rate, up to the number of threads; nothing waits for a batch to fill.
"""

from __future__ import annotations

import contextlib
import threading

from PIL import Image

from selconv.extraction.images import LoadedImage, _check_pixel_count, open_regular_file, target_size

# nvJPEG's handle is shared by the process: one decode (and resize) at a time, on the side stream of its device.
_LOCK = threading.Lock()
_STREAMS: dict = {}  # CUDA device index -> side stream
_WAITING: dict = {}  # str(device) -> the _Requests of decode_one waiting for the next batch
_WAITING_LOCK = threading.Lock()


def read_plain_jpeg(path: str, name: str):
    """The bytes and (width, height) of a JPEG file the device path can decode, or None (CPU path)."""
    handle, _ = open_regular_file(path, name)
    with handle:
        try:
            with Image.open(handle) as header:  # the header only
                plain = (
                    header.format == "JPEG"
                    and header.mode in ("RGB", "L")
                    and header.getexif().get(0x0112, 1) in (0, 1)
                )
                size = header.size
        except Exception:
            return None
        if not plain:
            return None
        _check_pixel_count(size, name)
        handle.seek(0)
        return handle.read(), size


def decode_resize(raws: list, sizes: list, device) -> list:
    """JPEG byte strings -> (H, W, 3) uint8 tensors on ``device``, each resized to its ``(width, height)``.

    Raises RuntimeError (or ValueError) when torchvision cannot decode one of them.
    """
    with _LOCK:
        return _decode_resize_locked(raws, sizes, device)


def _decode_resize_locked(raws: list, sizes: list, device) -> list:
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(raw), dtype=torch.uint8) for raw in raws]
    with _side_stream(torch.device(device)) as stream:
        decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        out = [resize(image, width, height).permute(1, 2, 0) for image, (width, height) in zip(decoded, sizes)]
        del decoded
        if stream is not None:  # done before the lock is released: no free block of the side stream is still in use
            stream.synchronize()
    return out


class _Request:
    """One image asked of :func:`decode_one`: its bytes and target size, then its pixels or error."""

    __slots__ = ("raw", "size", "pixels", "error", "done")

    def __init__(self, raw: bytes, size: tuple):
        self.raw, self.size, self.pixels, self.error, self.done = raw, size, None, None, False


def decode_one(raw: bytes, size: tuple, device):
    """One JPEG decoded on ``device`` and resized to ``size`` (width, height), decoded in one batch with the
    requests of other threads that arrived meanwhile (module docstring). Raises as :func:`decode_resize` does, for
    this file only: a file that fails its batch is decoded again alone."""
    request, key = _Request(raw, size), str(device)
    with _WAITING_LOCK:
        _WAITING.setdefault(key, []).append(request)
    with _LOCK:
        if not request.done:  # no other thread took it into its batch: decode every request waiting now
            with _WAITING_LOCK:
                batch = _WAITING.pop(key)
            _decode_batch(batch, device)
    if request.error is not None:
        raise request.error
    return request.pixels


def _decode_batch(batch: list, device) -> None:
    """Decode ``batch`` (the lock held), each request getting its pixels or its own error; done in any case."""
    try:
        try:
            pixels = _decode_resize_locked([r.raw for r in batch], [r.size for r in batch], device)
        except (RuntimeError, ValueError) as error:
            if len(batch) == 1:
                batch[0].error = error
                return
            for request in batch:  # which file fails: each alone
                _decode_batch([request], device)
            return
        for request, image in zip(batch, pixels):
            request.pixels = image
    except BaseException as error:  # an interrupt: no waiting thread may return without pixels or an error
        for request in batch:
            if request.pixels is None and request.error is None:
                request.error = error
        raise
    finally:
        for request in batch:
            request.done = True


@contextlib.contextmanager
def _side_stream(device):
    """The current stream set to this module's side stream of a CUDA ``device`` (yields it), or nothing (CPU)."""
    import torch

    if device.type != "cuda":
        yield None
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = _STREAMS.get(index)
    if stream is None:
        # High priority: decoding runs beside the network's kernels, and the worker threads wait for it.
        stream = _STREAMS[index] = torch.cuda.Stream(device=index, priority=-1)
    with torch.cuda.stream(stream):
        yield stream


def record_consumer(images, device) -> None:
    """Mark device-decoded ``images`` (CUDA tensors) as used on the current stream of ``device``, before using them:
    their memory belongs to the side stream, which must not reuse it before this stream has read it."""
    import torch

    if torch.device(device).type != "cuda":
        return
    stream = torch.cuda.current_stream(device)
    for image in images:
        if isinstance(image, torch.Tensor) and image.is_cuda:
            image.record_stream(stream)


def resize(image, width: int, height: int):
    """(3, H, W) uint8 -> (3, height, width) uint8 as Pillow's bicubic resize: the horizontal pass, rounded to
    uint8, then the vertical one (torch's antialiased filter is Pillow's; the rounding between passes is too)."""
    import torch

    for size in ((image.shape[1], width), (height, width)):
        if tuple(image.shape[1:]) != size:
            passed = torch.nn.functional.interpolate(
                image[None].float(), size=size, mode="bicubic", align_corners=False, antialias=True
            )
            image = passed[0].round_().clamp_(0, 255).to(torch.uint8)
    return image


def load_on_device(item, max_size, upscale: bool, device) -> LoadedImage | None:
    """One input decoded and resized on ``device`` (pixels an (H, W, 3) uint8 tensor), or None for the CPU path."""
    if item.path is None or item.box is not None:
        return None
    plain = read_plain_jpeg(item.path, item.name)
    if plain is None:
        return None
    raw, (width, height) = plain
    start = raw.find(b"\xff\xda")
    if start < 0 or raw.find(b"\xff\xd9", start) < 0:
        return None  # truncated: the CPU path names the problem (as it does for OpenCV)
    try:
        pixels = decode_one(raw, target_size(width, height, max_size, upscale)[1], device)
    except (RuntimeError, ValueError):
        return None  # a JPEG torchvision cannot decode: the CPU path decodes it or names the problem
    return LoadedImage(pixels=pixels, keypoints=None, source=item.path)
