"""Multi-head attention: symmetries keep the function, the canonical form is exact."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from weightspace.attention import (
    attention_forward,
    attention_weights,
    canonical_attention,
    embedding_weights,
    encoder_layer_weights,
    load_attention,
    load_encoder_layer,
    permute_block_hidden,
    permute_block_stream,
    permute_heads,
    permute_stream,
    random_invertible,
    transform_heads,
)
from weightspace.errors import SymmetryError, UnsupportedLayerError

torch.set_num_threads(1)
E, H, T = 12, 3, 5


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tokens(seed: int = 0, batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, T, E, generator=_gen(seed), dtype=torch.float64)


def _mha(bias: bool = True, seed: int = 0) -> nn.MultiheadAttention:
    torch.manual_seed(seed)
    module = nn.MultiheadAttention(E, H, bias=bias, batch_first=True).double().eval()
    if bias:  # PyTorch initialises the biases at zero: give the symmetries work to do
        with torch.no_grad():
            module.in_proj_bias.normal_()
            module.out_proj.bias.normal_()
    return module


def _layer(norm_first: bool, activation: str = "gelu", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layer = (
        nn.TransformerEncoderLayer(
            E,
            H,
            dim_feedforward=16,
            dropout=0.0,
            activation=activation,
            batch_first=True,
            norm_first=norm_first,
        )
        .double()
        .eval()
    )
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.startswith("norm") or name.endswith("bias"):
                p.normal_()
    return layer


def _run(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.MultiheadAttention):
        return module(x, x, x, need_weights=False)[0]
    return module(x)


def _with(module: nn.Module, weights) -> nn.Module:
    import copy

    clone = copy.deepcopy(module)
    if isinstance(clone, nn.MultiheadAttention):
        load_attention(clone, weights)
    else:
        load_encoder_layer(clone, weights)
    return clone


@pytest.mark.parametrize("bias", [True, False])
def test_round_trip_and_reference_forward_are_exact(bias: bool) -> None:
    module, x = _mha(bias), _tokens()
    weights = attention_weights(module)
    back = _with(_mha(bias, seed=9), weights)
    assert all(
        torch.equal(a, b)
        for a, b in zip(module.state_dict().values(), back.state_dict().values(), strict=True)
    )
    torch.testing.assert_close(attention_forward(weights, x), _run(module, x))


@pytest.mark.parametrize("bias", [True, False])
def test_head_symmetries_keep_the_function_and_a_broken_one_does_not(bias: bool) -> None:
    module, x = _mha(bias), _tokens()
    weights, reference = attention_weights(module), _run(module, x)
    d = E // H
    perm = torch.randperm(H, generator=_gen(1))
    qk, vo = random_invertible(H, d, _gen(2)), random_invertible(H, d, _gen(3))
    for moved in (permute_heads(weights, perm), transform_heads(weights, qk, vo)):
        assert not torch.allclose(moved.in_proj, weights.in_proj)
        torch.testing.assert_close(_run(_with(module, moved), x), reference)
    # negative control: the same matrix on Q and K (not its inverse transpose) changes the scores
    broken = transform_heads(weights, qk, torch.eye(d, dtype=torch.float64).expand(H, d, d))
    q_only = type(weights)(
        broken.in_proj.clone(), broken.in_bias, weights.out_proj, weights.out_bias, H
    )
    q_only.in_proj[E : 2 * E] = weights.in_proj[E : 2 * E]
    assert not torch.allclose(_run(_with(module, q_only), x), reference, atol=1e-3)


def test_stream_permutation_is_equivariant() -> None:
    module, x = _mha(), _tokens()
    weights = attention_weights(module)
    perm = torch.randperm(E, generator=_gen(4))
    moved = _with(module, permute_stream(weights, perm))
    torch.testing.assert_close(_run(moved, x[..., perm]), _run(module, x)[..., perm])


@pytest.mark.parametrize("bias", [True, False])
def test_canonical_form_is_shared_by_the_orbit_and_keeps_the_function(bias: bool) -> None:
    module, x = _mha(bias), _tokens()
    weights = attention_weights(module)
    canonical = canonical_attention(weights)
    torch.testing.assert_close(_run(_with(module, canonical), x), _run(module, x))
    d = E // H
    for seed in range(3):
        moved = transform_heads(
            permute_heads(weights, torch.randperm(H, generator=_gen(seed))),
            random_invertible(H, d, _gen(10 + seed)),
            random_invertible(H, d, _gen(20 + seed)),
        )
        again = canonical_attention(moved)
        torch.testing.assert_close(again.in_proj, canonical.in_proj, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(again.out_proj, canonical.out_proj, rtol=1e-9, atol=1e-9)
        if bias:
            torch.testing.assert_close(again.in_bias, canonical.in_bias, rtol=1e-9, atol=1e-9)
    # equivariant under stream permutations; and another model has another canonical form
    perm = torch.randperm(E, generator=_gen(5))
    permuted = canonical_attention(permute_stream(weights, perm))
    torch.testing.assert_close(permuted.in_proj, permute_stream(canonical, perm).in_proj)
    other = canonical_attention(attention_weights(_mha(bias, seed=1)))
    assert not torch.allclose(other.in_proj, canonical.in_proj, atol=1e-3)


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_layer_symmetries_keep_the_function(norm_first: bool, activation: str) -> None:
    layer, x = _layer(norm_first, activation), _tokens()
    weights, reference = encoder_layer_weights(layer), layer(x)
    torch.testing.assert_close(_with(layer, weights)(x), reference)  # round trip
    d = E // H
    heads = replace_attention(
        weights,
        transform_heads(
            permute_heads(weights.attention, torch.randperm(H, generator=_gen(1))),
            random_invertible(H, d, _gen(2)),
            random_invertible(H, d, _gen(3)),
        ),
    )
    torch.testing.assert_close(_with(layer, heads)(x), reference)
    hidden = permute_block_hidden(weights, torch.randperm(16, generator=_gen(6)))
    torch.testing.assert_close(_with(layer, hidden)(x), reference)
    canonical = replace_attention(weights, canonical_attention(weights.attention))
    torch.testing.assert_close(_with(layer, canonical)(x), reference)
    perm = torch.randperm(E, generator=_gen(7))
    stream = _with(layer, permute_block_stream(weights, perm))
    torch.testing.assert_close(stream(x[..., perm]), reference[..., perm])
    # negative control: permuting the stream without the LayerNorms breaks the block
    broken = permute_block_stream(weights, perm)
    params = dict(broken.params)
    params["norm1.weight"] = weights.params["norm1.weight"]
    broken = type(weights)(broken.attention, params, weights.norm_first, weights.activation)
    assert not torch.allclose(_with(layer, broken)(x[..., perm]), reference[..., perm], atol=1e-3)


def replace_attention(weights, attention):
    from dataclasses import replace

    return replace(weights, attention=attention)


def test_unsupported_variants_are_refused_naming_the_module() -> None:
    cases = [
        (nn.MultiheadAttention(E, H, kdim=5, vdim=7), "kdim/vdim"),
        (nn.MultiheadAttention(E, H, add_bias_kv=True), "add_bias_kv"),
        (nn.MultiheadAttention(E, H, add_zero_attn=True), "add_zero_attn"),
        (nn.Linear(E, E), "not an nn.MultiheadAttention"),
    ]
    for module, words in cases:
        with pytest.raises(UnsupportedLayerError, match=words) as info:
            attention_weights(module, "blocks.0.attn")
        assert "'blocks.0.attn'" in str(info.value) and "\n" not in str(info.value)
    layer = nn.TransformerEncoderLayer(E, H, activation=torch.tanh, batch_first=True)
    with pytest.raises(UnsupportedLayerError, match="'enc.0'.*activation") as info:
        encoder_layer_weights(layer, "enc.0")
    assert "\n" not in str(info.value)
    with pytest.raises(SymmetryError):
        permute_heads(attention_weights(_mha()), torch.tensor([0, 0, 1]))


class TinyTransformer(nn.Module):
    """Token and learned positional embeddings, a pre-norm and a post-norm block, a final
    LayerNorm and a linear head: the layout of a small BERT/ViT-style classifier."""

    def __init__(self, vocab: int = 11, classes: int = 4) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, E)
        self.position = nn.Parameter(torch.randn(T, E))
        self.blocks = nn.ModuleList([_layer(True, "gelu", 1), _layer(False, "relu", 2)])
        self.norm = nn.LayerNorm(E)
        self.head = nn.Linear(E, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tokens(ids) + self.position[: ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))


def _tiny() -> tuple[TinyTransformer, torch.Tensor]:
    torch.manual_seed(3)
    model = TinyTransformer().double().eval()
    with torch.no_grad():
        model.norm.weight.normal_()
        model.norm.bias.normal_()
    return model, torch.randint(0, 11, (6, T), generator=_gen(8))


def test_a_token_transformer_keeps_its_function_under_every_symmetry_at_once() -> None:
    """Stream permutation through embeddings, blocks, final norm and head; per block: heads
    permuted, within-head GL(d), MLP hidden permutation; then the canonical attention form."""
    import copy

    model, ids = _tiny()
    reference = model(ids)
    perm = torch.randperm(E, generator=_gen(9))
    moved = copy.deepcopy(model)
    d = E // H
    with torch.no_grad():
        moved.tokens.weight.copy_(embedding_weights(model.tokens)[:, perm])
        moved.position.copy_(model.position[:, perm])
        moved.norm.weight.copy_(model.norm.weight[perm])
        moved.norm.bias.copy_(model.norm.bias[perm])
        moved.head.weight.copy_(model.head.weight[:, perm])
    for i, block in enumerate(model.blocks):
        weights = permute_block_hidden(
            permute_block_stream(encoder_layer_weights(block, f"blocks.{i}"), perm),
            torch.randperm(16, generator=_gen(30 + i)),
        )
        attention = transform_heads(
            permute_heads(weights.attention, torch.randperm(H, generator=_gen(40 + i))),
            random_invertible(H, d, _gen(50 + i)),
            random_invertible(H, d, _gen(60 + i)),
        )
        load_encoder_layer(moved.blocks[i], replace_attention(weights, attention))
    assert not torch.allclose(moved.tokens.weight, model.tokens.weight)
    torch.testing.assert_close(moved(ids), reference)
    for block in moved.blocks:
        weights = encoder_layer_weights(block)
        load_encoder_layer(
            block, replace_attention(weights, canonical_attention(weights.attention))
        )
    torch.testing.assert_close(moved(ids), reference)


def test_embeddings_with_max_norm_are_refused() -> None:
    with pytest.raises(UnsupportedLayerError, match="'tok'.*max_norm"):
        embedding_weights(nn.Embedding(5, E, max_norm=1.0), "tok")
    with pytest.raises(UnsupportedLayerError, match="'tok'.*not an nn.Embedding"):
        embedding_weights(nn.Linear(5, E), "tok")


@settings(max_examples=20, deadline=None)
@given(
    heads=st.integers(1, 4),
    head_dim=st.integers(1, 4),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_canonical_form_is_invariant_for_any_shape(
    heads: int, head_dim: int, bias: bool, seed: int
) -> None:
    width = heads * head_dim
    torch.manual_seed(seed)
    module = nn.MultiheadAttention(width, heads, bias=bias, batch_first=True).double().eval()
    if bias:
        with torch.no_grad():
            module.in_proj_bias.normal_()
    weights = attention_weights(module)
    moved = transform_heads(
        permute_heads(weights, torch.randperm(heads, generator=_gen(seed))),
        random_invertible(heads, head_dim, _gen(seed + 1)),
        random_invertible(heads, head_dim, _gen(seed + 2)),
    )
    x = torch.randn(2, 3, width, generator=_gen(seed + 3), dtype=torch.float64)
    torch.testing.assert_close(_run(_with(module, moved), x), _run(module, x))
    a, b = canonical_attention(weights), canonical_attention(moved)
    torch.testing.assert_close(b.in_proj, a.in_proj, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(b.out_proj, a.out_proj, rtol=1e-7, atol=1e-8)
