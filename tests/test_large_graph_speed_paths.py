"""The fast paths for large models equal the reference paths, checked on small models.

* :func:`~weightspace.graph.to_graph` (one preallocated buffer, blocks from
  :func:`~weightspace.graph_edges.edge_blocks`) against a per-edge Python loop over the layout;
* the encoder's memory-lean path (:mod:`weightspace.nn.large_graph`, taken by models with at
  least ``LARGE_GRAPH_EDGES`` edges) against the batched dense path, by lowering the threshold
  so that small models take it: same embeddings, heads and order, graph and probe branches;
* :func:`~weightspace.module.to_module` built on the meta device: same function, own copies.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import weightspace
from models import make_model, tiny_encoder, torch_mlp, torch_residual_cnn
from weightspace.graph import EDGE_QUERY_KEY, EDGE_RESIDUAL, NORM_EDGE_KINDS, to_graph
from weightspace.graph_edges import edge_blocks
from weightspace.layout import layout_of
from weightspace.module import to_module
from weightspace.nn import Encoder, large_graph
from weightspace.nn.batch import GraphBank
from weightspace.nn.encoder import EncoderError
from weightspace.spec import NetworkSpec
from weightspace.transformer import tiny_transformer

ARCHS = [("mlp", "relu"), ("mlp_residual", "tanh"), ("cnn1d_residual", "relu"), ("cnn2d", "relu")]


def _reference_edges(spec: NetworkSpec, state: dict) -> tuple[list, list, list]:
    """Edges one at a time, straight from the layout's definition (slow, obviously right)."""
    layout = layout_of(spec)
    width = layout.max_edge_features
    index, attr, kind = [], [], []
    for link in layout.links:
        src, dst = layout.groups[link.source], layout.groups[link.target]
        w = state[link.key]
        w = w.t() if link.transposed else w
        w = w[link.row_start : link.row_start + dst.size].reshape(dst.size, src.size, -1)
        for o in range(dst.size):
            for i in range(src.size):
                index.append((layout.offsets[src.index] + i, layout.offsets[dst.index] + o))
                feats = torch.zeros(width, dtype=w.dtype)
                feats[: link.edge_features] = w[o, i]
                attr.append(feats)
                kind.append(link.edge_kind)
    diagonals = [(s, t, EDGE_RESIDUAL, None) for s, t in layout.residuals]
    diagonals += [(n.source, n.target, NORM_EDGE_KINDS[n.mode], n.name) for n in layout.norms]
    diagonals += [(q, k, EDGE_QUERY_KEY, None) for q, k in layout.pairings]
    for source, target, edge_kind, norm in diagonals:
        gamma = state.get(f"{norm}.weight") if norm else None
        for k in range(layout.groups[source].size):
            index.append((layout.offsets[source] + k, layout.offsets[target] + k))
            feats = torch.zeros(width, dtype=torch.float64)
            feats[0] = 1.0 if gamma is None else gamma[k]
            attr.append(feats)
            kind.append(edge_kind)
    return index, attr, kind


def _transformer() -> tuple[NetworkSpec, dict]:
    with torch.random.fork_rng():
        torch.manual_seed(3)
        module = tiny_transformer(norm_first=True).eval()
    return weightspace.from_module(module, torch.randint(0, 16, (2, 8)))


@pytest.mark.parametrize("arch", [*ARCHS, "transformer"])
def test_to_graph_equals_the_edge_by_edge_definition(arch) -> None:
    spec, state = _transformer() if arch == "transformer" else make_model(*arch)
    graph = to_graph(spec, state)
    index, attr, kind = _reference_edges(spec, state)
    assert graph.edge_index.t().tolist() == [list(pair) for pair in index]
    assert torch.equal(graph.edge_attr, torch.stack(attr).to(graph.edge_attr.dtype))
    assert graph.edge_kind.tolist() == kind
    # unpadded blocks: plain layers are views of their weights, nothing copied
    blocks = edge_blocks(spec, state)
    assert sum(b.count for b in blocks) == graph.num_edges
    first = layout_of(spec).links[0]
    if first.is_plain:
        assert blocks[0].features.data_ptr() == state[first.key].data_ptr()


