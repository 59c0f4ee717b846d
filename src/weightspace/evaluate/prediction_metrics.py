r"""Accuracy prediction on a split: pooled Kendall :math:`\tau`, :math:`R^2`, MAE.

:func:`accuracy_prediction_metrics` scores predictions of held-out checkpoints' test accuracy,
plus :math:`\tau` over the checkpoints whose true accuracy is above chance (:math:`1/C` for a
task with :math:`C` classes, :func:`weightspace.evaluate.tasks.chance_level`), where the ranking
is harder and matters more. :func:`evaluate_accuracy_prediction` fits a predictor on a
:class:`~weightspace.evaluate.splits.Split`'s train side and scores its test side.

Pooled :math:`\tau` mostly measures where a checkpoint sits in a sweep (task, architecture,
epoch); the within-group metrics of :mod:`weightspace.evaluate.metrics` measure what metadata
cannot give away.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from weightspace.evaluate.metrics import kendall_tau, mean_absolute_error, r2_score
from weightspace.evaluate.splits import Split, check_split
from weightspace.evaluate.tables import GraphSource, ProtocolError, graph_from, rows_of
from weightspace.evaluate.tasks import chance_levels
from weightspace.graph import NeuralGraph

__all__ = ["ACCURACY_TARGET", "accuracy_prediction_metrics", "evaluate_accuracy_prediction"]

ACCURACY_TARGET = "test_accuracy"


def _predict_accuracy(predictor: Any, graphs: Sequence[NeuralGraph]) -> np.ndarray:
    """``predict_accuracy`` if the predictor has it (the encoder), else ``predict``."""
    if hasattr(predictor, "predict_accuracy"):
        out = predictor.predict_accuracy(graphs)
    else:
        out = predictor.predict(graphs)
    if isinstance(out, Mapping):
        out = out[ACCURACY_TARGET]
    return np.asarray(out, dtype=np.float64).reshape(-1)


def accuracy_prediction_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, chance: np.ndarray | float | None = None
) -> dict[str, float]:
    r"""Kendall :math:`\tau`, :math:`R^2`, MAE, and :math:`\tau` over ``y_true > chance``.

    ``chance`` is one level per checkpoint (or one for all); NaN or ``None`` skips the
    above-chance metric. Metrics that are undefined (constant truth, fewer than two points) are
    NaN rather than errors, so a report can still be written.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)

    def safe(fn: Callable[..., float], *args: Any) -> float:
        try:
            return float(fn(*args))
        except ValueError:
            return float("nan")

    out = {
        "kendall_tau": safe(kendall_tau, y_true, y_pred),
        "r2": safe(r2_score, y_true, y_pred),
        "mae": safe(mean_absolute_error, y_true, y_pred),
        "n_test": int(y_true.size),
    }
    if chance is not None:
        levels = np.broadcast_to(np.asarray(chance, dtype=np.float64), y_true.shape)
        above = np.isfinite(levels) & (y_true > levels)
        out["kendall_tau_above_chance"] = safe(kendall_tau, y_true[above], y_pred[above])
        out["n_above_chance"] = int(above.sum())
    return out


def evaluate_accuracy_prediction(
    predictor: Any,
    table: pd.DataFrame,
    split: Split,
    source: GraphSource,
    *,
    fit: bool = True,
    target: str = ACCURACY_TARGET,
    chance: float | Mapping[str, float] | None = None,
) -> dict[str, float]:
    r"""Fit on ``split.train`` (unless ``fit=False``), predict ``split.test``, score.

    Args:
        predictor: ``fit(graphs, {"test_accuracy": y})`` and ``predict(graphs) -> (n,)``, or an
            already trained encoder (``predict_accuracy``) with ``fit=False``.
        table: the checkpoint table (``checkpoint_id``, ``run_id``, ``target``, ``task``).
        split: from :func:`~weightspace.evaluate.splits.split_by_run`, ``split_by_architecture``
            or ``split_by_task``.
        source: a Zoo, a mapping id → graph, or a function id → graph.
        target: the accuracy column.
        chance: chance accuracy — one number, a mapping task → number, or ``None`` for
            :func:`~weightspace.evaluate.tasks.chance_level` of each task.

    Returns:
        ``kendall_tau``, ``r2``, ``mae``, ``kendall_tau_above_chance``, ``n_above_chance``,
        ``n_train``, ``n_test``.
    """
    if not split.test or (fit and not split.train):
        raise ProtocolError("the split has an empty train or test side")
    if target not in table.columns:
        raise ProtocolError(f"the table has no {target!r} column")
    check_split(table, split)
    if fit:
        train_rows = rows_of(table, split.train)
        predictor.fit(
            [graph_from(source, i) for i in split.train],
            {ACCURACY_TARGET: train_rows[target].to_numpy(dtype=np.float64)},
        )
    test_rows = rows_of(table, split.test)
    y_pred = _predict_accuracy(predictor, [graph_from(source, i) for i in split.test])
    y_true = test_rows[target].to_numpy(dtype=np.float64)
    levels: np.ndarray | None = None
    if isinstance(chance, int | float):
        levels = np.full(len(y_true), float(chance))
    elif "task" in test_rows.columns:
        levels = chance_levels([str(t) for t in test_rows["task"]], chance)
    out: dict[str, float] = accuracy_prediction_metrics(y_true, y_pred, levels)
    out["n_train"] = len(split.train) if fit else 0
    return out
