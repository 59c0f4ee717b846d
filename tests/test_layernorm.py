"""LayerNorm / RMSNorm and GELU/SiLU residual MLPs: spec, tracing, graph, module, symmetries."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import weightspace
from cli_runner import run_cli
from models import small_encoder_config
from weightspace.errors import SpecError, SymmetryError, UnsupportedLayerError
from weightspace.graph import (
    EDGE_LAYER_NORM,
    EDGE_RMS_NORM,
    NeuralGraph,
    batch_graphs,
    graph_size,
    to_graph,
    to_state_dict,
)
from weightspace.ingest import from_module, load_checkpoint, save_checkpoint
from weightspace.layout import layout_of
from weightspace.module import to_module
from weightspace.nn import Encoder
from weightspace.nn.augment import flip_signs as flip_view
from weightspace.nn.augment import rescale as rescale_view
from weightspace.nn.batch import GraphBank
from weightspace.nn.features import EdgeEmbedding, ScalarFeatures
from weightspace.nn.layers import dense_plan
from weightspace.spec import NetworkSpec, mlp_spec
from weightspace.symmetry import (
    canonicalize,
    flip_signs,
    random_broken_permutation,
    random_permutation,
    random_rescale,
    random_sign_flip,
    random_symmetry,
    rescale,
)
from weightspace.testing import assert_function_preserved, assert_invariant

torch.set_num_threads(1)

SMALL = small_encoder_config()


class Block(nn.Module):
    """A pre-norm residual MLP block, as in a transformer: ``x + W2 act(W1 norm(x))``."""

    def __init__(self, width: int, norm: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.norm = norm
        self.fc1 = nn.Linear(width, 2 * width)
        self.act = act
        self.fc2 = nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


def _residual_mlp(seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    """Linear → [LN, GELU block] → [RMSNorm, SiLU block] → RMSNorm → Linear, affine parameters
    drawn away from their (1, 0) initialisation so that every symmetry has work to do."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(5, 8),
        Block(8, nn.LayerNorm(8), nn.GELU()),
        Block(8, nn.RMSNorm(8, eps=1e-6), nn.SiLU()),
        nn.RMSNorm(8),
        nn.Linear(8, 3),
    ).to(dtype)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm | nn.RMSNorm):
                module.weight.copy_(torch.randn_like(module.weight))
                if getattr(module, "bias", None) is not None:
                    module.bias.copy_(torch.randn_like(module.bias))
    return model.eval()


def _inputs(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(16, 5, generator=torch.Generator().manual_seed(1), dtype=dtype)


def _traced(seed: int = 0) -> tuple[NetworkSpec, dict[str, torch.Tensor]]:
    return from_module(_residual_mlp(seed), _inputs())


# ----------------------------------------------------------------------------- spec and module
def test_tracing_keeps_the_function_and_the_spec_round_trips(dtype: torch.dtype) -> None:
    model = _residual_mlp(dtype=dtype)
    spec, state = weightspace.from_module(model, _inputs(dtype))
    norms = spec.norms
    assert [op.attrs["mode"] for op in norms] == ["layer", "rms", "rms"]
    assert norms[1].attrs["eps"] == 1e-6 and norms[2].attrs["eps"] is None
    assert {"gelu", "silu"} <= set(spec.activations)
    assert NetworkSpec.from_json(spec.to_json()) == spec
    assert spec.num_parameters == sum(p.numel() for p in model.parameters())
    assert set(state) == set(spec.param_shapes()) == set(model.state_dict())
    assert_function_preserved(model, to_module(spec, state), _inputs(dtype))


def test_norm_variants_without_affine_or_bias() -> None:
    x = torch.randn(4, 6, dtype=torch.float64)
    for norm in (
        nn.LayerNorm(6, elementwise_affine=False),
        nn.LayerNorm(6, bias=False),
        nn.RMSNorm(6, elementwise_affine=False),
    ):
        model = nn.Sequential(nn.Linear(6, 6), norm, nn.ReLU(), nn.Linear(6, 2)).double().eval()
        spec, state = from_module(model, x)
        assert set(state) == set(model.state_dict())
        graph = to_graph(spec, state)
        back = to_state_dict(graph)
        assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
        assert_function_preserved(model, to_module(spec, back), x)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"mode": "batch"}, "mode"),
        ({"normalized_size": 0}, "normalized_size"),
        ({"eps": -1.0}, "eps"),
        ({"eps": float("nan")}, "eps"),
    ],
)
def test_malformed_norm_ops_are_refused(change: dict, message: str) -> None:
    spec, _ = _traced()
    data = spec.to_dict()
    op = next(o for o in data["ops"] if o["kind"] == "norm")
    op["attrs"].update(change)
    with pytest.raises(SpecError, match=message):
        NetworkSpec.from_dict(data)


