"""NFN baselines at the reference settings: architecture, position embeddings, early stopping on
validation runs (the shared contract and hidden-permutation invariance are in test_baselines)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from weightspace import mlp_spec, to_graph
from weightspace.baselines import BaselineError, get_embedder
from weightspace.baselines.nfn import validation_split
from weightspace.evaluate.metrics import kendall_tau

torch.set_num_threads(1)

SPEC = mlp_spec([6, 5, 5, 3])
FIRST = f"{SPEC.layers[0].name}."
SMALL = {"embedding_dim": 32, "hidden_channels": 8}  # fast variants for the training tests


def make_runs(runs: int = 16, per_run: int = 3, seed: int = 0):
    """``runs`` runs of ``per_run`` checkpoints of :data:`SPEC`; a run's "accuracy" grows with the
    scale of its first layer (so it survives hidden permutations), in ``(0, 1)``."""
    generator = torch.Generator().manual_seed(seed)
    graphs, accuracy, groups = [], [], []
    for r in range(runs):
        quality = float(torch.rand((), generator=generator))
        base = {k: torch.randn(s, generator=generator) for k, s in SPEC.param_shapes().items()}
        for c in range(per_run):
            level = quality * (c + 1) / per_run
            state = {
                k: v * (0.3 + 1.5 * level if k.startswith(FIRST) else 0.5) for k, v in base.items()
            }
            graphs.append(to_graph(SPEC, state))
            accuracy.append(0.2 + 0.7 * level)
            groups.append(f"run{r}")
    return graphs, np.asarray(accuracy), np.asarray(groups)


@pytest.fixture(scope="module")
def runs():
    return make_runs()


def test_defaults_are_the_reference_settings(runs) -> None:
    """Channels 16, 16, 5; an MLP head of width 1000; Adam 1e-3, batch 8, 50 epochs; NP with
    learned input/output position embeddings."""
    graphs, _, _ = runs
    for name in ("nfn-hnp", "nfn-np"):
        model = get_embedder(name)
        params = model.get_params()
        assert (params["epochs"], params["batch_size"], params["learning_rate"]) == (50, 8, 1e-3)
        model.fit(graphs[:4])  # no targets: the network is built, not trained
        layers = [m for m in model.network_.equivariant if hasattr(m, "c_out")]
        assert [layer.c_out for layer in layers] == [16, 16, 5]
        widths = [m.out_features for m in model.network_.embedding if hasattr(m, "out_features")]
        assert widths == [1000, 1000]
        assert model.embed(graphs[:2]).shape == (2, 1000)
        assert all(getattr(layer, "io_embed", False) == (name == "nfn-np") for layer in layers)


def _permute_inputs(graph, generator):
    """The model with its input neurons permuted: another function, the same hidden symmetry."""
    state = graph.to_state_dict()
    first = f"{SPEC.layers[0].name}.weight"
    state[first] = state[first][:, torch.randperm(state[first].shape[1], generator=generator)]
    return SPEC, state


@torch.no_grad()
def _np_pooled(model, model_like) -> np.ndarray:
    """The NP layers' features of one model, pooled over *every* neuron (NPPool): invariant to
    input permutations unless the layers tell input neurons apart."""
    from nfn.layers import NPPool

    _, weights, biases = model._tensors([model_like], model.spec_)
    features = model.network_.equivariant(model._features(weights, biases, torch.arange(1)))
    return NPPool(model.network_.pool.network_spec)(features).numpy()


def test_np_position_embeddings_tell_input_neurons_apart(runs) -> None:
    graphs, _, _ = runs
    model = get_embedder("nfn-np", **SMALL).fit(graphs[:8])
    query = _permute_inputs(graphs[0], torch.Generator().manual_seed(3))
    assert not np.allclose(_np_pooled(model, graphs[0]), _np_pooled(model, query), atol=1e-4)
    assert not np.allclose(model.embed([graphs[0]]), model.embed([query]), atol=1e-4)
    # Negative control: without the embeddings NP layers cannot see an input permutation.
    with torch.no_grad():
        for layer in model.network_.equivariant:
            for name in ("in_embed", "out_embed", "out_bias_embed"):
                if hasattr(layer, name):
                    getattr(layer, name).zero_()
    np.testing.assert_allclose(
        _np_pooled(model, graphs[0]), _np_pooled(model, query), rtol=1e-4, atol=1e-5
    )


def test_validation_split_holds_out_whole_runs() -> None:
    groups = np.repeat([f"run{i}" for i in range(10)], 3)
    train, val = validation_split(len(groups), groups, 0.2, seed=1)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(groups)))
    assert not set(groups[train]) & set(groups[val])
    assert len(set(groups[val])) == 2
    assert np.array_equal(val, validation_split(len(groups), groups, 0.2, seed=1)[1])
    without_groups = validation_split(20, None, 0.2, seed=0)[1]
    assert len(without_groups) == 4  # every model its own group, as in the reference
    assert len(validation_split(6, groups[:6], 0.2, seed=0)[1]) == 0  # 2 runs: nothing to hold
    with pytest.raises(BaselineError, match="groups"):
        validation_split(5, groups, 0.2, seed=0)


def test_early_stopping_restores_the_best_validation_epoch(runs) -> None:
    graphs, accuracy, groups = runs
    fit = dict(SMALL, epochs=40, patience=3, random_state=2)
    model = get_embedder("nfn-hnp", **fit).fit(graphs, {"test_accuracy": accuracy}, groups=groups)
    taus = np.asarray(model.val_taus_)
    assert len(taus) == len(model.losses_) <= 40
    assert model.best_epoch_ == 1 + int(np.nanargmax(taus))
    if len(taus) < 40:  # stopped early: exactly `patience` epochs after the best one
        assert len(taus) == model.best_epoch_ + 3
    # The kept weights are the best epoch's: they score its validation tau again.
    _, val = validation_split(len(graphs), groups, 0.2, seed=2)
    predicted = model.predict([graphs[i] for i in val])
    assert kendall_tau(accuracy[val], predicted) == pytest.approx(np.nanmax(taus), abs=1e-6)
    assert np.all((predicted > 0) & (predicted < 1))  # a sigmoid head


def test_constant_validation_targets_choose_the_epoch_by_loss(runs) -> None:
    graphs, accuracy, groups = runs
    flat = np.full_like(accuracy, 0.5)  # no ranking to score: the lowest validation loss wins
    model = get_embedder("nfn-hnp", **SMALL, epochs=6, patience=2)
    model.fit(graphs, {"test_accuracy": flat}, groups=groups)
    assert np.isnan(model.val_taus_).all() and 1 <= model.best_epoch_ <= len(model.losses_)
    np.testing.assert_allclose(model.predict(graphs[:4]), 0.5, atol=0.1)


def test_training_learns_and_is_deterministic(runs) -> None:
    graphs, accuracy, groups = runs
    test_graphs, test_accuracy, _ = make_runs(runs=6, seed=1)
    fit = dict(SMALL, epochs=12, random_state=0)
    targets = {"test_accuracy": accuracy}
    first = get_embedder("nfn-hnp", **fit).fit(graphs, targets, groups=groups)
    second = get_embedder("nfn-hnp", **fit).fit(graphs, targets, groups=groups)
    np.testing.assert_array_equal(first.predict(test_graphs), second.predict(test_graphs))
    assert first.losses_[-1] < first.losses_[0]
    assert kendall_tau(test_accuracy, first.predict(test_graphs)) > 0.5


def test_bad_input_is_refused(runs) -> None:
    graphs, accuracy, groups = runs
    with pytest.raises(BaselineError, match=r"\[0, 1\]"):
        get_embedder("nfn-np", **SMALL).fit(graphs, {"test_accuracy": accuracy * 100})
    with pytest.raises(BaselineError, match="groups"):
        get_embedder("nfn-hnp", **SMALL).fit(graphs, {"test_accuracy": accuracy}, groups[:3])
