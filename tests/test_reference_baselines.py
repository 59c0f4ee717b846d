"""Reference rows (metadata, probing), the Method adapters (EmbedderMethod, PerArchitecture,
Canonical) and run-grouped head tuning."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.model_selection import GridSearchCV, KFold

from weightspace import mlp_spec, to_graph
from weightspace.baselines import BaselineError
from weightspace.baselines.methods import Canonical, EmbedderMethod, PerArchitecture
from weightspace.baselines.reference import MetadataLookup, Probing
from weightspace.baselines.tuning import make_head, tuned_regressor
from weightspace.evaluate.api import ModelSet
from weightspace.graph import to_state_dict
from weightspace.module import to_module
from weightspace.symmetry import random_symmetry_graph
from weightspace.testing import assert_invariant

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

WINE = mlp_spec([13, 6, 3])  # the built-in task "wine": 13 features, 3 classes
WINE_DEEP = mlp_spec([13, 5, 5, 3], "tanh")


def model_set(
    specs: dict[str, object], runs: int = 4, epochs: int = 3, seed: int = 0, task: str = "wine"
) -> tuple[ModelSet, np.ndarray]:
    """``runs`` runs × ``epochs`` checkpoints per architecture; accuracy grows with epoch and with
    the first layer's weight scale."""
    generator = torch.Generator().manual_seed(seed)
    graphs, rows, targets = [], [], []
    for arch, spec in specs.items():
        for run in range(runs):
            scale = 0.3 + 0.2 * torch.rand((), generator=generator).item()
            for epoch in range(epochs):
                sd = {
                    k: torch.randn(*s, generator=generator) * scale * (1 + 0.1 * epoch)
                    for k, s in spec.param_shapes().items()
                }
                graphs.append(to_graph(spec, sd))
                run_id = f"{arch}-{seed}-{run}"
                rows.append(
                    {
                        "checkpoint_id": f"{run_id}-e{epoch}",
                        "run_id": run_id,
                        "task": task,
                        "arch": arch,
                        "epoch": epoch,
                    }
                )
                targets.append(0.4 + 0.1 * epoch + scale / 5)
    return ModelSet(graphs, pd.DataFrame(rows)), np.asarray(targets)


# ------------------------------------------------------------------ metadata
def hand_table() -> tuple[ModelSet, np.ndarray]:
    spec = mlp_spec([2, 2])
    graph = to_graph(spec, {k: torch.ones(*s) for k, s in spec.param_shapes().items()})
    table = pd.DataFrame(
        {
            "task": ["a", "a", "a", "a", "b"],
            "arch": ["m", "m", "m", "n", "m"],
            "epoch": [1, 1, 2, 1, 1],
        }
    )
    return ModelSet([graph] * 5, table), np.array([0.2, 0.4, 0.9, 0.5, 0.1])


def test_metadata_lookup_hand_table_and_back_off():
    train, y = hand_table()
    lookup = MetadataLookup().fit(train, y)
    test = ModelSet(
        [train.graphs[0]] * 5,
        pd.DataFrame(
            {
                "task": ["a", "a", "a", "b", "c"],
                "arch": ["m", "m", "n", "n", "m"],
                "epoch": [1, 3, 7, 1, 1],
            }
        ),
    )
    predicted = lookup.predict_accuracy(test)
    # (a, m, 1): mean(0.2, 0.4); (a, m, 3) unseen -> (a, m): mean(0.2, 0.4, 0.9);
    # (a, n, 7) -> (a, n): 0.5; (b, n, 1) -> task b: 0.1; task c -> global mean.
    expected = [0.3, 0.5, 0.5, 0.1, np.mean(y)]
    np.testing.assert_allclose(predicted, expected)
    np.testing.assert_array_equal(lookup.last_levels_, [0, 1, 1, 2, 3])
    assert lookup.capabilities == {"predict", "mixed-architectures", "needs-metadata"}


def test_metadata_lookup_without_epochs_or_tasks():
    train, y = hand_table()
    no_epoch = ModelSet(train.graphs, train.table.drop(columns=["epoch"]))
    lookup = MetadataLookup().fit(no_epoch, y)
    assert lookup.levels_ == [("task", "arch"), ("task",), ()]
    np.testing.assert_allclose(lookup.predict_accuracy(no_epoch)[:2], [0.5, 0.5])
    bare = ModelSet(train.graphs)
    np.testing.assert_allclose(MetadataLookup().fit(bare, y).predict_accuracy(bare), np.mean(y))
    with pytest.raises(BaselineError, match="targets"):
        MetadataLookup().fit(train, None)
    with pytest.raises(BaselineError, match="no embedding"):
        MetadataLookup().fit(train, y).embed(train)


