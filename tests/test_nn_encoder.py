"""The encoder: exact symmetry invariance, negative controls, batching, persistence, errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from models import ARCHITECTURES, make_model, small_encoder_config
from weightspace.errors import WeightspaceError
from weightspace.graph import to_graph
from weightspace.module import to_module
from weightspace.nn import Encoder, EncoderConfig, EncoderError
from weightspace.spec import NetworkSpec, cnn_spec, mlp_spec
from weightspace.symmetry import (
    random_broken_permutation,
    random_permutation,
    random_rescale,
    random_sign_flip,
    random_symmetry,
)

torch.set_num_threads(1)

SMALL = small_encoder_config()


@pytest.fixture(scope="module")
def encoder64() -> Encoder:
    torch.manual_seed(0)
    return Encoder(SMALL).double().eval()


def _cnn_35_nodes() -> NetworkSpec:
    """The benchmark CNN: 1→8→8→8 3x3 convs, global pool, linear 8→10 (35 nodes, 216 edges)."""
    return cnn_spec([8, 8, 8], "relu")


SYMMETRY_CASES = [(arch, act) for arch in ARCHITECTURES for act in ("relu", "tanh", "leaky_relu")]


@pytest.mark.parametrize(("arch", "act"), SYMMETRY_CASES)
def test_embedding_is_invariant_to_symmetries(encoder64: Encoder, arch: str, act: str) -> None:
    spec, state = make_model(arch, act, seed=3)
    generator = torch.Generator().manual_seed(11)
    models = [(spec, state)]
    for transform in (random_permutation, random_rescale, random_sign_flip, random_symmetry):
        transformed, _ = transform(spec, state, generator)
        models.append((spec, transformed))
    z = encoder64.embed(models)
    assert z.dtype == np.float64
    scale = np.abs(z[0]).max()
    for row in z[1:]:
        assert np.abs(row - z[0]).max() <= 1e-5 * max(scale, 1.0)


@pytest.mark.parametrize("arch", ["mlp", "cnn1d", "cnn2d_residual"])
def test_negative_controls_change_the_embedding(encoder64: Encoder, arch: str) -> None:
    spec, state = make_model(arch, "relu", seed=3)
    z = encoder64.embed([(spec, state)])[0]
    # Permuting input neurons (channels) is not a symmetry: inputs have an identity.
    first = spec.layers[0].name
    weight = state[f"{first}.weight"]
    permuted_inputs = dict(state)
    permuted_inputs[f"{first}.weight"] = weight[:, torch.roll(torch.arange(weight.shape[1]), 1)]
    # Permuting one layer's outputs without the matching change in the next layer.
    broken, _ = random_broken_permutation(spec, state, torch.Generator().manual_seed(5))
    for changed in (permuted_inputs, broken):
        other = encoder64.embed([(spec, changed)])[0]
        assert np.abs(other - z).max() > 1e-4 * max(np.abs(z).max(), 1.0)


def test_embedding_does_not_depend_on_the_batch(encoder64: Encoder) -> None:
    models = [make_model(arch, "relu", seed=i) for i, arch in enumerate(ARCHITECTURES)]
    together = encoder64.embed(models, batch_size=64)
    alone = np.concatenate([encoder64.embed([m]) for m in models])
    np.testing.assert_allclose(together, alone, rtol=1e-10, atol=1e-10)
    graphs = [to_graph(*m) for m in models]  # graphs in, same embedding out
    np.testing.assert_allclose(encoder64.embed(graphs, batch_size=3), together, atol=1e-10)
    modules = [to_module(*m) for m in models]  # SpecModules too
    np.testing.assert_allclose(encoder64.embed(modules), together, atol=1e-10)


def test_benchmark_cnn_shape() -> None:
    spec = _cnn_35_nodes()
    graph = to_graph(spec, {k: torch.zeros(s) for k, s in spec.param_shapes().items()})
    assert (graph.num_nodes, graph.num_edges) == (35, 216)
    assert 1300 <= spec.num_parameters <= 1400


def test_predict_and_heads() -> None:
    config = EncoderConfig(
        **{**SMALL.to_dict(), "tasks": ["a", "b", "c"], "target_mean": [0.5, 0.1]}
    )
    encoder = Encoder(config)
    models = [make_model("mlp", "relu", seed=i, dtype=torch.float32) for i in range(5)]
    out = encoder.predict(models)
    assert set(out) == {"test_accuracy", "generalization_gap", "task", "task_probabilities"}
    assert out["test_accuracy"].shape == (5,) and out["task_probabilities"].shape == (5, 3)
    assert set(out["task"]) <= {"a", "b", "c"}
    np.testing.assert_allclose(encoder.predict_accuracy(models), out["test_accuracy"])
    assert encoder.embed(models).shape == (5, encoder.dim)


def test_a_float64_encoder_loads_without_rounding(tmp_path) -> None:
    torch.manual_seed(3)
    encoder = Encoder(SMALL).double()
    with torch.no_grad():  # entries a float32 round trip would change
        for parameter in encoder.parameters():
            parameter.add_(1e-12)
    encoder.save(tmp_path / "enc")
    loaded = Encoder.load(tmp_path / "enc")
    for (name, ours), theirs in zip(
        encoder.state_dict().items(), loaded.state_dict().values(), strict=True
    ):
        assert theirs.dtype == torch.float64, name
        assert torch.equal(ours, theirs), name


def test_save_load_roundtrip_and_fingerprint(tmp_path) -> None:
    torch.manual_seed(1)
    encoder = Encoder(SMALL)
    encoder.save(tmp_path / "enc")
    loaded = Encoder.load(tmp_path / "enc")
    assert loaded.fingerprint == encoder.fingerprint
    assert json.loads((tmp_path / "enc" / "config.json").read_text())["fingerprint"] == (
        encoder.fingerprint
    )
    models = [make_model("cnn2d", "relu", seed=2, dtype=torch.float32)]
    np.testing.assert_array_equal(loaded.embed(models), encoder.embed(models))
    with torch.no_grad():
        next(encoder.parameters()).add_(1e-3)
    assert encoder.fingerprint != loaded.fingerprint


def test_bad_encoder_directories(tmp_path) -> None:
    with pytest.raises(EncoderError, match="no such encoder directory"):
        Encoder.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderError, match="config.json: missing"):
        Encoder.load(tmp_path / "empty")
    Encoder(SMALL).save(tmp_path / "enc")
    weights = tmp_path / "enc" / "encoder.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(EncoderError, match="corrupt"):
        Encoder.load(tmp_path / "enc")
    Encoder(SMALL).save(tmp_path / "enc2")
    config_path = tmp_path / "enc2" / "config.json"
    data = json.loads(config_path.read_text())
    data["encoder"]["hidden"] = 32  # weights no longer fit the config
    config_path.write_text(json.dumps(data))
    with pytest.raises(EncoderError, match="do not match"):
        Encoder.load(tmp_path / "enc2")
    data["format_version"] = 99
    config_path.write_text(json.dumps(data))
    with pytest.raises(EncoderError, match="upgrade weightspace"):
        Encoder.load(tmp_path / "enc2")
    config_path.write_text("{not json")
    with pytest.raises(EncoderError, match="not valid JSON"):
        Encoder.load(tmp_path / "enc2")
    assert issubclass(EncoderError, WeightspaceError)


def test_unsupported_models_are_refused() -> None:
    encoder = Encoder(EncoderConfig(**{**SMALL.to_dict(), "max_edge_features": 4}))
    with pytest.raises(EncoderError, match="max_edge_features"):
        encoder.embed([make_model("cnn2d", "relu", dtype=torch.float32)])
    with pytest.raises(EncoderError, match="NeuralGraph, a SpecModule"):
        encoder.embed([object()])  # nn.Modules are accepted (traced) since issue 17
    spec = mlp_spec([3, 2])
    with pytest.raises(WeightspaceError):
        encoder.embed([(spec, {"0.weight": torch.zeros(2, 3)})])  # missing bias


@pytest.mark.parametrize("aggregators", [("mean", "max"), ("sum", "min", "std")])
def test_dense_fast_path_matches_the_message_passing_path(aggregators) -> None:
    """Batches of one architecture run on dense blocks; the function must be the same."""

    torch.manual_seed(0)
    encoder = Encoder(EncoderConfig(**{**SMALL.to_dict(), "aggregators": aggregators}))
    encoder = encoder.double().eval()
    for arch in ("mlp", "mlp_residual", "cnn2d_residual", "mlp_skips"):
        models = [make_model(arch, "relu", seed=i) for i in range(3)]
        bank = encoder.bank(models)
        batch = bank.select(torch.arange(3))
        assert batch.spec is not None
        with torch.no_grad():
            dense = encoder(batch)
            sparse = encoder(dataclasses.replace(batch, spec=None))
        torch.testing.assert_close(dense, sparse, rtol=1e-10, atol=1e-10)


def test_dense_fast_path_gradients_match() -> None:
    torch.manual_seed(0)
    config = EncoderConfig(**{**SMALL.to_dict(), "aggregators": ("mean", "max", "min")})
    encoder = Encoder(config).double()
    models = [make_model("mlp_residual", "relu", seed=i) for i in range(3)]
    batch = encoder.bank(models).select(torch.arange(3))
    grads = []
    for view in (batch, dataclasses.replace(batch, spec=None)):
        encoder.zero_grad()
        encoder(view).square().sum().backward()
        grads.append([p.grad.clone() for p in encoder.parameters() if p.grad is not None])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_dense_fast_path_inference_buffers_match_the_functional_form() -> None:
    """Inference writes aggregates into preallocated buffers; autograd builds them functionally."""
    torch.manual_seed(0)
    config = EncoderConfig(
        **{**SMALL.to_dict(), "aggregators": ("sum", "mean", "max", "min", "std")}
    )
    encoder = Encoder(config).double().eval()
    for arch in ("mlp_residual", "cnn2d_residual", "mlp_skips"):
        models = [make_model(arch, "relu", seed=i) for i in range(3)]
        batch = encoder.bank(models).select(torch.arange(3))
        with torch.no_grad():
            buffered = encoder(batch)
        functional = encoder(batch).detach()
        torch.testing.assert_close(buffered, functional, rtol=1e-12, atol=1e-12)


def test_dense_path_traces_to_one_graph() -> None:
    """What ``compile=True`` hands to torch.compile: one graph, no breaks, no host tensors."""
    from weightspace.nn.encoder import encode_dense
    from weightspace.nn.layers import dense_plan

    torch.manual_seed(0)
    encoder = Encoder(SMALL).eval()
    batch = encoder.bank([make_model("cnn2d_residual", "relu", seed=i) for i in range(2)]).select(
        torch.arange(2)
    )
    args = (
        encoder,
        dense_plan(batch.spec),
        2,
        batch.x.float(),
        batch.edge_attr.float(),
        batch.node_depth,
        batch.node_role,
        batch.node_activation,
        batch.node_position,
        batch.edge_kind,
    )
    with torch.inference_mode():
        explanation = torch._dynamo.explain(encode_dense)(*args)
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0)


def test_compiled_embed_pads_to_static_batches(monkeypatch) -> None:
    """``embed(compile=True)`` pads every batch to one size and drops the padding rows."""
    import weightspace.nn.encoder as encoder_module

    torch._dynamo.reset()
    compiled = torch.compile(encoder_module.encode_dense, backend="eager", dynamic=False)
    shapes = []

    def spy(encoder, plan, num_graphs, *tensors):
        shapes.append(num_graphs)
        return compiled(encoder, plan, num_graphs, *tensors)

    monkeypatch.setattr(encoder_module, "_compiled_encode_dense", lambda: spy)
    torch.manual_seed(0)
    encoder = Encoder(SMALL).double().eval()
    models = [make_model("mlp", "relu", seed=i) for i in range(5)]
    models += [make_model("cnn2d", "relu", seed=i) for i in range(2)]
    eager = encoder.embed(models, batch_size=4)
    fast = encoder.embed(models, batch_size=4, compile=True)
    np.testing.assert_allclose(fast, eager, rtol=1e-12, atol=1e-12)
    assert set(shapes) == {4}
    torch._dynamo.reset()
