"""Retrieval cross-validation: the splitters, GridSearchCV with them, and thread-independent results."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.exceptions import FitFailedWarning
from sklearn.model_selection import GridSearchCV
from test_pipelines import make_retrieval_maps, small_pipeline
from threadpoolctl import threadpool_limits

from selconv.masks import MaxMask, SumMask
from selconv.model_selection import DISTRACTOR_LABEL, LEARNING_LABEL, LearningSetSplit, RetrievalKFold, map_scorer


@pytest.fixture(scope="module")
def collection():
    """64 unlabelled learning maps followed by 6 groups of 6 labelled maps and 10 distractors."""
    learning, _ = make_retrieval_maps(n_groups=4, per_group=6, n_distractors=40, random_state=1)
    labelled, labels = make_retrieval_maps(n_groups=6, per_group=6, n_distractors=10, random_state=2)
    X = learning + labelled
    y = np.concatenate([np.full(len(learning), LEARNING_LABEL), labels])
    return X, y


def test_learning_set_split_learns_on_the_learning_images_only():
    y = np.array([LEARNING_LABEL] * 3 + [0, 0, 1, 1, DISTRACTOR_LABEL])
    [(train, test)] = list(LearningSetSplit().split(np.zeros(len(y)), y))
    assert train.tolist() == [0, 1, 2] and test.tolist() == [3, 4, 5, 6, 7]
    with pytest.raises(ValueError, match="no image of y has the learning label"):
        list(LearningSetSplit().split(np.zeros(3), np.array([0, 0, 1])))
    with pytest.raises(ValueError, match="need labels y"):
        list(LearningSetSplit().split(np.zeros(3)))


@pytest.mark.parametrize("learn_on_other_folds", [True, False])
def test_retrieval_kfold_keeps_each_label_in_one_test_fold(collection, learn_on_other_folds):
    _, y = collection
    splitter = RetrievalKFold(n_splits=3, learn_on_other_folds=learn_on_other_folds, shuffle=True, random_state=0)
    tests = []
    for train, test in splitter.split(np.zeros(len(y)), y):
        assert not set(train) & set(test)
        assert set(np.flatnonzero(y == LEARNING_LABEL)) <= set(train)
        assert LEARNING_LABEL not in set(y[test])
        if learn_on_other_folds:
            assert len(train) + len(test) == len(y)
        else:
            assert set(train) == set(np.flatnonzero(y == LEARNING_LABEL))
        tests.append(test)
    scored = np.concatenate(tests)
    assert sorted(scored) == sorted(np.flatnonzero(y != LEARNING_LABEL))
    for label in set(y[y >= 0]):
        assert sum(label in set(y[test]) for test in tests) == 1
    assert all((y[test] == DISTRACTOR_LABEL).any() for test in tests)


def test_retrieval_kfold_errors():
    y = np.array([LEARNING_LABEL, 0, 0, 1, 1])
    with pytest.raises(ValueError, match="n_splits=3 folds need at least as many label groups; y has 2"):
        list(RetrievalKFold(3).split(np.zeros(5), y))
    with pytest.raises(ValueError, match="n_splits must be an integer >= 2"):
        list(RetrievalKFold(1).split(np.zeros(5), y))
    with pytest.raises(ValueError, match="a fold has no learning image"):
        list(RetrievalKFold(2, learn_on_other_folds=False).split(np.zeros(4), np.array([0, 0, 1, 1])))


def _independent_leave_one_out_map(descriptors, labels):
    """Every labelled image a query against all others (itself excluded); compute_ap.cpp loop, no ties."""
    aps = []
    for q in np.flatnonzero(labels >= 0):
        positives = set(np.flatnonzero((labels == labels[q]) & (np.arange(len(labels)) != q)))
        if not positives:
            continue
        order = [i for i in np.argsort(-(descriptors @ descriptors[q]), kind="stable") if i != q]
        hits, ap, old_precision = 0, 0.0, 1.0
        for rank, item in enumerate(order):
            hits += item in positives
            precision = hits / (rank + 1)
            if item in positives:
                ap += (old_precision + precision) / 2 / len(positives)
            old_precision = precision
        aps.append(ap)
    return float(np.mean(aps))


def test_grid_search_learns_on_the_learning_images_and_scores_leave_one_out(collection):
    X, y = collection
    search = GridSearchCV(
        small_pipeline(),
        {"power__alpha": [0.5]},
        scoring=map_scorer,
        cv=LearningSetSplit(),
        error_score="raise",
        refit=False,
    )
    search.fit(X, y)
    # The same fit and score written out by hand.
    learning = y == LEARNING_LABEL
    pipeline = small_pipeline().fit([x for x, keep in zip(X, learning) if keep])
    descriptors = pipeline.transform([x for x, keep in zip(X, learning) if not keep])
    expected = _independent_leave_one_out_map(descriptors.astype(np.float64), y[~learning])
    assert search.cv_results_["mean_test_score"][0] == pytest.approx(expected, abs=1e-9)
    assert expected > 0.5


def _scores(collection, n_jobs):
    X, y = collection
    grid = {"mask": [MaxMask(), SumMask()], "encode__embedding__n_clusters": [5, 6], "power__alpha": [0.5, 1.0]}
    search = GridSearchCV(
        small_pipeline(),
        grid,
        scoring=map_scorer,
        cv=RetrievalKFold(3),
        n_jobs=n_jobs,
        error_score="raise",
        refit=False,
    )
    search.fit(X, y)
    return {key: value for key, value in search.cv_results_.items() if key.endswith("test_score")}


@pytest.mark.slow
def test_cv_results_do_not_depend_on_n_jobs_or_blas_threads(collection):
    reference = _scores(collection, n_jobs=1)
    assert np.isfinite(reference["mean_test_score"]).all()
    with threadpool_limits(2, user_api="blas"):
        two_threads = _scores(collection, n_jobs=1)
    two_jobs = _scores(collection, n_jobs=2)
    for other in (two_threads, two_jobs):
        for key, value in reference.items():
            np.testing.assert_array_equal(other[key], value, err_msg=key)


def test_a_fold_that_cannot_determine_the_rotation_fails_with_the_reason(collection):
    X, y = collection
    labelled = y != LEARNING_LABEL
    X_small = [x for x, keep in zip(X, labelled) if keep]
    y_small = y[labelled]
    # Without learning images each fold learns on ~30 images: fewer than the 48 rotated dimensions.
    search = GridSearchCV(small_pipeline(), {"power__alpha": [0.5]}, scoring=map_scorer, cv=RetrievalKFold(3))
    with pytest.raises(ValueError, match="(?s)All the 3 fits failed.*determine only.*undetermined='drop'"):
        search.fit(X_small, y_small)
    # Candidates that can be fitted are scored; the others score NaN and GridSearchCV says why.
    grid = [{"rotate__undetermined": ["drop"], "rotate__n_dropped": [0]}, {"rotate__undetermined": ["raise"]}]
    search = GridSearchCV(small_pipeline(), grid, scoring=map_scorer, cv=RetrievalKFold(3), refit=False)
    with pytest.warns(FitFailedWarning, match="determine only"):
        search.fit(X_small, y_small)
    scores = search.cv_results_["mean_test_score"]
    assert np.isfinite(scores[0]) and np.isnan(scores[1])
