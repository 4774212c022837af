"""Masks select exactly what docs/how-it-works.md (section 2, "Masks") defines, on hand-built and random conv maps."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from selconv.conv_map import ConvMap, MultiScaleConvMap
from selconv.masks import MaxMask, NoMask, SiftMask, SumMask
from selconv.utils.estimator_checks import check_data_free, check_fit_transform

MASKS = [NoMask(), MaxMask(), SumMask(), SiftMask(), SiftMask(0, fallback="empty"), MaxMask(device="torch")]
DEVICE_MASKS = [NoMask, MaxMask, SumMask]
PROPERTY = settings(max_examples=60, deadline=None)

# Small non-negative integer activations: many zeros and ties, like ReLU output, and exact sums.
conv_arrays = st.tuples(st.integers(1, 5), st.integers(1, 6), st.integers(1, 6)).flatmap(
    lambda shape: arrays(np.float32, shape, elements=st.integers(0, 3).map(float))
)


def with_keypoints(maps, random_state=0):
    """ConvMaps over a 10x-larger image with random keypoints; the third image has none."""
    rng = np.random.default_rng(random_state)
    out = []
    for i, features in enumerate(maps):
        height, width = features.shape[1:]
        n = 0 if i == 2 else 1 + i
        keypoints = rng.uniform(0, [10 * width - 1, 10 * height - 1], size=(n, 2))
        out.append(ConvMap(features, image_size=(10 * width, 10 * height), keypoints=keypoints, source=f"img{i}.jpg"))
    return out


def assert_rows_are_selected_features(features, selected, rows):
    """Output rows are the selected cells' K-vectors, in row-major (y, x) order."""
    ys, xs = np.nonzero(selected)  # row-major order
    np.testing.assert_array_equal(rows, features[:, ys, xs].T.astype(np.float32))
    assert rows.dtype == np.float32 and rows.flags.c_contiguous


@pytest.mark.parametrize("mask", MASKS, ids=repr)
def test_data_free(mask):
    check_data_free(mask)


@pytest.mark.parametrize("mask", [NoMask(), MaxMask(), SumMask(), SumMask(device="torch")], ids=repr)
def test_fit_transform_plain_arrays(mask, conv_maps):
    check_fit_transform(mask, conv_maps)


@pytest.mark.parametrize("mask", [SiftMask(), SiftMask(0, fallback="empty")], ids=repr)
def test_fit_transform_sift(mask, conv_maps):
    check_fit_transform(mask, with_keypoints(conv_maps))


@given(features=conv_arrays)
@PROPERTY
def test_max_mask_is_union_of_channel_argmax(features):
    mask = MaxMask().fit([features])
    selected = mask.get_selected_locations([features])[0]
    expected = np.zeros(features.shape[1:], dtype=bool)
    for channel in features:
        if channel.max() > 0:  # all-zero channels (non-negative maps) are skipped
            positions = list(zip(*np.nonzero(channel == channel.max())))
            expected[positions[0]] = True  # first maximum in row-major order
    np.testing.assert_array_equal(selected, expected)
    assert selected.sum() <= features.shape[0]
    assert_rows_are_selected_features(features, selected, mask.transform([features])[0])


