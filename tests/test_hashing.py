"""ITQ, KMH and RBA hashers: code layout, determinism, learning behaviour, estimator hygiene."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from selconv.hashing import ITQHasher, KMeansHasher, RBAHasher, pack_bits, unpack_bits
from selconv.hashing.kmh import affinity_preserving_kmeans, allocate_dimensions
from selconv.model_selection import map_scorer
from selconv.utils.estimator_checks import check_data_free, check_fit_transform


def fast_hashers(n_bits=8):
    """One instance per hasher, with few iterations so tests stay fast."""
    return [
        ITQHasher(n_bits, n_iter=10, random_state=0),
        KMeansHasher(n_bits, n_iter=10),
        RBAHasher(n_bits, n_iter=3, max_lbfgs_iter=20, random_state=0),
    ]


def clustered(n_clusters=12, per_cluster=15, n_features=32, spread=0.35, random_state=0):
    """Gaussian clusters in a random 8-D subspace plus isotropic noise, labelled by cluster."""
    rng = np.random.default_rng(random_state)
    basis = np.linalg.qr(rng.standard_normal((n_features, 8)))[0]
    centres = 3.0 * rng.standard_normal((n_clusters, 8)) @ basis.T
    y = np.repeat(np.arange(n_clusters), per_cluster)
    X = centres[y] + spread * rng.standard_normal((len(y), n_features))
    return X, y


class RandomProjectionHasher(TransformerMixin, BaseEstimator):
    """Baseline: signs of random Gaussian projections of the centred data (LSH)."""

    def __init__(self, n_bits=16, random_state=0):
        self.n_bits = n_bits
        self.random_state = random_state

    def fit(self, X, y=None):
        self.mean_ = X.mean(axis=0)
        self.projection_ = np.random.default_rng(self.random_state).standard_normal((X.shape[1], self.n_bits))
        return self

    def transform(self, X):
        return pack_bits((X - self.mean_) @ self.projection_ > 0)


# sklearn's checks build X with 2-5 features; a hasher needs n_features >= n_bits >= 8 (packed bytes,
# a projection to n_bits dimensions) and rejects narrower X with a clear error. Every check below fails
# only for that reason (verified by running them); test_hygiene_on_wide_data covers what they check on
# data wide enough.
_NEEDS_8_FEATURES = "sklearn's check data has fewer than n_bits=8 features; covered by test_hygiene_on_wide_data"
_SKIPPED_CHECKS = {
    name: _NEEDS_8_FEATURES
    for name in [
        "check_dict_unchanged",
        "check_dont_overwrite_parameters",
        "check_estimators_dtypes",
        "check_estimators_fit_returns_self",
        "check_estimators_nan_inf",
        "check_estimators_overwrite_params",
        "check_estimators_pickle",
        "check_f_contiguous_array_estimator",
        "check_fit2d_predict1d",
        "check_fit_check_is_fitted",
        "check_fit_idempotent",
        "check_fit_score_takes_y",
        "check_methods_sample_order_invariance",
        "check_methods_subset_invariance",
        "check_n_features_in",
        "check_n_features_in_after_fitting",
        "check_pipeline_consistency",
        "check_positive_only_tag_during_fit",
        "check_readonly_memmap_input",
        "check_transformer_data_not_an_array",
        "check_transformer_general",
    ]
}


@parametrize_with_checks(fast_hashers())
def test_sklearn_compatible(estimator, check):
    # skipped rather than passed as expected_failed_checks: an xfail still runs the check (slowly)
    name = getattr(check, "func", check).__name__
    if name in _SKIPPED_CHECKS:
        pytest.skip(_SKIPPED_CHECKS[name])
    check(estimator)


@pytest.mark.parametrize("hasher", fast_hashers(16), ids=lambda h: type(h).__name__)
def test_hygiene_on_wide_data(hasher):
    X, _ = clustered(n_clusters=4, per_cluster=10, n_features=20)
    check_data_free(hasher)
    check_fit_transform(hasher, X)
    codes = clone(hasher).fit(X).transform(X)
    assert codes.dtype == np.uint8 and codes.shape == (40, 2)
    # refit gives identical codes (idempotent, deterministic); rows are encoded independently
    fitted = clone(hasher).fit(X)
    np.testing.assert_array_equal(fitted.transform(X), codes)
    np.testing.assert_array_equal(fitted.transform(X[::-1]), codes[::-1])
    np.testing.assert_array_equal(fitted.transform(X[5:9]), codes[5:9])
    # float32, read-only and Fortran-ordered input encode the same (values of X are float32-exact here)
    X32 = X.astype(np.float32)
    readonly = np.asfortranarray(X32)
    readonly.setflags(write=False)
    np.testing.assert_array_equal(fitted.transform(readonly), fitted.transform(X32.astype(np.float64)))
    assert list(fitted.get_feature_names_out()) == [f"{type(hasher).__name__.lower()}{i}" for i in range(2)]
    with pytest.raises(ValueError, match="20 features"):
        fitted.transform(X[:, :10])
    with pytest.raises(ValueError, match="NaN"):
        clone(hasher).fit(np.where(np.eye(40, 20) > 0, np.nan, X))
    with pytest.raises(ValueError, match="2D array"):
        fitted.transform(X[0])


@pytest.mark.parametrize("hasher", fast_hashers(16), ids=lambda h: type(h).__name__)
def test_packing_round_trip_and_bit_order(hasher):
    X, _ = clustered(n_features=20)
    hasher.fit(X)
    bits, codes = hasher.transform_bits(X), hasher.transform(X)
    assert bits.dtype == np.uint8 and bits.shape == (len(X), 16) and set(np.unique(bits)) <= {0, 1}
    np.testing.assert_array_equal(unpack_bits(codes), bits)
    np.testing.assert_array_equal(pack_bits(bits), codes)
    # big-endian: bit 0 is the most significant bit of byte 0 (numpy.packbits / faiss layout)
    np.testing.assert_array_equal(codes[:, 0] >> 7, bits[:, 0])
    np.testing.assert_array_equal(codes[:, 1] & 1, bits[:, 15])


@pytest.mark.parametrize("cls", [ITQHasher, KMeansHasher, RBAHasher])
def test_n_bits_errors(cls):
    X = np.random.default_rng(0).standard_normal((30, 12))
    with pytest.raises(ValueError, match="multiple of 8"):
        cls(n_bits=12).fit(X)
    with pytest.raises(ValueError, match="n_features = 12"):
        cls(n_bits=16).fit(X)
    with pytest.raises(ValueError, match="n_samples = 10"):
        cls(n_bits=16).fit(np.random.default_rng(0).standard_normal((10, 20)))
    with pytest.raises(ValueError, match="n_bits"):
        cls(n_bits=0).fit(X)


class TestITQ:
    def test_deterministic_for_fixed_random_state(self):
        X, _ = clustered()
        a = ITQHasher(16, random_state=3).fit(X)
        b = ITQHasher(16, random_state=3).fit(X)
        np.testing.assert_array_equal(a.rotation_, b.rotation_)
        np.testing.assert_array_equal(a.transform(X), b.transform(X))
        other = ITQHasher(16, random_state=4, n_iter=0).fit(X)
        assert not np.allclose(other.rotation_, a.rotation_)

    def test_reduces_quantisation_loss_from_random_init(self):
        X, _ = clustered()
        itq = ITQHasher(16, n_iter=30, random_state=0).fit(X)
        losses = itq.quantization_loss_
        assert losses.shape == (31,)
        assert losses[-1] < 0.9 * losses[0]
        assert np.all(np.diff(losses) <= 1e-9 * losses[0])  # each Procrustes / sign step can only help
        np.testing.assert_allclose(itq.rotation_ @ itq.rotation_.T, np.eye(16), atol=1e-10)

    def test_projection_is_pca_then_rotation(self):
        X, _ = clustered()
        itq = ITQHasher(8, random_state=0).fit(X)
        from sklearn.decomposition import PCA

        pca = PCA(8).fit(X)
        np.testing.assert_allclose(itq.explained_variance_, pca.explained_variance_, rtol=1e-8)
        # same subspace: projecting PCA's axes onto ITQ's spans keeps them whole
        overlap = pca.components_ @ itq.projection_
        np.testing.assert_allclose(np.linalg.svd(overlap, compute_uv=False), 1.0, atol=1e-8)


def test_hashers_preserve_neighbours_better_than_random_projections():
    X, y = clustered(n_clusters=12, per_cluster=15, n_features=32)
    baseline = np.mean([map_scorer(RandomProjectionHasher(16, seed).fit(X), X, y) for seed in range(5)])
    for hasher in fast_hashers(16):
        score = map_scorer(hasher.fit(X), X, y)
        assert score > baseline + 0.05, (type(hasher).__name__, score, baseline)


class TestKMH:
    def test_structure(self):
        X, _ = clustered(n_features=20)
        kmh = KMeansHasher(16, bits_per_subspace=4, n_iter=5).fit(X)
        # 4 subspaces of 20 // 4 = 5 principal directions, 16 centres each
        assert kmh.centroids_.shape == (4, 16, 5) and kmh.components_.shape == (20, 20)
        assert np.all(kmh.scales_ > 0)
        with pytest.raises(ValueError, match="bits_per_subspace"):
            KMeansHasher(24, bits_per_subspace=5).fit(np.random.default_rng(0).standard_normal((50, 30)))

    def test_allocation_balances_variance(self):
        groups = allocate_dimensions(np.array([8.0, 4.0, 2.0, 1.0, 0.5, 0.25]), 2)
        assert [g.tolist() for g in groups] == [[0, 3, 4], [1, 2, 5]]

    def test_affinity_term_makes_centre_distances_follow_hamming(self):
        rng = np.random.default_rng(0)
        Z = rng.standard_normal((400, 3)) * np.array([3.0, 2.0, 1.0])
        hamming = np.array([[bin(i ^ j).count("1") for j in range(8)] for i in range(8)])
        spread = {}
        for weight in (0.0, 10.0):
            centres, scale = affinity_preserving_kmeans(Z, 3, n_iter=20, affinity_weight=weight)
            distance = np.linalg.norm(centres[:, None] - centres[None], axis=2)
            spread[weight] = np.abs(distance - scale * np.sqrt(hamming)).mean()
        assert spread[10.0] < spread[0.0]


class TestRBA:
    def test_alternating_optimisation_decreases_objective(self):
        X, _ = clustered(n_features=20)
        rba = RBAHasher(16, n_iter=4, max_lbfgs_iter=30, random_state=0).fit(X)
        assert rba.objective_.shape == (5,)
        assert np.all(np.diff(rba.objective_) <= 1e-9 * rba.objective_[0])
        assert rba.objective_[-1] < rba.objective_[0]

    def test_relaxed_codes_close_to_binary_and_reconstruct(self):
        X, _ = clustered(n_features=20)
        rba = RBAHasher(16, n_iter=4, max_lbfgs_iter=30, random_state=0).fit(X)
        Y = (X - rba.mean_) @ rba.encoder_weights_ + rba.encoder_bias_
        assert np.mean(np.abs(np.abs(Y) - 1)) < 0.5
        reconstruction = Y @ rba.decoder_weights_ + rba.decoder_bias_ + rba.mean_
        assert np.mean((reconstruction - X) ** 2) < 0.5 * np.mean((X - X.mean(axis=0)) ** 2)
