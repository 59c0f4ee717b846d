r"""Every method on one split: fit, predict and score accuracy, then retrieval on a gallery.

The loop knows no method by name. Each method's *capabilities*
(:mod:`weightspace.evaluate.api`) decide what it takes part in:

* without ``MIXED_ARCHITECTURES`` it is fitted once per architecture
  (:class:`~weightspace.baselines.methods.PerArchitecture`); the architectures it refuses are
  reported with its coverage, and it skips retrieval (its embedding spaces are not comparable);
* without ``EMBED`` it skips retrieval; with ``NEEDS_METADATA`` too (derived retrieval queries
  carry no zoo rows);
* without ``PREDICT`` it is fitted without targets and only retrieves.

Every method's predicted accuracies are clipped to the range of the training targets,
:math:`\hat y \leftarrow \min(\max(\hat y, \min_i y_i), \max_i y_i)` over the training models
(one rule for all, from training data only): a regression head that extrapolates far outside
what any training model reached (an MLP on flat weights of a run with huge weights) is scored
on a plausible prediction, and a head that never leaves the range (trees, lookups) is unchanged.

A method that raises is reported with its reason (the type as well, for an error that is not a
:class:`~weightspace.errors.WeightspaceError`) and the loop goes on: one method's failure never
loses the others' results.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from weightspace.errors import WeightspaceError
from weightspace.evaluate.api import (
    EMBED,
    MIXED_ARCHITECTURES,
    NEEDS_METADATA,
    PREDICT,
    Method,
    ModelSet,
)
from weightspace.evaluate.methods import MethodConfig, build_method
from weightspace.evaluate.results import Results, RetrievalScore

__all__ = [
    "RETRIEVAL_PROTOCOLS",
    "clip_to_training_range",
    "fit_and_score",
    "no_retrieval_reason",
    "run_retrieval",
]

RETRIEVAL_PROTOCOLS: tuple[str, ...] = ("S", "L", "F", "T")


def failure_reason(exc: Exception) -> str:
    """One line for the report: our own errors' message; the type too for any other (a bug in a
    method, which the report shows instead of losing the whole run)."""
    first = str(exc).split("\n")[0][:300]
    return first if isinstance(exc, WeightspaceError) else f"{type(exc).__name__}: {first}"


def no_retrieval_reason(capabilities: frozenset[str]) -> str | None:
    """Why a method with these capabilities takes no part in retrieval (``None``: it does)."""
    if EMBED not in capabilities:
        return "predicts only: no embedding to retrieve with"
    if MIXED_ARCHITECTURES not in capabilities:
        return (
            "fitted per architecture: its embedding spaces are not comparable across architectures"
        )
    if NEEDS_METADATA in capabilities:
        return "reads the zoo rows, which derived retrieval queries do not have"
    return None


def clip_to_training_range(predicted: np.ndarray, y_train: np.ndarray) -> np.ndarray:
    """``predicted`` clipped to ``[min(y_train), max(y_train)]``; NaN (not covered) stays NaN."""
    finite = np.asarray(y_train, dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return predicted
    return np.clip(predicted, finite.min(), finite.max())


def _uncovered(method: Any, test: ModelSet, predicted: np.ndarray | None) -> dict[str, str]:
    """What a method did not cover: refused architectures, failed models, and test
    architectures it left without a prediction for another reason."""
    out = {**getattr(method, "refused", {}), **getattr(method, "failed", {})}
    if predicted is not None:
        labels = test.architectures()
        for label in sorted(set(labels[~np.isfinite(predicted)].tolist())):
            out.setdefault(label, "no prediction (an architecture it was not fitted on)")
    return dict(list(out.items())[:20])


def fit_and_score(
    names: Sequence[str],
    protocol: str,
    seed: int,
    train: ModelSet,
    test: ModelSet,
    config: MethodConfig,
    results: Results,
    *,
    bootstrap: int = 0,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, Method], dict[str, np.ndarray]]:
    """Fit every method on ``train``; score its accuracy predictions of ``test`` into
    ``results.prediction[protocol]`` (:func:`~weightspace.evaluate.prediction.score_predictions`:
    common subset, own coverage, per task, ``bootstrap`` resamples of test runs).

    Returns:
        The fitted methods that can take part in retrieval, and each method's predictions.
    """
    from weightspace.baselines.methods import PerArchitecture
    from weightspace.evaluate.prediction import score_predictions

    y_train, y_test = (m.column("test_accuracy") for m in (train, test))
    predictions: dict[str, np.ndarray] = {}
    uncovered: dict[str, dict[str, str]] = {}
    seconds: dict[str, float] = {}
    retrievable: dict[str, Method] = {}
    for name in names:
        start, cpu_start = time.perf_counter(), time.process_time()

        def make(name: str = name) -> Method:
            return build_method(name, seed, config)

        try:
            method = make()
            capabilities = method.capabilities
            if MIXED_ARCHITECTURES not in capabilities:
                method = PerArchitecture(make)
            if y_train is None and EMBED not in capabilities:
                raise WeightspaceError(
                    "the zoo has no test accuracies and this method only predicts"
                )
            predicted = None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                method.fit(train, y_train.astype(float) if PREDICT in capabilities else None)
                if y_test is not None and PREDICT in capabilities:
                    predicted = np.asarray(method.predict_accuracy(test), dtype=float)
                    predicted = clip_to_training_range(predicted, y_train.astype(float))
                    predictions[name] = predicted
            uncovered[name] = _uncovered(method, test, predicted)
        except Exception as exc:  # one method's failure must not lose the others' results
            results.skipped[f"{name} ({protocol})"] = failure_reason(exc)
            log(f"  {name}: skipped ({failure_reason(exc)[:120]})")
            continue
        seconds[name] = time.perf_counter() - start
        results.time(f"fit+predict {name} (s)", seconds[name])
        results.time(f"fit+predict {name} (CPU s)", time.process_time() - cpu_start)
        why = no_retrieval_reason(capabilities)
        if why:
            results.skipped.setdefault(f"{name} retrieval", why)
        else:
            retrievable[name] = method
    if y_test is not None and predictions:
        scores, common, skipped = score_predictions(
            y_test.astype(float),
            predictions,
            test,
            seed=seed,
            bootstrap=bootstrap,
            refused=uncovered,
            seconds=seconds,
        )
        section = results.section(protocol)
        section.test_size.append(len(test))
        section.common_size.append(common)
        section.skipped_metrics.update(skipped)
        for name, score in scores.items():
            section.add(name, score)
    return retrievable, predictions


class _GraphEmbedder:
    """What the retrieval protocols call: ``embed(list_of_graphs)`` on a method."""

    def __init__(self, method: Method) -> None:
        self.method = method

    def embed(self, graphs: Sequence[Any]) -> np.ndarray:
        return np.asarray(self.method.embed(ModelSet(list(graphs))), dtype=np.float64)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool)


def retrieval_score(seed: int, metrics: Mapping[str, Any]) -> RetrievalScore:
    """Flat floats, and per derivative kind (``"<kind>/<metric>"`` keys or a nested map)."""
    flat: dict[str, float] = {}
    by_kind: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            for kind, sub in value.items():
                if isinstance(sub, Mapping):
                    by_kind[str(kind)] = {k: float(v) for k, v in sub.items() if _is_number(v)}
        elif _is_number(value):
            kind, sep, metric = key.partition("/")
            if sep:
                by_kind.setdefault(kind, {})[metric] = float(value)
            else:
                flat[key] = float(value)
    return RetrievalScore(seed=seed, metrics=flat, by_kind=by_kind)


def run_retrieval(
    methods: Mapping[str, Method],
    gallery: ModelSet,
    seed: int,
    results: Results,
    *,
    protocols: Sequence[str] = RETRIEVAL_PROTOCOLS,
    num_queries: int = 150,
    ks: Sequence[int] = tuple(range(1, 11)),
    log: Callable[[str], None] = print,
) -> None:
    """S, L, F and T retrieval of every method on ``gallery`` (held-out checkpoints whose table
    has ``run_id`` and, for F, T and L's fine-tuning derivatives, ``task``), into ``results``.
    T (same task, other runs) is the only one that excludes a query's own run from the ranking."""
    from weightspace.evaluate import (
        evaluate_retrieval_function,
        evaluate_retrieval_lineage,
        evaluate_retrieval_symmetry,
    )

    if not methods or not protocols:
        return
    runs = [str(r) for r in gallery.table["run_id"]]
    tasks = gallery.column("task")
    tasks = None if tasks is None else [str(t) for t in tasks]
    common = {"num_queries": num_queries, "seed": seed, "ks": tuple(ks)}
    available: dict[str, Callable[[Any], Mapping[str, Any]]] = {
        "S": lambda m: evaluate_retrieval_symmetry(m, gallery.graphs, **common),
        "L": lambda m: evaluate_retrieval_lineage(m, gallery.graphs, runs, tasks=tasks, **common),
    }
    if tasks is not None:
        available["F"] = lambda m: evaluate_retrieval_function(m, gallery.graphs, tasks, **common)
        available["T"] = lambda m: evaluate_retrieval_function(
            m, gallery.graphs, tasks, runs=runs, relevance="task", **common
        )
    else:
        for protocol in ("F", "T"):
            if protocol in protocols:
                results.skipped[f"retrieval {protocol}"] = "the zoo has no task column"
    chosen = {k: v for k, v in available.items() if k in protocols}
    log(f"  retrieval on a gallery of {len(gallery)} held-out checkpoints")
    for name, method in methods.items():
        start, cpu_start = time.perf_counter(), time.process_time()
        for protocol, evaluate in chosen.items():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    metrics = evaluate(_GraphEmbedder(method))
            except Exception as exc:  # as in fit_and_score: recorded, the others go on
                results.skipped[f"{name} retrieval {protocol}"] = failure_reason(exc)
                continue
            results.add_retrieval(protocol, name, retrieval_score(seed, metrics))
        results.time(f"retrieval {name} (s)", time.perf_counter() - start)
        results.time(f"retrieval {name} (CPU s)", time.process_time() - cpu_start)