@given(features=conv_arrays)
@PROPERTY
def test_sum_mask_keeps_cells_at_or_above_median(features):
    mask = SumMask().fit([features])
    selected = mask.get_selected_locations([features])[0]
    sums = sorted(float(v) for v in features.sum(axis=0).ravel())
    n = len(sums)
    median = sums[n // 2] if n % 2 else (sums[n // 2 - 1] + sums[n // 2]) / 2
    np.testing.assert_array_equal(selected, features.sum(axis=0) >= median)
    assert selected.sum() >= math.ceil(n / 2)
    assert_rows_are_selected_features(features, selected, mask.transform([features])[0])


def expected_sift_cells(keypoints, image_size, grid_size, radius):
    """The paper's 1-based formula with MATLAB rounding, written out cell by cell."""
    (image_width, image_height), (width, height) = image_size, grid_size
    expected = np.zeros((height, width), dtype=bool)
    for x, y in keypoints:
        column = min(max(math.floor((float(x) + 1) * width / image_width + 0.5), 1), width) - 1
        row = min(max(math.floor((float(y) + 1) * height / image_height + 0.5), 1), height) - 1
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                if 0 <= row + dy < height and 0 <= column + dx < width:
                    expected[row + dy, column + dx] = True
    return expected


@given(
    grid=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    stride=st.sampled_from([1, 2, 4, 32]),
    radius=st.integers(0, 2),
    data=st.data(),
)
@PROPERTY
def test_sift_mask_maps_keypoints_with_radius(grid, stride, radius, data):
    height, width = grid
    image_size = (width * stride, height * stride)
    n = data.draw(st.integers(1, 5))
    # Half-pixel keypoints hit the rounding halves often; the last pixel may be exceeded slightly.
    coordinate = st.integers(0, 2 * max(image_size) + 1).map(lambda v: v / 2)
    keypoints = np.array(data.draw(st.lists(st.tuples(coordinate, coordinate), min_size=n, max_size=n)))
    features = np.arange(3 * height * width, dtype=np.float32).reshape(3, height, width)
    conv_map = ConvMap(features, image_size=image_size, keypoints=keypoints)
    mask = SiftMask(radius).fit([conv_map])
    selected = mask.get_selected_locations([conv_map])[0]
    np.testing.assert_array_equal(selected, expected_sift_cells(keypoints, image_size, (width, height), radius))
    assert_rows_are_selected_features(features, selected, mask.transform([conv_map])[0])


def test_sift_mask_hand_built_rounding_and_borders():
    features = np.ones((2, 3, 4), dtype=np.float32)  # H=3, W=4 over an 8x6 image: 2 pixels per cell
    # x=4 -> 1-based (4+1)*4/8 = 2.5: MATLAB rounds to 3 (0-based column 2); numpy's round would give 2.
    conv_map = ConvMap(features, image_size=(8, 6), keypoints=[[4.0, 0.0]])
    selected = SiftMask(0).get_selected_locations([conv_map])[0]
    np.testing.assert_array_equal(np.argwhere(selected), [[0, 2]])
    # Top-left corner pixel and a keypoint beyond the bottom-right corner, with a 3x3 neighbourhood:
    conv_map = ConvMap(features, image_size=(8, 6), keypoints=[[0.0, 0.0], [50.0, 50.0]])
    selected = SiftMask(1).get_selected_locations([conv_map])[0]
    expected = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(selected, expected)


def test_sift_mask_containing_cell_rule():
    features = np.ones((2, 3, 4), dtype=np.float32)  # H=3, W=4 over an 8x6 image: 2 pixels per cell
    # 0-based pixel centres: cell 0 spans x in [-0.5, 1.5), cell 1 [1.5, 3.5), cell 2 [3.5, 5.5), cell 3 the
    # rest; a keypoint beyond the image is clipped to the last cell.
    keypoints = [[4.0, 0.0], [3.4, 2.0], [7.0, 5.0], [50.0, 50.0]]
    conv_map = ConvMap(features, image_size=(8, 6), keypoints=keypoints)
    selected = SiftMask(0, cell_rule="containing").get_selected_locations([conv_map])[0]
    np.testing.assert_array_equal(np.argwhere(selected), [[0, 2], [1, 1], [2, 3]])
    # x = 3.5 lies in cell 2; the authors' rule, round((3.5 + 1) * 4 / 8) = round(2.25) = 2 (1-based), says 1.
    conv_map = ConvMap(features, image_size=(8, 6), keypoints=[[3.5, 0.0]])
    assert np.argwhere(SiftMask(0, cell_rule="containing").get_selected_locations([conv_map])[0]).tolist() == [[0, 2]]
    assert np.argwhere(SiftMask(0).get_selected_locations([conv_map])[0]).tolist() == [[0, 1]]


@pytest.mark.parametrize("fallback, n_rows", [("all", 12), ("empty", 0)])
def test_sift_mask_fallback_without_keypoints(fallback, n_rows):
    features = np.ones((5, 3, 4), dtype=np.float32)
    conv_map = ConvMap(features, image_size=(64, 48), keypoints=np.zeros((0, 2)))
    mask = SiftMask(fallback=fallback).fit([conv_map])
    (rows,) = mask.transform([conv_map])
    assert rows.shape == (n_rows, 5)
    assert mask.selected_fraction([conv_map])[0] == n_rows / 12


def test_sift_mask_requires_keypoints():
    features = np.ones((2, 3, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"conv map 1 \(b.jpg\) has keypoints=None.*keypoints='sift'"):
        SiftMask().fit([ConvMap(features, (30, 30), keypoints=[[1, 1]]), ConvMap(features, (30, 30), source="b.jpg")])
    with pytest.raises(ValueError, match="plain arrays never have them"):
        SiftMask().fit([features])


def test_ragged_output_with_unequal_counts_and_an_empty_image(conv_maps):
    maps = list(conv_maps) + [np.zeros((32, 3, 5), dtype=np.float32)]  # all zero: MAX selects nothing
    for mask in (NoMask(), MaxMask(), SumMask()):
        out = mask.fit_transform(maps)
        assert isinstance(out, list) and len(out) == len(maps)
        for features, selected, rows in zip(maps, mask.get_selected_locations(maps), out):
            assert_rows_are_selected_features(features, selected, rows)
    counts = [len(rows) for rows in MaxMask().fit_transform(maps)]
    assert counts[-1] == 0 and len(set(counts)) > 2
    assert [len(rows) for rows in NoMask().fit_transform(maps)] == [m.shape[1] * m.shape[2] for m in maps]


def test_float16_maps_give_float32_rows(conv_maps):
    maps = [m.astype(np.float16) for m in conv_maps]
    for mask in (NoMask(), MaxMask(), SumMask()):
        out = mask.fit_transform(maps)
        assert all(rows.dtype == np.float32 for rows in out)
        np.testing.assert_array_equal(out[0], mask.transform([maps[0].astype(np.float32)])[0])


def test_selected_fraction_matches_locations(conv_maps):
    fractions = SumMask().selected_fraction(conv_maps)
    assert fractions.shape == (len(conv_maps),)
    np.testing.assert_allclose(fractions, [s.mean() for s in SumMask().get_selected_locations(conv_maps)])
    assert np.all(fractions >= 0.5)
    np.testing.assert_array_equal(NoMask().selected_fraction(conv_maps), 1.0)
    assert np.all(MaxMask().selected_fraction(conv_maps) < 1.0)


def test_bad_input_errors(conv_maps):
    mask = MaxMask()
    with pytest.raises(TypeError, match="got a single ndarray of shape"):
        mask.fit(conv_maps[0])
    with pytest.raises(TypeError, match="got a single ndarray of shape"):
        mask.fit(conv_maps[0][0])
    with pytest.raises(ValueError, match=r"conv map 0 must have shape \(n_channels, height, width\)"):
        mask.fit([conv_maps[0][0]])
    mask.fit(conv_maps)
    with pytest.raises(ValueError, match="fitted with 32"):
        mask.transform([np.ones((8, 3, 3), dtype=np.float32)])
    bad = conv_maps[1].copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="conv map 1 contains NaN or infinity"):
        mask.transform([conv_maps[0], bad])
    bad[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinity"):
        SumMask().fit([bad])
    with pytest.raises(ValueError, match="empty list"):
        NoMask().fit([])


@pytest.mark.parametrize("params", [{"radius": -1}, {"radius": 1.5}, {"fallback": "none"}])
def test_sift_mask_parameter_validation(params, conv_maps):
    with pytest.raises(ValueError, match=f"'{next(iter(params))}' parameter of SiftMask"):
        SiftMask(**params).fit(with_keypoints(conv_maps))
    with pytest.raises(ValueError, match="parameter of SiftMask"):
        SiftMask(**params).get_selected_locations(with_keypoints(conv_maps))


# ------------------------------------------------------------------------------------ on a torch device


def assert_same_sets(ours, reference):
    assert len(ours) == len(reference)
    for rows, expected in zip(ours, reference):
        assert rows.dtype == np.float32 and rows.flags.c_contiguous
        np.testing.assert_array_equal(rows, expected)  # same shape, same values


@pytest.mark.parametrize("cls", DEVICE_MASKS)
def test_torch_device_selects_what_numpy_selects(cls, conv_maps):
    """Unequal grids, an all-zero map, a grid without cells, float16 and float64 maps, multi-scale maps."""
    pytest.importorskip("torch")
    maps = list(conv_maps) + [np.zeros((32, 3, 5), np.float32), np.zeros((32, 0, 4), np.float32)]
    maps += [conv_maps[0].astype(np.float16), conv_maps[1].astype(np.float64)]
    multi = [
        MultiScaleConvMap((ConvMap(a, (40, 30)), ConvMap(b, (20, 15))), (1.0, 0.5)) for a, b in zip(maps, maps[3:])
    ]
    for X in (maps, multi, maps + multi):
        assert_same_sets(cls(device="torch").fit_transform(X), cls().fit_transform(X))


@PROPERTY
@given(features=st.lists(conv_arrays, min_size=1, max_size=4))
def test_torch_device_masks_are_identical_with_ties(features):
    """Small integer activations: many ties (first cell wins) and all-zero channels."""
    pytest.importorskip("torch")
    maps = [f[: features[0].shape[0]] for f in features if f.shape[0] >= features[0].shape[0]]
    for cls in DEVICE_MASKS:
        assert_same_sets(cls(device="torch").fit_transform(maps), cls().fit_transform(maps))


def test_maps_go_to_the_device_in_batches_of_one_grid(conv_maps):
    pytest.importorskip("torch")
    from selconv._torch_kernels import select_on_device

    maps = [m.copy() for m in conv_maps for _ in range(3)]
    maps[0].flags.writeable = False  # e.g. memory-mapped from a cache: copied without a warning
    expected = MaxMask().fit_transform(maps)
    for batch_bytes in (1, 2 * conv_maps[0].nbytes):  # one map per batch, two
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert_same_sets(select_on_device(maps, "max", "cpu", batch_bytes=batch_bytes), expected)


def test_device_is_validated_and_old_pickles_load(conv_maps):
    with pytest.raises(ValueError, match="device must be 'cpu' .* got 'gpu'"):
        MaxMask(device="gpu").fit(conv_maps)
    with pytest.raises(ValueError, match="'device' parameter of SumMask"):
        SumMask(device=0).fit(conv_maps)
    state = MaxMask().fit(conv_maps).__getstate__()
    del state["device"]  # a mask pickled before the parameter existed
    old = MaxMask.__new__(MaxMask)
    old.__setstate__(state)
    assert old.device == "cpu" and "device=" not in repr(old)
    assert_same_sets(old.transform(conv_maps), MaxMask().fit_transform(conv_maps))
