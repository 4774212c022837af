"""The torch fit kernels (k-means codebook, ITQ iterations) against the CPU path, on torch's CPU device."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans

from selconv import ITQHasher
from selconv.embedding._codebook import kmeans_codebook

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def one_torch_thread():
    # Small tensors: torch's thread pool only oversubscribes the shared CI cores (10x slower here).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def inertia(sample, centers):
    distances = ((sample[:, None, :].astype(np.float64) - centers[None].astype(np.float64)) ** 2).sum(axis=2)
    return distances.min(axis=1).sum()


def unit_rows(n, d, seed):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize(("n_clusters", "n_init"), [(20, 1), (8, 3)])
def test_torch_kmeans_matches_scikit_learn(n_clusters, n_init):
    # The same algorithm and random draws as KMeans: the same codebook to float32 rounding, or (where a
    # rounding difference flips a choice) another one of about the same inertia; here the former.
    sample = unit_rows(6000, 16, 0)
    ours = kmeans_codebook(sample, n_clusters, n_init=n_init, rng=np.random.RandomState(7), device="torch")
    reference = kmeans_codebook(sample, n_clusters, n_init=n_init, rng=np.random.RandomState(7))
    assert ours.dtype == np.float32 and ours.shape == (n_clusters, 16)
    assert inertia(sample, ours) == pytest.approx(inertia(sample, reference), rel=1e-2)
    np.testing.assert_allclose(ours, reference, atol=1e-4)


def test_torch_kmeans_relocates_empty_clusters():
    # 5 distinct points, 5 clusters: every point its own centre whatever the seeding.
    sample = np.repeat(np.eye(5, dtype=np.float32), [30, 1, 1, 1, 1], axis=0)
    centers = kmeans_codebook(sample, 5, n_init=1, rng=np.random.RandomState(0), device="torch")
    assert inertia(sample, centers) == pytest.approx(0.0, abs=1e-6)
    expected = KMeans(5, n_init=1, random_state=0).fit(sample).inertia_
    assert expected == pytest.approx(0.0, abs=1e-6)


def test_itq_torch_iterations_equal_numpy():
    X = np.random.default_rng(1).standard_normal((500, 48))
    reference = ITQHasher(n_bits=32, n_iter=20, random_state=0).fit(X)
    ours = ITQHasher(n_bits=32, n_iter=20, random_state=0, device="torch").fit(X)
    np.testing.assert_allclose(ours.rotation_, reference.rotation_, atol=1e-9)
    np.testing.assert_allclose(ours.quantization_loss_, reference.quantization_loss_, rtol=1e-10)
    np.testing.assert_array_equal(ours.transform(X), reference.transform(X))


def test_itq_rejects_an_unknown_device():
    with pytest.raises(ValueError, match="device must be 'cpu'"):
        ITQHasher(n_bits=8, device="gpu").fit(np.random.default_rng(0).standard_normal((50, 16)))