# ------------------------------------------------------------------ probing
def probing_forward(graph, inputs: torch.Tensor) -> np.ndarray:
    """One model's log-softmax outputs, by its own module (the reference for the vmap path)."""
    module = to_module(graph.spec, {k: v.float() for k, v in to_state_dict(graph).items()})
    with torch.no_grad():
        return module(inputs).log_softmax(-1).reshape(-1).double().numpy()


@pytest.mark.parametrize("inputs", ["gaussian", "task"])
def test_probing_equals_a_per_model_forward(inputs):
    from weightspace.baselines.reference import _gaussian_inputs, _task_inputs

    models, y = model_set({"small": WINE, "deep": WINE_DEEP}, runs=3, epochs=2)
    probing = Probing(inputs=inputs, probes=16, seed=3).fit(models, y)
    assert probing.name == {"gaussian": "probing-gauss", "task": "probing-task"}[inputs]
    z = probing.embed(models)
    assert z.shape == (len(models), 16 * 3)
    for i in (0, len(models) - 1):
        graph = models.graphs[i]
        x = (
            _gaussian_inputs(graph.spec, 16, 3)
            if inputs == "gaussian"
            else _task_inputs("wine", graph.spec, 16, 3)
        )
        np.testing.assert_allclose(z[i], probing_forward(graph, x), rtol=1e-5, atol=1e-5)
    assert probing.failed == {}
    assert "max_leaf_nodes" in probing.regressor_.best_params_  # tuned by grouped CV


def test_probing_is_invariant_to_symmetries_and_sees_the_function():
    models, y = model_set({"small": WINE, "deep": WINE_DEEP}, runs=3, epochs=2)
    probing = Probing(probes=16, tune=False).fit(models, y)

    def embed(graph):
        return probing.embed(ModelSet([graph]))[0]

    for i in (0, len(models) - 1):  # relu and tanh: permutations, rescalings, sign flips
        assert_invariant(embed, models.graphs[i], atol=1e-4, rtol=1e-4)
    # the negative control: another model's outputs differ
    assert not np.allclose(embed(models.graphs[0]), embed(models.graphs[1]), atol=1e-3)


def test_probing_reports_failed_models_instead_of_zeroing():
    models, y = model_set({"small": WINE}, runs=3, epochs=2)
    graphs = list(models.graphs)
    broken = to_state_dict(graphs[1])
    broken["0.weight"] = broken["0.weight"] * float("inf")
    graphs[1] = to_graph(WINE, broken, check=False)
    probing = Probing(probes=8, tune=False).fit(ModelSet(graphs, models.table), y)
    name = models.table["checkpoint_id"][1]
    assert probing.failed == {name: "non-finite outputs"}
    predicted = probing.predict_accuracy(ModelSet(graphs, models.table))
    assert math.isnan(predicted[1]) and np.isfinite(np.delete(predicted, 1)).all()
    assert np.isnan(probing.embed(ModelSet(graphs[:2], models.table[:2]))[1]).all()


def test_probing_task_on_an_unknown_task_fails_per_model():
    models, y = model_set({"small": WINE}, runs=2, epochs=2)
    other, _ = model_set({"small": WINE}, runs=1, epochs=2, seed=1, task="not-a-task")
    probing = Probing(inputs="task", probes=8, tune=False).fit(models, y)
    predicted = probing.predict_accuracy(other)
    assert np.isnan(predicted).all()
    assert set(probing.failed) == set(other.table["checkpoint_id"])
    assert all("not-a-task" in reason for reason in probing.failed.values())
    with pytest.raises(BaselineError, match="'task' column"):
        Probing(inputs="task").fit(ModelSet(models.graphs), y)


