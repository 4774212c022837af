"""Hamming distances, full rankings (through faiss, the one search path) and query expansion."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selconv.search import average_query_expansion, hamming_distances, rank


def naive_hamming(a, b):
    bits_a, bits_b = np.unpackbits(a, axis=1), np.unpackbits(b, axis=1)
    return np.array([[int((x != y).sum()) for y in bits_b] for x in bits_a])


@pytest.mark.parametrize("n_bytes", [1, 3, 8, 16])
def test_hamming_equals_naive_count(n_bytes):
    rng = np.random.default_rng(n_bytes)
    queries = rng.integers(0, 256, (7, n_bytes), dtype=np.uint8)
    database = rng.integers(0, 256, (50, n_bytes), dtype=np.uint8)
    distances = hamming_distances(queries, database)
    assert distances.dtype == np.int32 and distances.shape == (7, 50)
    np.testing.assert_array_equal(distances, naive_hamming(queries, database))


def test_hamming_rejects_bad_codes():
    with pytest.raises(TypeError, match="uint8"):
        hamming_distances(np.zeros((2, 4)), np.zeros((2, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="bytes"):
        hamming_distances(np.zeros((2, 4), dtype=np.uint8), np.zeros((2, 8), dtype=np.uint8))


class TestRank:
    def test_inner_product_ties_keep_lower_index_first(self):
        database = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])
        assert rank(np.array([[1.0, 0.0]]), database).tolist() == [[0, 2, 3, 1]]

    def test_hamming(self):
        database = np.array([[0b0000], [0b0111], [0b0001], [0b0011], [0b0001]], dtype=np.uint8)
        ranking = rank(np.array([0b0001], dtype=np.uint8), database, metric="hamming")
        assert ranking.tolist() == [[2, 4, 0, 3, 1]]

    def test_auto_and_bad_metric(self):
        codes = np.array([[3], [1]], dtype=np.uint8)
        assert rank(codes, codes, metric="auto").tolist() == [[0, 1], [1, 0]]
        with pytest.raises(ValueError, match="metric"):
            rank(codes, codes, metric="cosine")


@settings(max_examples=25, deadline=None)
@given(n_db=st.integers(1, 60), seed=st.integers(0, 2**16))
def test_rank_equals_a_stable_sort_of_the_scores(n_db, seed):
    rng = np.random.default_rng(seed)
    # small integers: exact float32 products and many ties, so the tie rule is exercised
    database = rng.integers(-2, 3, (n_db, 4)).astype(np.float32)
    queries = rng.integers(-2, 3, (3, 4)).astype(np.float32)
    ranking, scores = rank(queries, database, return_scores=True)
    full = queries @ database.T
    np.testing.assert_array_equal(ranking, np.argsort(-full, axis=1, kind="stable"))
    np.testing.assert_array_equal(scores, np.take_along_axis(full, ranking, axis=1))


@settings(max_examples=25, deadline=None)
@given(n_db=st.integers(1, 60), seed=st.integers(0, 2**16))
def test_hamming_rank_equals_a_stable_sort_of_the_distances(n_db, seed):
    rng = np.random.default_rng(seed)
    database = rng.integers(0, 256, (n_db, 2), dtype=np.uint8) & 0b10110001  # few distinct distances
    queries = rng.integers(0, 256, (4, 2), dtype=np.uint8)
    ranking, scores = rank(queries, database, metric="hamming", return_scores=True)
    full = naive_hamming(queries, database)
    np.testing.assert_array_equal(ranking, np.argsort(full, axis=1, kind="stable"))
    np.testing.assert_array_equal(-scores, np.take_along_axis(full, ranking, axis=1))
    assert scores.dtype == np.float32


def test_rank_validation():
    with pytest.raises(ValueError, match="features"):
        rank(np.ones((1, 4)), np.ones((3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        rank(np.array([[np.nan, 1.0]]), np.ones((3, 2)))
    with pytest.raises(TypeError, match="real vectors"):
        rank(np.array([["a", "b"]]), np.ones((3, 2)))
    assert rank(np.ones((2, 4)), np.zeros((0, 4))).shape == (2, 0)


def test_average_query_expansion():
    database = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]) / np.array([[1.0], [1.0], [np.sqrt(2)]])
    query = np.array([[1.0, 0.0]])
    expanded = average_query_expansion(query, database, rank(query, database), top=1)
    np.testing.assert_allclose(expanded, [[1.0, 0.0]], atol=1e-7)
    expanded = average_query_expansion(query, database, [[1]], top=1)
    np.testing.assert_allclose(expanded, [[np.sqrt(0.5), np.sqrt(0.5)]], rtol=1e-6)
    with pytest.raises(TypeError, match="binary"):
        average_query_expansion(np.zeros((1, 2), dtype=np.uint8), np.zeros((3, 2), dtype=np.uint8), [[0]])
    with pytest.raises(ValueError, match="top=5"):
        average_query_expansion(query, database, [[0, 1]], top=5)
