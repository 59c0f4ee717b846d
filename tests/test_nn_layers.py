"""Equivariance of each layer of the encoder: permuting hidden nodes permutes the outputs."""

from __future__ import annotations

import pytest
import torch

from weightspace.graph import to_graph
from weightspace.nn import EdgeNodeConv, NodeEmbedding, ScalarFeatures, TransformerPooling
from weightspace.nn.batch import GraphBank
from weightspace.nn.layers import degree_inverses
from weightspace.spec import mlp_spec

torch.set_num_threads(1)


def _graph_batch():
    spec = mlp_spec([4, 6, 5, 3], "relu")
    generator = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=generator) for k, s in spec.param_shapes().items()}
    return GraphBank([to_graph(spec, state)]).select([0])


def _hidden_permutation(batch) -> torch.Tensor:
    """A node permutation that shuffles hidden nodes within their groups (old -> new order)."""
    generator = torch.Generator().manual_seed(1)
    order = torch.arange(batch.num_nodes)
    for group in batch.node_group.unique():
        members = torch.nonzero((batch.node_group == group) & (batch.node_role == 1)).flatten()
        order[members] = members[torch.randperm(members.numel(), generator=generator)]
    return order


@pytest.mark.parametrize("aggregators", [("sum",), ("mean", "max"), ("min", "std", "sum")])
@pytest.mark.parametrize("directions", [("forward",), ("backward",), ("forward", "backward")])
def test_edge_node_conv_is_equivariant(aggregators, directions) -> None:
    batch = _graph_batch()
    torch.manual_seed(0)
    conv = EdgeNodeConv(8, 4, aggregators, directions).double()
    x = torch.randn(batch.num_nodes, 8, dtype=torch.float64)
    e = torch.randn(batch.edge_index.shape[1], 4, dtype=torch.float64)
    h, e_out = conv(x, batch.edge_index, e)

    order = _hidden_permutation(batch)  # new node k is old node order[k]
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel())
    edge_perm = torch.randperm(e.shape[0])  # edge order is arbitrary too
    h_p, e_p = conv(x[order], inverse[batch.edge_index][:, edge_perm], e[edge_perm])
    torch.testing.assert_close(h_p, h[order], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(e_p, e_out[edge_perm], rtol=1e-9, atol=1e-9)


def test_edge_node_conv_sees_direction() -> None:
    """Reversing every edge changes the output (forward and backward are told apart)."""
    batch = _graph_batch()
    conv = EdgeNodeConv(8, 4).double()
    x = torch.randn(batch.num_nodes, 8, dtype=torch.float64)
    e = torch.randn(batch.edge_index.shape[1], 4, dtype=torch.float64)
    h, _ = conv(x, batch.edge_index, e)
    h_rev, _ = conv(x, batch.edge_index.flip(0), e)
    assert (h - h_rev).abs().max() > 1e-3


def test_edge_node_conv_precomputed_degrees_match() -> None:
    batch = _graph_batch()
    conv = EdgeNodeConv(8, 4).double()
    x = torch.randn(batch.num_nodes, 8, dtype=torch.float64)
    e = torch.randn(batch.edge_index.shape[1], 4, dtype=torch.float64)
    inverse = degree_inverses(batch.edge_index, batch.num_nodes, torch.float64)
    a = conv(x, batch.edge_index, e)
    b = conv(x, batch.edge_index, e, batch.edge_index.flip(0), inverse)
    torch.testing.assert_close(a, b)


def test_node_embedding_is_equivariant_and_positional() -> None:
    batch = _graph_batch()
    embedding = NodeEmbedding(8, ScalarFeatures()).double()
    args = (
        batch.x.double(),
        batch.node_depth,
        batch.node_depth.max() - batch.node_depth,
        batch.node_role,
        batch.node_activation,
        batch.node_position,
    )
    h = embedding(*args)
    order = _hidden_permutation(batch)
    h_p = embedding(*(a[order] for a in args))
    torch.testing.assert_close(h_p, h[order])
    # Hidden neurons with equal bias are indistinguishable; input neurons are not.
    zero_bias = (torch.zeros_like(args[0]),) + args[1:]
    h0 = embedding(*zero_bias)
    hidden = torch.nonzero(batch.node_group == 1).flatten()
    inputs = torch.nonzero(batch.node_role == 0).flatten()
    torch.testing.assert_close(h0[hidden[0]], h0[hidden[1]])
    assert (h0[inputs[0]] - h0[inputs[1]]).abs().max() > 1e-3


def test_scalar_features_vanish_at_zero() -> None:
    for kind in ("signlog", "fourier"):
        features = ScalarFeatures(kind)
        out = features(torch.tensor([[0.0, 1e-3, -3.7]]))
        assert out.shape == (1, 3 * features.num_features)
        per_scalar = out.view(3, features.num_features).abs().sum(1)
        assert per_scalar[0] == 0 and torch.all(per_scalar[1:] > 0)


def test_transformer_pooling_is_invariant_and_batches_sizes() -> None:
    torch.manual_seed(0)
    pool = TransformerPooling(8, 5, heads=2, num_layers=1, num_seeds=2).double()
    x = torch.randn(7 + 4, 8, dtype=torch.float64)
    batch = torch.tensor([0] * 7 + [1] * 4)
    out = pool(x, batch)
    assert out.shape == (2, 5)
    shuffled = torch.cat([torch.randperm(7), 7 + torch.randperm(4)])
    torch.testing.assert_close(pool(x[shuffled], batch), out)
    alone = pool(x[7:], torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(alone[0], out[1])


def test_layers_have_repr_and_reset() -> None:
    conv = EdgeNodeConv(8, 4)
    pool = TransformerPooling(8, 4, heads=2)
    for module in (conv, pool, NodeEmbedding(8, ScalarFeatures())):
        assert module.__class__.__name__ in repr(module)
        before = [p.detach().clone() for p in module.parameters()]
        module.reset_parameters()
        after = list(module.parameters())
        assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    with pytest.raises(ValueError, match="aggregators"):
        EdgeNodeConv(8, 4, aggregators=("median",))
