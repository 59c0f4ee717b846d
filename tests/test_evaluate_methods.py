"""The method registry, our encoder as a method, the embedding + tuned head, and the scoring of
predictions on common and own subsets (evaluate/methods.py, evaluate/prediction.py)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from models import build, make_state_dict, tiny_encoder
from weightspace.evaluate.api import EMBED, MIXED_ARCHITECTURES, PREDICT, Method, ModelSet
from weightspace.evaluate.methods import (
    OURS,
    OURS_GBT,
    EmbeddingRegressor,
    EncoderMethod,
    MethodConfig,
    MethodError,
    Subsampled,
    build_method,
    list_methods,
)
from weightspace.evaluate.prediction import ScoringContext, score_predictions
from weightspace.graph import to_graph


def _graphs(n: int) -> list:
    spec = build("mlp", "relu")
    return [to_graph(spec, make_state_dict(spec, seed=i)) for i in range(n)]


class _Features:
    """A stand-in embedder: a fixed feature per model (read from the table), records its fits."""

    name = "features"
    capabilities = frozenset({EMBED, PREDICT, MIXED_ARCHITECTURES})

    def __init__(self) -> None:
        self.fitted_on: list[int] = []

    def fit(self, models: ModelSet, targets: np.ndarray | None) -> _Features:
        self.fitted_on.append(len(models))
        return self

    def embed(self, models: ModelSet) -> np.ndarray:
        x = models.column("x").astype(float)
        return np.stack([x, x**2], axis=1)

    def predict_accuracy(self, models: ModelSet) -> np.ndarray:
        return models.column("x").astype(float)


def _zoo_rows(runs: int = 12, epochs: tuple[int, ...] = (0, 1, 2)) -> pd.DataFrame:
    rows = []
    for r in range(runs):
        for e in epochs:
            rows.append(
                {
                    "checkpoint_id": f"r{r}-e{e}",
                    "run_id": f"r{r}",
                    "task": "wine" if r % 2 else "digits",
                    "arch": "mlp-a" if r % 3 else "mlp-b",
                    "epoch": e,
                    "x": 0.1 * r + 0.05 * e,
                }
            )
    return pd.DataFrame(rows)


def test_registry_builds_every_default_method_by_name() -> None:
    from weightspace.bench import DEFAULT_METHODS

    config = MethodConfig(encoder=tiny_encoder)
    for name in DEFAULT_METHODS:
        method = build_method(name, seed=1, config=config)
        assert isinstance(method, Method), name
        assert method.name == name
        assert PREDICT in method.capabilities
    assert "statnn" in list_methods() and OURS in list_methods("weightspace*")
    with pytest.raises(MethodError, match="unknown method 'magic'"):
        build_method("magic")
    with pytest.raises(MethodError, match="encoder is not available"):
        build_method(OURS_GBT)  # our rows need an encoder for the split


def test_encoder_method_takes_models_or_bare_graphs() -> None:
    graphs = _graphs(3)
    made = []
    method = EncoderMethod(lambda: made.append(1) or tiny_encoder())
    with pytest.raises(MethodError, match="call fit"):
        method.embed(graphs)
    method.fit(ModelSet(graphs), None)
    assert made == [1]
    z = method.embed(ModelSet(graphs))
    assert z.shape == (3, 8) and np.allclose(z, method.embed(graphs))
    assert method.predict_accuracy(graphs).shape == (3,)


def test_embedding_regressor_learns_from_the_frozen_embedding() -> None:
    table = _zoo_rows()
    models = ModelSet(_graphs(1) * len(table), table)
    y = 0.2 + 0.5 * table["x"].to_numpy() ** 2
    embedder = _Features()
    head = EmbeddingRegressor(embedder, "features-gbt", seed=0, tune=False)
    assert EMBED not in head.capabilities and PREDICT in head.capabilities
    with pytest.raises(MethodError, match="needs targets"):
        head.fit(models, None)
    head.fit(models, y)
    assert embedder.fitted_on == [len(models)]
    pred = head.predict_accuracy(models)
    assert np.corrcoef(pred, y)[0, 1] > 0.95
    with pytest.raises(MethodError, match="no embedding"):
        head.embed(models)


def test_subsampled_fits_on_whole_runs_within_the_cap() -> None:
    table = _zoo_rows(runs=10)
    models = ModelSet(_graphs(1) * len(table), table)
    inner = _Features()
    Subsampled(inner, max_models=10, seed=0).fit(models, np.zeros(len(models)))
    assert inner.fitted_on == [9]  # three whole runs of three checkpoints; a fourth would pass 10


# ---------------------------------------------------------------------------------- scoring


def test_group_mean_scores_zero_within_groups_but_well_pooled() -> None:
    """The issue's point: a lookup of the training mean per (task, arch, epoch) ranks pooled
    checkpoints well and nothing inside a group."""
    rng = np.random.default_rng(0)
    table = _zoo_rows(runs=40, epochs=(0, 1, 5))
    models = ModelSet(_graphs(1) * len(table), table)
    group = table["task"] + table["arch"] + table["epoch"].astype(str)
    offset = group.map({g: rng.uniform(0.2, 0.9) for g in group.unique()}).to_numpy()
    y = offset + rng.normal(0, 0.02, len(table))
    group_mean = pd.Series(y).groupby(group).transform("mean").to_numpy()
    perfect = y.copy()
    scores, common, skipped = score_predictions(
        y, {"metadata": group_mean, "oracle": perfect}, models
    )
    assert common == len(table) and not skipped
    assert scores["metadata"].common["kendall_tau"] > 0.8
    assert abs(scores["metadata"].common["within_group_tau"]) < 0.2
    assert scores["oracle"].common["within_group_tau"] == pytest.approx(1.0)
    assert scores["oracle"].common["final_tau"] == pytest.approx(1.0)
    assert set(scores["oracle"].per_task) == {"digits", "wine"}


def test_every_method_is_scored_on_the_common_subset() -> None:
    table = _zoo_rows()
    models = ModelSet(_graphs(1) * len(table), table)
    y = table["x"].to_numpy()
    partial = y.copy()
    partial[table["arch"] == "mlp-b"] = np.nan  # a fixed-architecture method refusing mlp-b
    noisy = y + np.random.default_rng(1).normal(0, 0.3, len(y))
    scores, common, _ = score_predictions(
        y,
        {"partial": partial, "noisy": noisy},
        models,
        refused={"partial": {"mlp-b@digits": "only 4 training models"}},
    )
    covered = int((table["arch"] != "mlp-b").sum())
    assert common == covered
    assert scores["partial"].coverage == pytest.approx(covered / len(y))
    assert scores["noisy"].coverage == 1.0
    assert scores["noisy"].common["n"] == covered and scores["noisy"].own["n"] == len(y)
    assert scores["partial"].refused == {"mlp-b@digits": "only 4 training models"}
    # a method covering almost nothing stays out of the common subset instead of emptying it
    scarce = np.full(len(y), np.nan)
    scarce[:2] = y[:2]
    scores, common, _ = score_predictions(y, {"noisy": noisy, "scarce": scarce}, models)
    assert common == len(y) and not scores["scarce"].in_common
    assert math.isnan(scores["scarce"].common["kendall_tau"])
    assert scores["scarce"].own["n"] == 2


def test_metrics_a_zoo_cannot_support_are_skipped_with_their_reason() -> None:
    table = _zoo_rows().drop(columns=["epoch", "task"])
    models = ModelSet(_graphs(1) * len(table), table)
    y = table["x"].to_numpy()
    scores, _, skipped = score_predictions(y, {"m": y}, models)
    assert "no epoch column" in skipped["within_group_tau"]
    assert "no epoch column" in skipped["final_tau"]
    assert "no task column" in skipped["kendall_tau_above_chance"]
    assert math.isnan(scores["m"].common["within_group_tau"])
    assert scores["m"].common["kendall_tau"] == pytest.approx(1.0)
    assert scores["m"].per_task == {}


def test_final_checkpoints_are_each_runs_last_epoch() -> None:
    table = _zoo_rows(runs=3, epochs=(0, 2, 7))
    context = ScoringContext.of(ModelSet(_graphs(1) * len(table), table))
    assert context.is_final.tolist() == (table["epoch"] == 7).tolist()
    assert context.in_within.tolist() == (table["epoch"] > 0).tolist()


def test_bootstrap_spread_is_seeded_and_shrinks_with_better_predictions() -> None:
    table = _zoo_rows(runs=20, epochs=(3,))
    models = ModelSet(_graphs(1) * len(table), table)
    rng = np.random.default_rng(2)
    y = rng.uniform(0, 1, len(table))
    predictions = {"good": y + rng.normal(0, 0.01, len(y)), "poor": y + rng.normal(0, 0.5, len(y))}
    first, _, _ = score_predictions(y, predictions, models, seed=3, bootstrap=20)
    again, _, _ = score_predictions(y, predictions, models, seed=3, bootstrap=20)
    assert first["good"].bootstrap_std == again["good"].bootstrap_std
    assert (
        0 < first["good"].bootstrap_std["kendall_tau"] < first["poor"].bootstrap_std["kendall_tau"]
    )
    none, _, _ = score_predictions(y, predictions, models)
    assert none["good"].bootstrap_std == {}


class _Extrapolator(_Features):
    """Predicts far outside any accuracy on the models with large ``x``."""

    name = "extrapolator"

    def predict_accuracy(self, models: ModelSet) -> np.ndarray:
        x = models.column("x").astype(float)
        return np.where(x > 0.8, 50.0 * x, x)


def test_every_methods_predictions_are_clipped_to_the_training_range(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import weightspace.evaluate.methods as methods
    from weightspace.evaluate.comparison import fit_and_score
    from weightspace.evaluate.results import Results, ZooSummary

    results = Results(config={}, zoo=ZooSummary("zoo", "zoo", 36, 12, [], None))
    monkeypatch.setitem(methods._FACTORIES, "extrapolator", lambda seed, config: _Extrapolator())
    table = _zoo_rows().assign(test_accuracy=lambda t: t["x"] / 2)
    models = ModelSet(_graphs(1) * len(table), table)
    train, test = models.subset(np.arange(18)), models.subset(np.arange(18, len(table)))
    y_train = train.column("test_accuracy")
    _, predictions = fit_and_score(
        ["extrapolator"], "runs", 0, train, test, MethodConfig(), results, log=lambda m: None
    )
    raw = _Extrapolator().predict_accuracy(test)
    assert raw.max() > 10 * y_train.max()  # the control: the method itself extrapolates
    clipped = predictions["extrapolator"]
    assert clipped.max() == pytest.approx(y_train.max()) and clipped.min() >= y_train.min()
    inside = (raw >= y_train.min()) & (raw <= y_train.max())
    np.testing.assert_allclose(clipped[inside], raw[inside])  # in range: unchanged


def test_canonical_wrappers_share_one_canonicalisation(monkeypatch: pytest.MonkeyPatch) -> None:
    import weightspace.symmetry as symmetry
    from weightspace.baselines.methods import Canonical

    calls = []
    original = symmetry.canonicalize_graph
    monkeypatch.setattr(
        symmetry, "canonicalize_graph", lambda graph: calls.append(1) or original(graph)
    )
    graphs = _graphs(3)
    table = pd.DataFrame({"x": [0.1, 0.2, 0.3]})
    first, second = Canonical(_Features()), Canonical(_Features())
    a = first.canonical(ModelSet(graphs, table))
    b = second.canonical(ModelSet(graphs, table))
    assert len(calls) == 3  # the second wrapper reads the first one's canonical graphs
    assert all(x is y for x, y in zip(a.graphs, b.graphs, strict=True))
