r"""Classification protocol: predict a model's *class* (the digit an INR draws) from its weights.

For a zoo whose manifest says ``target: "class"`` (an imported INR release, or ``zoo generate
--preset inr-digits``) and whose table has a ``label`` column and a ``split`` column:

1. keep one checkpoint per run (its last epoch; ``checkpoints="all"`` keeps every one);
2. fit each method on the training models without targets (an embedding-only fit,
   ``method.fit(models, None)``) and embed the training and test models;
3. fit a classification head on the training embeddings: standardise, then
   :class:`~sklearn.linear_model.LogisticRegression` (``head="logistic"``) or
   :class:`~sklearn.ensemble.HistGradientBoostingClassifier` (``head="gbt"``), its regularisation
   chosen by :class:`~sklearn.model_selection.GroupKFold` cross-validation grouped by run
   (image), on the training split only;
4. report top-1 accuracy on the test models, with the bootstrap standard deviation and the 95 %
   percentile interval over ``bootstrap`` resamples of the test runs:

.. math::
    \mathrm{acc} = \frac{1}{|T|}\sum_{i \in T} [\hat y_i = y_i],\qquad
    \sigma_\text{boot} = \operatorname{std}_b\, \mathrm{acc}(T_b),\ T_b \sim T \text{ with
    replacement (by run)}.

A method that classifies by itself (it has ``predict_class(models) -> (N,)`` class indices,
``-1`` where it does not cover a model) skips steps 3's head: its own predictions are scored.
Our encoder trained with ``weightspace train --objective class`` (on the zoo's train split
only) is such a method through :class:`EncoderClassHead` (row ``weightspace-class-head``),
beside the ``weightspace`` row, its embedding under the tuned head.

A test model a method does not cover (NaN embedding) is counted as wrong and reported in
``coverage``; the majority-class rate of the test split is the ``chance`` row.

Published figures for the public INR releases are in :mod:`weightspace.evaluate.published`;
``bench`` prints them beside these rows when the zoo is one of those releases.

Example::

    results = run_classification(zoo, ["flat-mlp", "statnn", "probing-coords"], seed=0)
    print(to_markdown(results))
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from weightspace.errors import WeightspaceError
from weightspace.evaluate.api import Method, ModelSet
from weightspace.evaluate.classification_methods import (
    CLASS_HEAD,
    CoordinateProbing,
    EncoderClassHead,
)
from weightspace.evaluate.classification_results import (
    ClassificationError,
    ClassificationResults,
    MethodAccuracy,
    to_markdown,
)

__all__ = [
    "ClassificationError",
    "ClassificationResults",
    "CLASS_HEAD",
    "CoordinateProbing",
    "EncoderClassHead",
    "MethodAccuracy",
    "classification_section",
    "run_classification",
    "to_markdown",
]

#: Logistic-regression inverse regularisation strengths searched by grouped CV.
LOGISTIC_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
#: Histogram-GBT learning rates searched by grouped CV.
GBT_GRID = (0.05, 0.1, 0.2)


def _load(zoo: Any) -> Any:
    from weightspace.zoo.store import Zoo

    return Zoo.open(zoo) if isinstance(zoo, str | Path) else zoo


def _class_table(zoo: Any, checkpoints: str) -> pd.DataFrame:
    """The zoo's rows the protocol uses, checked: ``label``, ``split``, ``run_id``."""
    target = zoo.manifest.get("target")
    if target != "class":
        raise ClassificationError(
            f"{zoo.root}: manifest target is {target!r}, not 'class'; the classification "
            "protocol needs a zoo of labelled models (an INR zoo)"
        )
    table = zoo.table.copy()
    for column in ("label", "split"):
        if column not in table.columns or table[column].isna().all():
            raise ClassificationError(f"{zoo.root}: the zoo table has no {column!r} column")
    if "run_id" not in table.columns or table["run_id"].isna().all():
        table["run_id"] = table["checkpoint_id"]
    table["run_id"] = table["run_id"].astype(str)
    table["checkpoint_id"] = table["checkpoint_id"].astype(str)
    if checkpoints == "final" and "epoch" in table.columns and table["epoch"].notna().any():
        last = table.groupby("run_id")["epoch"].transform("max")
        table = table[(table["epoch"] == last) | last.isna()]
    elif checkpoints not in ("final", "all"):
        raise ClassificationError(f"checkpoints must be 'final' or 'all', got {checkpoints!r}")
    return table.reset_index(drop=True)


