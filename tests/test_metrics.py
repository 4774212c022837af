"""Oxford AP, mAP, N-S score, evaluate and the GridSearchCV scorer."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.model_selection import GridSearchCV, KFold

from selconv.metrics import (
    NoPositiveWarning,
    average_precision,
    average_precisions,
    evaluate,
    mean_average_precision,
    ns_score,
    tie_aware_average_precisions,
)
from selconv.model_selection import DISTRACTOR_LABEL, make_map_scorer, map_scorer


def reference_ap(ranking, positives, junk):
    """compute_ap.cpp of the Oxford Buildings dataset, transcribed loop for loop (junk tested first)."""
    positives, junk = set(positives), set(junk)
    old_recall, old_precision, ap, intersect, j = 0.0, 1.0, 0.0, 0, 0
    for item in ranking:
        if item in junk:
            continue
        if item in positives:
            intersect += 1
        recall = intersect / len(positives)
        precision = intersect / (j + 1.0)
        ap += (recall - old_recall) * ((old_precision + precision) / 2.0)
        old_recall, old_precision = recall, precision
        j += 1
    return ap


class TestAveragePrecision:
    def test_hand_computed_without_junk(self):
        # positives at ranks 1 and 3: ((0 + 1/2)/2 + (1/3 + 2/4)/2) / 2 = 1/3
        assert average_precision([0, 1, 2, 3, 4], [1, 3]) == pytest.approx(1 / 3)

    def test_positive_at_rank_zero(self):
        # ranks 0 and 2: ((1 + 1)/2 + (1/2 + 2/3)/2) / 2 = 19/24
        assert average_precision([7, 3, 9, 4], [7, 9]) == pytest.approx(19 / 24)
        assert average_precision([7, 3, 9], [7]) == 1.0

    def test_junk_is_removed_before_ranking(self):
        # 0 is junk: ranking becomes 5, 1, 2 and the positive 1 sits at r = 1: (0 + 1/2)/2
        assert average_precision([5, 0, 1, 2], [1], [0]) == pytest.approx(0.25)
        # junk ahead of every positive restores AP = 1
        assert average_precision([4, 8, 2, 6], [2, 6], [4, 8]) == 1.0

    def test_unranked_positive_counts_in_n(self):
        # partial ranking: positive 9 never appears, so only half the recall is reached
        assert average_precision([1, 2], [1, 9]) == pytest.approx(0.5)

    def test_positive_also_junk_is_skipped_but_counted_in_n(self):
        # compute_ap.cpp tests the junk set first: the only positive is never reached.
        assert average_precision([3, 1], [1], [1, 3]) == 0.0

    def test_no_positive_is_nan_and_warns(self):
        with pytest.warns(NoPositiveWarning):
            assert np.isnan(average_precision([0, 1, 2], [], [1]))

    def test_ap_of_a_ranking_follows_its_order(self):
        # A ranking carries no scores: two orders differ (evaluate and the scorer are tie-aware, from scores)
        assert average_precision([0, 1], [1]) == pytest.approx(0.25)
        assert average_precision([1, 0], [1]) == 1.0

    def test_bad_input(self):
        with pytest.raises(ValueError, match="1-D"):
            average_precision([[0, 1]], [1])
        with pytest.raises(ValueError, match="negative"):
            average_precision([0, 1], [-1])
        with pytest.raises(ValueError, match="integer"):
            average_precision([0, 1], [0.5])
        with pytest.raises(ValueError, match="positives"):
            average_precisions([[0, 1]], [{"junk": [0]}])
        with pytest.raises(ValueError, match="2 entries"):
            average_precisions([[0, 1]], [{"positives": [0]}, {"positives": [1]}])


@st.composite
def ranking_problems(draw):
    n = draw(st.integers(1, 25))
    ranking = draw(st.permutations(range(n)))
    positives = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
    junk = draw(st.lists(st.integers(0, n - 1), max_size=n, unique=True))
    return np.array(ranking), np.array(positives), np.array(junk, dtype=np.int64)


@settings(max_examples=60, deadline=None)
@given(ranking_problems())
def test_ap_matches_reference_and_is_in_unit_interval(problem):
    ranking, positives, junk = problem
    ap = average_precision(ranking, positives, junk)
    assert ap == pytest.approx(reference_ap(ranking, positives, junk))
    assert 0.0 <= ap <= 1.0


@settings(max_examples=40, deadline=None)
@given(ranking_problems())
def test_ap_is_one_when_positives_come_first(problem):
    ranking, positives, junk = problem
    junk = np.setdiff1d(junk, positives)
    others = np.array([i for i in ranking if i not in set(positives)], dtype=np.int64)
    assert average_precision(np.concatenate([positives, others]), positives, junk) == 1.0


@settings(max_examples=40, deadline=None)
@given(ranking_problems())
def test_ap_invariant_to_dropping_junk_from_the_ranking(problem):
    ranking, positives, junk = problem
    junk = np.setdiff1d(junk, positives)
    without_junk = ranking[~np.isin(ranking, junk)]
    assert average_precision(ranking, positives, junk) == pytest.approx(average_precision(without_junk, positives))


def test_mean_average_precision_names_queries_without_positives():
    rankings = np.array([[0, 1, 2], [2, 1, 0], [0, 1, 2]])
    gt = [{"positives": [0], "junk": []}, {"positives": [], "junk": [2]}, {"positives": [1]}]
    with pytest.warns(NoPositiveWarning, match=r"\[1\]"):
        value = mean_average_precision(rankings, gt)
    assert value == pytest.approx((1.0 + 0.25) / 2)
    aps = average_precisions(rankings, gt)
    assert aps[0] == 1.0 and np.isnan(aps[1]) and aps[2] == pytest.approx(0.25)


def test_ns_score():
    rankings = np.array([[0, 1, 2, 3, 4, 5], [5, 4, 0, 1, 2, 3]])
    gt = [{"positives": [0, 1, 2, 3]}, {"positives": [0, 1, 2, 3], "junk": [5]}]
    # query 0: 4 hits; query 1 (junk 5 removed): 4, 0, 1, 2 -> 3 hits
    assert ns_score(rankings, gt) == pytest.approx(3.5)
    assert ns_score(rankings, gt, top=1) == pytest.approx(0.5)


class TestEvaluate:
    def test_real_descriptors_and_query_expansion(self):
        rng = np.random.default_rng(0)
        centres = rng.standard_normal((10, 32))
        database = np.repeat(centres, 6, axis=0) + 0.3 * rng.standard_normal((60, 32))
        database /= np.linalg.norm(database, axis=1, keepdims=True)
        queries = centres + 0.3 * rng.standard_normal((10, 32))
        gt = [{"positives": np.arange(6 * q, 6 * q + 6), "junk": []} for q in range(10)]
        result = evaluate(queries, database, gt)
        assert result.metric == "ip" and result.rankings.shape == (10, 60)
        assert result.map == pytest.approx(np.mean(result.average_precisions))
        assert result.map > 0.9
        expanded = evaluate(queries, database, gt, query_expansion=5)
        assert expanded.map >= result.map - 0.05

    def test_auto_metric_uses_hamming_for_codes(self):
        database = np.array([[0b11110000], [0b11111111], [0b00000000]], dtype=np.uint8)
        queries = np.array([[0b11111110]], dtype=np.uint8)
        result = evaluate(queries, database, [{"positives": [1], "junk": []}])
        assert result.metric == "hamming"
        assert result.rankings.tolist() == [[1, 0, 2]]
        with pytest.raises(ValueError, match="query_expansion"):
            evaluate(queries, database, [{"positives": [1]}], query_expansion=5)

    def test_query_without_positive_reported(self):
        database = np.eye(3)
        with pytest.warns(NoPositiveWarning):
            result = evaluate(np.eye(3)[:2], database, [{"positives": [0]}, {"positives": []}])
        assert result.queries_without_positives.tolist() == [1]
        assert result.map == 1.0

    def test_thousands_of_images(self):
        rng = np.random.default_rng(1)
        database = rng.standard_normal((3000, 128)).astype(np.float32)
        queries = database[:200] + 0.1 * rng.standard_normal((200, 128)).astype(np.float32)
        gt = [{"positives": [q], "junk": [q + 1]} for q in range(200)]
        result = evaluate(queries, database, gt)
        assert result.map == 1.0


class Normalize(TransformerMixin, BaseEstimator):
    """Toy estimator: keep the first n_dims columns, then l2-normalise."""

    def __init__(self, n_dims=2):
        self.n_dims = n_dims

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        X = np.asarray(X)[:, : self.n_dims]
        return X / np.linalg.norm(X, axis=1, keepdims=True)


def labelled_data(random_state=0):
    # 8 classes x 5 images; the class signal is in columns 2..5, columns 0..1 are noise
    rng = np.random.default_rng(random_state)
    y = np.repeat(np.arange(8), 5)
    X = rng.standard_normal((40, 6))
    X[:, 2:] += 4 * rng.standard_normal((8, 4))[y]
    return X, y


class TestScorer:
    def test_scorer_values(self):
        X, y = labelled_data()
        good, bad = map_scorer(Normalize(6), X, y), map_scorer(Normalize(2), X, y)
        assert 0.0 <= bad < good <= 1.0
        assert good > 0.8

    def test_distractors_are_never_queries_nor_positives(self):
        X = np.array([[1.0, 0.0], [0.9, 0.1], [1.0, 0.01], [0.0, 1.0]])
        # the distractor (index 2) sits between the two class-0 images in every ranking
        assert map_scorer(Normalize(2), X, [0, 0, DISTRACTOR_LABEL, 1]) < 1.0
        assert map_scorer(Normalize(2), X, [0, 0, None, 1]) < 1.0
        assert map_scorer(Normalize(2), X, [0, 0, 5, 1]) < 1.0
        # as a member of class 0 it would be a positive instead: perfect ranking
        assert map_scorer(Normalize(2), X, [0, 0, 0, 1]) == 1.0
        assert make_map_scorer(distractor_label="junk")(Normalize(2), X, ["a", "a", "junk", "b"]) < 1.0

    def test_scorer_errors(self):
        X, _ = labelled_data()
        with pytest.raises(TypeError, match="labels"):
            map_scorer(Normalize(), X, None)
        with pytest.raises(ValueError, match="no image shares its label"):
            map_scorer(Normalize(), X, np.arange(len(X)))
        with pytest.raises(ValueError, match="metric"):
            make_map_scorer(metric="l2")

    def test_in_grid_search(self):
        X, y = labelled_data()
        search = GridSearchCV(
            Normalize(), {"n_dims": [2, 6]}, scoring=map_scorer, cv=KFold(2, shuffle=True, random_state=0)
        ).fit(X, y)
        assert search.best_params_ == {"n_dims": 6}
        assert 0.0 < search.best_score_ <= 1.0
        assert repr(pickle.loads(pickle.dumps(map_scorer))) == repr(map_scorer)


# ------------------------------------------------------------------------------------- tied scores


def _brute_force_tie_aware_ap(scores, positives, junk):
    """Mean Oxford AP over every ordering of the tied groups (enumerated: tiny inputs only)."""
    import itertools

    order = np.argsort(-scores, kind="stable")
    groups = [list(g) for _, g in itertools.groupby(order, key=lambda i: scores[i])]
    aps = [
        average_precision(np.concatenate(choice), positives, junk)
        for choice in itertools.product(*[list(itertools.permutations(g)) for g in groups])
    ]
    return float(np.mean(aps))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_tie_aware_ap_equals_the_mean_over_all_orders_of_ties(data):
    n = data.draw(st.integers(2, 7))
    scores = np.array(data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)), dtype=np.float64)
    positives = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
    junk = data.draw(st.lists(st.sampled_from([i for i in range(n) if i not in positives] or [None]), max_size=2))
    junk = [j for j in set(junk) if j is not None]
    got = tie_aware_average_precisions(scores[None, :], [{"positives": positives, "junk": junk}])[0]
    assert got == pytest.approx(_brute_force_tie_aware_ap(scores, positives, junk), abs=1e-12)


def test_tie_aware_ap_without_ties_equals_the_ranking_ap():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((6, 40))
    gt = [{"positives": rng.choice(40, 5, replace=False), "junk": [i]} for i in range(6)]
    gt = [{"positives": np.setdiff1d(g["positives"], g["junk"]), "junk": g["junk"]} for g in gt]
    ranking = np.argsort(-scores, axis=1)
    np.testing.assert_allclose(tie_aware_average_precisions(scores, gt), average_precisions(ranking, gt), atol=1e-12)


def test_tied_descriptors_score_the_same_sorted_or_shuffled():
    """Constant descriptors (and coarse codes) must not score by database order."""
    labels = np.repeat(np.arange(6), 5)
    constant = np.ones((len(labels), 8), dtype=np.float32)

    class Identity:
        def transform(self, X):
            return X

    sorted_score = map_scorer(Identity(), constant, labels)
    permutation = np.random.default_rng(0).permutation(len(labels))
    shuffled_score = map_scorer(Identity(), constant[permutation], labels[permutation])
    assert sorted_score == pytest.approx(shuffled_score, abs=1e-12)
    codes = np.packbits(np.random.default_rng(1).integers(0, 2, size=(len(labels), 8)).astype(np.uint8), axis=1)
    codes[:, 0] &= 0b11000000  # 2 free bits: heavy Hamming ties
    sorted_codes = map_scorer(Identity(), codes, labels)
    shuffled_codes = map_scorer(Identity(), codes[permutation], labels[permutation])
    assert sorted_codes == pytest.approx(shuffled_codes, abs=1e-12)


def test_an_image_both_positive_and_junk_is_junk_but_counts_among_the_positives():
    """As the official Oxford compute_ap.cpp: the junk set is tested first; N still counts the image."""
    # Ranking 0, 1, 2 with positives {0, 1} and junk {0}: only 1 is a retrieved positive, at rank 0
    # of the junk-free list: AP = 1/2 * (1 + 1) / 2 = 0.5.
    assert average_precision([0, 1, 2], positives=[0, 1], junk=[0]) == pytest.approx(0.5)
