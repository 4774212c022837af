"""TriangulationEmbedding: definition (docs/how-it-works.md, section 4), whitening, chunking, errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import make_local_sets
from sklearn.utils._param_validation import InvalidParameterError

from selconv.embedding import TriangulationEmbedding
from selconv.utils.estimator_checks import check_data_free, check_fit_transform


def _training_sets(n_features=4, random_state=0):
    # ~1,800 local features in 4-D with unequal counts and an empty image: enough for a 20-D embedding.
    counts = (300, 0, 450, 17, 600, 1, 433)
    return make_local_sets(counts, n_features=n_features, random_state=random_state, nonnegative=False)


def _reference_embedding(temb, x):
    """y = P (phi(x) - phibar) / ||.|| written out in float64 from the fitted attributes."""
    x = np.asarray(x, dtype=np.float64)
    residuals = x[:, None, :] - temb.cluster_centers_.astype(np.float64)[None]
    phi = residuals / np.linalg.norm(residuals, axis=2, keepdims=True)
    phi = phi.reshape(len(x), phi.shape[1] * phi.shape[2])
    y = (phi - temb.mean_) @ temb.projection_.astype(np.float64).T
    return y / np.linalg.norm(y, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def fitted():
    sets = _training_sets()
    return TriangulationEmbedding(5, n_clamped=6, random_state=0).fit(sets), sets


def test_data_free_checks():
    check_data_free(TriangulationEmbedding())
    check_data_free(TriangulationEmbedding(7, n_clamped=3, max_samples=50, kmeans_n_init=2, random_state=1))


def test_fit_transform_hygiene():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # 82 local features for a 96-D embedding
        check_fit_transform(TriangulationEmbedding(6, n_clamped=5, random_state=0), make_local_sets())


def test_shapes_counts_and_unit_norm(fitted):
    temb, sets = fitted
    out = temb.transform(sets)
    assert len(out) == len(sets)
    for x, y in zip(sets, out):
        assert y.shape == (len(x), 5 * 4) and y.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, rtol=1e-5)
    assert out[1].shape == (0, 20)


def test_matches_the_definition_in_float64(fitted):
    temb, sets = fitted
    out = temb.transform(sets)
    for x, y in zip(sets, out):
        np.testing.assert_allclose(y, _reference_embedding(temb, x), atol=1e-5)


def test_chunks_do_not_change_the_result(fitted, monkeypatch):
    temb, sets = fitted
    whole = temb.transform(sets)
    monkeypatch.setattr(TriangulationEmbedding, "_chunk_rows", 7)  # chunk borders fall inside images
    chunked = temb.transform(sets)
    one_by_one = [temb.transform([x])[0] for x in sets]
    for a, b, c in zip(whole, chunked, one_by_one):
        np.testing.assert_allclose(a, b, atol=1e-6)
        np.testing.assert_allclose(a, c, atol=1e-6)


def test_whitened_training_embeddings_have_identity_covariance(fitted):
    temb, sets = fitted
    x = np.concatenate(sets)
    z = (temb._embed(x).astype(np.float64) - temb.mean_) @ temb.projection_.astype(np.float64).T
    covariance = z.T @ z / len(z)
    dim, n_clamped = covariance.shape[0], temb.n_clamped
    kept = dim - n_clamped + 1  # the n_clamped-th smallest eigenvalue itself is unchanged
    np.testing.assert_allclose(covariance[:kept, :kept], np.eye(kept), atol=1e-3)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-3)
    clamped_variances = np.diag(covariance)[kept:]
    assert np.all(clamped_variances < 1.0) and np.all(np.diff(clamped_variances) <= 1e-6)
    assert np.all(np.diff(temb.eigenvalues_) <= 0)
    np.testing.assert_array_equal(temb.eigenvalues_[kept - 1 :], temb.eigenvalues_[kept - 1])
    assert temb.n_samples_seen_ == len(x)


def test_phi_blocks_are_unit_residual_directions(fitted):
    temb, sets = fitted
    phi = temb._embed(sets[0]).reshape(len(sets[0]), 5, 4)
    np.testing.assert_allclose(np.linalg.norm(phi, axis=2), 1.0, rtol=1e-5)
    direction = sets[0][3] - temb.cluster_centers_[2]
    np.testing.assert_allclose(phi[3, 2], direction / np.linalg.norm(direction), rtol=1e-5)


def test_feature_equal_to_a_codeword_gives_finite_output(fitted):
    temb, _ = fitted
    out = temb.transform([temb.cluster_centers_[:2].copy()])[0]
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_reproducible_and_seed_dependent():
    sets = _training_sets()
    a = TriangulationEmbedding(5, n_clamped=6, max_samples=500, random_state=3).fit(sets)
    b = TriangulationEmbedding(5, n_clamped=6, max_samples=500, random_state=3).fit(sets)
    c = TriangulationEmbedding(5, n_clamped=6, max_samples=500, random_state=4).fit(sets)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    np.testing.assert_array_equal(a.projection_, b.projection_)
    assert not np.array_equal(a.cluster_centers_, c.cluster_centers_)
    # max_samples bounds k-means only: the statistics still use every local feature.
    assert a.n_samples_seen_ == sum(len(s) for s in sets)


def test_no_clamping_whitens_everything():
    sets = _training_sets()
    temb = TriangulationEmbedding(5, n_clamped=0, random_state=0).fit(sets)
    phi = temb._embed(np.concatenate(sets)).astype(np.float64)
    z = (phi - temb.mean_) @ temb.projection_.T.astype(np.float64)
    np.testing.assert_allclose(z.T @ z / len(z), np.eye(20), atol=1e-3)


def test_fewer_local_features_than_clusters_is_a_clear_error():
    sets = [np.ones((3, 4), np.float32), np.zeros((0, 4), np.float32), np.ones((1, 4), np.float32)]
    with pytest.raises(ValueError, match=r"4 local features in 3 images, fewer than n_clusters=20"):
        TriangulationEmbedding().fit(sets)


def test_bad_input_errors(fitted):
    temb, sets = fitted
    with pytest.raises(TypeError, match="list"):
        temb.transform(np.ones((5, 4), np.float32))
    with pytest.raises(ValueError, match="fitted with 4"):
        temb.transform([np.ones((5, 3), np.float32)])
    with pytest.raises(ValueError, match="NaN"):
        temb.transform([np.full((2, 4), np.nan, np.float32)])
    with pytest.raises(ValueError, match="n_clamped=21 exceeds the embedding dimension"):
        TriangulationEmbedding(5, n_clamped=21).fit(sets)
    with pytest.raises(InvalidParameterError):
        TriangulationEmbedding(0).fit(sets)


def test_warns_when_covariance_is_singular():
    sets = make_local_sets(n_features=16)  # 82 local features, embedding dimension 96
    with pytest.warns(UserWarning, match="covariance is singular"):
        temb = TriangulationEmbedding(6, n_clamped=5, random_state=0).fit(sets)
    assert all(np.isfinite(y).all() for y in temb.transform(sets))


def test_fit_streams_ragged_rows_with_the_numbers_of_the_concatenated_input():
    # The fit reads the training sets through RaggedRows (chunks and the k-means sample without concatenating
    # them all): the same numbers, bit for bit, as fitting on their concatenation as one image. More rows
    # than a whitening chunk (8192), chunk boundaries inside images, an empty image, a k-means sample.
    from selconv.embedding._codebook import RaggedRows

    rng = np.random.default_rng(3)
    sets = [rng.standard_normal((n, 5)).astype(np.float32) for n in (4000, 0, 3000, 2500, 1, 7000)]
    params = dict(n_clusters=4, n_clamped=3, max_samples=5000, random_state=0)
    streamed = TriangulationEmbedding(**params).fit(sets)
    concatenated = TriangulationEmbedding(**params).fit([np.concatenate(sets)])
    for name in ("cluster_centers_", "mean_", "eigenvalues_", "projection_"):
        np.testing.assert_array_equal(getattr(streamed, name), getattr(concatenated, name))
    rows, whole = RaggedRows(sets), np.concatenate(sets)
    np.testing.assert_array_equal(np.concatenate(list(rows.chunks(3001))), whole)
    np.testing.assert_array_equal(rows.rows(3999, 7001), whole[3999:7001])
    indices = np.sort(rng.choice(len(whole), 777, replace=False))
    np.testing.assert_array_equal(rows.take(indices), whole[indices])
