"""RotationNormalizer and PowerNormalizer (docs/how-it-works.md, sections 6-7): sklearn checks and definitions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import parametrize_with_checks

from selconv.postprocessing import PowerNormalizer, RotationNormalizer


# RotationNormalizer's default drops 128 coordinates, more than the few columns of scikit-learn's
# check data, so the checks run it with n_dropped=0 (the dropping itself is tested below).
@parametrize_with_checks(
    [
        RotationNormalizer(n_dropped=0),
        RotationNormalizer(n_dropped=0, whiten=True, normalize_input=False),
        PowerNormalizer(),
        PowerNormalizer(alpha=1.0),
    ]
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def _training(n_samples=200, n_features=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n_samples, n_features)) * np.linspace(3, 0.5, n_features) + 2.0


def test_rotation_is_a_complete_orthonormal_basis_by_decreasing_variance():
    X = _training()
    rn = RotationNormalizer(n_dropped=0, normalize_input=False).fit(X)
    np.testing.assert_allclose(rn.components_ @ rn.components_.T, np.eye(12), atol=1e-10)
    assert np.all(np.diff(rn.explained_variance_) <= 0)
    v = rn.transform(X)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), np.linalg.norm(X - X.mean(0), axis=1), rtol=1e-10)
    np.testing.assert_allclose(np.cov(v.T, bias=True), np.diag(rn.explained_variance_), atol=1e-10)


def test_drops_the_leading_coordinates_and_names_the_rest():
    X = _training()
    full = RotationNormalizer(n_dropped=0).fit(X)
    dropped = RotationNormalizer(n_dropped=5).fit(X)
    np.testing.assert_allclose(dropped.transform(X), full.transform(X)[:, 5:], atol=1e-12)
    assert dropped.transform(X).shape == (200, 7)
    assert list(dropped.get_feature_names_out()) == [f"rotationnormalizer{i}" for i in range(7)]


def test_input_is_l2_normalised_first():
    X = _training()
    scaled = X * np.random.default_rng(1).uniform(0.1, 10, size=(200, 1))
    rn = RotationNormalizer(n_dropped=2).fit(X)
    np.testing.assert_allclose(rn.transform(X), rn.transform(scaled), atol=1e-12)
    raw = RotationNormalizer(n_dropped=2, normalize_input=False).fit(X)
    assert not np.allclose(raw.transform(X), raw.transform(scaled))


def test_whitening_gives_identity_covariance():
    X = _training()
    v = RotationNormalizer(n_dropped=3, whiten=True).fit(X).transform(X)
    np.testing.assert_allclose(np.cov(v.T, bias=True), np.eye(9), atol=1e-8)


def test_fewer_samples_than_features_is_a_clear_error_by_default():
    X = _training(n_samples=5, n_features=12)
    with pytest.raises(ValueError, match="n_samples = 5 .* determine only 4 directions.*undetermined='drop'"):
        RotationNormalizer(n_dropped=2).fit(X)


def test_undetermined_drop_keeps_the_determined_directions_only():
    X = _training(n_samples=5, n_features=12)
    rn = RotationNormalizer(n_dropped=2, undetermined="drop").fit(X)
    assert rn.n_determined_ == 4
    np.testing.assert_allclose(rn.components_ @ rn.components_.T, np.eye(4), atol=1e-10)
    assert rn.transform(X).shape == (5, 2)
    # The kept directions span the centred training vectors: rotating loses none of their energy.
    centred = rn._prepare(X) - rn.mean_
    np.testing.assert_allclose(np.linalg.norm(centred @ rn.components_.T, axis=1), np.linalg.norm(centred, axis=1))
    with pytest.raises(ValueError, match="n_dropped=4 must be below the number of kept directions 4"):
        RotationNormalizer(n_dropped=4, undetermined="drop").fit(X)


def test_duplicated_training_vectors_do_not_determine_more_directions():
    X = np.repeat(_training(n_samples=6, n_features=12), 5, axis=0)
    with pytest.raises(ValueError, match="determine only 5 directions"):
        RotationNormalizer(n_dropped=0).fit(X)


def test_float32_is_preserved_and_fit_is_reproducible():
    X = _training().astype(np.float32)
    a = RotationNormalizer(n_dropped=2).fit(X)
    b = RotationNormalizer(n_dropped=2).fit(X.copy())
    assert a.transform(X).dtype == np.float32
    np.testing.assert_array_equal(a.components_, b.components_)
    np.testing.assert_allclose(a.transform(X), a.transform(X.astype(np.float64)), atol=1e-5)


def test_rotation_errors():
    with pytest.raises(ValueError, match="n_dropped=12 must be below the number of kept directions 12"):
        RotationNormalizer(n_dropped=12).fit(_training())
    with pytest.raises(InvalidParameterError):
        RotationNormalizer(n_dropped=-1).fit(_training())
    rn = RotationNormalizer(n_dropped=2).fit(_training())
    with pytest.raises(ValueError, match="12 features"):
        rn.transform(np.ones((3, 11)))


finite_rows = arrays(
    np.float64,
    st.tuples(st.integers(1, 8), st.integers(1, 10)),
    # |x|^alpha of a tiny x underflows to an honest 0 for alpha > 1; keep such values out.
    elements=st.floats(-1e3, 1e3, allow_nan=False).map(lambda v: 0.0 if abs(v) < 1e-30 else v),
)


@settings(max_examples=40, deadline=None)
@given(X=finite_rows, alpha=st.sampled_from([0.2, 0.5, 1.0, 2.0]))
def test_power_normalizer_norms_are_one_or_zero_and_signs_kept(X, alpha):
    X[0] = 0.0  # always one zero row
    out = PowerNormalizer(alpha=alpha).fit(X).transform(X)
    norms = np.linalg.norm(out, axis=1)
    nonzero = np.abs(X).max(axis=1) > 0
    np.testing.assert_allclose(norms[nonzero], 1.0, rtol=1e-9)
    np.testing.assert_array_equal(out[~nonzero], 0.0)
    assert np.all(np.sign(out) == np.sign(X))


def test_power_normalizer_definition():
    X = np.array([[4.0, -9.0, 0.0, 1.0]])
    expected = np.array([2.0, -3.0, 0.0, 1.0]) / np.sqrt(14.0)
    np.testing.assert_allclose(PowerNormalizer().fit_transform(X)[0], expected)
    np.testing.assert_allclose(PowerNormalizer(alpha=1).fit_transform(X)[0], X[0] / np.linalg.norm(X))
    assert PowerNormalizer().fit_transform(X.astype(np.float32)).dtype == np.float32
    # Rows whose sum of squares under- or overflows are still normalised, not zeroed or NaN.
    extreme = np.array([[3e-200, -4e-200], [3e200, 4e200], [0.0, 0.0]])
    np.testing.assert_allclose(PowerNormalizer(alpha=1).fit_transform(extreme), [[0.6, -0.8], [0.6, 0.8], [0, 0]])
    pn = PowerNormalizer().fit(X)
    np.testing.assert_array_equal(pn.get_feature_names_out(["a", "b", "c", "d"]), ["a", "b", "c", "d"])
    with pytest.raises(InvalidParameterError):
        PowerNormalizer(alpha=0).fit(X)


def test_undetermined_center_only_centres_and_keeps_every_dimension():
    X = _training(n_samples=5, n_features=12)
    rn = RotationNormalizer(n_dropped=0, undetermined="center").fit(X)
    assert (rn.n_determined_, rn.rotated_) == (4, False)
    np.testing.assert_array_equal(rn.components_, np.eye(12))
    np.testing.assert_allclose(rn.transform(X), rn._prepare(X) - rn._prepare(X).mean(axis=0), atol=1e-12)
    with pytest.raises(ValueError, match="undetermined='center' skips the rotation.*set n_dropped=0 \\(got 2\\)"):
        RotationNormalizer(n_dropped=2, undetermined="center").fit(X)
    # Enough training vectors: "center" rotates exactly like "raise".
    X = _training(n_samples=40, n_features=12)
    rotated = RotationNormalizer(n_dropped=2, undetermined="center").fit(X)
    assert rotated.rotated_
    np.testing.assert_array_equal(rotated.transform(X), RotationNormalizer(n_dropped=2).fit(X).transform(X))


def test_one_eigenvalue_floor_for_every_whitening():
    """Every whitening raises a variance to eps * the largest (1 when none is positive) before dividing by it."""
    import warnings

    from selconv._linalg import eigenvalue_floor, whitening_scale
    from selconv.embedding._codebook import clamped_whitening
    from selconv.postprocessing import PCAWhitening

    eps = np.finfo(np.float64).eps
    assert eigenvalue_floor(np.array([4.0, 1.0, 0.0])) == 4.0 * eps
    assert eigenvalue_floor(np.zeros(3)) == 1.0
    np.testing.assert_array_equal(whitening_scale(np.array([4.0, 0.0])), np.sqrt([4.0, 4.0 * eps]))
    covariance = np.diag([9.0, 1.0, 0.0])
    _, eigenvalues, _ = clamped_whitening(np.zeros(3), covariance, 0)
    np.testing.assert_array_equal(eigenvalues, [9.0, 1.0, 9.0 * eps])
    # Rank-deficient training vectors (5 in 8-D) and no shrinkage: the null directions get the floor.
    X = np.random.default_rng(0).standard_normal((5, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        whitening = PCAWhitening(shrinkage=0.0).fit(X)
    floor = eigenvalue_floor(whitening.explained_variance_)
    np.testing.assert_allclose(whitening.scale_[-1], 1.0 / np.sqrt(floor))
