"""Aggregators (docs/how-it-works.md, section 5): ragged -> one 2-D array, democratic weights, empty images."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import make_local_sets
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.utils._param_validation import InvalidParameterError

from selconv._linalg import l2_normalize_rows
from selconv.aggregation import (
    AveragePooling,
    DemocraticAggregator,
    EmptyImageWarning,
    GeneralizedMaxPooling,
    MaxPooling,
    SumPooling,
)
from selconv.utils.estimator_checks import check_data_free, check_fit_transform

AGGREGATORS = [
    DemocraticAggregator(),
    DemocraticAggregator(n_iter=3, gamma=0.3),
    SumPooling(),
    AveragePooling(),
    MaxPooling(),
    GeneralizedMaxPooling(),
    GeneralizedMaxPooling(reg=0.1),
]
IDS = [repr(a) for a in AGGREGATORS]


def _normalized(Y):
    return Y / np.linalg.norm(Y, axis=1, keepdims=True)


def _authors_democratic(Y, n_iter=10, gamma=0.5):
    """The authors' modified Sinkhorn as written in docs/how-it-works.md, section 5 (rescaling G itself), in float64."""
    Y = _normalized(np.asarray(Y, dtype=np.float64))
    gram = Y @ Y.T
    gram = (gram + np.abs(gram)) / 2
    weights = np.ones(len(Y))
    for _ in range(n_iter):
        delta = gram.sum(axis=0) ** -gamma
        gram = delta[:, None] * gram * delta[None, :]
        weights = weights * delta
    return weights, weights @ Y


@pytest.mark.parametrize("aggregator", AGGREGATORS, ids=IDS)
def test_data_free_and_fit_transform_hygiene(aggregator):
    check_data_free(aggregator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyImageWarning)
        check_fit_transform(aggregator, make_local_sets())


@pytest.mark.parametrize("aggregator", AGGREGATORS, ids=IDS)
def test_one_float32_row_per_image_and_empty_images(aggregator):
    sets = make_local_sets(counts=(9, 0, 23, 4, 0, 1, 30), n_features=16)
    aggregator.fit(sets)
    with pytest.warns(EmptyImageWarning, match=r"2 of 7 images have no local feature.*indices: 1, 4\)"):
        out = aggregator.transform(sets)
    assert out.shape == (7, 16) and out.dtype == np.float32
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[[1, 4]], 0.0)
    assert np.all(np.linalg.norm(out[[0, 2, 3, 5, 6]], axis=1) > 0)
    assert issubclass(EmptyImageWarning, UserWarning)


@pytest.mark.parametrize("aggregator", AGGREGATORS, ids=IDS)
def test_feature_names_and_set_output(aggregator):
    sets = make_local_sets(counts=(3, 5), n_features=4)
    aggregator.fit(sets)
    prefix = type(aggregator).__name__.lower()
    assert list(aggregator.get_feature_names_out()) == [f"{prefix}{i}" for i in range(4)]
    assert isinstance(aggregator.set_output(transform="default").transform(sets), np.ndarray)


