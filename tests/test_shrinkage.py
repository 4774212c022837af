"""Covariance shrinkage of the learned whitenings: Temb / F-FAemb, RotationNormalizer and PCAWhitening share it."""

import warnings

import numpy as np
import pytest
from sklearn.covariance import ledoit_wolf_shrinkage
from sklearn.utils._param_validation import InvalidParameterError

from selconv._linalg import eigenvalue_floor, l2_normalize_rows, principal_axes, shrink_eigenvalues
from selconv.embedding import FAembEmbedding, TriangulationEmbedding
from selconv.embedding._codebook import clamped_whitening
from selconv.pipelines import make_paper_pipeline
from selconv.postprocessing import PCAWhitening, RotationNormalizer


@pytest.fixture(scope="module")
def sets():
    rng = np.random.default_rng(0)
    scales = np.linspace(2.0, 0.2, 5).astype(np.float32)
    return [(rng.standard_normal((n, 5)) * scales).astype(np.float32) for n in (120, 0, 70, 90)]


def _delta(s):
    return 1.0 if np.isinf(s) else s / (1.0 + s)


def test_no_shrinkage_is_the_papers_whitening():
    rng = np.random.default_rng(1)
    A = rng.standard_normal((8, 8))
    covariance = A @ A.T
    mean, eigenvalues, projection = clamped_whitening(np.zeros(8), covariance, 3, 0.0)
    # The clamped whitening as written before shrinkage existed, bit for bit.
    expected, vectors = principal_axes(covariance)
    expected[5:] = expected[5]
    expected = np.maximum(expected, eigenvalue_floor(expected))
    np.testing.assert_array_equal(eigenvalues, expected)
    np.testing.assert_array_equal(projection, (vectors / np.sqrt(expected)).T.astype(np.float32))


def test_shrinkage_adds_a_multiple_of_the_mean_eigenvalue_and_commutes_with_clamping():
    eigenvalues = np.array([4.0, 2.0, 1.0, 0.5, -1e-17])
    np.testing.assert_allclose(shrink_eigenvalues(eigenvalues, 0.5), eigenvalues + 0.5 * 7.5 / 5)
    np.testing.assert_array_equal(shrink_eigenvalues(eigenvalues, np.inf), np.ones(5))
    rng = np.random.default_rng(2)
    A = rng.standard_normal((6, 6))
    _, shrunk, _ = clamped_whitening(np.zeros(6), A @ A.T, 2, 0.7)
    _, plain, _ = clamped_whitening(np.zeros(6), A @ A.T, 2, 0.0)
    np.testing.assert_allclose(shrunk, plain + 0.7 * np.trace(A @ A.T) / 6, rtol=1e-12)


def test_full_shrinkage_is_isotropic(sets):
    # s = inf (delta = 1): every direction has the same scale, P is a rotation, and the embedded features
    # have the inner products of the centred, l2-normalised phi.
    rng = np.random.default_rng(3)
    A = rng.standard_normal((6, 6))
    _, eigenvalues, projection = clamped_whitening(np.zeros(6), A @ A.T, 2, np.inf)
    np.testing.assert_array_equal(eigenvalues, np.ones(6))
    np.testing.assert_allclose(projection @ projection.T, np.eye(6), atol=1e-6)
    temb = TriangulationEmbedding(3, n_clamped=2, shrinkage=1e12, random_state=0).fit(sets)
    embedded = np.concatenate(temb.transform(sets))
    phi = l2_normalize_rows(temb._embed(np.concatenate(sets)).astype(np.float64) - temb.mean_)
    np.testing.assert_allclose(embedded @ embedded.T, phi @ phi.T, atol=1e-5)


