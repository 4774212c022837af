"""Batching for the extractor: decode in worker threads, batch images of one batch shape, run them, and release
the maps in input order.

Images are grouped by their batch shape: their resized shape, or with ``pad_to_multiple`` that shape rounded up to
a multiple of it, the batch zero-padded at the bottom and right and run exactly as each image alone (see
``SequentialTaps``). Batches are filled in input order; when too many images wait for a full batch, the batch
holding the oldest one runs early, so memory stays bounded whatever the mix of shapes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from selconv.conv_map import ConvMap
from selconv.exceptions import NonFiniteError
from selconv.extraction._device_decode import record_consumer
from selconv.extraction._network import normalize_pixels
from selconv.extraction._results import SkippedInput
from selconv.extraction.backbones import valid_mask
from selconv.extraction.images import ImageLoadError


class _OpenCVThreads:
    """OpenCV's own thread pool held at one thread while extractions decode in worker threads, then restored.

    Each worker's OpenCV calls (colour conversion) fan out over OpenCV's pool, by default one thread per core:
    16 workers x 16 threads oversubscribe 16 cores. On an H100 machine's 16 cores decoding alone ran 1.8x faster
    with the pool at one thread (2,160 against 1,184 images/s; benchmarks/results/gpu_pipeline.md, notes). The
    setting is the process's: it is restored when the last extraction that asked for it ends.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.users = 0
        self.saved = None

    @contextlib.contextmanager
    def single(self):
        import cv2

        with self.lock:
            if self.users == 0:
                self.saved = cv2.getNumThreads()
                cv2.setNumThreads(1)
            self.users += 1
        try:
            yield
        finally:
            with self.lock:
                self.users -= 1
                if self.users == 0:
                    cv2.setNumThreads(self.saved)


_OPENCV_THREADS = _OpenCVThreads()


def default_workers(decodes_on_gpu: bool = False) -> int:
    """Decoding threads when ``n_workers=None``: the available cores, at most 16; at most 4 when JPEG files are
    decoded on a GPU (``decode="device"``), where the threads only read files and parse headers and more of them
    only take the GIL from the thread that runs the network and the head: on an H100, JPEG files -> codes ran at
    556 images/s with 4 threads against 445 with 16 (benchmarks/results/gpu_pipeline.md, run F)."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(4 if decodes_on_gpu else 16, available))


def padded_shape(shape, multiple: int) -> tuple:
    """``shape`` (H, W, ...) with its height and width rounded up to multiples of ``multiple``."""
    height, width = shape[:2]
    return (-(-height // multiple) * multiple, -(-width // multiple) * multiple, *shape[2:])


def _takes_sizes(head) -> bool:
    """Whether ``head`` takes a ``sizes`` keyword (``TorchEncoder.transform``): a padded batch is then passed
    whole, with each map's own (height, width), instead of one call per map size on the cropped maps."""
    try:
        return "sizes" in inspect.signature(head).parameters
    except (TypeError, ValueError):  # no signature (some builtins)
        return False


class _TooSmallError(ImageLoadError):
    """Every image of a batch (they share one shape) is too small for the network."""


