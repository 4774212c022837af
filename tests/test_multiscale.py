"""Multi-scale description: MultiScaleConvMap, masks and poolings on it, ConvFeatureExtractor(scales=...)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from selconv import MAC, RMAC, CroW, GeM, MaxMask, MultiScaleConvMap, NoMask, SiftMask, SPoC, SumMask
from selconv.conv_map import ConvMap
from selconv.extraction import ConvFeatureExtractor

torch = pytest.importorskip("torch")


def _maps(rng, n_channels=6, sizes=((5, 7), (4, 5), (3, 4)), keypoints=False):
    """One image's maps at three scales (unequal grids), with a few zero channels and keypoints."""
    maps = []
    for height, width in sizes:
        features = rng.random((n_channels, height, width), dtype=np.float32) * (rng.random((n_channels, 1, 1)) > 0.2)
        points = rng.random((4, 2)) * (8 * width, 8 * height) if keypoints else None
        maps.append(ConvMap(features, image_size=(8 * width or 1, 8 * height or 1), keypoints=points, source="a.jpg"))
    return maps


@pytest.fixture
def multi_maps():
    rng = np.random.default_rng(0)
    return [
        MultiScaleConvMap(tuple(_maps(rng, keypoints=True)), (1.0, 2**-0.5, 0.5), source="a.jpg"),
        MultiScaleConvMap(tuple(_maps(rng, sizes=((6, 4), (4, 3)), keypoints=True)), (1.0, 0.5)),
        MultiScaleConvMap(tuple(_maps(rng, sizes=((2, 2), (0, 3)), keypoints=True)), (1.0, 0.5)),  # an empty grid
    ]


def test_multiscale_conv_map_checks_its_parts():
    rng = np.random.default_rng(1)
    maps = _maps(rng)
    multi = MultiScaleConvMap(maps, [1, 0.5, 0.25])
    assert multi.maps == tuple(maps) and multi.scales == (1.0, 0.5, 0.25) and multi.n_channels == 6
    with pytest.raises(ValueError, match="non-empty tuple of ConvMap"):
        MultiScaleConvMap((), ())
    with pytest.raises(ValueError, match="one per map"):
        MultiScaleConvMap(tuple(maps), (1.0, 0.5))
    with pytest.raises(ValueError, match="different numbers of channels"):
        MultiScaleConvMap((maps[0], ConvMap(np.ones((3, 2, 2), np.float32), (2, 2))), (1.0, 0.5))


@pytest.mark.parametrize("mask", [NoMask(), MaxMask(), SumMask(), SiftMask(), SiftMask(0, cell_rule="containing")])
def test_mask_of_multiscale_map_concatenates_the_scales(mask, multi_maps):
    mask.fit(multi_maps)
    out = mask.transform(multi_maps)
    for multi, local in zip(multi_maps, out):
        expected = np.concatenate(mask.transform(list(multi.maps)))
        np.testing.assert_array_equal(local, expected)
        assert local.dtype == np.float32 and local.flags.c_contiguous
    locations = mask.get_selected_locations(multi_maps)
    for multi, cells in zip(multi_maps, locations):
        assert isinstance(cells, tuple) and len(cells) == len(multi.maps)
        for one, expected in zip(cells, mask.get_selected_locations(list(multi.maps))):
            np.testing.assert_array_equal(one, expected)
    fractions = mask.selected_fraction(multi_maps)
    for multi, local, fraction in zip(multi_maps, out, fractions):
        assert fraction == len(local) / sum(m.features[0].size for m in multi.maps)


def test_masks_accept_a_mix_of_single_and_multiscale_maps(multi_maps):
    single = multi_maps[0].maps[0]
    out = MaxMask().fit([single, multi_maps[1]]).transform([single, multi_maps[1]])
    np.testing.assert_array_equal(out[0], MaxMask().fit([single]).transform([single])[0])


