"""Coordinate views (``train --coord-shift / --coord-zoom``): exact shifted / zoomed SIRENs."""

from __future__ import annotations

import pytest
import torch

from weightspace.graph import to_graph, to_state_dict
from weightspace.module import to_module
from weightspace.nn.batch import GraphBank
from weightspace.spec_builders import mlp_spec, siren_spec
from weightspace.training.config import TrainConfig, TrainError
from weightspace.training.coord_views import (
    CoordViewError,
    coord_view,
    is_coordinate_model,
    transform_coordinates,
)
from weightspace.training.views import view


def _sirens(count: int, sizes=(2, 16, 16, 1)) -> list:
    torch.manual_seed(0)
    spec = siren_spec(list(sizes))
    graphs = []
    for _ in range(count):
        module = to_module(spec).double()
        for p in module.parameters():
            torch.nn.init.uniform_(p, -0.5, 0.5)
        graphs.append(to_graph(spec, module.state_dict(), dtype=torch.float64))
    return graphs


def _module_of(batch, graphs, g: int):
    """The module of graph ``g`` of ``batch`` (its weights read back out of the batch)."""
    graph = graphs[g].clone()
    graph.x = batch.x[batch.batch == g]
    graph.edge_attr = batch.edge_attr[batch.edge_batch == g][:, : graphs[g].edge_attr.shape[1]]
    return to_module(graph.spec, to_state_dict(graph)).double()


def test_shifted_zoomed_weights_compute_f_at_transformed_coordinates() -> None:
    graphs = _sirens(3)
    batch = GraphBank(graphs).select([0, 1, 2])
    delta = torch.tensor([[0.1, -0.2], [0.0, 0.3], [-0.15, 0.05]], dtype=torch.float64)
    scale = torch.tensor([1.0, 0.9, 1.1], dtype=torch.float64)
    moved = transform_coordinates(batch, delta, scale)
    x = torch.rand(50, 2, dtype=torch.float64) * 2 - 1
    for g in range(3):
        original = _module_of(batch, graphs, g)
        shifted = _module_of(moved, graphs, g)
        with torch.no_grad():
            want = original(scale[g] * x + delta[g])
            got = shifted(x)
            assert not torch.allclose(original(x), want, atol=1e-3)  # the view changed f
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # only the first layer changes: every other edge and bias is untouched
    first = batch.node_role[batch.edge_index[0]] == 0
    assert torch.equal(moved.edge_attr[~first], batch.edge_attr[~first])
    touched = torch.zeros(batch.num_nodes, dtype=torch.bool)
    touched[batch.edge_index[1, first]] = True
    assert torch.equal(moved.x[~touched], batch.x[~touched])


def test_random_view_stays_in_bounds_and_default_is_identity() -> None:
    graphs = _sirens(4)
    batch = GraphBank(graphs).select([0, 1, 2, 3])
    generator = torch.Generator().manual_seed(0)
    assert coord_view(batch, 0.0, 0.0, generator) is batch
    config = TrainConfig(objective="class")
    assert config.coord_shift == 0 and config.coord_zoom == 0
    plain = view(batch, None, config, torch.Generator().manual_seed(1))
    expected = view(batch, None, config, torch.Generator().manual_seed(1))
    assert torch.equal(plain.x, expected.x) and torch.equal(plain.edge_attr, expected.edge_attr)
    moved = coord_view(batch, 0.2, 0.1, torch.Generator().manual_seed(2))
    first = batch.node_role[batch.edge_index[0]] == 0
    ratio = moved.edge_attr[first, 0] / batch.edge_attr[first, 0]
    assert ((ratio >= 0.9 - 1e-9) & (ratio <= 1.1 + 1e-9)).all()
    assert not torch.allclose(ratio, torch.ones_like(ratio))
    assert not torch.equal(moved.x, batch.x)


def test_non_coordinate_models_and_bad_values_are_refused() -> None:
    spec = mlp_spec([4, 8, 3], "relu")
    module = to_module(spec)
    batch = GraphBank([to_graph(spec, module.state_dict())] * 2).select([0, 1])
    assert not is_coordinate_model(spec) and is_coordinate_model(siren_spec([2, 8, 1]))
    with pytest.raises(CoordViewError, match="coordinates"):
        coord_view(batch, 0.1, 0.0, torch.Generator())
    for shift, zoom in ((-0.1, 0.0), (float("nan"), 0.0), (0.1, 1.0), (0.0, -0.2)):
        with pytest.raises(CoordViewError):
            coord_view(batch, shift, zoom, torch.Generator())
        with pytest.raises(TrainError):
            TrainConfig(objective="class", coord_shift=shift, coord_zoom=zoom)
    with pytest.raises(TrainError, match="class objective"):
        TrainConfig(objective="both", coord_shift=0.1)
    assert TrainConfig(objective="class", coord_shift=0.1).to_dict()["coord_shift"] == 0.1


def test_stepped_shifts_are_whole_multiples_of_the_step() -> None:
    graphs = _sirens(64, sizes=(2, 4, 1))
    batch = GraphBank(graphs).select(list(range(64)))
    step = 2 / 7
    moved = coord_view(batch, step, 0.0, torch.Generator().manual_seed(3), step)
    first = batch.node_role[batch.edge_index[0]] == 0
    # recover each graph's delta from b' - b = W delta (2 inputs, 4 hidden: least squares)
    seen = set()
    for g in range(64):
        edges = first & (batch.edge_batch == g)
        weight = torch.zeros(4, 2, dtype=torch.float64)
        dst = batch.edge_index[1, edges]
        local = dst - dst.min()
        weight[local, batch.node_position[batch.edge_index[0, edges]]] = batch.edge_attr[edges, 0]
        rise = (moved.x - batch.x)[dst.unique(sorted=True), 0]
        delta = torch.linalg.lstsq(weight, rise.unsqueeze(-1)).solution.squeeze(-1)
        k = delta / step
        torch.testing.assert_close(k, k.round(), atol=1e-6, rtol=0)
        seen.update(int(v) for v in k.round())
    assert seen == {-1, 0, 1}
    with pytest.raises(CoordViewError, match="step"):
        coord_view(batch, 0.1, 0.0, torch.Generator(), 0.2)
    with pytest.raises(TrainError, match="step"):
        TrainConfig(objective="class", coord_shift=0.1, coord_shift_step=-1.0)


def test_a_zoo_of_other_models_is_refused_by_name() -> None:
    from weightspace.training.coord_views import check_coordinate_zoo

    check_coordinate_zoo("zoo", [siren_spec([2, 8, 1]).to_json()])
    with pytest.raises(CoordViewError, match=r"^zoo: .*linear4x8"):
        check_coordinate_zoo("zoo", [siren_spec([2, 8, 1]), mlp_spec([4, 8, 3], "relu")])
