"""EncodeAggregate: embedding + aggregation streamed over chunks of images, same numbers as the two stages."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import make_local_sets

from selconv.aggregation import DemocraticAggregator, EmptyImageWarning, MaxPooling
from selconv.embedding import TriangulationEmbedding, VLADEmbedding
from selconv.encoding import EncodeAggregate
from selconv.utils.estimator_checks import check_data_free, check_fit_transform

COUNTS = (90, 0, 230, 40, 150, 1, 300, 0, 120)


class RecordingTemb(TriangulationEmbedding):
    """Records the number of local features of every transform call."""

    calls: list = []

    def transform(self, X):
        RecordingTemb.calls.append(sum(len(x) for x in X))
        return super().transform(X)


def sets(random_state=0):
    return make_local_sets(counts=COUNTS, n_features=8, random_state=random_state, nonnegative=False)


def test_data_free_and_fit_transform_hygiene():
    check_data_free(EncodeAggregate(TriangulationEmbedding(4, n_clamped=2, random_state=0), working_memory=0.01))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyImageWarning)
        check_fit_transform(EncodeAggregate(TriangulationEmbedding(4, n_clamped=2, random_state=0)), sets())


@pytest.mark.parametrize(
    ("embedding", "aggregator"),
    [
        (TriangulationEmbedding(4, n_clamped=2, random_state=0), DemocraticAggregator()),
        (VLADEmbedding(3, random_state=0), MaxPooling()),
    ],
)
def test_equals_aggregator_of_embedding_in_any_chunking(embedding, aggregator):
    train, test = sets(0), sets(1)
    embedded = embedding.fit(train).transform(test)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyImageWarning)
        expected = aggregator.fit(embedded).transform(embedded)
    # 0.01 MiB = 80 embedded rows of 32 floats: every image is a chunk of its own.
    for working_memory in (0.01, 0.05, 64):
        encode = EncodeAggregate(embedding, aggregator, working_memory=working_memory).fit(train)
        with pytest.warns(EmptyImageWarning, match=r"2 of 9 images .*indices: 1, 7\)"):
            out = encode.transform(test)
        assert out.dtype == np.float32 and out.shape == expected.shape
        # float32 sums in another order (and BLAS thread count): agreement to 1e-5 of the largest entry.
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
        assert not out[[1, 7]].any()
    assert encode.get_feature_names_out()[0] == "encodeaggregate0"


def test_memory_is_bounded_by_the_chunk():
    """No transform call of the embedding holds more than working_memory of embedded rows (or one image)."""
    RecordingTemb.calls = []
    embedding = RecordingTemb(4, n_clamped=2, random_state=0)
    encode = EncodeAggregate(embedding, working_memory=0.05).fit(sets())  # 0.05 MiB = 409 rows of 32 floats
    RecordingTemb.calls = []
    encode.transform(sets(1))
    assert len(RecordingTemb.calls) > 2
    assert max(RecordingTemb.calls) <= max(409, max(COUNTS))
    assert sum(RecordingTemb.calls) == sum(COUNTS)


def test_defaults_are_the_paper_stages_and_params_are_nested():
    encode = EncodeAggregate().fit(make_local_sets(counts=(400, 300, 0, 500), n_features=4, random_state=0))
    assert isinstance(encode.embedding_, TriangulationEmbedding) and isinstance(
        encode.aggregator_, DemocraticAggregator
    )
    assert encode.embedding is None  # fit never modifies a parameter
    assert encode.n_embedded_features_ == 20 * 4
    tuned = EncodeAggregate(TriangulationEmbedding()).set_params(embedding__n_clusters=5)
    assert tuned.get_params()["embedding__n_clusters"] == 5


def test_rejects_a_single_array():
    with pytest.raises(TypeError, match="expects a list"):
        EncodeAggregate().fit(np.zeros((10, 4), np.float32))