@pytest.mark.parametrize("estimator", [TriangulationEmbedding(3, n_clamped=2), FAembEmbedding(2, n_clamped=3)])
def test_ledoit_wolf_on_the_embedded_training_features(sets, estimator):
    fitted = estimator.set_params(shrinkage="ledoit-wolf", random_state=0).fit(sets)
    phi = fitted._embed(np.concatenate(sets)).astype(np.float64)
    # The covariance is accumulated from float32 GEMMs: float32 precision.
    assert _delta(fitted.shrinkage_) == pytest.approx(ledoit_wolf_shrinkage(phi), rel=1e-6)
    assert fitted.shrinkage_ > 0
    # The same whitening as the number it chose.
    fixed = estimator.set_params(shrinkage=fitted.shrinkage_).fit(sets)
    np.testing.assert_allclose(fixed.projection_, fitted.projection_, rtol=1e-6)


def test_shrinkage_silences_the_singular_covariance_warning():
    sets = [np.random.default_rng(4).standard_normal((12, 4)).astype(np.float32)]
    with pytest.warns(UserWarning, match="singular"):
        TriangulationEmbedding(4, n_clamped=0, random_state=0).fit(sets)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TriangulationEmbedding(4, n_clamped=0, shrinkage=0.1, random_state=0).fit(sets)


def test_rotation_normalizer_shrinks_only_its_whitening():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((60, 10)) * np.linspace(3, 0.3, 10) + 1.0
    plain = RotationNormalizer(n_dropped=2).fit(X)
    assert np.array_equal(RotationNormalizer(n_dropped=2, shrinkage=0.5).fit(X).transform(X), plain.transform(X))
    whitened = RotationNormalizer(n_dropped=2, whiten=True, shrinkage=0.5).fit(X)
    variance = whitened.explained_variance_
    expected = plain.transform(X) / np.sqrt(variance[2:] + 0.5 * variance.mean())
    np.testing.assert_allclose(whitened.transform(X), expected, rtol=1e-10)
    lw = RotationNormalizer(n_dropped=2, whiten=True, shrinkage="ledoit-wolf").fit(X)
    normalised = l2_normalize_rows(X)
    assert _delta(lw.shrinkage_) == pytest.approx(ledoit_wolf_shrinkage(normalised), rel=1e-9)
    assert RotationNormalizer(n_dropped=0).fit(X).shrinkage_ == 0.0


def test_pca_whitening_ledoit_wolf_is_sklearns():
    X = np.random.default_rng(6).standard_normal((40, 12)) * np.linspace(2, 0.1, 12)
    fitted = PCAWhitening().fit(X)
    assert _delta(fitted.shrinkage_) == pytest.approx(ledoit_wolf_shrinkage(l2_normalize_rows(X)), rel=1e-9)


@pytest.mark.parametrize("bad", [-0.1, "oas", None])
@pytest.mark.parametrize("estimator", [TriangulationEmbedding(3), FAembEmbedding(2), RotationNormalizer()])
def test_shrinkage_is_validated(sets, estimator, bad):
    X = sets if not isinstance(estimator, RotationNormalizer) else np.eye(5)
    with pytest.raises(InvalidParameterError, match="shrinkage"):
        estimator.set_params(shrinkage=bad).fit(X)


def test_paper_pipeline_passes_shrinkage_to_the_whitenings():
    pipeline = make_paper_pipeline(512, shrinkage="ledoit-wolf")
    params = pipeline.get_params()
    assert params["encode__embedding__shrinkage"] == "ledoit-wolf" and params["rotate__shrinkage"] == "ledoit-wolf"
    assert make_paper_pipeline(512).get_params()["encode__embedding__shrinkage"] == 0.0


def test_torch_fit_path_shrinks_alike(sets):
    pytest.importorskip("torch")
    from selconv._ragged import check_local_sets

    numpy_path = TriangulationEmbedding(3, n_clamped=2, shrinkage="ledoit-wolf", random_state=0).fit(sets)
    torch_path = TriangulationEmbedding(3, n_clamped=2, shrinkage="ledoit-wolf", random_state=0)
    torch_path._fit(check_local_sets(sets, estimator=torch_path, reset=True), device="torch")
    assert torch_path.shrinkage_ == pytest.approx(numpy_path.shrinkage_, rel=1e-5)
    np.testing.assert_allclose(torch_path.eigenvalues_, numpy_path.eigenvalues_, rtol=1e-4)
