"""Baseline embedders: the shared contract (every registered embedder), then each baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone

from weightspace import mlp_spec, to_graph
from weightspace.baselines import (
    BaselineError,
    NoTargetsError,
    NotFittedError,
    UnsupportedArchitectureError,
    embedder_info,
    flat_weights,
    get_embedder,
    layer_statistics,
    list_embedders,
    nfn_incompatibility,
)
from weightspace.spec import NetworkSpec, Op
from weightspace.symmetry import random_symmetry

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

SPEC = mlp_spec([6, 5, 5, 3])

# Small budgets so that the common contract runs in seconds for every embedder.
FAST = {
    "flat-mlp": {"max_iter": 50},
    "pca-mlp": {"max_iter": 50, "n_components": 8},
    "statnn": {"n_estimators": 20},
    "weightwatcher": {"n_estimators": 20, "min_evals": 2},
    "nfn-hnp": {"epochs": 3, "hidden_channels": 4, "embedding_dim": 8},
    "nfn-np": {"epochs": 3, "hidden_channels": 4, "embedding_dim": 8},
}


def random_state_dict(spec: NetworkSpec, generator: torch.Generator, scale: float = 0.5) -> dict:
    return {
        key: torch.randn(*shape, generator=generator) * scale
        for key, shape in spec.param_shapes().items()
    }


def make_zoo(n: int = 24, spec: NetworkSpec = SPEC, seed: int = 0):
    """``n`` random models of ``spec`` and a target that depends on their weights."""
    generator = torch.Generator().manual_seed(seed)
    graphs, targets = [], []
    for i in range(n):
        sd = random_state_dict(spec, generator, scale=0.2 + 0.05 * i)
        graphs.append(to_graph(spec, sd))
        targets.append(float(torch.tanh(sd[f"{spec.layers[0].name}.weight"].abs().mean())))
    return graphs, {"test_accuracy": np.asarray(targets)}


@pytest.fixture(scope="module")
def zoo():
    return make_zoo()


def build(name: str, **kwargs):
    return get_embedder(name, random_state=0, **{**FAST.get(name, {}), **kwargs})


# ------------------------------------------------------------------ the common contract
@pytest.mark.parametrize("name", list_embedders(available_only=True))
class TestContract:
    def test_fit_returns_self_and_embed_shape(self, name, zoo):
        graphs, targets = zoo
        model = build(name)
        assert model.fit(graphs[:16], targets={"test_accuracy": targets["test_accuracy"][:16]}) is (
            model
        )
        z = model.embed(graphs[16:])
        assert z.ndim == 2 and z.shape[0] == 8 and z.shape[1] == model.embedding_dim_
        assert np.isfinite(z).all()
        predicted = model.predict(graphs[16:])
        assert predicted.shape == (8,) and np.isfinite(predicted).all()

    def test_not_fitted(self, name, zoo):
        graphs, _ = zoo
        model = build(name)
        with pytest.raises(NotFittedError, match="not fitted"):
            model.embed(graphs[:2])
        with pytest.raises(NotFittedError):
            model.predict(graphs[:2])

    def test_predict_without_targets_raises(self, name, zoo):
        graphs, _ = zoo
        model = build(name).fit(graphs[:16])
        assert model.embed(graphs[:3]).shape[0] == 3  # the embedding works without targets
        with pytest.raises(NoTargetsError, match="test_accuracy"):
            model.predict(graphs[:3])

    def test_deterministic_given_random_state(self, name, zoo):
        graphs, targets = zoo
        first = build(name).fit(graphs, targets)
        second = clone(first).fit(graphs, targets)
        np.testing.assert_array_equal(first.embed(graphs[:5]), second.embed(graphs[:5]))
        np.testing.assert_array_equal(first.predict(graphs[:5]), second.predict(graphs[:5]))

    def test_accepts_spec_state_dict_pairs(self, name, zoo):
        graphs, targets = zoo
        model = build(name).fit(graphs, targets)
        pairs = [(g.spec, g.to_state_dict()) for g in graphs[:4]]
        np.testing.assert_allclose(model.embed(pairs), model.embed(graphs[:4]), atol=1e-6)

    def test_bad_targets(self, name, zoo):
        graphs, targets = zoo
        with pytest.raises(BaselineError, match="values for"):
            build(name).fit(graphs, {"test_accuracy": targets["test_accuracy"][:3]})
        with pytest.raises(BaselineError, match="needs 'test_accuracy'"):
            build(name).fit(graphs, {"val_accuracy": targets["test_accuracy"]})


# ------------------------------------------------------------------ registry
def test_registry_lists_and_filters():
    names = list_embedders()
    assert {"flat-mlp", "pca-mlp", "statnn", "weightwatcher", "nfn-hnp", "nfn-np"} <= set(names)
    assert list_embedders("nfn-*") == ["nfn-hnp", "nfn-np"]
    assert "weightwatcher" not in list_embedders(include_slow=False)
    assert embedder_info("nfn-hnp").fixed_architecture
    assert get_embedder("statnn").name == "statnn"


def test_unknown_embedder_lists_valid_names():
    with pytest.raises(BaselineError, match="valid: flat-mlp"):
        get_embedder("nope")


def test_bad_model_type():
    with pytest.raises(BaselineError, match="NeuralGraph"):
        get_embedder("statnn").fit(["not a model"])


# ------------------------------------------------------------------ flat weights
def test_flat_weights_order_padding_and_truncation():
    small, large = mlp_spec([2, 2]), mlp_spec([2, 3])
    sd_small = {
        "0.weight": torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
        "0.bias": torch.tensor([5.0, 6.0]),
    }
    sd_large = {"0.weight": torch.ones(3, 2), "0.bias": torch.zeros(3)}
    flat = flat_weights([(small, sd_small), (large, sd_large)])
    assert flat.shape == (2, 9)
    np.testing.assert_array_equal(flat[0], [1, 2, 3, 4, 5, 6, 0, 0, 0])  # weight, then bias
    np.testing.assert_array_equal(flat_weights([(large, sd_large)], length=4)[0], [1, 1, 1, 1])


def test_flat_mlp_mixed_architectures_and_projection():
    graphs_a, ta = make_zoo(8, mlp_spec([6, 5, 3]))
    graphs_b, tb = make_zoo(8, mlp_spec([6, 7, 7, 3]), seed=1)
    graphs = graphs_a + graphs_b
    targets = {"test_accuracy": np.concatenate([ta["test_accuracy"], tb["test_accuracy"]])}
    model = build("flat-mlp", max_dim=40, projection_dim=16).fit(graphs, targets)
    assert model.flat_length_ == mlp_spec([6, 7, 7, 3]).num_parameters
    assert model.embed(graphs).shape == (16, 16)


def test_flat_embedding_is_not_permutation_invariant(zoo):
    graphs, targets = zoo
    model = build("flat-mlp").fit(graphs, targets)
    g = graphs[0]
    sd, _ = random_symmetry(g.spec, g.to_state_dict(), torch.Generator().manual_seed(0))
    assert not np.allclose(model.embed([g]), model.embed([(g.spec, sd)]), atol=1e-3)


# ------------------------------------------------------------------ statnn
def test_layer_statistics_values_and_padding():
    spec = mlp_spec([2, 2])
    sd = {"0.weight": torch.tensor([[0.0, 1.0], [2.0, 3.0]]), "0.bias": torch.tensor([1.0, 1.0])}
    stats = layer_statistics([(spec, sd)], max_layers=2).reshape(2, 2, 7)
    np.testing.assert_allclose(stats[0, 0], [1.5, 1.25, 0.0, 0.75, 1.5, 2.25, 3.0])
    np.testing.assert_allclose(stats[0, 1], [1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert np.isnan(stats[1]).all()  # padding


def test_statnn_invariance(zoo):
    graphs, targets = zoo
    g = graphs[3]
    generator = torch.Generator().manual_seed(1)
    permuted, _ = random_symmetry(g.spec, g.to_state_dict(), generator, transforms=("permutation",))
    plain = build("statnn").fit(graphs, targets)
    np.testing.assert_allclose(plain.embed([g]), plain.embed([(g.spec, permuted)]), atol=1e-9)
    full, _ = random_symmetry(g.spec, g.to_state_dict(), generator)
    canonical = build("statnn", canonicalize=True).fit(graphs, targets)
    np.testing.assert_allclose(canonical.embed([g]), canonical.embed([(g.spec, full)]), atol=1e-4)


# ------------------------------------------------------------------ weightwatcher
def test_weightwatcher_features_and_nan_fill(zoo):
    pytest.importorskip("weightwatcher")
    graphs, targets = zoo
    # min_evals above every layer's size: weightwatcher skips all layers; NaN become zeros
    model = build("weightwatcher", min_evals=50).fit(graphs[:6])
    assert np.array_equal(model.embed(graphs[:2]), np.zeros((2, model.embedding_dim_)))
    model = build("weightwatcher", min_evals=2).fit(graphs, targets)
    assert np.abs(model.embed(graphs[:2])).sum() > 0


# ------------------------------------------------------------------ nfn
def _conv_spec() -> NetworkSpec:
    return NetworkSpec(
        (
            Op("x", "input", (), {"shape": (1, 6, 6)}),
            Op(
                "c1", "conv2d", ("x",), {"in_channels": 1, "out_channels": 3, "kernel_size": (3, 3)}
            ),
            Op("a1", "activation", ("c1",), {"function": "relu"}),
            Op(
                "c2",
                "conv2d",
                ("a1",),
                {"in_channels": 3, "out_channels": 4, "kernel_size": (3, 3)},
            ),
            Op("a2", "activation", ("c2",), {"function": "relu"}),
            Op("p", "global_pool", ("a2",), {"mode": "avg"}),
            Op("fc", "linear", ("p",), {"in_features": 4, "out_features": 2}),
        )
    )


@pytest.mark.parametrize("name", ["nfn-hnp", "nfn-np"])
@pytest.mark.parametrize("spec", [SPEC, _conv_spec()], ids=["mlp", "cnn"])
def test_nfn_is_invariant_to_hidden_permutations(name, spec):
    graphs, targets = make_zoo(12, spec)
    model = build(name).fit(graphs, targets)
    g = graphs[0]
    permuted, _ = random_symmetry(
        spec, g.to_state_dict(), torch.Generator().manual_seed(2), transforms=("permutation",)
    )
    np.testing.assert_allclose(model.embed([g]), model.embed([(spec, permuted)]), atol=1e-4)
    np.testing.assert_allclose(model.predict([g]), model.predict([(spec, permuted)]), atol=1e-4)


def test_nfn_rejects_mixed_and_unsupported_architectures(zoo):
    graphs, targets = zoo
    other, _ = make_zoo(2, mlp_spec([6, 4, 3]))
    with pytest.raises(UnsupportedArchitectureError, match="one fixed architecture"):
        build("nfn-hnp").fit(graphs[:4] + other)
    model = build("nfn-hnp").fit(graphs, targets)
    with pytest.raises(UnsupportedArchitectureError, match="one fixed architecture"):
        model.embed(other)
    single = mlp_spec([6, 3])
    assert "single layer" in nfn_incompatibility(single)
    with pytest.raises(UnsupportedArchitectureError, match="single layer"):
        build("nfn-np").fit(make_zoo(4, single)[0])


def test_nfn_training_reduces_loss(zoo):
    graphs, targets = zoo
    model = build("nfn-hnp", epochs=30).fit(graphs, targets)
    assert model.losses_[-1] < model.losses_[0]


# ------------------------------------------------------------------ the Method contract
# Every baseline and reference row as a weightspace.evaluate.api.Method, through one test.
def _method_zoo():
    """Two architectures on the built-in task "wine" (for probing-task), 4 runs × 3 epochs each;
    the test split adds unseen runs and an architecture no training model has."""
    import pandas as pd

    from weightspace.evaluate.api import ModelSet

    def part(specs, runs, seed):
        generator = torch.Generator().manual_seed(seed)
        graphs, rows, targets = [], [], []
        for arch, spec in specs.items():
            for run in range(runs):
                for epoch in range(3):
                    sd = random_state_dict(spec, generator, scale=0.2 + 0.1 * run + 0.05 * epoch)
                    graphs.append(to_graph(spec, sd))
                    run_id = f"{arch}-{seed}-{run}"
                    rows.append(
                        {
                            "checkpoint_id": f"{run_id}-{epoch}",
                            "run_id": run_id,
                            "task": "wine",
                            "arch": arch,
                            "epoch": epoch,
                        }
                    )
                    targets.append(0.3 + 0.1 * run + 0.05 * epoch)
        return ModelSet(graphs, pd.DataFrame(rows)), np.asarray(targets)

    known = {"a": mlp_spec([13, 6, 3]), "b": mlp_spec([13, 5, 5, 3], "tanh")}
    train = part(known, 4, 0)
    test = part({**known, "unseen": mlp_spec([13, 4, 4, 3])}, 1, 1)
    return train, test


def _all_methods():
    from weightspace.baselines.methods import Canonical, EmbedderMethod, PerArchitecture
    from weightspace.baselines.reference import MetadataLookup, Probing

    methods = {
        name: (lambda name=name: EmbedderMethod(name, **FAST.get(name, {})))
        for name in list_embedders(available_only=True)
    }
    methods["nfn-hnp/per-arch"] = lambda: PerArchitecture(
        lambda: EmbedderMethod("nfn-hnp", **FAST["nfn-hnp"]), min_models=5
    )
    methods["statnn+canon"] = lambda: Canonical(EmbedderMethod("statnn", **FAST["statnn"]))
    methods["metadata"] = MetadataLookup
    methods["probing-gauss"] = lambda: Probing("gaussian", probes=8)
    methods["probing-task"] = lambda: Probing("task", probes=8)
    return methods


@pytest.fixture(scope="module")
def method_zoo():
    return _method_zoo()


@pytest.mark.parametrize("key", sorted(_all_methods()))
def test_method_contract(key, method_zoo):
    from weightspace.evaluate.api import (
        EMBED,
        MIXED_ARCHITECTURES,
        NEEDS_FORWARD,
        NEEDS_METADATA,
        PREDICT,
        Method,
    )

    (train, y), (test, _) = method_zoo
    method = _all_methods()[key]()
    assert isinstance(method, Method) and isinstance(method.name, str)
    assert method.capabilities <= {
        EMBED,
        PREDICT,
        MIXED_ARCHITECTURES,
        NEEDS_FORWARD,
        NEEDS_METADATA,
    }
    with pytest.raises(NotFittedError):
        method.predict_accuracy(test)
    fitted_archs = ["a", "b"]
    if key in list_embedders() and embedder_info(key).fixed_architecture:
        fitted_archs = ["a"]  # a bare fixed-architecture method is fitted on one architecture
    mask = train.table["arch"].isin(fitted_archs).to_numpy()
    assert method.fit(train.subset(mask), y[mask]) is method
    predicted = method.predict_accuracy(test)
    assert predicted.shape == (len(test),) and predicted.dtype == np.float64
    seen = test.table["arch"].isin(fitted_archs).to_numpy()
    # NaN only where not covered: a mixed-architecture method covers every model; a
    # fixed-architecture one exactly the architectures it was fitted on.
    if MIXED_ARCHITECTURES in method.capabilities:
        assert np.isfinite(predicted).all()
    else:
        assert np.isfinite(predicted[seen]).all() and np.isnan(predicted[~seen]).all()
    if EMBED in method.capabilities:
        z = method.embed(test)
        assert z.ndim == 2 and z.shape[0] == len(test) and z.shape[1] > 0
        covered = np.isfinite(predicted)
        assert np.isfinite(z[covered]).all() and np.isnan(z[~covered]).all()
    else:
        with pytest.raises(BaselineError):
            method.embed(test)
    with pytest.raises(BaselineError, match="targets"):
        _all_methods()[key]().fit(train, y[:3])