def test_unsupported_norms_name_the_module() -> None:
    two_dims = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.LayerNorm([6, 6]), nn.Flatten(), nn.Linear(72, 2)
    )
    with pytest.raises(UnsupportedLayerError, match=r"'1'.*last dimension"):
        from_module(two_dims, torch.zeros(1, 1, 8, 8))
    # LayerNorm(W) on a conv map normalises a spatial axis, not the channels: refused.
    spatial = nn.Sequential(nn.Conv1d(2, 4, 3), nn.LayerNorm(4), nn.Flatten(), nn.Linear(16, 2))
    with pytest.raises(UnsupportedLayerError, match="spatial"):
        from_module(spatial, torch.zeros(1, 2, 6))


# ----------------------------------------------------------------------------- graph
def test_graph_round_trip_is_exact_and_size_matches() -> None:
    spec, state = _traced()
    graph = to_graph(spec, state)
    nodes, edges = graph_size(spec)
    assert (graph.num_nodes, graph.num_edges) == (nodes, edges)
    back = to_state_dict(graph)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    # gamma on the diagonal edges, beta as the normalised neurons' bias
    layout = layout_of(spec)
    first = layout.norms[0]
    mask = graph.edge_kind == EDGE_LAYER_NORM
    assert int(mask.sum()) == 8 and int((graph.edge_kind == EDGE_RMS_NORM).sum()) == 16
    src = graph.edge_index[0, mask] - layout.offsets[first.source]
    dst = graph.edge_index[1, mask] - layout.offsets[first.target]
    assert torch.equal(src, dst)
    assert torch.equal(graph.edge_attr[mask, 0][dst.argsort()], state[f"{first.name}.weight"])
    start = layout.offsets[first.target]
    assert torch.equal(graph.x[start : start + 8, 0], state[f"{first.name}.bias"])
    # edges in any order still read back
    order = torch.randperm(graph.num_edges, generator=torch.Generator().manual_seed(0))
    shuffled = graph.clone()
    shuffled.edge_index, shuffled.edge_attr = graph.edge_index[:, order], graph.edge_attr[order]
    shuffled.edge_layer, shuffled.edge_kind = graph.edge_layer[order], graph.edge_kind[order]
    again = to_state_dict(shuffled)
    assert all(torch.equal(again[k], state[k]) for k in state)


def test_checkpoint_with_norms_round_trips(tmp_path) -> None:
    spec, state = _traced()
    path = save_checkpoint(tmp_path / "ln.safetensors", spec, state)
    spec2, state2 = load_checkpoint(path)
    assert spec2 == spec and all(torch.equal(state2[k], state[k]) for k in state)


# ----------------------------------------------------------------------------- symmetries
def test_layout_ties_norms_and_frees_affine_outputs() -> None:
    spec, _ = _traced()
    layout = layout_of(spec)
    stream = {n.source for n in layout.norms} | {n.target for n in layout.norms}
    assert sorted(stream) in [sorted(s) for s in layout.permutable_tie_sets()]
    normalised = [g.index for g in layout.groups if g.normalised]
    assert normalised and not set(normalised) & set(layout.scalable_groups())
    assert not set(normalised) & set(layout.sign_flippable_groups())
    # the final RMSNorm's output is read by the last Linear only (identity): scalable, flippable
    last = layout.norms[-1].target
    assert last in layout.scalable_groups() and last in layout.sign_flippable_groups()
    # GELU/SiLU hidden groups: permutations only
    for g in layout.groups:
        if g.activations & {"gelu", "silu"}:
            assert g.index not in layout.scalable_groups() + layout.sign_flippable_groups()


def test_random_symmetries_preserve_the_function(dtype: torch.dtype) -> None:
    model = _residual_mlp(seed=2, dtype=dtype)
    spec, state = from_module(model, _inputs(dtype))
    for seed in range(3):
        moved, draws = random_symmetry(spec, state, torch.Generator().manual_seed(seed))
        assert draws["rescale"] and draws["permutation"]
        assert not torch.equal(moved["0.weight"], state["0.weight"])
        assert_function_preserved(model, to_module(spec, moved), _inputs(dtype))


def test_rescale_and_flip_across_a_norm_are_refused_and_would_break_it() -> None:
    spec, state = _traced(seed=3)
    layout = layout_of(spec)
    group = layout.norms[0].source  # the residual stream read by the first LayerNorm
    factor = torch.linspace(0.5, 2.0, layout.groups[group].size, dtype=torch.float64)
    with pytest.raises(SymmetryError, match="normalised by '1.norm'"):
        rescale(spec, state, {group: factor})
    with pytest.raises(SymmetryError, match="normalised"):
        flip_signs(spec, state, {group: -torch.ones(layout.groups[group].size)})
    # Why: the same rescale done by hand (rows x c, readers / c) changes the function.
    producer = layout.groups[group].producer
    broken = dict(state)
    broken[f"{producer}.weight"] = state[f"{producer}.weight"] * factor[:, None]
    broken[f"{producer}.bias"] = state[f"{producer}.bias"] * factor
    x = _inputs()
    with pytest.raises(AssertionError):
        assert_function_preserved(to_module(spec, state), to_module(spec, broken), x)


