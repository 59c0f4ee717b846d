"""NeuralGraph: exact round trips, node/edge bookkeeping, batching of mixed architectures."""

from __future__ import annotations

import pytest
import torch

from weightspace.errors import NonFiniteWeightsError, ShapeMismatchError
from weightspace.graph import batch_graphs, to_graph, to_state_dict
from weightspace.module import to_module
from weightspace.spec import NetworkSpec, Op, mlp_spec


def conv_spec() -> NetworkSpec:
    return NetworkSpec(
        (
            Op("x", "input", (), {"shape": (2, 6, 6)}),
            Op(
                "c1",
                "conv2d",
                ("x",),
                {"in_channels": 2, "out_channels": 3, "kernel_size": (3, 3), "padding": (1, 1)},
            ),
            Op("a1", "activation", ("c1",), {"function": "relu"}),
            Op(
                "c2",
                "conv2d",
                ("a1",),
                {
                    "in_channels": 3,
                    "out_channels": 3,
                    "kernel_size": (3, 3),
                    "padding": (1, 1),
                    "bias": False,
                },
            ),
            Op("s", "add", ("c2", "a1")),
            Op(
                "p",
                "pool",
                ("s",),
                {
                    "mode": "max",
                    "dims": 2,
                    "kernel_size": (2, 2),
                    "stride": (2, 2),
                    "padding": (0, 0),
                },
            ),
            Op("f", "flatten", ("p",)),
            Op("fc", "linear", ("f",), {"in_features": 27, "out_features": 4}),
        )
    )


@pytest.mark.parametrize("make_spec", [lambda: mlp_spec([5, 7, 3], "tanh"), conv_spec])
def test_round_trip_is_exact(make_spec, dtype: torch.dtype) -> None:
    spec = make_spec()
    state = to_module(spec).to(dtype).state_dict()
    graph = to_graph(spec, state)
    back = to_state_dict(graph)
    assert back.keys() == state.keys()
    for key in state:
        assert torch.equal(back[key], state[key]), key
    assert to_graph(spec, back).edge_attr.equal(graph.edge_attr)


def test_conv_graph_bookkeeping() -> None:
    spec = conv_spec()
    graph = to_graph(spec, to_module(spec).state_dict())
    assert graph.num_nodes == 2 + 3 + 3 + 4
    # conv edges 3*2 + 3*3, linear edges 4*3 (9 spatial features each), residual 3
    assert graph.num_edges == 6 + 9 + 12 + 3
    assert graph.edge_attr.shape[1] == 9
    assert (graph.edge_kind == 1).sum() == 3
    residual = graph.edge_index[:, graph.edge_kind == 1]
    assert torch.equal(residual[1] - residual[0], torch.full((3,), 3))  # group a1 → group c2
    assert graph.node_role.tolist() == [0, 0] + [1] * 6 + [2] * 4
    assert graph.node_position.tolist() == [0, 1] + [-1] * 6 + [0, 1, 2, 3]
    assert graph.x[5:8].abs().sum() == 0  # c2 has no bias


def test_permuting_hidden_nodes_permutes_weights() -> None:
    spec = mlp_spec([3, 4, 2], "relu")
    state = to_module(spec).state_dict()
    graph = to_graph(spec, state)
    perm = torch.tensor([2, 0, 3, 1])
    relabel = torch.arange(graph.num_nodes)
    relabel[3:7] = 3 + perm.argsort()  # node 3 + perm[i] moves to slot 3 + i
    graph.edge_index = relabel[graph.edge_index]
    graph.x = graph.x[torch.cat([torch.arange(3), 3 + perm, torch.arange(7, 9)])]
    back = to_state_dict(graph)
    assert torch.equal(back["0.weight"], state["0.weight"][perm])
    assert torch.equal(back["0.bias"], state["0.bias"][perm])
    assert torch.equal(back["2.weight"], state["2.weight"][:, perm])


def test_batching_mixed_architectures_pads_edge_features() -> None:
    a = to_graph(mlp_spec([5, 7, 3]), to_module(mlp_spec([5, 7, 3])).state_dict())
    b = to_graph(conv_spec(), to_module(conv_spec()).state_dict())
    batch = batch_graphs([a, b])
    assert batch.num_graphs == 2
    assert batch.edge_attr.shape == (a.num_edges + b.num_edges, 9)
    assert batch.spec == [a.spec, b.spec]
    assert batch.get_example(0).edge_attr[:, 1:].abs().sum() == 0


def test_bad_state_dicts_are_refused() -> None:
    spec = mlp_spec([3, 4, 2])
    state = to_module(spec).state_dict()
    with pytest.raises(ShapeMismatchError, match="missing"):
        to_graph(spec, {k: v for k, v in state.items() if k != "2.bias"})
    with pytest.raises(ShapeMismatchError, match=r"shape \[4, 4\]"):
        to_graph(spec, {**state, "0.weight": torch.zeros(4, 4)})
    with pytest.raises(NonFiniteWeightsError, match="NaN or Inf"):
        to_graph(spec, {**state, "0.bias": torch.tensor([0.0, float("nan"), 0.0, 0.0])})


def test_one_million_parameter_mlp_converts_exactly() -> None:
    spec = mlp_spec([784, 1024, 256, 10])
    state = to_module(spec).state_dict()
    graph = to_graph(spec, state)
    assert graph.num_edges == spec.num_parameters - (1024 + 256 + 10)
    back = to_state_dict(graph)
    assert all(torch.equal(back[k], state[k]) for k in state)
