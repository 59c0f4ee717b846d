"""Transformers in the neural graph: token specs, module rebuild, exact round trip, symmetries
(head permutation, within-head GL(d), residual stream), encoder invariance and sensitivity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from weightspace.attention import (
    attention_state,
    load_attention_state,
    permute_heads,
    random_invertible,
    transform_heads,
)
from weightspace.errors import SpecError, UnsupportedLayerError
from weightspace.graph import (
    EDGE_ATTENTION_OUTPUT,
    EDGE_KEY,
    EDGE_POSITION_EMBEDDING,
    EDGE_QUERY,
    EDGE_QUERY_KEY,
    EDGE_TOKEN_EMBEDDING,
    EDGE_VALUE,
    NUM_EDGE_KINDS,
    batch_graphs,
    graph_size,
    to_graph,
    to_state_dict,
)
from weightspace.layout import layout_of
from weightspace.module import to_module
from weightspace.nn import Encoder, EncoderConfig
from weightspace.nn.batch import GraphBank
from weightspace.nn.features import NUM_EDGE_KINDS as TABLE_ROWS
from weightspace.spec import NetworkSpec, Op
from weightspace.symmetry import canonicalize, random_broken_permutation, random_symmetry
from weightspace.testing import assert_invariant, assert_sensitive
from weightspace.transformer import AddPositions, TokenPool, tiny_transformer, token_model_spec

torch.set_num_threads(1)
VOCAB, T = 16, 6
SMALL = EncoderConfig(
    hidden=16, edge_hidden=8, num_layers=2, embedding_dim=12, projection_dim=8, head_hidden=8
)


def _tokens(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (5, T), generator=torch.Generator().manual_seed(seed))


def _model(norm_first: bool = False, seed: int = 0, **kwargs) -> nn.Sequential:
    torch.manual_seed(seed)
    model = tiny_transformer(VOCAB, norm_first=norm_first, **kwargs).double().eval()
    with torch.no_grad():  # PyTorch starts biases and norms at 0/1: give symmetries work to do
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.normal_()
    return model


def _traced(norm_first: bool = False, seed: int = 0, **kwargs):
    model = _model(norm_first, seed, **kwargs)
    spec, state = token_model_spec(model, _tokens())
    return model, spec, state


def _run(spec: NetworkSpec, state: dict, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return to_module(spec, state)(x)


def _attention_ops(spec: NetworkSpec) -> list[Op]:
    return [op for op in spec.ops if op.kind == "attention"]


def _heads_moved(spec: NetworkSpec, state: dict, seed: int) -> dict:
    """Random head permutation and within-head GL(d) on every attention (state dict level)."""
    gen = torch.Generator().manual_seed(seed)
    out = dict(state)
    for op in _attention_ops(spec):
        w = attention_state(op, out)
        h, d = w.num_heads, w.head_dim
        w = permute_heads(w, torch.randperm(h, generator=gen))
        qk, vo = random_invertible(h, d, gen), random_invertible(h, d, gen)
        out.update(load_attention_state(op, transform_heads(w, qk, vo)))
    return out


@pytest.mark.parametrize("norm_first", [False, True])
def test_traced_spec_computes_the_module_and_round_trips(norm_first: bool) -> None:
    model, spec, state = _traced(norm_first, num_layers=2)
    x = _tokens(1)
    with torch.no_grad():
        assert torch.allclose(_run(spec, state, x), model(x), rtol=1e-12, atol=1e-12)
    assert NetworkSpec.from_json(spec.to_json()) == spec
    assert spec.param_shapes() == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert "attn8h2" in spec.summary() and "tokenemb16x8" in spec.summary()
    graph = to_graph(spec, state)
    assert (graph.num_nodes, graph.edge_index.shape[1]) == graph_size(spec)
    back = to_state_dict(graph)
    assert set(back) == set(state)
    for key in state:
        assert torch.equal(back[key], state[key]), key


def test_graph_holds_attention_and_embedding_edges() -> None:
    _, spec, state = _traced()
    graph = to_graph(spec, state)
    kinds = graph.edge_kind.tolist()
    e, v, positions, d_ff = 8, VOCAB, 8, 16
    assert kinds.count(EDGE_QUERY) == kinds.count(EDGE_KEY) == kinds.count(EDGE_VALUE) == e * e
    assert kinds.count(EDGE_ATTENTION_OUTPUT) == e * e
    assert kinds.count(EDGE_QUERY_KEY) == e  # one pairing per head dimension
    assert kinds.count(EDGE_TOKEN_EMBEDDING) == v * e
    assert kinds.count(EDGE_POSITION_EMBEDDING) == positions * e
    assert kinds.count(0) == 2 * e * d_ff + e * 3  # MLP and head
    assert max(kinds) < NUM_EDGE_KINDS == TABLE_ROWS
    # an embedding edge v -> e carries weight[v, e] (torch stores (V, E), transposed)
    layout = layout_of(spec)
    link = next(k for k in layout.links if k.edge_kind == EDGE_TOKEN_EMBEDDING)
    mask = graph.edge_kind == EDGE_TOKEN_EMBEDDING
    src = graph.edge_index[0, mask] - layout.offsets[link.source]
    dst = graph.edge_index[1, mask] - layout.offsets[link.target]
    assert torch.equal(graph.edge_attr[mask, 0], state["0.weight"][src, dst])
    # the query dims' biases are the first E entries of in_proj_bias
    q = next(k for k in layout.links if k.edge_kind == EDGE_QUERY).target
    start = layout.offsets[q]
    assert torch.equal(graph.x[start : start + e, 0], state["2.self_attn.in_proj_bias"][:e])


def test_bias_free_attention_round_trips() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Embedding(VOCAB, 8),
        nn.TransformerEncoderLayer(8, 4, 12, 0.0, batch_first=True, bias=False),
        TokenPool("first"),
        nn.Linear(8, 2),
    ).eval()
    spec, state = token_model_spec(model, _tokens())
    assert "2.self_attn.in_proj_bias" not in spec.param_shapes()
    back = to_state_dict(to_graph(spec, state))
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    x = _tokens(2)
    with torch.no_grad():
        assert torch.allclose(_run(spec, state, x), model(x), atol=1e-6)


@pytest.mark.parametrize("norm_first", [False, True])
def test_symmetries_preserve_the_function(norm_first: bool) -> None:
    _, spec, state = _traced(norm_first)
    x = _tokens(3)
    reference = _run(spec, state, x)
    moved = _heads_moved(spec, state, seed=1)
    assert any(not torch.allclose(moved[k], state[k]) for k in state)
    assert torch.allclose(_run(spec, moved, x), reference, rtol=1e-9, atol=1e-9)
    layout = layout_of(spec)
    stream = next(s for s in layout.permutable_tie_sets() if len(s) > 1)
    assert all(not layout.groups[g].head_dim for g in stream)
    for seed in range(3):  # residual-stream and MLP permutations (and rescaling where allowed)
        gen = torch.Generator().manual_seed(seed)
        permuted, draws = random_symmetry(spec, state, gen)
        assert stream[0] in draws["permutation"]
        assert torch.allclose(_run(spec, permuted, x), reference, rtol=1e-9, atol=1e-9)
    canonical = canonicalize(spec, state)
    assert torch.allclose(_run(spec, canonical, x), reference, rtol=1e-9, atol=1e-9)


def test_canonical_form_removes_head_symmetries() -> None:
    _, spec, state = _traced()
    canonical = canonicalize(spec, state)
    other = canonicalize(spec, _heads_moved(spec, state, seed=4))
    for key in canonical:
        assert torch.allclose(other[key], canonical[key], rtol=1e-7, atol=1e-9), key


def test_broken_permutations_change_the_function() -> None:
    _, spec, state = _traced()
    x = _tokens(5)
    reference = _run(spec, state, x)
    for kind in ("unmatched", "input"):
        broken, _ = random_broken_permutation(
            spec, state, torch.Generator().manual_seed(0), kind=kind
        )
        assert not torch.allclose(_run(spec, broken, x), reference, atol=1e-6)


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    torch.manual_seed(0)
    return Encoder(SMALL).double().eval()


def test_encoder_is_invariant_and_sensitive(encoder: Encoder) -> None:
    _, spec, state = _traced(norm_first=True)

    def embed(model: tuple) -> np.ndarray:
        return encoder.embed([model])[0]

    assert_invariant(embed, (spec, state), rtol=1e-6)
    z = embed((spec, state))
    for seed in range(2):
        moved = embed((spec, _heads_moved(spec, state, seed)))
        assert np.allclose(moved, z, rtol=1e-6, atol=1e-6 * np.abs(z).max())
    assert_sensitive(embed, (spec, state))
    changed = dict(state)
    changed["2.self_attn.in_proj_weight"] = state["2.self_attn.in_proj_weight"] * 1.5
    assert np.abs(embed((spec, changed)) - z).max() > 1e-4 * np.abs(z).max()


def test_dense_path_matches_message_passing(encoder: Encoder) -> None:
    _, spec, state = _traced()
    graph = to_graph(spec, canonicalize(spec, state))
    with torch.no_grad():
        dense_batch = GraphBank([graph, graph]).select([0, 1])
        assert dense_batch.spec == spec  # the dense path runs
        dense = encoder(dense_batch.to(dtype=torch.float64))
        sparse = encoder(batch_graphs([graph, graph]))
    assert torch.allclose(dense, sparse, rtol=1e-8, atol=1e-10)


def test_mixed_batch_with_an_mlp(encoder: Encoder) -> None:
    from weightspace.spec import mlp_spec

    _, spec, state = _traced()
    mlp = mlp_spec([4, 5, 3])
    torch.manual_seed(1)
    mlp_state = {k: torch.randn(s, dtype=torch.float64) for k, s in mlp.param_shapes().items()}
    together = encoder.embed([(spec, state), (mlp, mlp_state)])
    alone = encoder.embed([(spec, state)])
    assert np.allclose(together[0], alone[0], rtol=1e-8, atol=1e-10)


def test_old_encoder_state_loads_with_fresh_attention_rows() -> None:
    torch.manual_seed(0)
    encoder = Encoder(SMALL)
    saved = encoder.state_dict()
    key = next(k for k in saved if k.endswith("kind.weight"))
    old = {**saved, key: saved[key][:4].clone()}  # an encoder from before the attention kinds
    old = {k: v for k, v in old.items() if "head_position" not in k}  # and head positions
    torch.manual_seed(1)
    fresh = Encoder(SMALL)
    fresh.load_state_dict(old)  # strict
    assert torch.equal(fresh.state_dict()[key][:4], saved[key][:4])
    assert fresh.state_dict()[key].shape[0] == NUM_EDGE_KINDS
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in old.items() if k != key)


def _ops(*extra: Op, shape=(T,), layout="tokens", vocab=VOCAB) -> tuple[Op, ...]:
    attrs = {"shape": shape, "layout": layout} | ({"vocab_size": vocab} if vocab else {})
    return (Op("x", "input", (), attrs), *extra)


_EMB = Op("e", "embedding", ("x",), {"num_embeddings": VOCAB, "embedding_dim": 8, "index": "token"})
_POOL = Op("p", "token_pool", ("e",), {"mode": "mean"})
_HEAD = Op("h", "linear", ("p",), {"in_features": 8, "out_features": 2, "bias": True})


def test_token_spec_of_features_runs() -> None:
    """A (T, d) token input: a per-token linear, attention, pool, head."""
    ops = (
        Op("x", "input", (), {"shape": (T, 3), "layout": "tokens"}),
        Op("l", "linear", ("x",), {"in_features": 3, "out_features": 8, "bias": True}),
        Op("a", "attention", ("l",), {"embed_dim": 8, "num_heads": 2, "bias": True}),
        Op("r", "add", ("l", "a"), {}),
        Op("p", "token_pool", ("r",), {"mode": "first"}),
        Op("h", "linear", ("p",), {"in_features": 8, "out_features": 2, "bias": True}),
    )
    spec = NetworkSpec(ops)
    module = to_module(spec).double()
    state = {k: v.detach() for k, v in module.state_dict().items()}
    x = torch.randn(4, T, 3, dtype=torch.float64)
    perm, _ = random_symmetry(spec, state, torch.Generator().manual_seed(0))
    assert torch.allclose(_run(spec, perm, x), _run(spec, state, x), atol=1e-10)
    back = to_state_dict(to_graph(spec, state))
    assert all(torch.equal(back[k], state[k]) for k in state)


@pytest.mark.parametrize(
    ("ops", "message"),
    [
        (_ops(_EMB, _POOL, _HEAD, layout="grid"), "layout 'grid' is unknown"),
        (_ops(_EMB, _POOL, _HEAD, vocab=None), "vocab_size"),
        (_ops(_EMB, _POOL, _HEAD, vocab=12), "differs from the input's vocab_size"),
        (
            _ops(
                _EMB,
                Op("a", "attention", ("e",), {"embed_dim": 8, "num_heads": 3, "bias": True}),
                _POOL,
                _HEAD,
            ),
            "not a multiple of num_heads",
        ),
        (
            _ops(_EMB, Op("p", "token_pool", ("e",), {"mode": "max"}), _HEAD),
            "token_pool mode",
        ),
        (
            (
                Op("x", "input", (), {"shape": (8,)}),
                Op("p", "token_pool", ("x",), {"mode": "mean"}),
                Op("h", "linear", ("p",), {"in_features": 8, "out_features": 2}),
            ),
            "needs a token input",
        ),
    ],
)
def test_bad_token_specs_are_refused(ops: tuple[Op, ...], message: str) -> None:
    with pytest.raises(SpecError, match=message) as info:
        NetworkSpec(ops)
    assert "\n" not in str(info.value)


def test_unsupported_token_layouts_and_modules_are_refused() -> None:
    flat = Op("f", "flatten", ("e",), {})
    head = Op("h", "linear", ("f",), {"in_features": 8 * T, "out_features": 2})
    with pytest.raises(UnsupportedLayerError, match="token_pool") as info:
        layout_of(NetworkSpec(_ops(_EMB, flat, head)))
    assert "\n" not in str(info.value)
    model = nn.Sequential(nn.Embedding(VOCAB, 8), nn.Conv1d(8, 8, 3), TokenPool(), nn.Linear(8, 2))
    with pytest.raises(UnsupportedLayerError, match="'1' of type Conv1d"):
        token_model_spec(model, _tokens())
    no_pool = nn.Sequential(nn.Embedding(VOCAB, 8), AddPositions(T, 8), nn.Linear(8, 2))
    with pytest.raises(UnsupportedLayerError, match="never pools"):
        token_model_spec(no_pool)
    extra_kv = nn.Sequential(
        nn.Embedding(VOCAB, 8), nn.TransformerEncoderLayer(8, 2, batch_first=False), TokenPool()
    )
    with pytest.raises(UnsupportedLayerError, match="batch_first"):
        token_model_spec(extra_kv, _tokens())


def test_from_module_and_embed_read_a_transformer(encoder: Encoder) -> None:
    from weightspace.ingest import from_module

    model = _model(num_layers=2)
    spec, state = from_module(model, _tokens())
    assert spec == token_model_spec(model, _tokens())[0]
    assert spec.input_shape == (T,) and spec.is_tokens
    # a bare module (no example input): T is the positional table's size
    z = encoder.embed([model])[0]
    positions = model[1].table.num_embeddings
    moved = token_model_spec(model)
    assert moved[0].input_shape == (positions,)
    assert np.allclose(encoder.embed([moved])[0], z, rtol=1e-10, atol=1e-12)


def test_head_dimensions_are_not_permuted_neuron_wise() -> None:
    from weightspace.errors import SymmetryError
    from weightspace.symmetry import permute

    _, spec, state = _traced()
    layout = layout_of(spec)
    query = next(g.index for g in layout.groups if g.head_dim)
    with pytest.raises(SymmetryError, match="head dimensions of attention") as info:
        permute(spec, state, {query: torch.arange(8).flip(0)})
    assert "\n" not in str(info.value)