def test_simple_poolings_match_their_definitions():
    sets = make_local_sets(counts=(9, 23, 1), n_features=8, nonnegative=False)
    for aggregator, reference in [
        (SumPooling(), lambda Y: Y.sum(0)),
        (AveragePooling(), lambda Y: Y.mean(0)),
        (MaxPooling(), lambda Y: Y.max(0)),
    ]:
        out = aggregator.fit_transform(sets)
        np.testing.assert_allclose(out, np.stack([reference(Y) for Y in sets]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n_iter, gamma", [(10, 0.5), (0, 0.5), (4, 0.8)])
def test_democratic_matches_the_authors_iteration(n_iter, gamma):
    sets = make_local_sets(counts=(9, 23, 1, 40), n_features=12, nonnegative=False)
    aggregator = DemocraticAggregator(n_iter, gamma=gamma).fit(sets)
    out = aggregator.transform(sets)
    for Y, psi in zip(sets, out):
        weights, reference = _authors_democratic(Y, n_iter, gamma)
        np.testing.assert_allclose(aggregator.democratic_weights(Y), weights, rtol=1e-4)
        np.testing.assert_allclose(psi, reference, rtol=1e-4, atol=1e-5)


def test_democratic_without_normalising_the_rows_equals_the_normalising_path():
    # transform folds the row norms into the iteration (from the Gram matrix's diagonal) instead of normalising
    # the rows: the same numbers to float32 rounding on rows of any scale; rows whose sum of squares underflows
    # (or is zero) send the image through the normalising path itself, exactly.
    rng = np.random.default_rng(5)
    aggregator = DemocraticAggregator().fit([np.zeros((0, 16), np.float32)])
    scaled = (rng.standard_normal((60, 16)) * 10.0 ** rng.uniform(-3, 3, (60, 1))).astype(np.float32)
    tiny = scaled.copy()
    tiny[3] = 1e-30
    for Y, rtol in ((scaled, 1e-5), (tiny, 0.0)):
        expected = aggregator.democratic_weights(Y) @ l2_normalize_rows(Y)
        np.testing.assert_allclose(aggregator.transform([Y])[0], expected, rtol=rtol, atol=1e-6 if rtol else 0)


def test_democratic_skips_zero_local_features():
    Y = np.array([[1, 0, 0], [0, 0, 0], [0, 2, 0]], np.float32)
    aggregator = DemocraticAggregator().fit([Y])
    weights = aggregator.democratic_weights(Y)
    assert weights[1] == 0 and np.isfinite(weights).all()
    np.testing.assert_allclose(aggregator.transform([Y])[0], [1, 1, 0], rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(n_local=st.integers(2, 40), n_features=st.integers(2, 20), seed=st.integers(0, 2**16))
def test_democratic_equalises_contributions(n_local, n_features, seed):
    # Non-negative features: every pairwise similarity is >= 0, so clipping G changes nothing and the
    # Sinkhorn fixed point gives each feature the same share lambda_i y_i^T psi of psi^T psi.
    rng = np.random.default_rng(seed)
    Y = np.abs(rng.standard_normal((n_local, n_features))).astype(np.float32)
    Y[: n_local // 2] += 3 * rng.random(n_features).astype(np.float32)  # a burst of similar features
    aggregator = DemocraticAggregator(n_iter=30).fit([Y])
    weights = aggregator.democratic_weights(Y)
    psi = aggregator.transform([Y])[0]
    contributions = weights * (_normalized(Y) @ psi)
    np.testing.assert_allclose(contributions, contributions.mean(), rtol=1e-3)
    np.testing.assert_allclose(contributions.sum(), psi @ psi, rtol=1e-4)
    # With the default 10 steps the contributions are already close to equal; sum pooling's are not.
    ten = DemocraticAggregator().fit([Y])
    ten_contributions = ten.democratic_weights(Y) * (_normalized(Y) @ ten.transform([Y])[0])
    assert ten_contributions.std() <= 0.05 * ten_contributions.mean()


def test_democratic_reduces_the_weight_of_a_burst():
    burst = np.tile(np.array([[1.0, 0.1, 0.0]], np.float32), (10, 1))
    lonely = np.array([[0.0, 0.1, 1.0]], np.float32)
    Y = np.vstack([burst, lonely])
    psi = DemocraticAggregator().fit([Y]).transform([Y])[0]
    summed = _normalized(Y).sum(axis=0)
    assert summed[0] / summed[2] > 9
    assert 0.9 < psi[0] / psi[2] * np.sqrt(1 / 10) < 1.1  # the burst now weighs sqrt(10) instead of 10


@settings(max_examples=20, deadline=None)
@given(n_local=st.integers(1, 30), seed=st.integers(0, 2**16), which=st.integers(0, len(AGGREGATORS) - 1))
def test_invariant_to_the_order_of_local_features(n_local, seed, which):
    rng = np.random.default_rng(seed)
    Y = rng.standard_normal((n_local, 8)).astype(np.float32)
    aggregator = AGGREGATORS[which].fit([Y])
    permuted = Y[rng.permutation(n_local)]
    np.testing.assert_allclose(aggregator.transform([Y]), aggregator.transform([permuted]), rtol=1e-4, atol=1e-5)


def test_generalized_max_pooling_matches_the_primal_problem():
    rng = np.random.default_rng(1)
    Y = rng.standard_normal((30, 10)).astype(np.float32)
    reg = 0.5
    psi = GeneralizedMaxPooling(reg=reg).fit([Y]).transform([Y])[0]
    Y64 = Y.astype(np.float64)
    # argmin ||Y psi - 1||^2 + reg ||psi||^2 in its primal (D x D) form.
    primal = np.linalg.solve(Y64.T @ Y64 + reg * np.eye(10), Y64.T @ np.ones(30))
    np.testing.assert_allclose(psi, primal, rtol=1e-4, atol=1e-5)


def test_generalized_max_pooling_equalises_similarities():
    Y = np.abs(np.random.default_rng(2).standard_normal((6, 20))).astype(np.float32)
    Y[:3] += 5.0  # a burst
    psi = GeneralizedMaxPooling(reg=1e-4).fit([Y]).transform([Y])[0]
    np.testing.assert_allclose(Y @ psi, 1.0, atol=1e-3)


def test_bad_input_errors():
    aggregator = DemocraticAggregator().fit(make_local_sets(counts=(3, 4), n_features=5))
    with pytest.raises(TypeError, match="list"):
        aggregator.transform(np.ones((3, 5), np.float32))
    with pytest.raises(ValueError, match="fitted with 5"):
        aggregator.transform([np.ones((3, 4), np.float32)])
    with pytest.raises(ValueError, match="earlier images have 5"):
        aggregator.transform([np.ones((3, 5), np.float32), np.ones((3, 4), np.float32)])
    with pytest.raises(InvalidParameterError):
        DemocraticAggregator(n_iter=-1).fit([np.ones((3, 5), np.float32)])
    with pytest.raises(InvalidParameterError):
        GeneralizedMaxPooling(reg=0.0).fit([np.ones((3, 5), np.float32)])
