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
    "mean_average_precision",
    "kendall_tau",
    "r2_score",
    "mean_absolute_error",
    "within_group_kendall_tau",
    "final_checkpoint_kendall_tau",
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


def within_group_kendall_tau(y_true: ArrayLike, y_pred: ArrayLike, groups: ArrayLike) -> float:
    r"""Kendall :math:`\tau_b` inside each group, averaged weighted by group size.

    .. math::
        \tau_{\mathrm{within}} = \frac{\sum_{g \in G} n_g\, \tau_b^{(g)}}{\sum_{g \in G} n_g},
        \qquad G = \{g : |\{y_i : i \in g\}| \ge 2\}

    with :math:`n_g` the number of models in group :math:`g` and :math:`\tau_b^{(g)}` the
    coefficient of :func:`kendall_tau` on that group alone. Only groups whose *true* values take at
    least two distinct values count (a group of one model, or of equal accuracies, has nothing to
    rank). A prediction constant inside a group orders no pair, so that group scores
    :math:`\tau = 0` (where :math:`\tau_b` itself is 0/0): a method that only knows the group,
    such as a lookup table of the group mean, scores 0 — which is what this metric is for.

    Args:
        y_true, y_pred: 1-D arrays of equal length, finite.
        groups: one hashable label per model (e.g. ``"task|arch|epoch"``), 1-D.

    Returns:
        the weighted mean, or NaN when no group has two distinct true values.
    """
    true, pred = _paired(y_true, y_pred)
    labels = np.asarray(groups)
    if labels.ndim != 1 or labels.shape[0] != true.shape[0]:
        raise ValueError(
            f"expected one group label per model (1-D, length {true.shape[0]}), "
            f"got shape {labels.shape}"
        )
    import pandas as pd

    codes, _ = pd.factorize(labels, use_na_sentinel=False)
    total, weight = 0.0, 0
    for code in np.unique(codes):
        member = codes == code
        if np.unique(true[member]).size < 2:
            continue
        group_pred = pred[member]
        tau = 0.0 if np.all(group_pred == group_pred[0]) else kendall_tau(true[member], group_pred)
        total += int(member.sum()) * tau
        weight += int(member.sum())
    return float(total / weight) if weight else float("nan")


def final_checkpoint_kendall_tau(
    y_true: ArrayLike, y_pred: ArrayLike, groups: ArrayLike, is_final: ArrayLike
) -> float:
    r"""Kendall :math:`\tau_b` among the final checkpoints of each group (ranking a finished
    sweep), averaged weighted by the number of final checkpoints per group.

    .. math::
        \tau_{\mathrm{final}} = \tau_{\mathrm{within}}\big(y_F,\ \hat y_F,\ g_F\big),
        \qquad F = \{i : \mathrm{is\_final}_i\}

    i.e. :func:`within_group_kendall_tau` restricted to the models marked final, with the same
    conventions (groups with fewer than two distinct true values skipped, a constant prediction
    inside a group scoring 0). ``groups`` are typically ``"task|arch"`` labels and ``is_final``
    marks each run's last checkpoint.

    Returns:
        the weighted mean, or NaN when no group has two final checkpoints of distinct accuracy.
    """
    true, pred = _paired(y_true, y_pred)
    final = np.asarray(is_final, dtype=bool)
    if final.shape != true.shape:
        raise ValueError(
            f"expected one is_final flag per model (length {true.shape[0]}), got shape "
            f"{final.shape}"
        )
    labels = np.asarray(groups)
    if labels.shape[:1] != true.shape:
        raise ValueError(
            f"expected one group label per model (1-D, length {true.shape[0]}), "
            f"got shape {labels.shape}"
        )
    if not final.any():
        return float("nan")
    return within_group_kendall_tau(true[final], pred[final], labels[final])


def mean_average_precision(
    ranked_or_scores: ArrayLike,
    relevant: Sequence[Collection[int]],
    *,
    scores: bool = False,
) -> float:
    r"""Mean over queries of the average precision of each query's ranking.

    .. math::
        \mathrm{AP}_q = \frac{1}{|R_q|} \sum_{r\,:\,\mathrm{ranked}_q[r] \in R_q}
        \frac{|\{r' \le r : \mathrm{ranked}_q[r'] \in R_q\}|}{r}, \qquad
        \mathrm{mAP} = \frac{1}{Q} \sum_q \mathrm{AP}_q

    Ranks start at 1. Unlike Recall@k and MRR, which only see the first hit, AP rewards ranking
    *every* relevant item early: with one relevant item it equals the reciprocal rank. A relevant
    id missing from a ranked list shorter than the gallery counts as never retrieved (it adds 0
    to the sum but still counts in :math:`|R_q|`). Same input conventions as
    :func:`recall_at_k`; an empty relevant set is an error.
    """
    ranked = _ranked_ids(ranked_or_scores, scores=scores)
    _check_relevant(relevant, ranked.shape[0])
    if ranked.shape[0] == 0:
        raise ValueError("no queries given")
    total = 0.0
    for row, relevant_ids in zip(ranked, relevant, strict=True):
        relevant_set = {int(i) for i in relevant_ids}
        if not relevant_set:
            raise ValueError("a query has an empty relevant set; drop it before scoring")
        hit = np.isin(row, list(relevant_set))  # (K,)
        hit &= ~_repeated(row)  # an id listed twice is retrieved once
        ranks = np.flatnonzero(hit) + 1  # (H,) 1-based ranks of the hits
        precision = np.arange(1, ranks.size + 1) / ranks  # hits so far / rank
        total += float(precision.sum()) / len(relevant_set)
    return float(total / ranked.shape[0])


def _repeated(row: np.ndarray) -> np.ndarray:
    """``True`` where an id already appeared earlier in ``row``."""
    _, first = np.unique(row, return_index=True)
    seen = np.ones(row.shape[0], dtype=bool)
    seen[first] = False
    return seen
