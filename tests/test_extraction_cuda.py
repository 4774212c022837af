"""The extractor on CUDA: batches queued ahead of the host (``BatchRunner.IN_FLIGHT``), pixels staged in pinned
memory by the decoding threads, CUDA graphs (``cuda_graphs=True``).

Skipped without a CUDA device (CI runs on CPUs); on a GPU machine: ``pytest tests/test_extraction_cuda.py``.
Random VGG16 weights (``weights=None``, seeded): nothing to download.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from selconv.extraction import ConvFeatureExtractor, _graphs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """24 JPEG files of three shapes (8 each, interleaved), smooth with texture."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(24):
        width, height = [(96, 72), (72, 96), (90, 70)][i % 3]
        small = rng.integers(0, 256, size=(height // 8, width // 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
        paths.append(str(folder / f"{i:02d}.jpg"))
        image.save(paths[-1], quality=92)
    return paths


def extractor(**params):
    torch.manual_seed(0)  # the same random weights for every extractor
    settings = {"device": "cuda", "batch_size": 4, "n_workers": 4, "progress": False, **params}
    return ConvFeatureExtractor("vgg16", weights=None, max_size=96, **settings).fit()


def assert_same_maps(got, expected, rtol):
    assert [m.source for m in got] == [m.source for m in expected]
    for a, b in zip(got, expected):
        assert a.features.shape == b.features.shape and a.image_size == b.image_size
        scale = float(np.abs(b.features).max())
        np.testing.assert_allclose(a.features, b.features, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("pad_to_multiple", [None, 32])
def test_cuda_run_gives_the_cpu_maps(photos, pad_to_multiple):
    """float32 (no TF32) on CUDA, batches queued ahead and pixels staged in pinned memory by the decoding
    threads: the maps of the CPU, in input order, to float rounding; through a head too."""
    expected = extractor(device="cpu").transform(photos)
    on_gpu = extractor(pad_to_multiple=pad_to_multiple)
    assert_same_maps(on_gpu.transform(photos), expected, rtol=1e-4)
    rows = [row for _, row in on_gpu.iter_extract(photos, head=lambda maps: maps.amax((2, 3)))]
    reference = np.stack([m.features.max((1, 2)) for m in expected])
    np.testing.assert_allclose(np.stack(rows), reference, rtol=1e-4, atol=1e-4 * float(reference.max()))


@pytest.mark.parametrize("compile", [False, True])
@pytest.mark.parametrize("pad_to_multiple", [None, 32])
def test_cuda_graphs_give_the_maps_of_the_network_run_kernel_by_kernel(photos, compile, pad_to_multiple):
    """cuda_graphs: full batches replay a graph recorded at the second full batch of their batch shape, kept with
    the network for later runs; the maps (and a head's rows) are those without graphs."""
    plain = extractor(pad_to_multiple=pad_to_multiple, compile=compile, precision="bfloat16")
    expected = plain.transform(photos)
    graphed = plain.run_with(cuda_graphs=True)
    first = graphed.transform(photos)
    network = plain._get_model()

    def recorded():  # the keys of the network's recorded graphs
        return [key for graphs in _graphs._GRAPHS[network].values() for key, graph in graphs.graphs.items() if graph]

    first_recorded = recorded()
    assert first_recorded and all(n_images == 4 for n_images, _, _ in first_recorded)
    again = graphed.transform(photos[1:] + photos[:1])  # other batches through the same graphs
    assert recorded() == first_recorded
    # The same kernels on the same inputs: equal up to the rare kernel whose reduction order varies run to run.
    assert_same_maps(first, expected, rtol=1e-6)
    assert_same_maps(again, expected[1:] + expected[:1], rtol=1e-6)
    rows = [row for _, row in graphed.iter_extract(photos, head=lambda maps: maps.amax((2, 3)))]
    np.testing.assert_allclose(np.stack(rows), np.stack([m.features.max((1, 2)) for m in expected]), rtol=1e-6)