# ------------------------------------------------------------------ adapters
def test_canonical_is_equal_on_a_model_and_its_symmetric_copy():
    models, y = model_set({"small": WINE, "deep": WINE_DEEP}, runs=4, epochs=3)
    canonical = Canonical(EmbedderMethod("statnn", n_estimators=20)).fit(models, y)
    raw = EmbedderMethod("statnn", n_estimators=20).fit(models, y)
    assert canonical.name == "statnn+canon"
    for i in (0, len(models) - 1):
        graph = models.graphs[i]
        copy, _ = random_symmetry_graph(graph, torch.Generator().manual_seed(i))
        pair = ModelSet([graph, copy])
        z = canonical.embed(pair)
        np.testing.assert_allclose(z[0], z[1], atol=1e-4)
        p = canonical.predict_accuracy(pair)
        assert p[0] == pytest.approx(p[1], abs=1e-6)
        assert not np.allclose(*raw.embed(pair), atol=1e-3)  # raw StatNN sees rescalings
    # the same canonical form as the embedder's own canonicalize=True
    own = EmbedderMethod("statnn", n_estimators=20, canonicalize=True).fit(models, y)
    assert own.name == "statnn+canon"
    np.testing.assert_allclose(canonical.embed(models), own.embed(models), atol=1e-9)


def test_per_architecture_refuses_small_architectures_and_predicts_nan():
    models, y = model_set({"small": WINE, "deep": WINE_DEEP}, runs=4, epochs=3)
    keep = ~((models.table["arch"] == "deep") & (models.table["run_id"] != "deep-0-0"))
    few = models.subset(keep.to_numpy())
    method = PerArchitecture(lambda: EmbedderMethod("statnn", n_estimators=20), min_models=5)
    method.fit(few, y[keep.to_numpy()])
    assert set(method.models_) == {"small@wine"}
    assert method.refused == {"deep@wine": "only 3 training models (< 5)"}
    predicted = method.predict_accuracy(models)
    deep = (models.table["arch"] == "deep").to_numpy()
    assert np.isnan(predicted[deep]).all() and np.isfinite(predicted[~deep]).all()
    assert "mixed-architectures" not in method.capabilities
    z = method.embed(models)
    assert np.isnan(z[deep]).all() and np.isfinite(z[~deep]).all()


def test_per_architecture_reports_a_failing_fit():
    models, y = model_set({"small": WINE}, runs=4, epochs=3)
    single = mlp_spec([13, 3])  # NFN cannot take a single-layer network
    lone, y_lone = model_set({"lone": single}, runs=4, epochs=3)
    both = ModelSet(
        [*models.graphs, *lone.graphs], pd.concat([models.table, lone.table], ignore_index=True)
    )
    method = PerArchitecture(
        lambda: EmbedderMethod("nfn-hnp", epochs=2, hidden_channels=4, embedding_dim=8),
        min_models=5,
    ).fit(both, np.concatenate([y, y_lone]))
    assert set(method.models_) == {"small@wine"}
    assert "single layer" in method.refused["lone@wine"]


# ------------------------------------------------------------------ tuning
def memorisable_runs(num_runs: int = 24, per_run: int = 8, seed: int = 0):
    """Features identify the run; the target is run-level noise plus a weak signal, so only a
    model that generalises across runs scores on new runs."""
    rng = np.random.default_rng(seed)
    identity = rng.normal(size=(num_runs, 6))
    noise = rng.normal(size=num_runs)
    groups = np.repeat(np.arange(num_runs), per_run)
    X = identity[groups] + 0.01 * rng.normal(size=(len(groups), 6))
    y = noise[groups] + 0.01 * rng.normal(size=len(groups))
    return X, y, groups


def test_tuning_picks_by_run_grouped_cross_validation():
    X, y, groups = memorisable_runs()
    grid = {"min_samples_leaf": [1, 100]}
    fixed = {"max_iter": 50}
    tuned = tuned_regressor("gbt", X, y, groups, seed=0, grid=grid, fixed=fixed)
    # on new runs memorising a run is worthless: the big-leaf (near-constant) head wins
    assert tuned.best_params_ == {"min_samples_leaf": 100}
    assert np.isfinite(tuned.cv_score_)
    # control: folds that split runs reward memorising, so ignoring groups would choose leaf 1
    leaky = GridSearchCV(
        make_head("gbt", 0, fixed), grid, cv=KFold(3, shuffle=True, random_state=0)
    ).fit(X, y)
    assert leaky.best_params_ == {"min_samples_leaf": 1}


