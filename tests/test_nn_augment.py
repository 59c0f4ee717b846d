"""Batched augmentations: symmetries keep the function, perturbations do what they say."""

from __future__ import annotations

import pytest
import torch

from models import make_inputs, make_model
from weightspace.graph import NeuralGraph, to_graph, to_state_dict
from weightspace.module import to_module
from weightspace.nn.augment import (
    AugmentConfig,
    add_noise,
    augment,
    flip_signs,
    permute_hidden,
    prune,
    quantize,
    rescale,
)
from weightspace.nn.batch import GraphBank, GraphBatch

torch.set_num_threads(1)

ARCHS = ["mlp", "mlp_residual", "cnn1d", "cnn2d_residual"]


def _bank(acts=("relu", "tanh")) -> tuple[GraphBank, list]:
    models = [make_model(arch, act, seed=i) for i, arch in enumerate(ARCHS) for act in acts]
    return GraphBank([to_graph(*m) for m in models]), models


def _graph_of(batch: GraphBatch, i: int, spec) -> NeuralGraph:
    """Graph ``i`` of a batch, back as a NeuralGraph (node ids local again)."""
    nodes = torch.nonzero(batch.batch == i).flatten()
    edges = torch.nonzero(batch.edge_batch == i).flatten()
    k = int(to_graph(spec, make_model_state(spec)).edge_attr.shape[1])
    return NeuralGraph(
        x=batch.x[nodes],
        edge_index=batch.edge_index[:, edges] - nodes[0],
        edge_attr=batch.edge_attr[edges, :k],
        edge_layer=batch.edge_layer[edges],
        edge_kind=batch.edge_kind[edges],
        node_depth=batch.node_depth[nodes],
        node_role=batch.node_role[nodes],
        node_activation=batch.node_activation[nodes],
        node_position=batch.node_position[nodes],
        node_group=batch.node_group[nodes],
        num_nodes=nodes.numel(),
        spec=spec,
    )


def make_model_state(spec):
    return {k: torch.zeros(s, dtype=torch.float64) for k, s in spec.param_shapes().items()}


@pytest.mark.parametrize("transform", ["permute", "rescale", "flip"])
def test_symmetry_augmentations_preserve_the_function(transform: str) -> None:
    bank, models = _bank()
    batch = bank.select(torch.arange(len(bank)))
    generator = torch.Generator().manual_seed(0)
    view = {
        "permute": lambda b: permute_hidden(b, generator),
        "rescale": lambda b: rescale(b, generator, 1.0),
        "flip": lambda b: flip_signs(b, generator),
    }[transform](batch)
    changed = 0
    for i, (spec, state) in enumerate(models):
        new_state = to_state_dict(_graph_of(view, i, spec))
        inputs = make_inputs(spec)
        expected = to_module(spec, state)(inputs)
        torch.testing.assert_close(to_module(spec, new_state)(inputs), expected)
        changed += any(not torch.equal(new_state[k], state[k]) for k in state)
    assert changed > 0


def test_noise_is_scaled_per_layer_and_keeps_padding() -> None:
    bank, _ = _bank()
    batch = bank.select(torch.arange(len(bank)))
    noisy = add_noise(batch, torch.Generator().manual_seed(0), 0.05)
    padding = torch.arange(batch.edge_attr.shape[1]) >= batch.edge_width.unsqueeze(1)
    assert torch.all(noisy.edge_attr[padding] == 0)
    residual = batch.edge_kind == 1
    torch.testing.assert_close(noisy.edge_attr[residual], batch.edge_attr[residual])
    for layer in batch.edge_layer.unique():
        rows = (batch.edge_layer == layer) & (batch.edge_batch == 0)
        if layer < 0 or not rows.any():
            continue
        before = batch.edge_attr[rows][~padding[rows]]
        delta = noisy.edge_attr[rows][~padding[rows]] - before
        ratio = float(delta.pow(2).mean().sqrt() / before.pow(2).mean().sqrt())
        assert 0.01 < ratio < 0.15


def test_prune_removes_the_requested_fraction_per_layer() -> None:
    bank, _ = _bank()
    batch = bank.select(torch.arange(len(bank)))
    fraction = torch.linspace(0.0, 0.7, batch.num_graphs, dtype=torch.float64)
    pruned = prune(batch, fraction)
    padding = torch.arange(batch.edge_attr.shape[1]) >= batch.edge_width.unsqueeze(1)
    for g in range(batch.num_graphs):
        for layer in batch.edge_layer[batch.edge_batch == g].unique():
            if layer < 0:
                continue
            rows = (batch.edge_layer == layer) & (batch.edge_batch == g)
            before = batch.edge_attr[rows][~padding[rows]]
            after = pruned.edge_attr[rows][~padding[rows]]
            expected = int(float(fraction[g]) * before.numel())
            assert int((after == 0).sum()) == expected
            kept = after != 0
            if expected and kept.any():  # the smallest weights went first
                assert before.abs()[~kept].max() <= before.abs()[kept].min()


def test_quantize_uses_at_most_255_levels_per_layer() -> None:
    bank, _ = _bank()
    batch = bank.select(torch.arange(len(bank)))
    selected = torch.arange(batch.num_graphs) % 2 == 0
    quantized = quantize(batch, selected, bits=3)
    rows0 = (batch.edge_batch == 0) & (batch.edge_layer == 0)
    assert quantized.edge_attr[rows0].unique().numel() <= 7
    rows1 = batch.edge_batch == 1
    torch.testing.assert_close(quantized.edge_attr[rows1], batch.edge_attr[rows1])
    step = batch.edge_attr[rows0].abs().max() / 3
    assert (quantized.edge_attr[rows0] - batch.edge_attr[rows0]).abs().max() <= step / 2 + 1e-12


def test_augment_is_deterministic_given_the_generator() -> None:
    bank, _ = _bank()
    batch = bank.select(torch.arange(len(bank)))
    config = AugmentConfig(symmetries=True)
    a = augment(batch, config, torch.Generator().manual_seed(3))
    b = augment(batch, config, torch.Generator().manual_seed(3))
    c = augment(batch, config, torch.Generator().manual_seed(4))
    torch.testing.assert_close(a.edge_attr, b.edge_attr)
    torch.testing.assert_close(a.edge_index, b.edge_index)
    assert not torch.equal(a.edge_attr, c.edge_attr)