def test_canonical_form_is_shared_by_the_orbit_and_keeps_the_function() -> None:
    spec, state = _traced(seed=4)
    canonical = canonicalize(spec, state)
    assert_function_preserved(to_module(spec, state), to_module(spec, canonical), _inputs())
    assert any(not torch.equal(canonical[k], state[k]) for k in state)  # it did something
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        moved, _ = random_sign_flip(spec, random_rescale(spec, state, gen)[0], gen)
        other = canonicalize(spec, moved)
        for key in canonical:
            assert torch.allclose(other[key], canonical[key], rtol=1e-10, atol=1e-12), key


def test_encoder_embedding_is_invariant_and_sensitive() -> None:
    torch.manual_seed(0)
    encoder = Encoder(SMALL).double().eval()
    spec, state = _traced(seed=5)

    def embed(model: tuple) -> np.ndarray:
        return encoder.embed([model])[0]

    assert_invariant(embed, (spec, state), rtol=1e-6)
    z = embed((spec, state))
    for kind in ("unmatched", "input"):
        broken, _ = random_broken_permutation(
            spec, state, torch.Generator().manual_seed(1), kind=kind
        )
        assert np.abs(embed((spec, broken)) - z).max() > 1e-6 * max(np.abs(z).max(), 1.0)
    # a permutation of the residual stream alone (norm parameters left in place) is seen too
    permuted, _ = random_permutation(spec, state, torch.Generator().manual_seed(2))
    mixed = dict(permuted)
    for op in spec.norms:
        mixed[f"{op.name}.weight"] = state[f"{op.name}.weight"]
    assert np.abs(embed((spec, mixed)) - z).max() > 1e-6 * max(np.abs(z).max(), 1.0)


def test_dense_and_message_passing_paths_agree() -> None:
    """One architecture runs the dense plan; a mixed batch runs message passing: same result."""
    torch.manual_seed(0)
    encoder = Encoder(SMALL).double().eval()
    spec, state = _traced(seed=6)
    other = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    spec2, state2 = from_module(other, _inputs())
    assert dense_plan(spec).num_edges == graph_size(spec)[1]  # the norm edges are in the plan
    with torch.no_grad():
        dense = encoder.embed([(spec, state)])[0]
        graphs = [to_graph(spec, canonicalize(spec, state)), to_graph(spec2, state2)]
        mixed = encoder(batch_graphs(graphs))[0].numpy()
    assert np.allclose(dense, mixed, rtol=1e-8, atol=1e-10)


def test_encoders_saved_before_norm_edges_still_load() -> None:
    new = EdgeEmbedding(8, ScalarFeatures())
    old_rows = torch.randn(2, 8)
    state = {k: v.clone() for k, v in new.state_dict().items()}
    state["kind.weight"] = old_rows
    new.load_state_dict(state)
    assert torch.equal(new.kind.weight[:2].detach(), old_rows)


def test_inspect_reports_the_graph_size(tmp_path, capsys: pytest.CaptureFixture) -> None:
    spec, state = _traced()
    path = save_checkpoint(tmp_path / "ln.safetensors", spec, state)
    code, out, err = run_cli(capsys, "inspect", str(path), "--json")
    assert code == 0, err
    info = json.loads(out)
    assert (info["num_nodes"], info["num_edges"]) == graph_size(spec)
    assert info["num_parameters"] == spec.num_parameters


@pytest.mark.parametrize("mode, module", [("layer", nn.LayerNorm), ("rms", nn.RMSNorm)])
def test_mlp_spec_with_norms_matches_the_sequential(mode: str, module: type) -> None:
    spec = mlp_spec([5, 7, 7, 2], "silu", norm=mode, eps=1e-6)
    sequential = nn.Sequential(
        nn.Linear(5, 7),
        module(7, eps=1e-6),
        nn.SiLU(),
        nn.Linear(7, 7),
        module(7, eps=1e-6),
        nn.SiLU(),
        nn.Linear(7, 2),
    ).double()
    traced, state = from_module(sequential, _inputs())
    assert traced.param_shapes() == spec.param_shapes()
    assert_function_preserved(sequential, to_module(spec, state), _inputs())
    with pytest.raises(SpecError, match="norm must be"):
        mlp_spec([5, 7, 2], norm="batch")


def test_batch_augmentations_keep_the_function_of_norm_graphs() -> None:
    """The encoder's batched rescale / sign-flip views act on gamma, beta through the graph."""
    spec, state = _traced(seed=7)
    batch = GraphBank([to_graph(spec, state)]).select(torch.tensor([0]))
    assert bool(batch.node_scalable.any()) and bool(batch.node_flippable.any())
    reference = to_module(spec, state)
    gen = torch.Generator().manual_seed(0)
    for view in (rescale_view, flip_view):
        moved = view(batch, gen)
        graph = NeuralGraph(
            x=moved.x,
            edge_index=moved.edge_index,
            edge_attr=moved.edge_attr,
            edge_layer=moved.edge_layer,
            edge_kind=moved.edge_kind,
            num_nodes=int(moved.x.shape[0]),
            spec=spec,
        )
        weights = to_state_dict(graph)
        assert any(not torch.equal(weights[k], state[k]) for k in state)
        assert_function_preserved(reference, to_module(spec, weights), _inputs())