@pytest.mark.parametrize("kind", ["gbt", "mlp"])
def test_tuned_regressor_default_grid_and_fallback(kind):
    X, y, groups = memorisable_runs(num_runs=6, per_run=5)
    fixed = {"max_iter": 20}
    tuned = tuned_regressor(kind, X, y, groups, seed=0, fixed=fixed)
    assert set(tuned.best_params_) == (
        {"max_leaf_nodes", "min_samples_leaf"}
        if kind == "gbt"
        else {"mlp__hidden_layer_sizes", "mlp__alpha"}
    )
    assert tuned.predict(X).shape == (len(y),)
    alone = tuned_regressor(kind, X, y, np.zeros(len(y)), seed=0, fixed=fixed)
    assert alone.best_params_ == {} and math.isnan(alone.cv_score_)
    with pytest.raises(BaselineError, match="unknown head kind"):
        tuned_regressor("svm", X, y, groups, seed=0)


def test_embedder_method_passes_run_ids_to_tuning():
    models, y = model_set({"small": WINE, "deep": WINE_DEEP}, runs=4, epochs=3)
    tuned = EmbedderMethod("statnn", n_estimators=20).fit(models, y)
    assert set(tuned.estimator_.regressor_.best_params_) == {"max_leaf_nodes", "min_samples_leaf"}
    plain = EmbedderMethod("statnn", n_estimators=20, tune=False).fit(models, y)
    assert not hasattr(plain.estimator_.regressor_, "best_params_")


def test_probing_runs_convolutions_batched():
    from weightspace.baselines.reference import _gaussian_inputs
    from weightspace.spec import NetworkSpec, Op

    spec = NetworkSpec(
        (
            Op("x", "input", (), {"shape": (1, 6, 6)}),
            Op("c", "conv2d", ("x",), {"in_channels": 1, "out_channels": 3, "kernel_size": (3, 3)}),
            Op("a", "activation", ("c",), {"function": "relu"}),
            Op("p", "global_pool", ("a",), {"mode": "avg"}),
            Op("fc", "linear", ("p",), {"in_features": 3, "out_features": 4}),
        )
    )
    models, y = model_set({"cnn": spec}, runs=2, epochs=2)
    probing = Probing(probes=8, tune=False).fit(models, y)
    z = probing.embed(models)
    x = _gaussian_inputs(spec, 8, 0)
    for i, graph in enumerate(models.graphs):
        np.testing.assert_allclose(z[i], probing_forward(graph, x), rtol=1e-5, atol=1e-5)


def test_tuning_searches_on_whole_runs_and_refits_on_every_model():
    from weightspace.baselines.tuning import _search_rows

    X, y, groups = memorisable_runs()
    rows = _search_rows(groups, 40, seed=0)
    chosen = set(groups[rows])
    # whole runs only, about the budget, seeded
    assert all(np.isin(np.flatnonzero(np.isin(groups, list(chosen))), rows))
    assert 40 <= len(rows) < 40 + np.bincount(np.unique(groups, return_inverse=True)[1]).max()
    assert np.array_equal(rows, _search_rows(groups, 40, seed=0))
    assert len(_search_rows(groups, 0, seed=0)) == len(groups)
    grid = {"min_samples_leaf": [1, 100]}
    small = tuned_regressor(
        "gbt", X, y, groups, seed=0, grid=grid, fixed={"max_iter": 50}, search_models=40
    )
    # the refit sees every model: its training loss matches a direct fit with the chosen leaf
    fixed = {"max_iter": 50, "early_stopping": False, **small.best_params_}  # n < 300
    direct = make_head("gbt", 0, fixed).fit(X, y)
    np.testing.assert_allclose(small.predict(X), direct.predict(X))


@pytest.mark.parametrize("kind", ["mlp", "gbt"])
def test_heads_do_not_extrapolate_from_outlying_inputs(kind):
    from weightspace.baselines.tuning import INPUT_CLIP

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    y = X @ np.array([0.3, -0.2, 0.1])
    head = make_head(kind, 0, {"max_iter": 50}).fit(X, y)
    far = np.array([[100.0, 0.0, 0.0], [-100.0, 0.0, 0.0]])
    edge = np.array([[4 * INPUT_CLIP, 0.0, 0.0], [-4 * INPUT_CLIP, 0.0, 0.0]])
    # 100 standard deviations out, a head answers as a few standard deviations out
    if kind == "mlp":
        np.testing.assert_allclose(head.predict(far), head.predict(edge), atol=1e-6)
    assert np.abs(head.predict(far)).max() < 5 * np.abs(y).max()
