"""CUDA graphs of the extractor's network (``ConvFeatureExtractor(cuda_graphs=True)``).

Each batch run without a graph makes the calling thread launch every kernel of the network one by one (the
compiled network's generated code: convolutions, fused activations and pooling, the padding's masks), and each
launch lets the decoding threads take the GIL, which the thread then waits to get back. A CUDA graph, recorded
once per full batch of one batch shape, replays all of them in one call.

A graph computes from its own input buffers into its own output: a batch's pixels (and, padded, its map sizes)
are copied into the buffers, the graph replayed and its output copied out, all on the calling thread's current
stream, so that the next replay of the graph cannot overwrite maps that the head or the copy to the host still
read. The graphs of a network share one memory pool: replays on one stream never overlap, and every output is
copied out before the next replay.

Graphs are recorded for batches of ``batch_size`` images only (tail and early batches run as without graphs),
the second time a (batch size, batch shape, padded or not) arrives: the first runs as without graphs, so that
torch.compile has built its code for the shape before the recording (which must not compile). They are kept
with the network, for the later runs of the same fitted extractor (``selconv index`` runs one per chunk), and
freed with it: each holds its input batch and its output maps in GPU memory (about 150 + 100 MB for 64 VGG16
images at 1024 x 768, float32 maps) besides the pool, the largest batch's activations.
"""

from __future__ import annotations

import threading
import weakref

_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # network -> settings -> NetworkGraphs
_GRAPHS_LOCK = threading.Lock()


def network_graphs(network, settings: tuple) -> NetworkGraphs:
    """The graphs of ``network`` (the module, not a compiled wrapper) run with ``settings`` (everything else the
    recorded work depends on: compiled or not, dtypes, normalisation), created empty the first time."""
    with _GRAPHS_LOCK:
        by_settings = _GRAPHS.setdefault(network, {})
        if settings not in by_settings:
            by_settings[settings] = NetworkGraphs()
        return by_settings[settings]


class NetworkGraphs:
    """The recorded graphs of one network with one set of settings, by (batch size, batch shape, padded)."""

    def __init__(self):
        self.graphs: dict = {}  # key -> _Graph, or None once a batch of that key has run (the warm-up)
        self.pool = None
        self.lock = threading.Lock()  # one thread at a time fills, replays and empties a graph's buffers

    def run(self, key, forward, fill, sizes, device, keep):
        """The maps of a batch through the graph of ``key``, or None when this batch runs without one (the first
        batch of its key, recorded after it).

        ``forward(pixels, sizes)`` is the work to record: (B, H, W, 3) uint8 pixels and (B, 2) int64 map sizes
        or None on the device, to maps; ``fill(buffer)`` copies the batch's pixels into the (B, H, W, 3) buffer;
        ``sizes`` is the batch's sizes tensor on the device, or None (not padded); ``keep``, the tensors that
        ``forward`` reads besides the network's parameters (kept with the graph, which reads their memory).
        """
        import torch

        with self.lock, torch.cuda.device(device):
            if key not in self.graphs:
                self.graphs[key] = None
                return None
            graph = self.graphs[key]
            if graph is None:
                if self.pool is None:
                    self.pool = torch.cuda.graph_pool_handle()
                graph = self.graphs[key] = _Graph(key, forward, self.pool, keep)
            fill(graph.pixels)
            if sizes is not None:
                graph.sizes.copy_(sizes)
            graph.graph.replay()
            return graph.out.clone()


class _Graph:
    """One recorded forward (on the current device): its input buffers, its output and the graph."""

    def __init__(self, key, forward, pool, keep):
        import torch

        n_images, shape, padded = key
        self.keep = keep
        self.pixels = torch.zeros((n_images, *shape), dtype=torch.uint8, device="cuda")
        self.sizes = torch.zeros((n_images, 2), dtype=torch.int64, device="cuda") if padded else None
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: the decoding threads keep using the device (nvJPEG, their streams) during the recording.
        with torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
            self.out = forward(self.pixels, self.sizes)