class BatchRunner:
    """Runs batches of images of one :meth:`batch_shape` through the module; on CUDA, the host finishes batch
    k-2 (runs its head, takes its results) once batch k is queued on the GPU (:attr:`IN_FLIGHT` batches ahead).

    A batch is a list of ``(key, LoadedImage, cache_path)``; a finished batch a list of
    ``(key, ConvMap, cache_path)``; the key, ``(position, scale)``, is passed through. With a ``head`` (a callable
    taking conv maps of one grid on the device, (B, K, H, W), and returning a (B, D) tensor there), a finished
    batch holds each image's row of the head's output (an ndarray) instead of its ConvMap: the maps never leave
    the device. With ``pad_to_multiple``, ``output_size(height, width)`` gives an image's map size, and the module
    takes ``(x, sizes)`` for a padded batch (``SequentialTaps``); each map is cropped to its own size, or the head
    takes the padded maps whole with their sizes (``head(maps, sizes=...)``) when it has that keyword.
    """

    #: Batches queued on the GPU ahead of the one the host finishes. With one, the host ran batch k-1's head
    #: (its syncs waiting for k-1's network) once k was queued, and then had k's network time to prepare k+1;
    #: with two, the head of k-2 finds its maps ready while k-1 and k keep the GPU busy. JPEG files -> codes on an
    #: H100: 717 -> 755 images/s with nvJPEG, 719 -> 733 with CPU decoding (benchmarks/results/pipeline_profile.md,
    #: run G, call 1).
    IN_FLIGHT = 2

    def __init__(
        self,
        module,
        device,
        precision,
        mean,
        std,
        out_dtype,
        head=None,
        pad_to_multiple=None,
        output_size=None,
        graphs=None,
        graph_batch_size=None,
        normalize=normalize_pixels,
    ):
        import torch

        self.torch = torch
        self.module = module
        self.device = device
        self.cuda = device.type == "cuda"
        self.allow_tf32 = precision != "float32"
        self.compute_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(precision, torch.float32)
        self.out_dtype = torch.float16 if out_dtype == "float16" else torch.float32
        shift = torch.tensor([255.0 * m for m in mean]).view(1, 3, 1, 1)
        scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, 3, 1, 1)
        self.shift, self.scale = shift.to(device), scale.to(device)
        self.normalize = normalize  # normalize_pixels, or compiled (compile_normalization)
        self.head = head
        self.head_takes_sizes = head is not None and _takes_sizes(head)
        # High priority: the head's kernels are dispatched ahead of the network's next batch, which is queued
        # when the head runs; at equal priority each waited behind the network's kernels while this thread,
        # blocked in the head's syncs, could not prepare the batch after.
        self.head_stream = torch.cuda.Stream(device, priority=-1) if head is not None and self.cuda else None
        self.pad_to_multiple, self.output_size = pad_to_multiple, output_size
        self.graphs, self.graph_batch_size = graphs, graph_batch_size  # NetworkGraphs (CUDA) for full batches
        self.in_flight: deque = deque()

    def batch_shape(self, shape) -> tuple:
        """The shape (H, W, C) an image of resized ``shape`` is batched at: its own, or rounded up to
        ``pad_to_multiple``, unless the image is too small for the network (it then fails in a batch of its own
        shape, as without padding)."""
        if self.pad_to_multiple is None or min(self.output_size(*shape[:2])) < 1:
            return tuple(shape)
        return padded_shape(shape, self.pad_to_multiple)

    def _map_sizes(self, images):
        """Each image's map (height, width), or None when the batch is not padded (every image has the batch's
        shape)."""
        shape = self.batch_shape(images[0].shape)
        if all(tuple(image.shape) == shape for image in images):
            return None
        return [self.output_size(*image.shape[:2]) for image in images]

    @contextlib.contextmanager
    def running(self):
        """The context batches run in: inference mode; cuDNN without autotuning (every new (batch size, shape)
        would pay a search, and on an H100/H200 the heuristics' choice for VGG16 was as fast as the tuned one,
        measured in benchmarks/); TF32 only when ``precision`` allows it."""
        cudnn = self.torch.backends.cudnn
        flags = cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=self.allow_tf32)
        with self.torch.inference_mode(), flags:
            yield

    def stage(self, image):
        """A decoded LoadedImage as this runner takes it, made in a decoding thread: on CUDA, host pixels copied
        into pinned memory (a tensor), from which the calling thread only queues an asynchronous copy to the
        device. Copying each batch into pinned memory in the calling thread took a quarter of its time, and with
        the decoding threads busy each copy also waited for the GIL (benchmarks/results/pipeline_profile.md, run
        F)."""
        if not self.cuda or isinstance(image.pixels, self.torch.Tensor):
            return image
        return dataclasses.replace(image, pixels=self._pinned(image.pixels))

    def _pinned(self, pixels):
        pinned = self.torch.empty(pixels.shape, dtype=self.torch.uint8, pin_memory=True)
        pinned.numpy()[...] = pixels
        return pinned

    def _pixels(self, images, out=None):
        """The batch as one (B, H, W, 3) uint8 tensor on the device (``out``, or a new one), at the batch shape
        (the cells beyond an image's own size are left as they are: the padded forward never reads them). The NHWC
        batch viewed as NCHW is channels_last, the layout fast GPU convolutions want; uint8 crosses the bus, 4x
        less than float."""
        torch = self.torch
        shape = self.batch_shape(images[0].shape)
        if not self.cuda:
            x = torch.empty((len(images), *shape), dtype=torch.uint8)
            staging = x.numpy()
            for i, pixels in enumerate(images):
                staging[i, : pixels.shape[0], : pixels.shape[1]] = pixels
            return x
        record_consumer(images, self.device)  # decode="device": their memory is the decoding side stream's
        x = torch.empty((len(images), *shape), dtype=torch.uint8, device=self.device) if out is None else out
        # Not staged by a decoding thread: pinned here.
        sources = [image if isinstance(image, torch.Tensor) else self._pinned(image) for image in images]
        # One call for the batch's copies: with a copy_ per image, each call let the decoding threads take the GIL,
        # which this thread then waited for (a third of its time with 16 threads decoding on the CPU, on an H100:
        # benchmarks/results/pipeline_profile.md, run G, call 4).
        targets = [x[i, : source.shape[0], : source.shape[1]] for i, source in enumerate(sources)]
        torch._foreach_copy_(targets, sources, non_blocking=True)
        return x

    def _network(self, pixels, sizes):
        """(B, H, W, 3) uint8 pixels on the device, with each image's (height, width) for a padded batch (else
        None), -> the maps in the output dtype: what a CUDA graph records."""
        x = self.normalize(pixels, self.shift, self.scale, self.compute_dtype)
        if not self.cuda:
            x = x.contiguous()
        out = self.module(x) if sizes is None else self.module(x, sizes)
        return out.to(self.out_dtype)

    def _forward(self, images):
        """Enqueue the network on a batch: ``(map_sizes, pending)`` with ``pending`` the maps' host copies and
        their event (see :meth:`_to_host`), or with a head the maps on the device and the event that ends the
        network (for :meth:`_run_head`). A full batch replays its CUDA graph when the runner has ``graphs``."""
        torch = self.torch
        map_sizes = self._map_sizes(images)
        sizes = None if map_sizes is None else self._index_tensor([image.shape[:2] for image in images])
        out = None
        if self.graphs is not None and len(images) == self.graph_batch_size:
            key = (len(images), self.batch_shape(images[0].shape), sizes is not None)
            fill = functools.partial(self._pixels, images)
            out = self.graphs.run(key, self._network, fill, sizes, self.device, keep=(self.shift, self.scale))
        if out is None:
            out = self._network(self._pixels(images), sizes)
        if self.head is None:
            return map_sizes, self._to_host([out])
        ready = None
        if self.cuda:
            ready = torch.cuda.Event()
            ready.record()
        return map_sizes, (out, ready)

    def _index_tensor(self, values):
        """Small integers (sizes, indices) as an int64 tensor on the device. On CUDA through pinned memory,
        asynchronously: torch's copy from pageable memory waits for the stream, so for each batch the thread would
        wait for the previous batch's network before enqueuing this one."""
        values = self.torch.as_tensor(np.asarray(values, dtype=np.int64))
        return values.pin_memory().to(self.device, non_blocking=True) if self.cuda else values

    def _to_host(self, outputs):
        """``(outputs, None)``, or on CUDA their pinned host copies, started, and the event that ends them."""
        if not self.cuda:
            return outputs, None
        host = [self.torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in outputs]
        for target, source in zip(host, outputs):
            target.copy_(source, non_blocking=True)
        event = self.torch.cuda.Event()
        event.record()
        return host, event

    def _run_head(self, map_sizes, maps, ready):
        """The head's rows of a batch's maps and whether each map is finite (the NaN policy, checked on the maps),
        on their way to the host.

        On CUDA this runs on a stream of its own, after the network's work on the maps (``ready``), and is called
        once :attr:`IN_FLIGHT` later batches are queued: a head that waits for the device (the masks'
        ``nonzero``) then finds its maps computed, while those batches keep the GPU busy.
        """
        torch = self.torch
        with torch.cuda.stream(self.head_stream) if self.cuda else contextlib.nullcontext():
            if self.cuda:
                self.head_stream.wait_event(ready)
                maps.record_stream(self.head_stream)  # allocated on the network's stream, read on this one
            if map_sizes is None:
                finite = torch.isfinite(maps).flatten(1).all(1)
                rows = self._head(maps, len(maps))
            else:
                sizes = self._index_tensor(map_sizes)
                own = valid_mask(sizes[:, 0], sizes[:, 1], maps.shape[-2:])
                finite = (torch.isfinite(maps) | ~own).flatten(1).all(1)  # within each map's own grid
                if self.head_takes_sizes:  # the padded batch whole: one call (two syncs for TorchEncoder)
                    rows = self._head(maps, len(maps), sizes=sizes)
                else:
                    rows = self._head_by_grid(maps, map_sizes)
            return self._to_host([rows, finite])

    def _head(self, maps, n_images, **sizes):
        rows = self.head(maps, **sizes)
        if not isinstance(rows, self.torch.Tensor) or rows.ndim != 2 or len(rows) != n_images:
            got = tuple(rows.shape) if isinstance(rows, self.torch.Tensor) else type(rows).__name__
            raise ValueError(f"head must return a (B, D) tensor for maps of shape {tuple(maps.shape)}; got {got}.")
        return rows

    def _head_by_grid(self, out, map_sizes):
        """The head's rows of a padded batch: one call per map size, on the maps cropped to it, in batch order."""
        groups: dict = {}
        for i, size in enumerate(map_sizes):
            groups.setdefault(size, []).append(i)
        order, parts = [], []
        for (height, width), indices in groups.items():
            index = self._index_tensor(indices)
            parts.append(self._head(out[index, :, :height, :width], len(indices)))
            order.extend(indices)
        return self.torch.cat(parts)[self._index_tensor(np.argsort(order))]

    def _finish(self, job):
        batch, map_sizes, (outputs, event) = job
        if event is not None:
            event.synchronize()
        features = outputs[0].numpy().copy()  # one copy out of pinned (or batch) memory; the maps are views of it
        sources = [img.source for _, img, _ in batch]
        if self.head is not None:
            self._check_finite(outputs[1].numpy(), sources)
            return [(key, features[i], cache_path) for i, (key, _, cache_path) in enumerate(batch)]
        if map_sizes is not None:  # each map cropped to its own grid, in memory of its own
            features = [np.ascontiguousarray(f[:, :h, :w]) for f, (h, w) in zip(features, map_sizes)]
        self._check_finite(np.array([np.isfinite(f).all() for f in features]), sources)
        return [
            (
                key,
                ConvMap(
                    features[i],
                    image_size=(img.pixels.shape[1], img.pixels.shape[0]),
                    keypoints=img.keypoints,
                    source=img.source,
                ),
                cache_path,
            )
            for i, (key, img, cache_path) in enumerate(batch)
        ]

    def _check_finite(self, finite, sources) -> None:
        """The NaN policy (docs/robustness.md) at the network's output, given whether each image's map is finite:
        float16 can overflow, and a decode on the device once returned a map with NaN on an H200
        (benchmarks/results/gpu_pipeline.md); never pass them on."""
        if finite.all():
            return
        bad = [str(source) for source, ok in zip(sources, finite) if not ok]
        raise NonFiniteError(
            f"the network returned conv maps with NaN or infinity for {len(bad)} image(s): {', '.join(bad[:5])} "
            f"(network dtype {str(self.compute_dtype).removeprefix('torch.')}). float16 can overflow: use "
            "precision='bfloat16' or 'float32'; with decode='device', try decode='cpu'."
        )

    def submit(self, batch):
        """Start a batch; return the finished results of this one (CPU), or on CUDA of the batch submitted
        :attr:`IN_FLIGHT` batches before (none before that many)."""
        try:
            job = (batch, *self._forward([img.pixels for _, img, _ in batch]))
        except RuntimeError as error:
            if "too small" not in str(error):
                raise
            height, width = batch[0][1].pixels.shape[:2]
            raise _TooSmallError(
                f"image too small for the requested layer: {width} x {height} px after resizing leaves no cell "
                "in the feature map; raise max_size or crop larger boxes."
            ) from error
        if not self.cuda:
            return self._finish(self._with_head(job))
        self.in_flight.append(job)
        if len(self.in_flight) <= self.IN_FLIGHT:
            return []
        return self._finish(self._with_head(self.in_flight.popleft()))

    def drain(self):
        """The finished results of every batch still in flight, in the order they were submitted."""
        finished = []
        while self.in_flight:
            finished.extend(self._finish(self._with_head(self.in_flight.popleft())))
        return finished

    def _with_head(self, job):
        """A started job as :meth:`_finish` takes it: with a head, the head run on its maps."""
        batch, map_sizes, pending = job
        return (batch, map_sizes, self._run_head(map_sizes, *pending)) if self.head is not None else job


