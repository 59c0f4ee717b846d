r"""The parameters of a multi-head self-attention in weight space (:class:`AttentionWeights`), of a
transformer encoder layer (:class:`EncoderLayerWeights`) and of a token embedding: read from and
written to ``nn`` modules and spec state dicts, and evaluated (:func:`attention_forward`). The
notation, the symmetries and the canonical form are in :mod:`weightspace.attention`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weightspace.errors import UnsupportedLayerError
from weightspace.spec import Op

__all__ = [
    "AttentionWeights",
    "EncoderLayerWeights",
    "attention_forward",
    "attention_state",
    "attention_weights",
    "embedding_weights",
    "encoder_layer_weights",
    "load_attention",
    "load_attention_state",
    "load_encoder_layer",
]


@dataclass(frozen=True)
class AttentionWeights:
    r"""The parameters of one self-attention: ``in_proj (3E, E)``, ``in_bias (3E,)`` or
    ``None``, ``out_proj (E, E)``, ``out_bias (E,)`` or ``None``, and ``num_heads``."""

    in_proj: Tensor
    in_bias: Tensor | None
    out_proj: Tensor
    out_bias: Tensor | None
    num_heads: int

    @property
    def embed_dim(self) -> int:
        return int(self.out_proj.shape[0])

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    def augmented(self) -> tuple[Tensor, Tensor, Tensor]:
        r""":math:`\tilde Q, \tilde K, \tilde V`, each ``(H, d, E + 1)`` (bias as last column)."""
        e, h, d = self.embed_dim, self.num_heads, self.head_dim
        bias = self.in_proj.new_zeros(3 * e) if self.in_bias is None else self.in_bias
        full = torch.cat([self.in_proj, bias[:, None]], dim=1)  # (3E, E + 1)
        q, k, v = full.split(e, dim=0)
        return q.reshape(h, d, e + 1), k.reshape(h, d, e + 1), v.reshape(h, d, e + 1)

    def head_outputs(self) -> Tensor:
        r""":math:`O_h`, ``(H, E, d)``."""
        e, h, d = self.embed_dim, self.num_heads, self.head_dim
        return self.out_proj.reshape(e, h, d).permute(1, 0, 2)


def _from_augmented(
    template: AttentionWeights, q: Tensor, k: Tensor, v: Tensor, o: Tensor
) -> AttentionWeights:
    """Weights from ``(H, d, E + 1)`` Q, K, V and ``(H, E, d)`` O, biases kept only where the
    template has them (a bias-free model stays bias-free: its bias columns are zero)."""
    e = template.embed_dim
    full = torch.cat([t.reshape(e, e + 1) for t in (q, k, v)], dim=0)  # (3E, E + 1)
    in_bias = None if template.in_bias is None else full[:, -1].contiguous()
    out_proj = o.permute(1, 0, 2).reshape(e, e).contiguous()
    return replace(template, in_proj=full[:, :-1].contiguous(), in_bias=in_bias, out_proj=out_proj)


# ------------------------------------------------------------------------------ modules
def attention_weights(module: nn.Module, name: str = "self_attn") -> AttentionWeights:
    """The parameters of an ``nn.MultiheadAttention`` (detached clones).

    Raises:
        UnsupportedLayerError: naming ``name``: separate key/value sizes, ``add_bias_kv`` or
            ``add_zero_attn`` (not represented), or another module type.
    """
    if not isinstance(module, nn.MultiheadAttention):
        raise UnsupportedLayerError(
            f"layer {name!r} of type {type(module).__name__} is not an nn.MultiheadAttention"
        )
    problems = []
    if not module._qkv_same_embed_dim:
        problems.append("kdim/vdim differ from embed_dim")
    if module.bias_k is not None:
        problems.append("add_bias_kv=True")
    if module.add_zero_attn:
        problems.append("add_zero_attn=True")
    if problems:
        raise UnsupportedLayerError(
            f"layer {name!r} (MultiheadAttention) has {', '.join(problems)}; only self-attention "
            "with one in_proj_weight and no extra key/value rows is supported"
        )

    def clone(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.detach().clone()

    return AttentionWeights(
        in_proj=module.in_proj_weight.detach().clone(),
        in_bias=clone(module.in_proj_bias),
        out_proj=module.out_proj.weight.detach().clone(),
        out_bias=clone(module.out_proj.bias),
        num_heads=int(module.num_heads),
    )


def load_attention(module: nn.MultiheadAttention, weights: AttentionWeights) -> None:
    """Write ``weights`` into ``module`` (in place, no autograd)."""
    with torch.no_grad():
        module.in_proj_weight.copy_(weights.in_proj)
        module.out_proj.weight.copy_(weights.out_proj)
        if weights.in_bias is not None:
            module.in_proj_bias.copy_(weights.in_bias)
        if weights.out_bias is not None:
            module.out_proj.bias.copy_(weights.out_bias)


@dataclass(frozen=True)
class EncoderLayerWeights:
    """A ``nn.TransformerEncoderLayer``: attention, MLP (``linear1``, ``linear2``) and the two
    LayerNorms, as ``{name: tensor}`` for the non-attention parameters."""

    attention: AttentionWeights
    params: dict[str, Tensor]
    norm_first: bool
    activation: str


def encoder_layer_weights(layer: nn.Module, name: str = "layer") -> EncoderLayerWeights:
    """The parameters of a ``nn.TransformerEncoderLayer`` (pre- or post-norm; ReLU or GELU).

    Raises:
        UnsupportedLayerError: naming ``name``: another type, a custom activation, or an
            unsupported attention (see :func:`attention_weights`).
    """
    if not isinstance(layer, nn.TransformerEncoderLayer):
        raise UnsupportedLayerError(
            f"layer {name!r} of type {type(layer).__name__} is not an nn.TransformerEncoderLayer"
        )
    activation = {1: "relu", 2: "gelu"}.get(int(getattr(layer, "activation_relu_or_gelu", 0)))
    if activation is None:
        raise UnsupportedLayerError(
            f"layer {name!r} (TransformerEncoderLayer) uses activation {layer.activation!r}; "
            "only relu and gelu are supported"
        )
    attention = attention_weights(layer.self_attn, f"{name}.self_attn")
    params = {
        key: value.detach().clone()
        for key, value in layer.state_dict().items()
        if not key.startswith("self_attn.")
    }
    return EncoderLayerWeights(attention, params, bool(layer.norm_first), activation)


def load_encoder_layer(layer: nn.TransformerEncoderLayer, weights: EncoderLayerWeights) -> None:
    """Write ``weights`` into ``layer`` (in place)."""
    load_attention(layer.self_attn, weights.attention)
    layer.load_state_dict(
        {**layer.state_dict(), **{k: v.clone() for k, v in weights.params.items()}}, strict=True
    )


def embedding_weights(module: nn.Module, name: str = "embedding") -> Tensor:
    """The ``(V, E)`` table of an ``nn.Embedding`` (a detached clone): row ``t`` is token ``t``'s
    vector in the residual stream, so a stream permutation moves its columns.

    Raises:
        UnsupportedLayerError: naming ``name``: another type, or ``max_norm`` (the lookup then
            rewrites the table in place, which no weight-space transform may assume).
    """
    if not isinstance(module, nn.Embedding):
        raise UnsupportedLayerError(
            f"layer {name!r} of type {type(module).__name__} is not an nn.Embedding"
        )
    if module.max_norm is not None:
        raise UnsupportedLayerError(
            f"layer {name!r} (Embedding) has max_norm={module.max_norm}: its lookup renormalises "
            "the table in place; only a plain lookup table is supported"
        )
    return module.weight.detach().clone()


def attention_state(op: Op, state_dict: Mapping[str, Tensor]) -> AttentionWeights:
    """The :class:`AttentionWeights` of an ``attention`` spec op, from a state dict."""
    name = op.name
    return AttentionWeights(
        in_proj=state_dict[f"{name}.in_proj_weight"],
        in_bias=state_dict.get(f"{name}.in_proj_bias"),
        out_proj=state_dict[f"{name}.out_proj.weight"],
        out_bias=state_dict.get(f"{name}.out_proj.bias"),
        num_heads=int(op.attrs["num_heads"]),
    )


def load_attention_state(op: Op, weights: AttentionWeights) -> dict[str, Tensor]:
    """The state-dict entries of an ``attention`` spec op holding ``weights``."""
    out = {f"{op.name}.in_proj_weight": weights.in_proj}
    out[f"{op.name}.out_proj.weight"] = weights.out_proj
    if weights.in_bias is not None:
        out[f"{op.name}.in_proj_bias"] = weights.in_bias
    if weights.out_bias is not None:
        out[f"{op.name}.out_proj.bias"] = weights.out_bias
    return out


# ------------------------------------------------------------------------------ evaluation
def attention_forward(weights: AttentionWeights, x: Tensor) -> Tensor:
    """Self-attention of ``x (B, T, E)`` with ``weights`` (PyTorch's own kernel), ``(B, T, E)``."""
    e = weights.embed_dim
    zeros = x.new_zeros(3 * e)
    out, _ = F.multi_head_attention_forward(
        x.transpose(0, 1),
        x.transpose(0, 1),
        x.transpose(0, 1),
        e,
        weights.num_heads,
        weights.in_proj,
        zeros if weights.in_bias is None else weights.in_bias,
        None,
        None,
        False,
        0.0,
        weights.out_proj,
        weights.out_bias,
        training=False,
        need_weights=False,
    )
    return out.transpose(0, 1)
