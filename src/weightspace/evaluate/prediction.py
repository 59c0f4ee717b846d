r"""Accuracy prediction on top of the estimator contract: every method scored on the same models.

:func:`score_predictions` takes the true test accuracies of a test :class:`ModelSet` and each
method's predictions (NaN where a method does not cover a model) and returns one
:class:`~weightspace.evaluate.results.MethodScore` per method:

* ``common``: metrics on the models *every* method covers, so rows compare like for like (a
  method covering less than ``min_coverage`` of them is left out of this subset, NaN here);
* ``own``: metrics on the models this method covers, beside its ``coverage``;
* ``per_task``: the ``common`` metrics inside each task;
* ``bootstrap_std``: the standard deviation of the ``common`` metrics over resamples of the test
  *runs* (with replacement, seeded), the spread of a single fitted method.

Primary metrics, which a lookup of the training mean per (task, architecture, epoch) cannot fake:

* ``within_group_tau``: Kendall :math:`\tau` inside each (task, architecture, epoch > 0) group,
  weighted by group size (:func:`~weightspace.evaluate.metrics.within_group_kendall_tau`);
* ``final_tau``: :math:`\tau` among the final checkpoints of the test runs inside each (task,
  architecture) group (:func:`~weightspace.evaluate.metrics.final_checkpoint_kendall_tau`).

Secondary: pooled ``kendall_tau``, ``kendall_tau_above_chance`` (models above :math:`1/C`),
``r2``, ``mae``. A metric the zoo cannot support (no ``epoch`` column, no ``task``) is NaN and
its reason is returned beside the scores.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from weightspace.evaluate.api import ModelSet
from weightspace.evaluate.metrics import (
    final_checkpoint_kendall_tau,
    kendall_tau,
    mean_absolute_error,
    r2_score,
    within_group_kendall_tau,
)
from weightspace.evaluate.results import MethodScore

__all__ = [
    "PRIMARY_METRICS",
    "SECONDARY_METRICS",
    "ScoringContext",
    "chance_levels",
    "prediction_metrics",
    "score_predictions",
]

PRIMARY_METRICS: tuple[str, ...] = ("within_group_tau", "final_tau")
SECONDARY_METRICS: tuple[str, ...] = ("kendall_tau", "kendall_tau_above_chance", "r2", "mae")
_BOOTSTRAP_METRICS = (*PRIMARY_METRICS, "kendall_tau", "r2", "mae")


def chance_levels(tasks: np.ndarray | None) -> np.ndarray | None:
    """:math:`1/C` per model for registered tasks, NaN for unknown ones; ``None`` without tasks
    (:func:`weightspace.evaluate.tasks.chance_levels`, the package's one chance helper)."""
    if tasks is None:
        return None
    from weightspace.evaluate.tasks import chance_levels as levels

    return levels([str(t) for t in tasks])


@dataclass
class ScoringContext:
    """What the metrics need to know about each test model, read once from the zoo rows."""

    runs: np.ndarray  # run id per model (the checkpoint itself when the zoo has no runs)
    tasks: np.ndarray | None  # task per model
    within_groups: np.ndarray | None  # "arch@task|epoch" per model; None without epochs
    in_within: np.ndarray | None  # epoch > 0
    final_groups: np.ndarray  # "arch@task" per model
    is_final: np.ndarray | None  # the last checkpoint of its run; None without epochs
    chance: np.ndarray | None  # chance accuracy per model
    skipped: dict[str, str] = field(default_factory=dict)  # metric -> why it is not computed

    @classmethod
    def of(cls, models: ModelSet) -> ScoringContext:
        """Read runs, tasks, architectures and epochs from ``models.table``."""
        n = len(models)
        skipped: dict[str, str] = {}
        arch = models.architectures()
        runs = models.column("run_id")
        if runs is None:
            runs = np.array([f"#{i}" for i in range(n)])
            skipped["final_tau"] = "the zoo has no run_id column: no run has a final checkpoint"
        runs = runs.astype(str)
        tasks = models.column("task")
        if tasks is None:
            skipped["kendall_tau_above_chance"] = "the zoo has no task column: no chance level"
            skipped["per_task"] = "the zoo has no task column"
        epochs = models.column("epoch")
        within = in_within = is_final = None
        if epochs is None:
            why = "the zoo has no epoch column"
            skipped["within_group_tau"] = f"{why}: no (task, architecture, epoch) groups"
            skipped.setdefault("final_tau", f"{why}: no run has a final checkpoint")
        else:
            epochs = np.asarray(epochs, dtype=float)
            within = np.array([f"{a}|{e:g}" for a, e in zip(arch, epochs, strict=True)])
            in_within = epochs > 0
            last: dict[str, float] = {}
            for run, epoch in zip(runs, epochs, strict=True):
                last[run] = max(last.get(run, -np.inf), epoch)
            is_final = np.array([e == last[r] for r, e in zip(runs, epochs, strict=True)])
            if "final_tau" in skipped:
                is_final = None
        return cls(
            runs=runs,
            tasks=None if tasks is None else tasks.astype(str),
            within_groups=within,
            in_within=in_within,
            final_groups=arch,
            is_final=is_final,
            chance=chance_levels(tasks),
            skipped=skipped,
        )


def _safe(fn: Callable[..., float], *args: np.ndarray) -> float:
    try:
        return float(fn(*args))
    except ValueError:  # undefined: fewer than two models, constant truth
        return float("nan")


def prediction_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    context: ScoringContext,
    index: np.ndarray,
    *,
    above_chance: bool = True,
) -> dict[str, float]:
    """Every prediction metric on the models at ``index`` (finite predictions only);
    ``above_chance=False`` leaves ``kendall_tau_above_chance`` NaN (the bootstrap's shortcut)."""
    y, p = y_true[index], y_pred[index]
    out = {
        "n": float(len(index)),
        "kendall_tau": _safe(kendall_tau, y, p),
        "r2": _safe(r2_score, y, p),
        "mae": _safe(mean_absolute_error, y, p) if len(index) else float("nan"),
        "within_group_tau": float("nan"),
        "final_tau": float("nan"),
        "kendall_tau_above_chance": float("nan"),
    }
    if len(index) == 0:
        return out
    if context.within_groups is not None and context.in_within is not None:
        keep = index[context.in_within[index]]
        if len(keep):
            out["within_group_tau"] = _safe(
                within_group_kendall_tau, y_true[keep], y_pred[keep], context.within_groups[keep]
            )
    if context.is_final is not None:
        out["final_tau"] = _safe(
            final_checkpoint_kendall_tau, y, p, context.final_groups[index], context.is_final[index]
        )
    if context.chance is not None and above_chance:
        levels = context.chance[index]
        above = np.isfinite(levels) & (y > levels)
        out["kendall_tau_above_chance"] = _safe(kendall_tau, y[above], p[above])
    return out