def _models() -> list:
    specs = [make_model(a, act, seed=s, dtype=torch.float32) for s, (a, act) in enumerate(ARCHS)]
    cnn = (torch_residual_cnn("relu"), torch.zeros(2, 3, 6, 6))
    return [*specs, cnn, (torch_mlp("relu"), torch.zeros(2, 6)), _transformer()]


def _reference(encoder: Encoder, models: list, with_heads: bool) -> tuple:
    z, heads = encoder._run(GraphBank(encoder.prepare(models)), 512, None, with_heads)
    return z, heads, encoder.last_fallback


@pytest.mark.parametrize("cut", ["all", "some"])
def test_lean_path_equals_the_batched_path(monkeypatch, cut: str) -> None:
    encoder = tiny_encoder()
    models = _models()
    z_ref, heads_ref, _ = _reference(encoder, models, with_heads=True)
    # "all": every model takes the lean path; "some": the larger half does, the rest is batched
    monkeypatch.setattr(large_graph, "LARGE_GRAPH_EDGES", 0 if cut == "all" else 100)
    calls = []
    lean = large_graph.encode_graph_lean
    monkeypatch.setattr(large_graph, "encode_graph_lean", lambda *a: calls.append(1) or lean(*a))
    z, heads = encoder._run(models, 512, None, with_heads=True)
    assert len(calls) == len(models) if cut == "all" else 0 < len(calls) < len(models)
    np.testing.assert_allclose(z.numpy(), z_ref.numpy(), rtol=1e-5, atol=1e-5)
    assert heads.keys() == heads_ref.keys()
    for key in heads:
        np.testing.assert_allclose(heads[key].numpy(), heads_ref[key].numpy(), atol=1e-5)
    # one model twice gives one embedding; a perturbed model moves (nothing stale is reused)
    other = encoder.embed([models[-2], _models()[-2]])
    assert np.abs(other[0] - other[1]).max() < 1e-5
    spec, state = models[0]
    moved = {k: v + 0.1 if k.endswith(".bias") else v for k, v in state.items()}
    assert np.abs(encoder.embed([(spec, moved)]) - encoder.embed([(spec, state)])).max() > 1e-3


def test_lean_path_with_the_bundled_encoder_and_its_probe_branch(monkeypatch) -> None:
    encoder = Encoder.load("pretrained:small")
    assert "probe" in encoder.config.branches
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    models = [(mlp, torch.zeros(2, 64))]
    z_ref, _, fallback_ref = _reference(encoder, models, with_heads=False)
    monkeypatch.setattr(large_graph, "LARGE_GRAPH_EDGES", 0)
    z = encoder.embed(models)
    np.testing.assert_allclose(z, z_ref.numpy(), rtol=1e-5, atol=1e-5)
    assert encoder.last_fallback.tolist() == fallback_ref.tolist() == [False]
    # an input shape the probes were not trained on is refused, as on the batched path
    with pytest.raises(EncoderError, match="input shape"):
        encoder.embed([(nn.Sequential(nn.Linear(5, 3)).eval(), torch.zeros(2, 5))])


def test_lean_path_refuses_what_the_batched_path_refuses(monkeypatch) -> None:
    monkeypatch.setattr(large_graph, "LARGE_GRAPH_EDGES", 0)
    encoder = tiny_encoder()
    spec, state = make_model("mlp", "relu", dtype=torch.float32)
    with pytest.raises(EncoderError, match="collection"):
        encoder.embed((spec, state))
    with pytest.raises(EncoderError, match="no models"):
        encoder.embed([])
    bad = dict(state)
    bad[next(iter(bad))] = torch.full_like(next(iter(state.values())), float("nan"))
    with pytest.raises(weightspace.errors.WeightspaceError, match="finite"):
        encoder.embed([(spec, bad)])


def test_to_module_copies_the_weights_and_keeps_the_function() -> None:
    module = torch_residual_cnn("relu")
    spec, state = weightspace.from_module(module, torch.zeros(2, 3, 6, 6))
    built = to_module(spec, state)
    x = torch.randn(4, 3, 6, 6)
    torch.testing.assert_close(built(x), module(x), rtol=1e-5, atol=1e-5)
    assert all(p.device.type == "cpu" for p in built.parameters())
    for key, value in built.state_dict().items():
        assert value.data_ptr() != state[key].data_ptr()
    double = to_module(spec, {k: v.double() for k, v in state.items()})
    assert all(p.dtype == torch.float64 for p in double.parameters())