def _head(kind: str, seed: int) -> tuple[Any, dict[str, list[Any]]]:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "logistic":
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        return model, {"logisticregression__C": list(LOGISTIC_GRID)}
    if kind == "gbt":
        model = make_pipeline(
            StandardScaler(), HistGradientBoostingClassifier(max_iter=200, random_state=seed)
        )
        return model, {"histgradientboostingclassifier__learning_rate": list(GBT_GRID)}
    raise ClassificationError(f"head must be 'logistic' or 'gbt', got {kind!r}")


def _fit_head(
    z: np.ndarray, y: np.ndarray, groups: np.ndarray, kind: str, folds: int, seed: int
) -> tuple[Any, float, dict[str, Any]]:
    """The head tuned by run-grouped CV: (fitted head, best CV accuracy, chosen parameters)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV, GroupKFold

    model, grid = _head(kind, seed)
    splits = min(folds, len(np.unique(groups)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if splits < 2:
            return model.fit(z, y), float("nan"), {}
        search = GridSearchCV(model, grid, cv=GroupKFold(n_splits=splits), scoring="accuracy")
        search.fit(z, y, groups=groups)
    return search.best_estimator_, float(search.best_score_), dict(search.best_params_)


def _bootstrap(
    correct: np.ndarray, runs: np.ndarray, resamples: int, seed: int
) -> tuple[float, float, float]:
    """Std and 95 % interval of the accuracy over resamples of whole test runs."""
    if resamples <= 0:
        return float("nan"), float("nan"), float("nan")
    codes, index = np.unique(runs, return_inverse=True)
    hits = np.bincount(index, weights=correct.astype(float), minlength=len(codes))
    sizes = np.bincount(index, minlength=len(codes)).astype(float)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(codes), size=(resamples, len(codes)))
    accuracy = hits[draws].sum(axis=1) / sizes[draws].sum(axis=1)
    low, high = np.percentile(accuracy, [2.5, 97.5])
    return float(accuracy.std(ddof=1)), float(low), float(high)


def _build(method: Method | str, seed: int, config: Any = None) -> Method:
    if not isinstance(method, str):
        return method
    if method == "probing-coords":
        return CoordinateProbing()
    from weightspace.evaluate.methods import build_method

    return build_method(method, seed, config)


def run_classification(
    zoo: Any,
    methods: Sequence[Method | str],
    *,
    seed: int = 0,
    bootstrap: int = 1000,
    head: str = "logistic",
    folds: int = 5,
    checkpoints: str = "final",
    fit_splits: tuple[str, ...] = ("train", "val"),
    test_split: str = "test",
    config: Any = None,
) -> ClassificationResults:
    """Top-1 test accuracy of each method's embedding + a tuned head (see the module docstring).

    Args:
        zoo: a :class:`~weightspace.zoo.store.Zoo` or its directory.
        methods: :class:`~weightspace.evaluate.api.Method` s or names
            (:func:`~weightspace.evaluate.methods.build_method`, plus ``probing-coords``).
        seed: of the heads, the CV and the bootstrap.
        bootstrap: resamples of the test runs (0: no spread).
        head: ``"logistic"`` or ``"gbt"``.
        folds: grouped-CV folds on the training split.
        checkpoints: ``"final"`` (last epoch per run) or ``"all"``.
        fit_splits: splits the methods and heads are fitted on (validation data is used by the
            grouped CV, so it joins the training data by default).
        test_split: the split scored.
        config: a :class:`~weightspace.evaluate.methods.MethodConfig` for methods given by name
            (our encoder: ``MethodConfig(encoder=...)``).

    Raises:
        ClassificationError: the zoo is not a class-target zoo, lacks ``label``/``split``, or a
            split is empty.
    """
    import time

    zoo = _load(zoo)
    table = _class_table(zoo, checkpoints)
    train_rows = table[table["split"].isin(fit_splits)].reset_index(drop=True)
    test_rows = table[table["split"] == test_split].reset_index(drop=True)
    if len(train_rows) == 0 or len(test_rows) == 0:
        raise ClassificationError(
            f"{zoo.root}: {len(train_rows)} models in splits {list(fit_splits)} and "
            f"{len(test_rows)} in {test_split!r}; both must be non-empty"
        )
    train = ModelSet([zoo.graph(i) for i in train_rows["checkpoint_id"]], train_rows)
    test = ModelSet([zoo.graph(i) for i in test_rows["checkpoint_id"]], test_rows)
    y_train = train_rows["label"].to_numpy().astype(np.int64)
    y_test = test_rows["label"].to_numpy().astype(np.int64)
    groups, test_runs = train_rows["run_id"].to_numpy(), test_rows["run_id"].to_numpy()
    majority = np.bincount(y_train).argmax()
    rows: list[MethodAccuracy] = []
    for spec in methods:
        name = spec if isinstance(spec, str) else spec.name
        started = time.perf_counter()
        try:
            method = _build(spec, seed, config)
            name = method.name
            method.fit(train, None)
            if hasattr(method, "predict_class"):
                predicted = np.asarray(method.predict_class(test), dtype=np.int64)
                rows.append(_scored(name, predicted, y_test, test_runs, bootstrap, seed, started))
                continue
            z_train = np.asarray(method.embed(train), dtype=np.float64)
            z_test = np.asarray(method.embed(test), dtype=np.float64)
        except WeightspaceError as exc:
            rows.append(MethodAccuracy(name, error=str(exc).split("\n")[0][:300]))
            continue
        ok = np.isfinite(z_train).all(axis=1)
        if ok.sum() < 2 or len(np.unique(y_train[ok])) < 2:
            rows.append(MethodAccuracy(name, error="fewer than two classes embedded"))
            continue
        fitted, cv, chosen = _fit_head(z_train[ok], y_train[ok], groups[ok], head, folds, seed)
        covered = np.isfinite(z_test).all(axis=1)
        predicted = np.full(len(test), -1)
        if covered.any():
            predicted[covered] = fitted.predict(z_test[covered])
        correct = predicted == y_test
        std, low, high = _bootstrap(correct, test_runs, bootstrap, seed)
        rows.append(
            MethodAccuracy(
                name,
                accuracy=float(correct.mean()),
                bootstrap_std=std,
                ci_low=low,
                ci_high=high,
                cv_accuracy=cv,
                head={"kind": head, **chosen},
                coverage=float(covered.mean()),
                seconds=round(time.perf_counter() - started, 2),
            )
        )
    return ClassificationResults(
        zoo=str(zoo.root),
        num_classes=int(zoo.manifest.get("num_classes") or (max(y_train.max(), y_test.max()) + 1)),
        train_models=len(train),
        test_models=len(test),
        chance=float((y_test == majority).mean()),
        seed=seed,
        bootstrap=bootstrap,
        head=head,
        rows=rows,
    )


def _scored(
    name: str,
    predicted: np.ndarray,
    y_test: np.ndarray,
    test_runs: np.ndarray,
    bootstrap: int,
    seed: int,
    started: float,
) -> MethodAccuracy:
    """The row of a method that predicts classes itself (``-1``: not covered)."""
    import time

    correct = predicted == y_test
    std, low, high = _bootstrap(correct, test_runs, bootstrap, seed)
    return MethodAccuracy(
        name,
        accuracy=float(correct.mean()),
        bootstrap_std=std,
        ci_low=low,
        ci_high=high,
        head={"kind": "own"},
        coverage=float((predicted >= 0).mean()),
        seconds=round(time.perf_counter() - started, 2),
    )


def classification_section(
    zoo: Any,
    methods: Sequence[str],
    *,
    seed: int = 0,
    bootstrap: int = 1000,
    encoder: str | Path | None = None,
) -> dict[str, Any]:
    """What ``bench`` stores for a class-target zoo: :func:`run_classification` over the
    ``methods`` by name plus ``probing-coords`` (our encoder from the ``encoder`` directory when
    given, and, when that encoder has a class head, its own predictions as the
    ``weightspace-class-head`` row; a method that cannot be built or embedded becomes a row with
    its error), as
    ``{"results": ClassificationResults.to_dict(), "markdown": to_markdown(...)}``."""
    from weightspace.evaluate.methods import MethodConfig

    loader = None
    if encoder is not None:
        from weightspace.nn import Encoder

        loaded: dict[str, Any] = {}
        loader = lambda: loaded.setdefault("encoder", Encoder.load(encoder))  # noqa: E731
    names: list[Method | str] = list(dict.fromkeys([*methods, "probing-coords"]))
    if loader is not None and "weightspace" in methods:
        from weightspace.nn import Encoder

        if Encoder.read_config(encoder).classes:
            names.insert(names.index("weightspace") + 1, EncoderClassHead(loader))
    results = run_classification(
        zoo, names, seed=seed, bootstrap=bootstrap, config=MethodConfig(encoder=loader)
    )
    return {"results": results.to_dict(), "markdown": to_markdown(results)}
