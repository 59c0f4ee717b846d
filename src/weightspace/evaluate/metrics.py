"""Retrieval and regression metrics: numpy in, Python floats out.

Retrieval metrics take either a ranked list of ids per query, shape ``(Q, K)`` (best first), or a
score matrix, shape ``(Q, N)`` (higher is more similar; item ``j`` has id ``j``), together with
the set of relevant ids of each query. Regression metrics take two 1-D arrays of equal length.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "recall_at_k",
    "mean_reciprocal_rank",
    "kendall_tau",
    "r2_score",
    "mean_absolute_error",
]


def _ranked_ids(ranked_or_scores: ArrayLike, *, scores: bool, k: int | None = None) -> np.ndarray:
    """Return ranked ids ``(Q, K)``; a score matrix is ranked by descending score (stable)."""
    array = np.asarray(ranked_or_scores)
    if array.ndim != 2:
        raise ValueError(
            f"expected a 2-D array (queries x ranked ids, or queries x gallery scores), "
            f"got shape {array.shape}"
        )
    if not scores:
        return array if k is None else array[:, :k]
    if not np.all(np.isfinite(array)):
        raise ValueError("score matrix holds NaN or Inf values")
    order = np.argsort(-array, axis=1, kind="stable")  # (Q, N)
    return order if k is None else order[:, :k]


def _check_relevant(relevant: Sequence[Collection[int]], num_queries: int) -> None:
    if len(relevant) != num_queries:
        raise ValueError(
            f"got {num_queries} queries but {len(relevant)} relevant sets; give one set per query"
        )


def recall_at_k(
    ranked_or_scores: ArrayLike,
    relevant: Sequence[Collection[int]],
    k: int,
    *,
    scores: bool = False,
) -> float:
    r"""Fraction of queries with at least one relevant item among the top ``k``.

    .. math::
        \mathrm{Recall@}k = \frac{1}{Q} \sum_q \mathbb{1}[\,\mathrm{top}_k(q) \cap R_q \neq
        \emptyset\,]

    This is the retrieval convention of the evaluation protocol (a hit in the top ``k``); queries
    with an empty relevant set are an error, since they can never be hit.

    Args:
        ranked_or_scores: ranked ids ``(Q, K)``, best first, or with ``scores=True`` a score
            matrix ``(Q, N)`` whose column index is the item id.
        relevant: one collection of relevant ids per query.
        k: cut-off, ``k >= 1``.
        scores: whether ``ranked_or_scores`` holds scores rather than ranked ids.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ranked = _ranked_ids(ranked_or_scores, scores=scores, k=k)
    _check_relevant(relevant, ranked.shape[0])
    if ranked.shape[0] == 0:
        raise ValueError("no queries given")
    hits = 0
    for row, relevant_ids in zip(ranked, relevant, strict=True):
        relevant_set = set(relevant_ids)
        if not relevant_set:
            raise ValueError("a query has an empty relevant set; drop it before scoring")
        hits += any(int(item) in relevant_set for item in row[:k])
    return float(hits / ranked.shape[0])


def mean_reciprocal_rank(
    ranked_or_scores: ArrayLike,
    relevant: Sequence[Collection[int]],
    *,
    scores: bool = False,
) -> float:
    r"""Mean over queries of ``1 / rank`` of the first relevant item (0 when none is ranked).

    .. math::
        \mathrm{MRR} = \frac{1}{Q} \sum_q \frac{1}{\min\{r : \mathrm{ranked}_q[r] \in R_q\}}

    Ranks start at 1. With ranked ids shorter than the gallery, a query whose relevant items are
    all beyond the list contributes 0.
    """
    ranked = _ranked_ids(ranked_or_scores, scores=scores)
    _check_relevant(relevant, ranked.shape[0])
    if ranked.shape[0] == 0:
        raise ValueError("no queries given")
    total = 0.0
    for row, relevant_ids in zip(ranked, relevant, strict=True):
        relevant_set = set(relevant_ids)
        if not relevant_set:
            raise ValueError("a query has an empty relevant set; drop it before scoring")
        for rank, item in enumerate(row, start=1):
            if int(item) in relevant_set:
                total += 1.0 / rank
                break
    return float(total / ranked.shape[0])


def _paired(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    true = np.asarray(y_true, dtype=np.float64)
    pred = np.asarray(y_pred, dtype=np.float64)
    if true.ndim != 1 or pred.ndim != 1 or true.shape != pred.shape:
        raise ValueError(
            f"expected two 1-D arrays of equal length, got shapes {true.shape} and {pred.shape}"
        )
    if true.size == 0:
        raise ValueError("got empty arrays")
    if not (np.all(np.isfinite(true)) and np.all(np.isfinite(pred))):
        raise ValueError("inputs hold NaN or Inf values")
    return true, pred


def kendall_tau(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    r"""Kendall's rank correlation :math:`\tau_b` (ties handled), in ``[-1, 1]``.

    .. math::
        \tau_b = \frac{C - D}{\sqrt{(C + D + T_x)(C + D + T_y)}}

    with :math:`C`/:math:`D` concordant/discordant pairs and :math:`T_x`/:math:`T_y` pairs tied
    in only one array. Returns NaN when either array is constant (the coefficient is undefined).
    """
    from scipy.stats import kendalltau

    true, pred = _paired(y_true, y_pred)
    if true.size < 2:
        raise ValueError("kendall_tau needs at least 2 pairs")
    return float(kendalltau(true, pred, variant="b").statistic)


def r2_score(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    r"""Coefficient of determination.

    .. math::
        R^2 = 1 - \frac{\sum_i (y_i - \hat y_i)^2}{\sum_i (y_i - \bar y)^2}

    Can be negative (worse than predicting the mean). Raises when ``y_true`` is constant, where
    :math:`R^2` is undefined.
    """
    true, pred = _paired(y_true, y_pred)
    total = float(np.sum((true - true.mean()) ** 2))
    if total == 0.0:
        raise ValueError("r2_score is undefined when y_true is constant")
    residual = float(np.sum((true - pred) ** 2))
    return float(1.0 - residual / total)


def mean_absolute_error(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    r""":math:`\frac{1}{n} \sum_i |y_i - \hat y_i|`."""
    true, pred = _paired(y_true, y_pred)
    return float(np.mean(np.abs(true - pred)))
