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
    mean_average_precision,
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


# ------------------------------------------------------------------ prediction: within-group τ
from weightspace.evaluate.metrics import (  # noqa: E402
    final_checkpoint_kendall_tau,
    within_group_kendall_tau,
)


def test_within_group_tau_weights_by_group_size() -> None:
    # group a: one discordant pair of three -> tau 1/3 (n=3); group b: reversed -> -1 (n=2).
    true = [1, 2, 3, 1, 2]
    pred = [1, 3, 2, 2, 1]
    groups = ["a", "a", "a", "b", "b"]
    assert within_group_kendall_tau(true, pred, groups) == pytest.approx((3 * (1 / 3) - 2) / 5)
    # a plain mean over groups would give (1/3 - 1) / 2 instead.
    assert within_group_kendall_tau(true, pred, groups) != pytest.approx((1 / 3 - 1) / 2)


def test_within_group_tau_skips_groups_without_two_distinct_values() -> None:
    # adding a singleton group and a group of equal accuracies changes nothing.
    true = [1, 2, 3, 1, 2, 0.5, 0.5, 9]
    pred = [1, 3, 2, 2, 1, 0.1, 0.9, 4]
    groups = ["a", "a", "a", "b", "b", "c", "c", "d"]
    assert within_group_kendall_tau(true, pred, groups) == pytest.approx(-0.2)


def test_within_group_tau_handles_ties_and_constant_predictions() -> None:
    # tau-b with ties inside one group (see test_kendall_tau_hand_cases): 0.8.
    assert within_group_kendall_tau([1, 2, 2, 3], [1, 2, 3, 3], [0, 0, 0, 0]) == pytest.approx(0.8)
    # a constant prediction orders no pair: 0 for that group, not NaN and not dropped.
    true = [1, 2, 3, 1, 2]
    pred = [5, 5, 5, 2, 1]
    assert within_group_kendall_tau(true, pred, list("aaabb")) == pytest.approx((0 - 2) / 5)


def test_within_group_tau_is_nan_without_a_rankable_group() -> None:
    assert math.isnan(within_group_kendall_tau([1, 2, 3], [1, 2, 3], ["a", "b", "c"]))
    assert math.isnan(within_group_kendall_tau([1, 1, 2], [1, 2, 3], ["a", "a", "b"]))


def test_group_mean_lookup_scores_zero_within_groups() -> None:
    # pooled tau rewards knowing the group; within-group tau does not.
    true = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    groups = np.array(["early"] * 3 + ["late"] * 3)
    lookup = np.where(groups == "early", 0.2, 0.8)
    assert kendall_tau(true, lookup) > 0.5
    assert within_group_kendall_tau(true, lookup, groups) == 0.0


def test_within_group_tau_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="one group label per model"):
        within_group_kendall_tau([1, 2], [1, 2], ["a"])
    with pytest.raises(ValueError, match="NaN"):
        within_group_kendall_tau([1, 2], [1, np.nan], ["a", "a"])


def test_final_checkpoint_tau_hand_case() -> None:
    # finals of x: true [1, 2, 3], pred [1, 3, 2] -> 1/3 (n=3); finals of y: [1, 2] -> 1 (n=2).
    # the non-final checkpoints (marked False) are ranked backwards and must not count.
    true = [1, 2, 3, 0.0, 1, 2, 0.5]
    pred = [1, 3, 2, 9.0, 1, 2, -9]
    groups = ["x", "x", "x", "x", "y", "y", "y"]
    is_final = [True, True, True, False, True, True, False]
    assert final_checkpoint_kendall_tau(true, pred, groups, is_final) == pytest.approx(3 / 5)
    assert math.isnan(final_checkpoint_kendall_tau(true, pred, groups, [False] * 7))
    with pytest.raises(ValueError, match="is_final"):
        final_checkpoint_kendall_tau(true, pred, groups, [True])


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000))
def test_within_group_tau_ignores_per_group_offsets(seed: int) -> None:
    # shifting each group's predictions by its own constant leaves within-group ranks unchanged.
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 4, size=20)
    true, pred = rng.normal(size=20), rng.normal(size=20)
    shifted = pred + rng.normal(scale=100.0, size=4)[groups]
    assert within_group_kendall_tau(true, shifted, groups) == pytest.approx(
        within_group_kendall_tau(true, pred, groups)
    )


# ------------------------------------------------------------------ mean average precision
def test_mean_average_precision_hand_cases() -> None:
    # query 0: relevant {1, 0} at ranks 2 and 4 -> (1/2 + 2/4) / 2 = 1/2
    # query 1: relevant {2, 9}: 2 at rank 1, 9 never ranked -> (1/1 + 0) / 2 = 1/2
    # query 2: relevant {4} at rank 3 -> 1/3 (equals the reciprocal rank)
    ranked = np.array([[3, 1, 2, 0], [2, 0, 1, 3], [0, 1, 4, 3]])
    relevant = [{1, 0}, {2, 9}, {4}]
    assert mean_average_precision(ranked, relevant) == pytest.approx((0.5 + 0.5 + 1 / 3) / 3)
    assert mean_average_precision(ranked[2:], relevant[2:]) == pytest.approx(
        mean_reciprocal_rank(ranked[2:], relevant[2:])
    )
    # a perfect ranking puts every relevant item first: AP = 1
    assert mean_average_precision(np.array([[5, 6, 1, 2]]), [{6, 5}]) == 1.0
    # an id listed twice is retrieved once: relevant {1, 2} at ranks 1 and 3 -> (1 + 2/3) / 2
    assert mean_average_precision(np.array([[1, 1, 2]]), [{1, 2}]) == pytest.approx(5 / 6)


def test_mean_average_precision_from_scores() -> None:
    scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.2, 0.8]])
    # rankings [1, 2, 0] and [2, 0, 1]: (1/2 + 2/3) / 2 and (1/1 + 2/3) / 2
    relevant = [{0, 2}, {2, 1}]
    expected = ((0.5 + 2 / 3) / 2 + (1 + 2 / 3) / 2) / 2
    assert mean_average_precision(scores, relevant, scores=True) == pytest.approx(expected)


def test_mean_average_precision_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="one set per query"):
        mean_average_precision(RANKED, [{1}])
    with pytest.raises(ValueError, match="empty relevant set"):
        mean_average_precision(RANKED, [{1}, set()])


@settings(max_examples=30, deadline=None)
@given(size=st.integers(2, 12), seed=st.integers(0, 1000))
def test_mean_average_precision_bounds(size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ranked = np.stack([rng.permutation(size) for _ in range(4)])
    relevant = [set(rng.choice(size, rng.integers(1, size + 1), replace=False)) for _ in range(4)]
    value = mean_average_precision(ranked, relevant)
    assert 0.0 < value <= 1.0  # every relevant id is ranked somewhere
    # moving every relevant item to the front gives exactly 1
    front = np.stack(
        [
            sorted(row, key=lambda i, r=r: i not in r)
            for row, r in zip(ranked, relevant, strict=True)
        ]
    )
    assert mean_average_precision(front, relevant) == 1.0