def test_sift_mask_needs_keypoints_at_every_scale(multi_maps):
    maps = list(multi_maps[0].maps)
    maps[1] = ConvMap(maps[1].features, maps[1].image_size)
    with pytest.raises(ValueError, match="keypoints=None"):
        SiftMask().fit([MultiScaleConvMap(tuple(maps), (1.0, 0.7, 0.5))])


def test_channel_mismatch_between_images_names_the_scale(multi_maps):
    other = MultiScaleConvMap((ConvMap(np.ones((5, 2, 2), np.float32), (2, 2)),) * 2, (1.0, 0.5))
    with pytest.raises(ValueError, match="at scale 1 has 5 channels"):
        NoMask().fit([multi_maps[0], other])


def _hand_combined(per_scale: np.ndarray, how: str, p: float) -> np.ndarray:
    """The combination written out: per-scale unit vectors, summed or generalised-mean pooled, then l2."""
    unit = per_scale.astype(np.float64) / np.maximum(np.linalg.norm(per_scale, axis=1, keepdims=True), 1e-300)
    if how == "sum":
        combined = unit.sum(axis=0)
    else:
        mean = np.mean(np.sign(unit) * np.abs(unit) ** p, axis=0)
        combined = np.sign(mean) * np.abs(mean) ** (1 / p)
    return combined / np.linalg.norm(combined)


POOLINGS = [
    (SPoC, {}, 3.0),
    (SPoC, {"center_prior": True}, 3.0),
    (MAC, {}, 3.0),
    (GeM, {"p": 2.5}, 2.5),
    (CroW, {}, 3.0),
    (RMAC, {"region_whitening": False}, 3.0),
    (RMAC, {"n_components": 4}, 3.0),  # whitened regions: negative entries, the signed generalised mean
]


@pytest.mark.parametrize("how", ["sum", "gem"])
@pytest.mark.parametrize(("pooling", "params", "p"), POOLINGS)
def test_pooling_combines_scales_as_written(pooling, params, p, how, multi_maps):
    multi_maps = multi_maps[:2]
    estimator = pooling(**params, scale_pooling=how).fit(multi_maps)
    out = estimator.transform(multi_maps)
    # Each scale alone, pooled by the same fitted estimator (RMAC's whitening: regions of every scale).
    reference = pooling(**params).fit([m for multi in multi_maps for m in multi.maps])
    if pooling is RMAC and params.get("n_components"):
        np.testing.assert_allclose(reference.region_whitening_.components_, estimator.region_whitening_.components_)
    for multi, row in zip(multi_maps, out):
        per_scale = reference.transform(list(multi.maps))
        np.testing.assert_allclose(row, _hand_combined(per_scale, how, p), rtol=2e-6, atol=2e-7)
        assert row.dtype == np.float32
    if how == "gem" and pooling is not RMAC:  # non-negative: gem and sum differ, both unit norm
        assert not np.allclose(out, pooling(**params).fit(multi_maps).transform(multi_maps))


@pytest.mark.parametrize(("pooling", "params", "p"), POOLINGS)
def test_scale_pooling_leaves_single_scale_maps_bit_identical(pooling, params, p, multi_maps):
    single = [m.maps[0] for m in multi_maps[:2]]
    np.testing.assert_array_equal(
        pooling(**params, scale_pooling="gem").fit(single).transform(single),
        pooling(**params).fit(single).transform(single),
    )


def test_scale_pooling_is_validated(multi_maps):
    with pytest.raises(ValueError, match="scale_pooling"):
        MAC(scale_pooling="max").fit(multi_maps)


def test_pickles_without_new_parameters_load_with_their_defaults():
    maps = [np.random.default_rng(2).random((3, 4, 4), dtype=np.float32)]
    mac = MAC().fit(maps)
    state = mac.__getstate__()
    del state["scale_pooling"]  # a MAC pickled before scale_pooling existed
    old = MAC.__new__(MAC)
    old.__setstate__(state)
    assert old.scale_pooling == "sum"
    np.testing.assert_array_equal(old.transform(maps), mac.transform(maps))