class _ShapeBuckets:
    """Decoded images waiting for a batch, one bucket per batch shape (``key`` of an image's shape), each in
    input order."""

    #: Images that may wait for a full batch, in batches: past ``WAITING_BATCHES * batch_size`` the bucket of the
    #: oldest runs part-full. With 2, a sample of the Oxford files (168, 14 batch shapes at ``pad_to_multiple=32``)
    #: cycled to 3,000 ran in 156 batches of 64, 63 of them of 2 images, and 47 % of the images in full batches;
    #: with 8, in 54 batches, 85 % of the images in full batches (the only ones CUDA graphs replay). The price is
    #: memory: 512 decoded images of 1024 x 768 at batch 64, 1.2 GB of pixels: on the GPU with ``decode="device"``;
    #: with CPU decoding for a CUDA run in pinned host memory, where torch's allocator rounds each image up to a
    #: power of two (4 MB): 2 GB, kept cached by torch for the process's later pinned allocations.
    WAITING_BATCHES = 8

    def __init__(self, batch_size: int, key):
        self.batch_size, self.key = batch_size, key
        self.max_waiting = max(self.WAITING_BATCHES * batch_size, 16)
        self.buckets: dict = {}

    def add(self, entry) -> list:
        """Add ``((position, scale), LoadedImage, cache_path)``; return the batches to run now (none or one)."""
        shape = self.key(entry[1].pixels.shape)
        bucket = self.buckets.setdefault(shape, [])
        bucket.append(entry)
        if len(bucket) >= self.batch_size:
            return [self.buckets.pop(shape)]
        if sum(map(len, self.buckets.values())) >= self.max_waiting:
            return [self._pop_oldest()]
        return []

    def flush(self):
        """Every batch still waiting, oldest first."""
        while self.buckets:
            yield self._pop_oldest()

    def _pop_oldest(self) -> list:
        return self.buckets.pop(min(self.buckets, key=lambda shape: self.buckets[shape][0][0]))


