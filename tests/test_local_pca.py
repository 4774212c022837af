"""LocalPCA: PCA projection + l2-normalisation of ragged local feature sets, from a bounded sample."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_local_sets
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.decomposition import PCA
from sklearn.pipeline import make_pipeline

import selconv.local_pca
from selconv.local_pca import LocalPCA
from selconv.masks import MaxMask
from selconv.utils.estimator_checks import check_data_free, check_fit_transform

PROPERTY = settings(max_examples=40, deadline=None)


def test_data_free():
    check_data_free(LocalPCA())
    check_data_free(LocalPCA(4, max_samples=10, whiten=True, random_state=3))


def test_fit_transform(local_sets):
    check_fit_transform(LocalPCA(n_components=4, random_state=0), local_sets)


def test_ragged_contract(local_sets):
    out = LocalPCA(n_components=5).fit_transform(local_sets)
    assert isinstance(out, list)
    assert [rows.shape for rows in out] == [(len(s), 5) for s in local_sets]
    assert all(rows.dtype == np.float32 and rows.flags.c_contiguous for rows in out)


@given(
    counts=st.lists(st.integers(0, 12), min_size=1, max_size=6).filter(lambda c: sum(c) >= 3),
    n_features=st.integers(3, 8),
    seed=st.integers(0, 2**16),
)
@PROPERTY
def test_output_norms_are_one_or_zero(counts, n_features, seed):
    sets = make_local_sets(counts, n_features=n_features, random_state=seed)
    pca = LocalPCA(n_components=3).fit(sets)
    # A feature equal to the learned mean projects to 0 and must stay 0 (not NaN) after normalising.
    probe = [np.vstack([sets[0], pca.mean_.astype(np.float32)]), np.zeros((0, n_features), np.float32)]
    out = pca.transform(sets + probe)
    assert [len(rows) for rows in out] == [len(s) for s in sets + probe]
    norms = np.linalg.norm(np.concatenate(out[: len(sets)]), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    np.testing.assert_array_equal(out[-2][-1], 0.0)


def test_row_equal_to_mean_is_zero():
    # Symmetric data with an exactly representable mean: the mean row maps to exactly 0.
    sets = [np.array([[3, 1, 2], [1, 3, 2]], np.float32), np.array([[2, 2, 2], [2, 2, 1], [2, 2, 3]], np.float32)]
    out = LocalPCA(n_components=2).fit_transform(sets)
    np.testing.assert_array_equal(out[1][0], 0.0)
    np.testing.assert_allclose(np.linalg.norm(out[0], axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("whiten", [False, True])
def test_matches_sklearn_pca_up_to_sign(whiten, local_sets):
    pca = LocalPCA(n_components=6, whiten=whiten).fit(local_sets)
    stacked = np.concatenate(local_sets).astype(np.float64)
    reference = PCA(n_components=6, whiten=whiten, svd_solver="full").fit(stacked)
    np.testing.assert_allclose(pca.mean_, reference.mean_, rtol=1e-10)
    np.testing.assert_allclose(pca.explained_variance_, reference.explained_variance_, rtol=1e-8)
    signs = np.sign(np.sum(pca.components_ * reference.components_, axis=1))
    np.testing.assert_allclose(pca.components_, reference.components_ * signs[:, None], atol=1e-8)
    assert pca.n_samples_seen_ == len(stacked)

    expected = reference.transform(stacked) * signs
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(np.concatenate(pca.transform(local_sets)), expected, atol=2e-5)


def test_max_samples_bounds_the_sample_and_is_reproducible():
    sets = make_local_sets((300, 0, 50, 700, 1), n_features=6, random_state=1)
    a = LocalPCA(n_components=3, max_samples=200, random_state=7).fit(sets)
    b = LocalPCA(n_components=3, max_samples=200, random_state=7).fit(sets)
    c = LocalPCA(n_components=3, max_samples=200, random_state=8).fit(sets)
    full = LocalPCA(n_components=3, max_samples=5000, random_state=7).fit(sets)
    assert a.n_samples_seen_ == 200 and full.n_samples_seen_ == 1051
    np.testing.assert_array_equal(a.mean_, b.mean_)
    np.testing.assert_array_equal(a.components_, b.components_)
    for x, y in zip(a.transform(sets), b.transform(sets)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.mean_, c.mean_)
    assert not np.array_equal(a.mean_, full.mean_)
    # With max_samples >= all local features, the sample is everything and random_state is irrelevant.
    np.testing.assert_array_equal(
        full.components_, LocalPCA(n_components=3, max_samples=1051, random_state=0).fit(sets).components_
    )


def test_sample_is_uniform_over_all_local_features():
    sets = [np.zeros((1000, 2), np.float32), np.zeros((0, 2), np.float32), np.zeros((3000, 2), np.float32)]
    rows = LocalPCA(max_samples=400, random_state=0)._sample_rows(sets)
    assert [len(r) for r in rows][1] == 0 and sum(len(r) for r in rows) == 400
    assert 60 <= len(rows[0]) <= 140 and 260 <= len(rows[2]) <= 340
    for r, s in zip(rows, sets):
        assert np.all(np.diff(r) > 0) and (len(r) == 0 or (r[0] >= 0 and r[-1] < len(s)))


def test_blocked_computation_matches_one_block(local_sets, monkeypatch):
    pca = LocalPCA(n_components=4, max_samples=60, random_state=0).fit(local_sets)
    expected = pca.transform(local_sets)
    monkeypatch.setattr(selconv.local_pca, "_BLOCK_ROWS", 10)
    blocked = LocalPCA(n_components=4, max_samples=60, random_state=0).fit(local_sets)
    np.testing.assert_allclose(blocked.mean_, pca.mean_, rtol=1e-12)
    np.testing.assert_allclose(blocked.components_, pca.components_, atol=1e-10)
    # Same numbers up to float32 rounding (BLAS may sum in another order for other block shapes).
    for x, y in zip(pca.transform(local_sets), expected):
        np.testing.assert_allclose(x, y, atol=1e-6)


def test_bad_input_errors(local_sets):
    with pytest.raises(TypeError, match="got a single ndarray of shape"):
        LocalPCA(2).fit(np.concatenate(local_sets))
    with pytest.raises(TypeError, match="got a single ndarray of shape"):
        LocalPCA(2).fit(np.stack([np.ones((3, 4))] * 2))
    with pytest.raises(ValueError, match=r"n_components=20 must be at most .* K=16"):
        LocalPCA(20).fit(local_sets)
    with pytest.raises(ValueError, match="at least n_components=8 local features to fit; got 5"):
        LocalPCA(8).fit([np.ones((2, 16), np.float32), np.zeros((0, 16), np.float32), np.ones((3, 16), np.float32)])
    with pytest.raises(ValueError, match=r"got 4 \(max_samples=4"):
        LocalPCA(8, max_samples=4).fit(local_sets)
    with pytest.raises(ValueError, match="none of the 2 images has a local feature"):
        LocalPCA(2).fit([np.zeros((0, 16), np.float32)] * 2)
    bad = [s.copy() for s in local_sets]
    bad[2][0, 0] = np.nan
    with pytest.raises(ValueError, match="image 2 contains NaN or infinity"):
        LocalPCA(2).fit(bad)
    pca = LocalPCA(2).fit(local_sets)
    with pytest.raises(ValueError, match="fitted with 16"):
        pca.transform([np.ones((3, 8), np.float32)])
    bad[2][0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinity"):
        pca.transform(bad)
    with pytest.raises(ValueError, match="'n_components' parameter of LocalPCA"):
        LocalPCA(0).fit(local_sets)


def test_pipeline_mask_then_local_pca(conv_maps):
    maps = list(conv_maps) + [np.zeros((32, 3, 4), np.float32)]  # MAX selects nothing here
    pipeline = make_pipeline(MaxMask(), LocalPCA(n_components=8, random_state=0))
    out = pipeline.fit_transform(maps)
    assert [rows.shape for rows in out] == [(len(rows), 8) for rows in MaxMask().fit_transform(maps)]
    assert len(out[-1]) == 0 and all(len(rows) > 0 for rows in out[:-1])


# ------------------------------------------------------------------------------------ on a torch device


@pytest.mark.parametrize("params", [{}, {"whiten": True}, {"max_samples": 300, "random_state": 0}], ids=repr)
def test_torch_device_fits_and_transforms_as_numpy(params, monkeypatch):
    """Mean and covariance accumulated in float64 on the device (several blocks), the transform's torch kernel."""
    pytest.importorskip("torch")
    sets = make_local_sets(counts=(300, 0, 250, 1, 120), n_features=12, random_state=0, nonnegative=False)
    sets = [s + 5.0 for s in sets]  # far from 0: the shifted accumulation matters
    reference = LocalPCA(4, **params).fit(sets)
    monkeypatch.setattr(selconv.local_pca, "_DEVICE_BLOCK_ROWS", 100)
    ours = LocalPCA(4, device="torch", **params).fit(sets)
    assert ours.n_samples_seen_ == reference.n_samples_seen_
    np.testing.assert_allclose(ours.mean_, reference.mean_, rtol=1e-13)
    np.testing.assert_allclose(ours.components_, reference.components_, atol=1e-10)
    np.testing.assert_allclose(ours.explained_variance_, reference.explained_variance_, rtol=1e-10)
    for rows, expected in zip(ours.transform(sets), reference.transform(sets)):
        assert rows.dtype == np.float32 and rows.shape == expected.shape
        np.testing.assert_allclose(rows, expected, atol=1e-6)


def test_device_is_validated_and_old_pickles_load(local_sets):
    check_data_free(LocalPCA(device="torch"))
    with pytest.raises(ValueError, match="device must be 'cpu' .* got 'gpu'"):
        LocalPCA(2, device="gpu").fit(local_sets)
    with pytest.raises(ValueError, match="'device' parameter of LocalPCA"):
        LocalPCA(2, device=None).fit(local_sets)
    pca = LocalPCA(2, random_state=0).fit(local_sets)
    state = pca.__getstate__()
    del state["device"]  # a LocalPCA pickled before the parameter existed
    old = LocalPCA.__new__(LocalPCA)
    old.__setstate__(state)
    assert old.device == "cpu"
    for rows, expected in zip(old.transform(local_sets), pca.transform(local_sets)):
        np.testing.assert_array_equal(rows, expected)
