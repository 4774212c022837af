"""Tests for the paper's alternative embeddings: VLADEmbedding, FisherVectorEmbedding, FAembEmbedding."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import make_local_sets
from sklearn.mixture import GaussianMixture

from selconv.aggregation import SumPooling
from selconv.embedding import FAembEmbedding, FisherVectorEmbedding, VLADEmbedding
from selconv.postprocessing import RotationNormalizer
from selconv.utils.estimator_checks import check_data_free, check_fit_transform

D_IN = 4


def _unit_sets(random_state=0, counts=(40, 0, 90, 7, 55, 1, 120)):
    """l2-normalised local features (what LocalPCA outputs), unequal counts and an empty image."""
    sets = make_local_sets(counts=counts, n_features=D_IN, random_state=random_state, nonnegative=False)
    return [s / np.linalg.norm(s, axis=1, keepdims=True) if len(s) else s for s in sets]


def _estimators():
    return [
        VLADEmbedding(n_clusters=5, random_state=0),
        FisherVectorEmbedding(n_components=3, random_state=0),
        FAembEmbedding(n_clusters=3, n_clamped=4, random_state=0),
    ]


def _fit(estimator, sets):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # FAemb: few training features on purpose
        return estimator.fit(sets)


def _dim(estimator, d=D_IN):
    if isinstance(estimator, VLADEmbedding):
        return estimator.n_clusters * d
    if isinstance(estimator, FisherVectorEmbedding):
        return 2 * estimator.n_components * d
    return estimator.n_clusters * d * (d + 1) // 2


@pytest.fixture
def sets():
    return _unit_sets()


@pytest.mark.parametrize("estimator", _estimators(), ids=lambda e: type(e).__name__)
def test_estimator_checks(estimator, sets):
    check_data_free(estimator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        check_fit_transform(estimator, sets)


@pytest.mark.parametrize("estimator", _estimators(), ids=lambda e: type(e).__name__)
def test_ragged_contract(estimator, sets):
    _fit(estimator, sets)
    out = estimator.transform(sets)
    dim = _dim(estimator)
    assert [o.shape for o in out] == [(len(s), dim) for s in sets]
    assert all(o.dtype == np.float32 and np.isfinite(o).all() for o in out)
    # Each image is embedded independently of the others (chunking and concatenation are invisible).
    alone = [estimator.transform([s])[0] for s in sets]
    for a, b in zip(out, alone):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Reproducible bit for bit with a fixed random_state.
    again = _fit(type(estimator)(**estimator.get_params()), sets).transform(sets)
    for a, b in zip(out, again):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("estimator", _estimators(), ids=lambda e: type(e).__name__)
def test_bad_input(estimator, sets):
    with pytest.raises(TypeError, match="list"):
        estimator.fit(np.concatenate(sets))
    with pytest.raises(ValueError, match="fewer than"):
        estimator.fit([sets[3][:2]])
    _fit(estimator, sets)
    with pytest.raises(ValueError, match="features per local descriptor"):
        estimator.transform([np.zeros((3, D_IN + 1), np.float32)])
    with pytest.raises(ValueError, match="NaN"):
        estimator.transform([np.full((2, D_IN), np.nan, np.float32)])


def test_vlad_block_structure(sets):
    vlad = VLADEmbedding(n_clusters=5, random_state=0).fit(sets)
    centers = vlad.cluster_centers_
    for x, y in zip(sets, vlad.transform(sets)):
        blocks = y.reshape(len(x), 5, D_IN)
        nearest = np.argmin(((x[:, None, :] - centers[None]) ** 2).sum(axis=2), axis=1)
        np.testing.assert_array_equal(vlad.assign(x), nearest)
        np.testing.assert_allclose(blocks[np.arange(len(x)), nearest], x - centers[nearest], atol=1e-6)
        others = np.ones((len(x), 5), bool)
        others[np.arange(len(x)), nearest] = False
        assert not blocks[others].any()
    # Summing an image's embedded features is the classical VLAD.
    x = sets[2]
    classical = np.concatenate([(x[vlad.assign(x) == j] - centers[j]).sum(axis=0) for j in range(5)])
    np.testing.assert_allclose(vlad.transform([x])[0].sum(axis=0), classical, atol=1e-5)


def test_fisher_vector_by_definition(sets):
    fv = FisherVectorEmbedding(n_components=3, tol=1e-6, max_iter=1000, random_state=0).fit(sets)
    x = sets[2]
    gmm = GaussianMixture(3, covariance_type="diag")
    gmm.weights_, gmm.means_, gmm.covariances_ = fv.weights_, fv.means_, fv.variances_
    gmm.precisions_cholesky_ = 1.0 / np.sqrt(fv.variances_)
    q = gmm.predict_proba(x.astype(np.float64))
    np.testing.assert_allclose(fv.posteriors(x), q, rtol=1e-6, atol=1e-9)
    y = fv.transform([x])[0].reshape(len(x), 3, 2, D_IN)
    sigma = np.sqrt(fv.variances_)
    for k in range(3):
        standardised = (x - fv.means_[k]) / sigma[k]
        u = q[:, k, None] / np.sqrt(fv.weights_[k]) * standardised
        v = q[:, k, None] / np.sqrt(2 * fv.weights_[k]) * (standardised**2 - 1)
        np.testing.assert_allclose(y[:, k, 0], u, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(y[:, k, 1], v, rtol=1e-4, atol=1e-5)


def test_fisher_gradients_vanish_on_training_set(sets):
    # At the EM fixed point the average gradient over the training features is 0: the means and
    # variances are the posterior-weighted means and variances.
    fv = FisherVectorEmbedding(n_components=3, tol=1e-12, max_iter=2000, reg_covar=1e-12, random_state=0).fit(sets)
    assert fv.converged_
    embedded = np.concatenate(fv.transform(sets))
    mean = np.abs(embedded.mean(axis=0))
    assert mean.max() < 1e-3 * np.abs(embedded).mean(axis=0).min()
    # Not so on other data.
    other = np.concatenate(fv.transform(_unit_sets(random_state=5)))
    assert np.abs(other.mean(axis=0)).max() > 10 * mean.max()


def test_faemb_coefficients_closed_form(sets):
    faemb = _fit(FAembEmbedding(n_clusters=3, n_clamped=4, random_state=0), sets)
    x = sets[2][:10]
    gamma = faemb.coefficients(x)
    np.testing.assert_allclose(gamma.sum(axis=1), 1.0, atol=1e-10)
    # Direct solve of the KKT system of min 1/2 ||x - V g||^2 + mu/2 a(x) ||g||^2, sum g = 1.
    V = faemb.cluster_centers_.astype(np.float64).T
    for xi, gi in zip(x.astype(np.float64), gamma):
        a = (np.abs(xi[:, None] - V).sum(axis=0) ** 3).sum()
        kkt = np.zeros((4, 4))
        kkt[:3, :3] = V.T @ V + faemb.mu * a * np.eye(3)
        kkt[:3, 3] = kkt[3, :3] = 1.0
        solution = np.linalg.solve(kkt, np.concatenate([V.T @ xi, [1.0]]))
        np.testing.assert_allclose(gi, solution[:3], rtol=1e-8, atol=1e-10)


def test_faemb_embedding_dimension_and_structure(sets):
    faemb = _fit(FAembEmbedding(n_clusters=3, n_clamped=4, random_state=0), sets)
    assert len(faemb.mean_) == 3 * D_IN * (D_IN + 1) // 2 == 30
    # The paper's final dimension (|C| - 2) d (d + 1) / 2 once d (d + 1) components are dropped.
    assert len(faemb.mean_) - D_IN * (D_IN + 1) == (3 - 2) * D_IN * (D_IN + 1) // 2
    x = sets[2][:5]
    raw = faemb._embed(x).reshape(5, 3, -1)
    gamma = faemb.coefficients(x)
    r = x - faemb.cluster_centers_[1]
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    rows, cols = np.triu_indices(D_IN)
    np.testing.assert_allclose(raw[:, 1], gamma[:, 1, None] * r[:, rows] * r[:, cols], rtol=1e-5, atol=1e-6)
    out = faemb.transform([x])[0]
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    # The whitening was learned on all training features, the clamped eigenvalues are equal.
    assert faemb.n_samples_seen_ == sum(len(s) for s in sets)
    assert np.all(faemb.eigenvalues_[-4:] == faemb.eigenvalues_[-4]) and faemb.eigenvalues_[-5] > faemb.eigenvalues_[-4]


def test_faemb_errors_and_warning(sets):
    with pytest.raises(ValueError, match="n_clamped=31 exceeds"):
        FAembEmbedding(n_clusters=3, n_clamped=31).fit(sets)
    with pytest.warns(UserWarning, match="singular"):
        FAembEmbedding(n_clusters=3, n_clamped=4, random_state=0).fit([sets[0][:20]])
    with pytest.raises(ValueError):
        FAembEmbedding(mu=0.0).fit(sets)


def test_faemb_then_rotation_drops_leading_components():
    sets = _unit_sets(counts=(12, 0, 30, 7, 25, 1, 40) * 6)  # 42 images: more than the 30 rotated dimensions
    faemb = _fit(FAembEmbedding(n_clusters=3, n_clamped=4, random_state=0), sets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        aggregated = SumPooling().fit_transform(faemb.transform(sets))
        rotated = RotationNormalizer(n_dropped=D_IN * (D_IN + 1)).fit_transform(aggregated)
    assert rotated.shape == (len(sets), (3 - 2) * D_IN * (D_IN + 1) // 2)