class _Done:
    """A result computed in the calling thread, with the interface of a Future (``n_workers=0``)."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


class OrderedExtraction:
    """One extraction run: yields ``(position, map)`` of the readable ``items`` (parsed InputItems) in input order.

    ``load(item)`` runs in the worker threads and returns ``(kind, payload, cache_problems)``: ``("parts",
    parts, ...)`` with one part per scale, a cached ConvMap or ``(LoadedImage, cache_path)`` to run, or
    ``("error", message, ...)`` for an unreadable input. ``assemble(maps, item)`` makes the input's map from
    its scales' ConvMaps. ``write(cache_path, map)`` stores a computed map (returns a problem or None).
    Unreadable inputs raise ImageLoadError (``on_error="raise"``) or go to ``report.skipped``; cache
    problems go to ``report.cache_repaired``. ``bar.update(1)`` is called once per input.
    """

    def __init__(self, items, report, *, load, assemble, write, runner, batch_size, n_workers, on_error, bar):
        self.items, self.report, self.load, self.write, self.runner = items, report, load, write, runner
        self.assemble, self.on_error, self.bar, self.n_workers = assemble, on_error, bar, n_workers
        self.window = max(2 * batch_size, 4 * max(n_workers, 1))  # inputs being decoded ahead
        self.buckets = _ShapeBuckets(batch_size, runner.batch_shape)
        self.pending: dict = {}  # position -> its scales' ConvMaps (None until computed)
        self.done: dict = {}  # position -> map, or None for a skipped input, until released in order
        self.next_out = 0
        self.writes: list = []  # (position, future of the cache write)

    def __iter__(self):
        pool = ThreadPoolExecutor(self.n_workers) if self.n_workers > 0 else None
        self.submit = pool.submit if pool is not None else (lambda function, *args: _Done(function(*args)))
        completed = False
        try:
            with _OPENCV_THREADS.single() if self.n_workers > 1 else contextlib.nullcontext():
                yield from self._run()
            completed = True
        finally:
            if pool is not None:
                # On an error, an interrupt or an abandoned generator, return at once: decoding not yet
                # started is dropped and running work finishes in the background (cache writes are atomic).
                pool.shutdown(wait=completed, cancel_futures=not completed)

    def _run(self):
        items = self.items
        jobs = deque(self.submit(self._load, items[i]) for i in range(min(self.window, len(items))))
        for position in range(len(items)):
            job = jobs.popleft()
            if position + self.window < len(items):
                jobs.append(self.submit(self._load, items[position + self.window]))
            kind, payload, problems = job.result()
            for problem in problems:
                self._note_cache(position, problem)
            if kind == "error":
                self._skip(position, payload)
            else:
                self.pending[position] = [part if isinstance(part, ConvMap) else None for part in payload]
                for scale, part in enumerate(payload):
                    if not isinstance(part, ConvMap):
                        for batch in self.buckets.add(((position, scale), *part)):
                            self._run_batch(batch)
                self._complete(position)
            yield from self._ready()
        for batch in self.buckets.flush():
            self._run_batch(batch)
        self._store(self.runner.drain())
        yield from self._ready()
        for position, future in self.writes:
            self._note_cache(position, future.result())

    def _load(self, item):
        """``load(item)`` with each image to run staged for the runner (:meth:`BatchRunner.stage`), in the
        worker thread."""
        kind, payload, problems = self.load(item)
        if kind == "parts":
            payload = [part if isinstance(part, ConvMap) else (self.runner.stage(part[0]), part[1]) for part in payload]
        return kind, payload, problems

    def _run_batch(self, batch):
        try:
            finished = self.runner.submit(batch)
        except _TooSmallError as exc:  # all images of a batch share one shape (too small ones are never padded)
            for (position, _), _, _ in batch:
                if position in self.pending:  # not already skipped for another of its scales
                    del self.pending[position]
                    self._skip(position, f"{self.items[position].name}: {exc}", exc)
            return
        self._store(finished)

    def _store(self, finished):
        for (position, scale), conv_map, cache_path in finished:
            if cache_path is not None:
                self.writes.append((position, self.submit(self.write, cache_path, conv_map)))
            if position in self.pending:
                self.pending[position][scale] = conv_map
                self._complete(position)

    def _complete(self, position):
        """Assemble an input's map once every scale has its ConvMap (if it is still pending: not done or skipped)."""
        maps = self.pending.get(position)
        if maps is not None and all(conv_map is not None for conv_map in maps):
            del self.pending[position]
            self.done[position] = self.assemble(maps, self.items[position])

    def _ready(self):
        """Release the maps (and skips) that are next in input order."""
        while self.next_out in self.done:
            conv_map = self.done.pop(self.next_out)
            self.next_out += 1
            self.bar.update(1)
            if conv_map is not None:
                yield self.next_out - 1, conv_map

    def _skip(self, position, reason, cause=None):
        if self.on_error == "raise":
            raise ImageLoadError(reason) from cause
        self.report.skipped.append(SkippedInput(position, self.items[position].name, reason))
        self.done[position] = None

    def _note_cache(self, position, problem):
        if problem is not None:
            self.report.cache_repaired.append(SkippedInput(position, self.items[position].name, problem))
