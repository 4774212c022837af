"""The evaluation library behind `selconv demo` and `evaluate`: scores per dataset, ITQ lengths, cache, reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from selconv.datasets import RetrievalDataset
from selconv.datasets.base import make_ground_truth
from selconv.evaluation import default_cache_dir, itq_bits_problem, random_ranking_map
from selconv.evaluation._benchmark import _score


class _OneMethod:
    """Stands for the fitted methods: one descriptor ranking query 0 as 0, 2, 1, 3 and query 1 as 1, 3, 2, 0."""

    def rows(self, described):
        queries = np.array([[0.9, 0.1, 0.5, 0.0], [0.0, 0.9, 0.1, 0.5]], dtype=np.float32)
        yield {"kind": "real", "descriptor": "toy", "size": "4-D", "label": "toy"}, queries, np.eye(4, dtype=np.float32)


@pytest.mark.parametrize(("scores", "has_ns"), [(("mAP",), False), (("mAP", "N-S"), True)])
def test_the_dataset_says_which_scores_are_reported(scores, has_ns):
    dataset = RetrievalDataset(
        name="toy",
        root=Path("."),
        database=[f"{i}.jpg" for i in range(4)],
        queries=["0.jpg", "1.jpg"],
        ground_truth=[make_ground_truth([0, 2]), make_ground_truth([1, 3])],
        scores=scores,
    )
    result = _score(dataset, _OneMethod(), None, random_state=0, say=lambda text="": None)
    row = result.rows[0]
    assert row["mAP"] == pytest.approx(1.0)  # both positives first, for both queries
    assert ("N-S" in row) == has_ns
    if has_ns:
        assert row["N-S"] == pytest.approx(2.0)  # both positives of each query among its top 4
    assert result.rows[-1]["kind"] == "random" and list(result.rankings) == ["toy"]
    np.testing.assert_array_equal(result.rankings["toy"], [[0, 2, 1, 3], [1, 3, 2, 0]])


def test_itq_lengths_a_training_set_cannot_support():
    assert itq_bits_problem(32, 40, 640) is None
    assert "needs more than 64 training images" in itq_bits_problem(64, 40, 640)
    assert "at least 64 dimensions" in itq_bits_problem(64, 1000, 48)


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SELCONV_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("SELCONV_CACHE_DIR")
    assert default_cache_dir() == Path("selconv-output") / "cache"


def test_random_ranking_reference_is_seeded_and_near_chance():
    ground_truth = [make_ground_truth([i]) for i in range(50)]
    first = random_ranking_map(50, ground_truth, random_state=3)
    assert first == random_ranking_map(50, ground_truth, random_state=3)
    assert first != random_ranking_map(50, ground_truth, random_state=4)
    assert 0.05 < first < 0.15  # one positive among 50: expected AP = H(50) / 50 ~ 0.09
