"""Tests for the baselines: selconv.pooling (SPoC, MAC, R-MAC, CroW, GeM), PCAWhitening and make_baseline."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_conv_maps
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.pipeline import Pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from selconv.baselines import make_baseline
from selconv.conv_map import ConvMap
from selconv.pooling import MAC, RMAC, CroW, GeM, SPoC, rmac_regions
from selconv.postprocessing import PCAWhitening
from selconv.utils.estimator_checks import check_data_free, check_fit_transform

POOLINGS = [SPoC(), SPoC(center_prior=True), MAC(), RMAC(), RMAC(region_whitening=False), CroW(), GeM(), GeM(p=1.5)]


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


@pytest.fixture
def maps():
    return make_conv_maps()


@pytest.mark.parametrize("pooling", POOLINGS, ids=repr)
def test_pooling_estimator_checks(pooling, maps):
    check_data_free(pooling)
    check_fit_transform(pooling, maps)


@pytest.mark.parametrize("pooling", POOLINGS, ids=repr)
def test_pooling_output_contract(pooling, maps):
    maps = maps + [np.zeros((32, 3, 5), np.float32)]  # an all-zero map
    out = pooling.fit(maps).transform(maps)
    assert out.shape == (len(maps), 32) and out.dtype == np.float32
    norms = np.linalg.norm(out, axis=1)
    np.testing.assert_allclose(norms[:-1], 1.0, rtol=1e-5)
    assert norms[-1] == 0.0 and np.isfinite(out).all()
    prefix = type(pooling).__name__.lower()
    assert list(pooling.get_feature_names_out()[:2]) == [f"{prefix}0", f"{prefix}1"]
    # ConvMap and plain arrays are the same input.
    wrapped = [ConvMap(m, image_size=(10 * m.shape[2], 10 * m.shape[1])) for m in maps]
    np.testing.assert_array_equal(pooling.transform(wrapped), out)


def test_mac_is_channel_max_and_spoc_channel_sum(maps):
    expected_mac = np.stack([_unit(m.max(axis=(1, 2))) for m in maps])
    expected_spoc = np.stack([_unit(m.sum(axis=(1, 2), dtype=np.float64)) for m in maps])
    np.testing.assert_allclose(MAC().fit(maps).transform(maps), expected_mac, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(SPoC().fit(maps).transform(maps), expected_spoc, rtol=1e-5, atol=1e-7)


def test_spoc_center_prior_by_hand():
    # 3 x 3 grid: sigma = 3/6 = 0.5; weights exp(-r^2 / 0.5): centre 1, edge e^-2, corner e^-4.
    features = np.zeros((2, 3, 3), np.float32)
    features[0, 1, 1] = 1.0  # centre
    features[1, 0, 0] = 1.0  # corner
    out = SPoC(center_prior=True).fit([features]).transform([features])[0]
    np.testing.assert_allclose(out, _unit([1.0, np.exp(-4.0)]), rtol=1e-6)


def test_gem_limits(maps):
    spoc = SPoC().fit(maps).transform(maps)
    np.testing.assert_allclose(GeM(p=1.0).fit(maps).transform(maps), spoc, rtol=1e-5, atol=1e-6)
    mac = MAC().fit(maps).transform(maps)
    far = np.abs(GeM(p=500.0).fit(maps).transform(maps) - mac).max()
    near = np.abs(GeM(p=3.0).fit(maps).transform(maps) - mac).max()
    assert far < 0.02 < near


def test_gem_by_hand():
    features = np.array([[[1.0, 2.0], [0.0, 3.0]], [[4.0, 0.0], [0.0, 0.0]]], np.float32)
    pooled = [np.mean(np.array([1, 2, 0, 3.0]) ** 3) ** (1 / 3), np.mean(np.array([4, 0, 0, 0.0]) ** 3) ** (1 / 3)]
    np.testing.assert_allclose(GeM().fit([features]).transform([features])[0], _unit(pooled), rtol=1e-6)


def test_crow_weights_by_hand():
    features = np.zeros((3, 2, 2), np.float32)
    features[0] = [[1.0, 1.0], [1.0, 1.0]]  # dense: 4/4 non-zero
    features[1] = [[2.0, 0.0], [0.0, 0.0]]  # sparse: 1/4 non-zero
    crow = CroW().fit([features])
    # Channel sum S' = [[3, 1], [1, 1]], ||S'||_2 = sqrt(12); S = (S' / sqrt(12))^(1/2).
    spatial = np.sqrt(np.array([[3.0, 1.0], [1.0, 1.0]]) / np.sqrt(12.0))
    np.testing.assert_allclose(crow.spatial_weights(features), spatial, rtol=1e-6)
    # Q = [1, 0.25, 0]; Omega = log(1.25 / Q), 0 for the all-zero channel.
    channel = np.array([np.log(1.25), np.log(5.0), 0.0])
    np.testing.assert_allclose(crow.channel_weights(features), channel, rtol=1e-6)
    expected = _unit([spatial.sum() * channel[0], 2.0 * spatial[0, 0] * channel[1], 0.0])
    np.testing.assert_allclose(crow.transform([features])[0], expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("height", "width", "count"),
    [(24, 32, 20), (32, 24, 20), (48, 64, 20), (32, 32, 14), (30, 40, 20)],
)
def test_rmac_region_counts_match_published(height, width, count):
    # Tolias et al.: about 20 regions at L = 3 for a 4:3 image; 1 + 4 + 9 on a square map.
    assert len(rmac_regions(height, width)) == count


def test_rmac_regions_by_hand():
    regions = rmac_regions(24, 32)
    # Level 1: two 24 x 24 squares at both ends of the long side.
    np.testing.assert_array_equal(regions[:2], [[0, 0, 24, 24], [8, 0, 24, 24]])
    # Level 3: side 12, left columns floor(5 + i * 20/3) - 5 = 0, 6, 13, 20; rows 0, 6, 12.
    level3 = regions[regions[:, 2] == 12]
    assert sorted(set(level3[:, 0])) == [0, 6, 13, 20] and sorted(set(level3[:, 1])) == [0, 6, 12]
    assert len(rmac_regions(24, 32, levels=1)) == 2


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 50), st.integers(1, 50), st.integers(1, 4), st.floats(0.0, 0.9))
def test_rmac_regions_inside_map(height, width, levels, overlap):
    regions = rmac_regions(height, width, levels=levels, overlap=overlap)
    assert len(regions) >= 1
    x, y, w, h = regions.T
    assert (x >= 0).all() and (y >= 0).all() and (w >= 1).all() and (w == h).all()
    assert (x + w <= width).all() and (y + h <= height).all()


def test_rmac_without_whitening_sums_normalised_region_max(maps):
    out = RMAC(region_whitening=False).fit(maps).transform(maps)
    for features, row in zip(maps, out):
        total = np.zeros(features.shape[0])
        for x, y, w, h in rmac_regions(*features.shape[1:]):
            region = features[:, y : y + h, x : x + w].max(axis=(1, 2)).astype(np.float64)
            if region.any():
                total += region / np.linalg.norm(region)
        np.testing.assert_allclose(row, _unit(total), rtol=1e-5, atol=1e-6)


def test_rmac_regional_whitening_is_learned(maps):
    rmac = RMAC(shrinkage=0.5).fit(maps)
    assert isinstance(rmac.region_whitening_, PCAWhitening)
    assert rmac.n_regions_seen_ > len(maps)
    plain = RMAC(region_whitening=False).fit(maps).transform(maps)
    whitened = rmac.transform(maps)
    assert not np.allclose(plain, whitened, atol=1e-3)
    reduced = RMAC(n_components=8).fit(maps)
    assert reduced.transform(maps).shape == (len(maps), 8)


def _gaussian(n_samples, n_features, random_state=0):
    rng = np.random.default_rng(random_state)
    scales = np.linspace(3.0, 0.1, n_features)
    return rng.standard_normal((n_samples, n_features)) * scales + 5.0


def test_pca_whitening_definition():
    X = _gaussian(400, 6)
    white = PCAWhitening(shrinkage=0.0).fit(X)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    centred = Xn - Xn.mean(axis=0)
    eigenvalues = np.linalg.eigvalsh(centred.T @ centred / len(X))[::-1]
    np.testing.assert_allclose(white.explained_variance_, eigenvalues, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(white.scale_, eigenvalues**-0.5, rtol=1e-6)
    # Without the final l2, the training vectors would have identity covariance.
    z = (centred @ white.components_.T) * white.scale_
    np.testing.assert_allclose(np.cov(z.T, bias=True), np.eye(6), atol=1e-8)
    out = white.transform(X)
    np.testing.assert_allclose(out, z / np.linalg.norm(z, axis=1, keepdims=True), atol=1e-10)

    shrunk = PCAWhitening(shrinkage=2.0).fit(X)
    np.testing.assert_allclose(shrunk.scale_, (eigenvalues + 2.0 * eigenvalues.mean()) ** -0.5, rtol=1e-6)
    reduced = PCAWhitening(3, shrinkage=0.0).fit(X)
    assert reduced.transform(X).shape == (400, 3)
    np.testing.assert_allclose(reduced.components_, white.components_[:3])


def test_pca_whitening_ledoit_wolf_is_chosen_on_training_data():
    small = PCAWhitening().fit(_gaussian(30, 20))
    large = PCAWhitening().fit(_gaussian(3000, 20))
    assert small.shrinkage_ > large.shrinkage_ >= 0
    # With n < D and shrinkage every direction keeps a finite scale.
    assert np.isfinite(small.scale_).all() and small.n_components_ == 20


def test_pca_whitening_warns_without_shrinkage_on_few_samples():
    with pytest.warns(UserWarning, match="no shrinkage"):
        PCAWhitening(shrinkage=0.0).fit(_gaussian(10, 20))


def test_pca_whitening_bad_input():
    with pytest.raises(ValueError, match="n_components=5"):
        PCAWhitening(5).fit(_gaussian(10, 4))
    with pytest.raises(ValueError):
        PCAWhitening(shrinkage=-1.0).fit(_gaussian(10, 4))
    with pytest.raises(ValueError):
        PCAWhitening(shrinkage="oracle").fit(_gaussian(10, 4))


@parametrize_with_checks([PCAWhitening(), PCAWhitening(1, shrinkage=0.5), PCAWhitening(shrinkage=0.0)])
def test_pca_whitening_sklearn_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("name", ["spoc", "mac", "rmac", "crow", "gem"])
def test_make_baseline(name, maps):
    train, test = maps, make_conv_maps(random_state=1)
    pipeline = make_baseline(name, n_components=8, shrinkage=0.1)
    assert isinstance(pipeline, Pipeline) and [n for n, _ in pipeline.steps] == ["pooling", "whitening"]
    out = pipeline.fit(train).transform(test)
    assert out.shape == (len(test), 8)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    plain = make_baseline(name, whitening=False)
    assert plain.steps[-1][1] == "passthrough"
    assert plain.fit(train).transform(test).shape == (len(test), 32)


def test_make_baseline_forwards_pooling_params():
    assert make_baseline("gem", p=4.0)[0].p == 4.0
    assert make_baseline("rmac", whitening=False)[0].region_whitening is False
    with pytest.raises(ValueError, match="unknown baseline name 'vlad'"):
        make_baseline("vlad")


def test_bad_conv_map_input(maps):
    with pytest.raises(TypeError, match="list"):
        MAC().fit(np.zeros((4, 3, 3), np.float32))
    with pytest.raises(ValueError, match="conv map 1"):
        SPoC().fit([maps[0], np.zeros((32, 3), np.float32)])
    fitted = MAC().fit(maps)
    with pytest.raises(ValueError, match="32"):
        fitted.transform([np.zeros((16, 3, 3), np.float32)])
    negative = [-np.ones((32, 2, 2), np.float32)]
    for pooling in (GeM(), CroW()):
        with pytest.raises(ValueError, match="negative activations"):
            pooling.fit(negative)
    with pytest.raises(ValueError):
        GeM(p=0.0).fit(maps)
    with pytest.raises(ValueError, match="at least 2"):
        RMAC().fit([np.zeros((32, 4, 4), np.float32)])