def _bootstrap_std(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    context: ScoringContext,
    index: np.ndarray,
    resamples: int,
    seed: int,
) -> dict[str, float]:
    """Std of the metrics over ``resamples`` draws of the test runs with replacement."""
    if resamples < 2 or len(index) == 0:
        return {}
    members: dict[str, list[int]] = {}
    for i in index:
        members.setdefault(str(context.runs[i]), []).append(int(i))
    runs = sorted(members)
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {m: [] for m in _BOOTSTRAP_METRICS}
    for _ in range(resamples):
        drawn = rng.integers(0, len(runs), size=len(runs))
        sample = np.concatenate([members[runs[j]] for j in drawn])
        metrics = prediction_metrics(y_true, y_pred, context, sample, above_chance=False)
        for name in _BOOTSTRAP_METRICS:
            values[name].append(metrics[name])
    out = {}
    for name, series in values.items():
        finite = np.asarray(series)[np.isfinite(series)]
        out[name] = float(np.std(finite)) if len(finite) >= 2 else float("nan")
    return out


def score_predictions(
    y_true: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    models: ModelSet,
    *,
    seed: int = 0,
    bootstrap: int = 0,
    refused: Mapping[str, Mapping[str, str]] | None = None,
    seconds: Mapping[str, float] | None = None,
    min_coverage: float = 0.5,
) -> tuple[dict[str, MethodScore], int, dict[str, str]]:
    """Score every method's predictions of ``models``' accuracies on common and own subsets.

    Args:
        y_true: ``(N,)`` true test accuracy of each model of ``models``.
        predictions: method name -> ``(N,)`` predictions, NaN where the method does not cover.
        models: the test models (their ``table`` gives runs, tasks, architectures, epochs).
        seed: of the bootstrap.
        bootstrap: resamples of the test runs for ``bootstrap_std`` (0: none).
        refused: method -> architecture -> why it was not covered (recorded as given).
        seconds: method -> fit + predict time.
        min_coverage: a method covering less of the test models does not shrink the common
            subset (one NFN fitted on a single architecture would empty it): its ``common``
            metrics are NaN, ``in_common`` is False and only its ``own`` metrics count.

    Returns:
        ``(scores, common_size, skipped_metrics)``.
    """
    y_true = np.asarray(y_true, dtype=float)
    context = ScoringContext.of(models)
    finite = {name: np.isfinite(np.asarray(p, dtype=float)) for name, p in predictions.items()}
    common = np.isfinite(y_true)
    in_common = {name: bool(mask.mean() >= min_coverage) for name, mask in finite.items()}
    for name, mask in finite.items():
        if in_common[name]:
            common &= mask
    common_index = np.flatnonzero(common)
    scores = {}
    for name, pred in predictions.items():
        pred = np.asarray(pred, dtype=float)
        own_index = np.flatnonzero(finite[name] & np.isfinite(y_true))
        shared = common_index if in_common[name] else np.array([], dtype=int)
        per_task = {}
        if context.tasks is not None and in_common[name]:
            for task in sorted(set(context.tasks[common_index])):
                index = common_index[context.tasks[common_index] == task]
                per_task[task] = prediction_metrics(y_true, pred, context, index)
        scores[name] = MethodScore(
            seed=seed,
            coverage=float(finite[name].mean()) if len(pred) else float("nan"),
            common=prediction_metrics(y_true, pred, context, shared),
            own=prediction_metrics(y_true, pred, context, own_index),
            per_task=per_task,
            bootstrap_std=_bootstrap_std(y_true, pred, context, shared, bootstrap, seed),
            in_common=in_common[name],
            refused=dict((refused or {}).get(name, {})),
            seconds=float((seconds or {}).get(name, float("nan"))),
        )
    return scores, int(len(common_index)), dict(context.skipped)