def test_torch_encoder_refuses_multiscale_maps(multi_maps):
    from selconv._ragged import check_conv_maps

    with pytest.raises(ValueError, match=r"scales=\(1.0,\)"):
        check_conv_maps(multi_maps, estimator=MaxMask(), reset=True, multiscale=False)


# ------------------------------------------------------------------------------------------ extractor


def tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(4))


@pytest.fixture
def photos(tmp_path):
    rng = np.random.default_rng(3)
    paths = []
    for i, (width, height) in enumerate([(90, 60), (50, 80)]):
        path = tmp_path / f"photo{i}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_extractor_scales_give_each_scale_as_a_single_scale_run(photos, tmp_path):
    cache = tmp_path / "cache"
    box = (photos[0], (10, 5, 70, 50))
    multi = ConvFeatureExtractor(tiny_net, max_size=64, scales=(1.0, 0.5), n_workers=0, cache_dir=str(cache))
    maps = multi.fit().transform([*photos, box])
    assert all(isinstance(m, MultiScaleConvMap) and m.scales == (1.0, 0.5) for m in maps)
    assert maps[0].source == photos[0] and [m.image_size for m in maps[0].maps] == [(64, 43), (32, 21)]
    assert [m.image_size for m in maps[1].maps] == [(40, 64), (20, 32)]
    assert [m.image_size for m in maps[2].maps] == [(43, 32), (21, 16)]  # the box scaled by the full image's factor
    assert len(list(cache.rglob("*.map"))) == 6  # one entry per (image, scale size)
    for size, scale in [(64, 0), (32, 1)]:
        single = ConvFeatureExtractor(tiny_net, max_size=size, n_workers=0, cache_dir=str(tmp_path / f"c{size}"))
        for got, expected in zip(maps, single.fit().transform([*photos, box])):
            np.testing.assert_array_equal(got.maps[scale].features, expected.features)
            assert got.maps[scale].image_size == expected.image_size
        # The same cache folder: a single-scale run at a scale's size finds that scale's entries.
        reuse = ConvFeatureExtractor(tiny_net, max_size=size, n_workers=0, cache_dir=str(cache)).fit()
        reuse.transform([*photos, box])
        assert len(list(cache.rglob("*.map"))) == 6


def test_extractor_single_scale_keeps_its_signature_and_maps(photos):
    default = ConvFeatureExtractor(tiny_net, max_size=48, n_workers=0).fit()
    explicit = ConvFeatureExtractor(tiny_net, max_size=48, scales=[1.0], n_workers=0).fit()
    assert default._output_signature() == explicit._output_signature()
    assert "\n" not in default._output_signature()
    for a, b in zip(default.transform(photos), explicit.transform(photos)):
        assert type(a) is ConvMap and type(b) is ConvMap
        np.testing.assert_array_equal(a.features, b.features)
    multi = ConvFeatureExtractor(tiny_net, max_size=48, scales=(1.0, 0.5), n_workers=0).fit()
    assert multi._output_signature().split("\n")[0] == default._output_signature()


def test_extractor_multiscale_pickles(photos):
    extractor = ConvFeatureExtractor(tiny_net, max_size=48, scales=(1.0, 0.5), n_workers=0).fit()
    again = pickle.loads(pickle.dumps(extractor))
    for a, b in zip(extractor.transform(photos), again.transform(photos)):
        for x, y in zip(a.maps, b.maps):
            np.testing.assert_array_equal(x.features, y.features)


@pytest.mark.parametrize(
    ("scales", "max_size", "message"),
    [
        ((), 64, "non-empty"),
        ((1.0, 0.0), 64, r"in \(0, 1\]"),
        ((1.5,), 64, r"in \(0, 1\]"),
        (("1",), 64, r"in \(0, 1\]"),
        ((1.0, True), 64, r"in \(0, 1\]"),
        ((1.0, float("nan")), 64, r"in \(0, 1\]"),
        ((1.0, 1.0), 64, "same image size twice"),
        ((1.0, 0.995), 64, "same image size twice"),
        ((1.0, 0.5), None, "max_size"),
        (0.5, 64, "scales"),
    ],
)
def test_bad_scales_are_refused_naming_scales(scales, max_size, message):
    extractor = ConvFeatureExtractor(tiny_net, max_size=max_size, scales=scales)
    with pytest.raises(ValueError, match="scales") as error:
        extractor.fit()
    assert error.match(message)


