r"""Run-grouped tuning of the tree and MLP heads that every baseline puts on its features.

A head chosen by cross-validation over *checkpoints* picks whatever memorises a run best: the
checkpoints of one run sit close together in every feature space, so a validation fold that
shares runs with its training folds rewards copying a neighbour's accuracy. Here the folds are
:class:`~sklearn.model_selection.GroupKFold` over runs, on the training runs only, so the
chosen hyper-parameters are those that generalise to *new runs* — the question the benchmark
asks. The search is :class:`~sklearn.model_selection.GridSearchCV` over a small grid (6
candidates × :data:`CV_FOLDS` = 2 folds + 1 refit = 13 fits; two folds of ~600 models each
rank a handful of candidates as well as three, at two thirds of the fits on half the data),
so that it stays cheap on two CPU cores:

==========  =====================================================================================
``"gbt"``   :class:`~sklearn.ensemble.HistGradientBoostingRegressor`; grid over
            ``max_leaf_nodes`` ∈ {7, 15} × ``min_samples_leaf`` ∈ {5, 20, 50}; early stopping
``"mlp"``   :class:`~sklearn.preprocessing.StandardScaler` → clip to
            :math:`[-c, c]` (:data:`INPUT_CLIP` = 5 standard deviations) →
            :class:`~sklearn.neural_network.MLPRegressor`; grid over ``hidden_layer_sizes`` ∈
            {(64,), (128, 64)} × ``alpha`` ∈ {1e-2, 1, 100}; early stopping
==========  =====================================================================================

The MLP's ``alpha`` (its L2 penalty, divided by the number of models in scikit-learn's loss)
spans weak to strong: 1e-4 and 1e-2 are both negligible against the data term at a few
thousand models, while 100 lets the search fall back to a nearly constant head when the
features do not generalise to new runs (a head worse than the training mean is a tuning
failure, not a finding).

Why the clip: a ReLU MLP extrapolates linearly, and raw weight features are heavy-tailed (a run
trained with a large learning rate or initialisation has weights tens of standard deviations
out); without it the flat-weight MLP predicted accuracies from −2.8 to 13.7 on the demo zoo.
Winsorising standardised inputs at :math:`\pm c` is the usual remedy; a tree head is invariant
to it, so ``"gbt"`` has none.

The selection score is :math:`R^2` averaged over folds. The returned estimator is the refit
best candidate (a plain regressor or pipeline), with the search recorded on it:
``best_params_`` (the chosen grid point; ``{}`` when no search could run) and ``cv_score_``
(its mean validation :math:`R^2`; NaN without a search).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, clone
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from weightspace.baselines.base import BaselineError

__all__ = ["CV_FOLDS", "HEAD_KINDS", "INPUT_CLIP", "default_grid", "make_head", "tuned_regressor"]

#: Fewer training models than this: no early stopping (its validation split would be too small).
MIN_EARLY_STOPPING = 300

#: The grid search sees whole runs up to about this many models (see :func:`tuned_regressor`).
SEARCH_MODELS = 1200

#: Run-grouped cross-validation folds of the search.
CV_FOLDS = 2

#: The ``"mlp"`` head clips its standardised inputs to ``[-INPUT_CLIP, INPUT_CLIP]``.
INPUT_CLIP = 5.0

#: The head kinds :func:`tuned_regressor` knows.
HEAD_KINDS: tuple[str, ...] = ("gbt", "mlp")


def make_head(kind: str, seed: int, fixed: Mapping[str, Any] | None = None) -> BaseEstimator:
    """An unfitted head of ``kind`` with its fixed (untuned) hyper-parameters.

    Args:
        kind: ``"gbt"`` or ``"mlp"``.
        seed: ``random_state`` of the regressor.
        fixed: hyper-parameters of the regressor that override the defaults (not searched),
            e.g. ``{"max_iter": 50}`` for a quick test. For ``"mlp"`` they are the
            :class:`~sklearn.neural_network.MLPRegressor`'s, without the ``mlp__`` prefix.
    """
    fixed = dict(fixed or {})
    # Early stopping bounds the cost on large zoos; its validation split is by checkpoint, but
    # it only decides when to stop, not which candidate wins.
    if kind == "gbt":
        params = {
            "max_iter": 200,
            "learning_rate": 0.1,
            "early_stopping": True,
            "validation_fraction": 0.15,
            "n_iter_no_change": 10,
            "random_state": seed,
        }
        return HistGradientBoostingRegressor(**{**params, **fixed})
    if kind == "mlp":
        params = {
            "hidden_layer_sizes": (128, 64),
            "alpha": 1e-2,
            "learning_rate_init": 1e-3,
            "max_iter": 200,
            "early_stopping": True,
            "random_state": seed,
        }
        regressor = MLPRegressor(**{**params, **fixed})
        clip = FunctionTransformer(
            np.clip,
            kw_args={"a_min": -INPUT_CLIP, "a_max": INPUT_CLIP},
            feature_names_out="one-to-one",
        )
        return Pipeline([("scale", StandardScaler()), ("clip", clip), ("mlp", regressor)])
    raise BaselineError(f"unknown head kind {kind!r}; valid: {', '.join(HEAD_KINDS)}")


def default_grid(kind: str) -> dict[str, list[Any]]:
    """The searched grid of ``kind`` (parameter names as :class:`GridSearchCV` expects)."""
    if kind == "gbt":
        return {"max_leaf_nodes": [7, 15], "min_samples_leaf": [5, 20, 50]}
    if kind == "mlp":
        return {"mlp__hidden_layer_sizes": [(64,), (128, 64)], "mlp__alpha": [1e-2, 1.0, 100.0]}
    raise BaselineError(f"unknown head kind {kind!r}; valid: {', '.join(HEAD_KINDS)}")


def tuned_regressor(
    kind: str,
    X: ArrayLike,
    y: ArrayLike,
    groups: Sequence[Any] | np.ndarray | None,
    seed: int,
    *,
    fixed: Mapping[str, Any] | None = None,
    grid: Mapping[str, Sequence[Any]] | None = None,
    n_splits: int = CV_FOLDS,
    search_models: int = SEARCH_MODELS,
) -> BaseEstimator:
    """A head of ``kind`` tuned by run-grouped cross-validation and refit on all of ``X``.

    Args:
        kind: ``"gbt"`` or ``"mlp"`` (see the module docstring).
        X: features ``(n, F)`` of the training models (NaN allowed for ``"gbt"``).
        y: their targets ``(n,)``.
        groups: one run id per model; folds never split a run. With fewer than two distinct
            runs (or ``None``) nothing can be validated: the first grid point is fitted as is.
        seed: seed of the regressor (the folds are deterministic).
        fixed: untuned hyper-parameters (see :func:`make_head`).
        grid: the searched grid (default :func:`default_grid`).
        n_splits: folds, at most the number of distinct runs.
        search_models: the grid search runs on whole runs drawn (seeded) until about this many
            models (0: all); the chosen candidate is then refit on every model. The choice
            between a handful of candidates needs far fewer models than the final fit, and this
            bounds the search's cost on large zoos.

    Returns:
        The fitted best estimator with ``best_params_`` and ``cv_score_`` set.
    """
    features = np.asarray(X, dtype=np.float64)
    target = np.asarray(y, dtype=np.float64).reshape(-1)
    if features.ndim != 2 or features.shape[0] != target.shape[0]:
        raise BaselineError(
            f"tuned_regressor: expected X (n, F) and y (n,), got {features.shape} and "
            f"{target.shape}"
        )
    fixed = dict(fixed or {})
    if target.shape[0] < MIN_EARLY_STOPPING:
        # A validation split of a few dozen models is noise, and sklearn refuses one with
        # fewer than two: small training sets train to max_iter instead.
        fixed.setdefault("early_stopping", False)
    base = make_head(kind, seed, fixed)
    grid = {k: list(v) for k, v in (default_grid(kind) if grid is None else grid).items()}
    labels = None if groups is None else np.asarray(groups)
    if labels is not None and labels.shape[0] != target.shape[0]:
        raise BaselineError(
            f"tuned_regressor: {labels.shape[0]} group labels for {target.shape[0]} models"
        )
    num_groups = 0 if labels is None else len(np.unique(labels))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if num_groups < 2:
            first = {k: v[0] for k, v in grid.items()}
            estimator = clone(base).set_params(**first).fit(features, target)
            estimator.best_params_ = {}
            estimator.cv_score_ = float("nan")
            return estimator
        rows = _search_rows(labels, search_models, seed)
        search = GridSearchCV(
            base,
            grid,
            cv=GroupKFold(n_splits=min(n_splits, len(np.unique(labels[rows])))),
            scoring="r2",
            refit=False,
            error_score="raise",
        )
        search.fit(features[rows], target[rows], groups=labels[rows])
        estimator = clone(base).set_params(**search.best_params_).fit(features, target)
    estimator.best_params_ = dict(search.best_params_)
    estimator.cv_score_ = float(search.best_score_)
    return estimator


def _search_rows(groups: np.ndarray, budget: int, seed: int) -> np.ndarray:
    """Indices of whole runs, drawn in a seeded order until ``budget`` models (all if 0)."""
    if budget <= 0 or len(groups) <= budget:
        return np.arange(len(groups))
    runs, inverse = np.unique(groups, return_inverse=True)
    sizes = np.bincount(inverse)
    order = np.random.default_rng(seed).permutation(len(runs))
    keep = order[: max(2, int(np.searchsorted(np.cumsum(sizes[order]), budget)) + 1)]
    return np.flatnonzero(np.isin(inverse, keep))
