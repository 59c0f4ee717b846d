"""Hand-checked small cases for weightspace.evaluate.metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightspace.evaluate import (
    kendall_tau,
    mean_absolute_error,
    mean_reciprocal_rank,
    r2_score,
    recall_at_k,
)

RANKED = np.array([[3, 1, 2], [0, 2, 1]])
RELEVANT = [{1}, {5}]


def test_recall_at_k_from_ranked_ids() -> None:
    # query 0 finds id 1 at rank 2; query 1 never finds id 5.
    assert recall_at_k(RANKED, RELEVANT, 1) == 0.0
    assert recall_at_k(RANKED, RELEVANT, 2) == 0.5
    assert recall_at_k(RANKED, RELEVANT, 10) == 0.5
    assert isinstance(recall_at_k(RANKED, RELEVANT, 1), float)


def test_recall_at_k_from_scores() -> None:
    scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.2, 0.8]])
    # rankings: [1, 2, 0] and [2, 0, 1]; relevant items sit at rank 2 in both.
    relevant = [{2}, {0}]
    assert recall_at_k(scores, relevant, 1, scores=True) == 0.0
    assert recall_at_k(scores, relevant, 2, scores=True) == 1.0
    assert mean_reciprocal_rank(scores, relevant, scores=True) == 0.5


def test_mean_reciprocal_rank_hand_case() -> None:
    # 1/2 for query 0, 0 for query 1.
    assert mean_reciprocal_rank(RANKED, RELEVANT) == 0.25
    assert mean_reciprocal_rank(np.array([[7, 8], [8, 7]]), [{7, 8}, {7}]) == 0.75


def test_retrieval_metrics_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="one set per query"):
        recall_at_k(RANKED, [{1}], 1)
    with pytest.raises(ValueError, match="k must be"):
        recall_at_k(RANKED, RELEVANT, 0)
    with pytest.raises(ValueError, match="empty relevant set"):
        mean_reciprocal_rank(RANKED, [{1}, set()])
    with pytest.raises(ValueError, match="2-D"):
        recall_at_k(np.array([1, 2, 3]), [{1}], 1)
    with pytest.raises(ValueError, match="NaN"):
        recall_at_k(np.array([[np.nan, 1.0]]), [{1}], 1, scores=True)


def test_kendall_tau_hand_cases() -> None:
    # one discordant pair out of six: (5 - 1) / 6.
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # tau-b with ties: C=4, D=0, one pair tied only in x, one only in y -> 4 / sqrt(5 * 5).
    assert kendall_tau([1, 2, 2, 3], [1, 2, 3, 3]) == pytest.approx(0.8)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))


def test_r2_and_mae_hand_cases() -> None:
    # SS_res = 1, SS_tot = 2.
    assert r2_score([1, 2, 3], [1, 2, 4]) == pytest.approx(0.5)
    assert r2_score([1, 2, 3], [2, 2, 2]) == pytest.approx(0.0)
    assert r2_score([1, 2, 3], [3, 2, 1]) == pytest.approx(-3.0)
    assert mean_absolute_error([1, 2, 3], [1, 2, 4]) == pytest.approx(1 / 3)
    assert mean_absolute_error([0.5], [-0.5]) == 1.0


def test_regression_metrics_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="equal length"):
        r2_score([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="constant"):
        r2_score([1, 1], [1, 2])
    with pytest.raises(ValueError, match="NaN"):
        mean_absolute_error([1, np.nan], [1, 2])
    with pytest.raises(ValueError, match="empty"):
        mean_absolute_error([], [])


@settings(max_examples=30, deadline=None)
# Values on a 1e-3 grid: spreads like [0, 5e-254] underflow the variance to zero (R² undefined).
@given(
    st.lists(
        st.integers(-(10**6), 10**6).map(lambda i: i / 1000), min_size=2, max_size=30, unique=True
    )
)
def test_perfect_predictions_score_perfectly(values: list[float]) -> None:
    assert kendall_tau(values, values) == pytest.approx(1.0)
    assert r2_score(values, values) == pytest.approx(1.0)
    assert mean_absolute_error(values, values) == 0.0
    # a strictly increasing transform keeps the ranking.
    assert kendall_tau(values, np.asarray(values) * 3.0) == pytest.approx(1.0)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(2, 12), st.integers(0, 10_000))
def test_recall_is_monotone_in_k_and_bounded_by_mrr(num_queries: int, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(num_queries, size))
    relevant = [
        set(rng.choice(size, size=rng.integers(1, size + 1), replace=False).tolist())
        for _ in range(num_queries)
    ]
    recalls = [recall_at_k(scores, relevant, k, scores=True) for k in range(1, size + 1)]
    assert recalls == sorted(recalls)
    assert recalls[-1] == 1.0
    mrr = mean_reciprocal_rank(scores, relevant, scores=True)
    assert recalls[0] <= mrr <= 1.0