def test_evaluation_statistics_count_every_scale(multi_maps):
    from sklearn.pipeline import Pipeline

    from selconv.aggregation import SumPooling
    from selconv.evaluation._steps import FittedMethods, _describe

    maps = multi_maps[:2]
    methods = FittedMethods(
        pipelines={"max": Pipeline([("mask", MaxMask()), ("pool", SumPooling())]).fit(maps)}, masks=("max",)
    )
    described, stats = _describe(iter(maps), methods)
    cells = sum(m.features[0].size for multi in maps for m in multi.maps)
    kept = sum(len(s) for s in MaxMask().fit(maps).transform(maps))
    assert stats["kept"]["max"] == kept / cells
    assert stats["width"] == (7 + 4) / 2 and stats["height"] == (5 + 6) / 2  # the first scale's grid
    assert described["max"].shape == (2, 6)


def test_encoder_fingerprint_tells_scales_apart(photos):
    from sklearn.pipeline import Pipeline

    from selconv.index.encoders import encoder_fingerprint

    fingerprints = []
    for scales in [(1.0,), (1.0, 0.5), (1.0, 0.75)]:
        extractor = ConvFeatureExtractor(tiny_net, max_size=48, scales=scales, n_workers=0).fit()
        pooling = MAC().fit(extractor.transform(photos))
        fingerprints.append(encoder_fingerprint(Pipeline([("extract", extractor), ("pool", pooling)])))
    assert len(set(fingerprints)) == 3


def test_multiscale_run_computes_only_the_scales_not_cached(photos, tmp_path, monkeypatch):
    from selconv.extraction import extractor as extractor_module

    cache = str(tmp_path / "cache")
    single = ConvFeatureExtractor(tiny_net, max_size=64, n_workers=0, cache_dir=cache).fit().transform(photos)
    calls = []
    real_load_item = extractor_module.load_item

    def counting_load_item(item, **kwargs):
        calls.append(kwargs["max_sizes"])
        return real_load_item(item, **kwargs)

    monkeypatch.setattr(extractor_module, "load_item", counting_load_item)
    multi = ConvFeatureExtractor(tiny_net, max_size=64, scales=(1.0, 0.5), n_workers=0, cache_dir=cache).fit()
    maps = multi.transform(photos)
    assert calls == [[32], [32]]  # each image decoded once, for the scale its cache lacks
    for got, expected in zip(maps, single):
        np.testing.assert_array_equal(got.maps[0].features, expected.features)
    calls.clear()
    multi.transform(photos)
    assert calls == []


def test_an_image_too_small_at_one_scale_is_skipped_whole(photos):
    from selconv.extraction import ImageLoadError

    extractor = ConvFeatureExtractor(tiny_net, max_size=16, scales=(1.0, 0.25), n_workers=0, on_error="skip").fit()
    # The photos are 4 x 3 px at scale 0.25: no cell after the 4 x 4 pooling; a square image keeps one.
    extraction = extractor.extract([*photos, np.zeros((64, 64, 3), np.uint8)])
    assert extraction.kept == [2] and [s.position for s in extraction.skipped] == [0, 1]
    assert [m.grid_size for m in extraction.maps[0].maps] == [(4, 4), (1, 1)]
    assert "too small" in extraction.skipped[0].reason
    fine = ConvFeatureExtractor(tiny_net, max_size=32, scales=(1.0, 0.25), n_workers=0, on_error="skip").fit()
    assert fine.extract(photos).kept == [0, 1]
    with pytest.raises(ImageLoadError, match="too small"):
        extractor.set_params(on_error="raise").transform(photos)
