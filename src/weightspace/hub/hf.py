r"""Hugging Face ``BertModel`` and ``GPT2Model`` read by module type onto the token spec;
Llama-style models refused by name.

**BERT** (post-norm): :math:`x_0 = \mathrm{LN}(E_{\text{word}}[t] + E_{\text{pos}} +
E_{\text{type}}[0])`, then per layer :math:`y = \mathrm{LN}_1(x + \mathrm{MHA}(x))`,
:math:`x' = \mathrm{LN}_2(y + W_2\,\mathrm{act}(W_1 y))`, and the pooler
:math:`\tanh(W_p\, x_{\text{first}} + b_p)` when present (else the last hidden states). The
``query``, ``key``, ``value`` ``Linear`` s stack into an ``attention`` op's ``in_proj``
(:math:`(3E, E)`, heads contiguous as in ``nn.MultiheadAttention``); ``attention.output.dense`` is
its ``out_proj``. Token-type ids are taken as all zero (the single-segment function): row 0 of
the token-type table is a constant added to every token, folded exactly into the positional
table; the other rows are not represented.

**GPT-2** (pre-norm, causal): :math:`x_0 = E_{\text{tok}}[t] + E_{\text{pos}}`, per block
:math:`y = x + \mathrm{MHA}_{\text{causal}}(\mathrm{LN}_1 x)`,
:math:`x' = y + W_2\,\mathrm{gelu}(W_1\, \mathrm{LN}_2 y)`, then ``ln_f``. ``Conv1D`` stores
:math:`W^\top` (``(in, out)``), so its weight is transposed; the fused ``c_attn`` is exactly
``in_proj``; the causal mask is an attribute of the ``attention`` op (``causal: true``), which
:class:`~weightspace.module.SpecModule` applies. Head permutations and within-head
:math:`GL(d)` stay symmetries under the mask (it is the same for every head).

**Llama-style** models (``LlamaModel`` and kin): rotary position embeddings rotate queries and keys
by position, which breaks the within-head :math:`GL(d)` and has no op in the spec; their gated
(SwiGLU) MLP multiplies two hidden groups. Both are refused with a clear error.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from weightspace.attention import AttentionWeights
from weightspace.errors import UnsupportedLayerError
from weightspace.hub.builder import HF_ACTIVATIONS, TokenSpecBuilder
from weightspace.spec import NetworkSpec

__all__ = ["is_hf_model", "hf_model_spec"]

_READERS = ("BertModel", "GPT2Model")
_ROTARY = ("LlamaModel", "LlamaForCausalLM", "MistralModel", "Qwen2Model", "GemmaModel")


def _hf_class(module: nn.Module) -> str | None:
    """The class name of a Hugging Face model (without importing transformers), else None."""
    cls = type(module)
    return cls.__name__ if cls.__module__.startswith("transformers.") else None


def is_hf_model(module: nn.Module) -> bool:
    """Whether ``module`` is a Hugging Face model (read here, or refused with a clear error)."""
    return _hf_class(module) is not None


def _refuse(kind: str, path: str, what: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(
        f"{kind}: {path!r} {what} has no neural-graph form; a model the probe branch can run may "
        "be embedded by its function alone"
    )


def hf_model_spec(
    model: nn.Module, example_input: Tensor | None = None
) -> tuple[NetworkSpec, dict[str, Tensor]]:
    """The ``(spec, state_dict)`` of a Hugging Face ``BertModel`` or ``GPT2Model``.

    Args:
        model: the model (its eval-mode function is read; attention masks are all ones).
        example_input: ``(B, T)`` token ids; fixes ``T`` (default: the positional table's size).

    Raises:
        UnsupportedLayerError: naming the model and the part with no graph form (rotary
            embeddings, relative positions, a decoder's cross-attention, an unknown activation).
    """
    kind = _hf_class(model) or type(model).__name__
    if kind == "BertModel":
        return _bert(model, example_input)
    if kind == "GPT2Model":
        return _gpt2(model, example_input)
    if "rotary_emb" in dict(model.named_modules()) or kind in _ROTARY or "Llama" in kind:
        raise _refuse(
            kind,
            "rotary_emb",
            "(rotary position embedding, RoPE: it rotates each head's queries and keys by "
            "position, and its gated SwiGLU MLP multiplies two hidden groups)",
        )
    raise UnsupportedLayerError(
        f"{kind}: this Hugging Face class is not read (only BertModel and GPT2Model are: pass "
        "the bare encoder, e.g. model.bert); a model the probe branch can run may be embedded by "
        "its function alone"
    )


def _length(example_input: Tensor | None, positions: int, kind: str) -> int:
    if example_input is None:
        return positions
    if example_input.dtype not in (torch.int64, torch.int32) or example_input.dim() not in (1, 2):
        raise UnsupportedLayerError(f"{kind}: the example input must be (B, T) token ids")
    length = int(example_input.shape[-1])
    if length > positions:
        raise UnsupportedLayerError(f"{kind}: {length} tokens but {positions} positions")
    return length


def _activation(config: object, key: str, kind: str) -> dict[str, str]:
    name = getattr(config, key)
    if not isinstance(name, str) or name not in HF_ACTIVATIONS:
        raise _refuse(kind, key, f"activation {name!r}")
    return HF_ACTIVATIONS[name]


def _bert(model: nn.Module, example_input: Tensor | None) -> tuple[NetworkSpec, dict[str, Tensor]]:
    kind, config = "BertModel", model.config
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        raise _refuse(kind, "position_embedding_type", f"{config.position_embedding_type!r}")
    if getattr(config, "is_decoder", False):
        raise _refuse(kind, "config.is_decoder", "(causal decoder with cross-attention)")
    emb = model.embeddings
    words = emb.word_embeddings.weight.detach()
    positions = emb.position_embeddings.weight.detach()
    length = _length(example_input, len(positions), kind)
    builder = TokenSpecBuilder(
        {"shape": (length,), "layout": "tokens", "vocab_size": len(words)}, kind
    )
    w = builder.embedding("embeddings.word_embeddings", words, "token")
    table = positions.clone()
    if getattr(emb, "token_type_embeddings", None) is not None:
        table = table + emb.token_type_embeddings.weight.detach()[0]  # token types all zero
    p = builder.embedding("embeddings.position_embeddings", table, "position")
    x = builder.add("embeddings.add", w, p)
    x = builder.norm("embeddings.LayerNorm", emb.LayerNorm, x)
    act = _activation(config, "hidden_act", kind)
    for i, layer in enumerate(model.encoder.layer):
        path = f"encoder.layer.{i}"
        attn = layer.attention.self
        q, k, v = attn.query, attn.key, attn.value
        heads = int(config.num_attention_heads)
        biases = [m.bias for m in (q, k, v)]
        weights = AttentionWeights(
            in_proj=torch_cat([q.weight, k.weight, v.weight]),
            in_bias=None if any(b is None for b in biases) else torch_cat(biases),
            out_proj=layer.attention.output.dense.weight.detach(),
            out_bias=_detach(layer.attention.output.dense.bias),
            num_heads=heads,
        )
        a = builder.attention(f"{path}.attention.self", weights, x)
        y = builder.add(f"{path}.attention.add", x, a)
        y = builder.norm(f"{path}.attention.output.LayerNorm", layer.attention.output.LayerNorm, y)
        dense = layer.intermediate.dense
        hidden = builder.linear(f"{path}.intermediate.dense", dense.weight, dense.bias, y)
        hidden = builder.activation(f"{path}.intermediate.act", act, hidden)
        out = layer.output.dense
        z = builder.linear(f"{path}.output.dense", out.weight, out.bias, hidden)
        z = builder.add(f"{path}.output.add", y, z)
        x = builder.norm(f"{path}.output.LayerNorm", layer.output.LayerNorm, z)
    if model.pooler is not None:
        x = builder.token_pool("pooler.first", "first", x)
        dense = model.pooler.dense
        x = builder.linear("pooler.dense", dense.weight, dense.bias, x)
        builder.activation("pooler.activation", {"function": "tanh"}, x)
    return builder.build()


def _gpt2(model: nn.Module, example_input: Tensor | None) -> tuple[NetworkSpec, dict[str, Tensor]]:
    kind, config = "GPT2Model", model.config
    if getattr(config, "scale_attn_by_inverse_layer_idx", False):
        raise _refuse(kind, "config.scale_attn_by_inverse_layer_idx", "(per-layer score scale)")
    if not getattr(config, "scale_attn_weights", True):
        raise _refuse(kind, "config.scale_attn_weights", "False (unscaled attention scores)")
    if getattr(config, "add_cross_attention", False):
        raise _refuse(kind, "crossattention", "(cross-attention)")
    words, positions = model.wte.weight.detach(), model.wpe.weight.detach()
    length = _length(example_input, len(positions), kind)
    builder = TokenSpecBuilder(
        {"shape": (length,), "layout": "tokens", "vocab_size": len(words)}, kind
    )
    w = builder.embedding("wte", words, "token")
    p = builder.embedding("wpe", positions, "position")
    x = builder.add("embed.add", w, p)
    act = _activation(config, "activation_function", kind)
    for i, block in enumerate(model.h):
        path = f"h.{i}"
        attn, mlp = block.attn, block.mlp
        weights = AttentionWeights(
            in_proj=attn.c_attn.weight.detach().T,  # Conv1D stores (in, out)
            in_bias=_detach(attn.c_attn.bias),
            out_proj=attn.c_proj.weight.detach().T,
            out_bias=_detach(attn.c_proj.bias),
            num_heads=int(config.n_head),
        )
        normed = builder.norm(f"{path}.ln_1", block.ln_1, x)
        a = builder.attention(f"{path}.attn", weights, normed, causal=True)
        x = builder.add(f"{path}.add1", x, a)
        normed = builder.norm(f"{path}.ln_2", block.ln_2, x)
        hidden = builder.linear(f"{path}.mlp.c_fc", mlp.c_fc.weight.T, mlp.c_fc.bias, normed)
        hidden = builder.activation(f"{path}.mlp.act", act, hidden)
        out = builder.linear(f"{path}.mlp.c_proj", mlp.c_proj.weight.T, mlp.c_proj.bias, hidden)
        x = builder.add(f"{path}.add2", x, out)
    builder.norm("ln_f", model.ln_f, x)
    return builder.build()


def _detach(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach()


def torch_cat(parts: list[Tensor]) -> Tensor:
    return torch.cat([t.detach() for t in parts])
