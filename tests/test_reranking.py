"""alpha-query expansion and database-side augmentation: arrays, evaluate() and the search index."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from selconv import AlphaQueryExpansion, DatabaseAugmentation
from selconv.index import ImageIndex
from selconv.metrics import evaluate, tie_aware_average_precisions
from selconv.search import average_query_expansion, rank, similarities


def _unit(rows):
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def clustered():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((12, 16))
    database = _unit(np.repeat(centres, 5, axis=0) + 0.6 * rng.standard_normal((60, 16)))
    queries = _unit(centres + 0.6 * rng.standard_normal((12, 16)))
    ground_truth = [{"positives": np.arange(5 * q, 5 * q + 5), "junk": []} for q in range(12)]
    return queries, database, ground_truth


@parametrize_with_checks(
    [AlphaQueryExpansion(2), DatabaseAugmentation(2, alpha=0.0)],
    # Each row of a database is augmented with the other rows: a subset of them gives other rows.
    expected_failed_checks=lambda e: (
        {"check_methods_subset_invariance": "DBA mixes each row with the others"}
        if isinstance(e, DatabaseAugmentation)
        else {}
    ),
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_alpha_query_expansion_by_hand():
    database = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    query = np.array([[0.6, 0.8]], dtype=np.float32)
    # Neighbours: d1 (s = 0.8), d0 (s = 0.6), d2 (s = -0.6, weight 0 for alpha > 0).
    expanded = AlphaQueryExpansion(3, alpha=2.0).fit(database).transform(query)
    expected = query + 0.64 * database[1] + 0.36 * database[0]
    np.testing.assert_allclose(expanded, _unit(expected), rtol=1e-6)
    # alpha = 0: every neighbour weighs 1, even with a negative similarity.
    expanded = AlphaQueryExpansion(3, alpha=0.0).fit(database).transform(query)
    np.testing.assert_allclose(expanded, _unit(query + database.sum(axis=0)), rtol=1e-6)
    # More neighbours than database vectors: all of them.
    np.testing.assert_array_equal(AlphaQueryExpansion(10, alpha=0.0).fit(database).transform(query), expanded)


def test_alpha_zero_is_average_query_expansion(clustered):
    queries, database, _ = clustered
    old = average_query_expansion(queries, database, rank(queries, database), top=5)
    new = AlphaQueryExpansion(5, alpha=0.0).fit(database).transform(queries)
    np.testing.assert_array_equal(new, old)
    # average_query_expansion: the query plus its top database vectors, summed then l2-normalised.
    top = rank(queries, database)[:, :5]
    np.testing.assert_allclose(old, _unit(queries + database[top].sum(axis=1)), rtol=1e-6, atol=1e-7)


def test_database_augmentation_by_hand():
    database = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=np.float32)
    augmented = DatabaseAugmentation(1, alpha=1.0).fit_transform(database)
    # Each row plus its nearest OTHER row, weighted by the similarity.
    expected = [database[0] + 0.6 * database[1], database[1] + 0.8 * database[2], database[2] + 0.8 * database[1]]
    np.testing.assert_allclose(augmented, _unit(expected), rtol=1e-6)
    # Stateless: transform of the database equals fit_transform; alpha = 0, k = 2: the sum of all rows.
    dba = DatabaseAugmentation(2, alpha=0.0).fit(database)
    np.testing.assert_allclose(dba.transform(database), _unit(np.repeat(database.sum(0, keepdims=True), 3, 0)))


def test_chunks_give_the_same_result(clustered, monkeypatch):
    queries, database, _ = clustered
    whole = AlphaQueryExpansion(4).fit(database).transform(queries)
    augmented = DatabaseAugmentation(4).fit_transform(database)
    monkeypatch.setattr("selconv.reranking._WORK_ELEMENTS", 100)
    np.testing.assert_array_equal(AlphaQueryExpansion(4).fit(database).transform(queries), whole)
    np.testing.assert_array_equal(DatabaseAugmentation(4).fit_transform(database), augmented)


def test_binary_codes_and_bad_parameters_refused():
    codes = np.zeros((3, 2), dtype=np.uint8)
    with pytest.raises(TypeError, match="binary codes"):
        AlphaQueryExpansion().fit(codes)
    with pytest.raises(TypeError, match="binary codes"):
        DatabaseAugmentation().fit_transform(codes)
    with pytest.raises(ValueError, match="n_neighbors"):
        AlphaQueryExpansion(0).fit(np.eye(3))
    with pytest.raises(ValueError, match="alpha"):
        DatabaseAugmentation(alpha=-1.0).fit(np.eye(3))
    with pytest.raises(ValueError, match="features"):
        AlphaQueryExpansion().fit(np.eye(3)).transform(np.eye(4))


def test_evaluate_query_expansion_int_unchanged(clustered):
    queries, database, ground_truth = clustered
    # The numbers of query_expansion=5 before re-ranking became estimators: the query plus its first 5
    # database vectors, summed, l2-normalised, ranked again.
    top = rank(queries, database)[:, :5]
    expanded = queries + database[top].sum(axis=1)
    expanded /= np.linalg.norm(expanded, axis=1, keepdims=True)
    expected = tie_aware_average_precisions(similarities(expanded, database), ground_truth)
    result = evaluate(queries, database, ground_truth, query_expansion=5)
    np.testing.assert_allclose(result.average_precisions, expected, rtol=0, atol=1e-12)
    same = evaluate(queries, database, ground_truth, query_expansion=AlphaQueryExpansion(5, alpha=0.0))
    np.testing.assert_array_equal(same.average_precisions, result.average_precisions)
    np.testing.assert_array_equal(same.rankings, result.rankings)


def test_evaluate_with_dba_and_alpha_qe(clustered):
    queries, database, ground_truth = clustered
    qe, dba = AlphaQueryExpansion(3), DatabaseAugmentation(3)
    result = evaluate(queries, database, ground_truth, query_expansion=qe, database_augmentation=dba)
    augmented = DatabaseAugmentation(3).fit_transform(database)
    expanded = AlphaQueryExpansion(3).fit(augmented).transform(queries)
    expected = tie_aware_average_precisions(similarities(expanded, augmented), ground_truth)
    np.testing.assert_array_equal(result.average_precisions, expected)
    np.testing.assert_array_equal(result.rankings, rank(expanded, augmented))
    assert not hasattr(qe, "database_") and not hasattr(dba, "n_features_in_")  # the caller's are not fitted
    assert result.map > evaluate(queries, database, ground_truth).map
    codes = np.zeros((12, 2), dtype=np.uint8)
    with pytest.raises(ValueError, match="database_augmentation"):
        evaluate(codes, np.zeros((60, 2), dtype=np.uint8), ground_truth, database_augmentation=dba)
    with pytest.raises(TypeError, match="DatabaseAugmentation"):
        evaluate(queries, database, ground_truth, database_augmentation=qe)
    with pytest.raises(ValueError, match="query_expansion"):
        evaluate(queries, database, ground_truth, query_expansion=-1)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_image_index_equals_the_array_path(clustered, kind, tmp_path):
    queries, database, _ = clustered
    index = ImageIndex(kind=kind, index_params={"nlist": 2, "nprobe": 2} if kind == "ivf" else None)
    index.train(database)
    ids = index.add_descriptors(database, ids=np.arange(60) * 3 + 7)
    qe = AlphaQueryExpansion(4, alpha=3.0)
    result = index.search_descriptors(queries, 10, query_expansion=qe)
    expanded = clone(qe).fit(database).transform(queries)
    # The exact search (and here HNSW and an IVF visiting every cell) finds the same neighbours.
    np.testing.assert_array_equal(result.ids, ids[rank(expanded, database)[:, :10]])
    index.augment_database(DatabaseAugmentation(4))
    augmented = DatabaseAugmentation(4).fit_transform(database)
    result = index.search_descriptors(queries, 10, query_expansion=qe)
    expanded = clone(qe).fit(augmented).transform(queries)
    np.testing.assert_array_equal(result.ids, ids[rank(expanded, augmented)[:, :10]])
    # The augmented vectors are what is saved.
    loaded = ImageIndex.load(index.save(tmp_path / "index"))
    np.testing.assert_array_equal(loaded.search_descriptors(augmented[:5], 1).ids[:, 0], ids[:5])


def test_image_index_refuses_codes_and_wrong_estimators():
    index = ImageIndex()
    index.add_descriptors(np.zeros((4, 2), dtype=np.uint8))
    with pytest.raises(TypeError, match="binary codes"):
        index.search_descriptors(np.zeros((1, 2), dtype=np.uint8), 2, query_expansion=AlphaQueryExpansion())
    with pytest.raises(TypeError, match="binary codes"):
        index.augment_database(DatabaseAugmentation())
    real = ImageIndex()
    real.add_descriptors(np.eye(3, dtype=np.float32))
    with pytest.raises(TypeError, match="AlphaQueryExpansion"):
        real.search_descriptors(np.eye(3), 2, query_expansion=DatabaseAugmentation())
    with pytest.raises(ValueError, match="n_neighbors"):
        real.augment_database(DatabaseAugmentation(n_neighbors=0))
