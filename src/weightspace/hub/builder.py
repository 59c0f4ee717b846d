"""A token spec written op by op, with its state dict beside it: what the hub readers share.

Each method appends one :class:`~weightspace.spec.Op` of the existing vocabulary (``linear``,
``norm``, ``activation``, ``add``, ``attention``, ``embedding``, ``token_pool``) named by the
module path it comes from, stores that op's parameters under the keys
:class:`~weightspace.module.SpecModule` expects (detached float clones), and returns the op's
name, so a reader reads like the model's ``forward``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from weightspace.attention import AttentionWeights, load_attention_state
from weightspace.errors import UnsupportedLayerError
from weightspace.norm import NORM_MODULES, norm_op, norm_weights
from weightspace.spec import NetworkSpec, Op

__all__ = ["TokenSpecBuilder", "HF_ACTIVATIONS"]

#: Hugging Face ``hidden_act`` / ``activation_function`` names → ``activation`` op attrs.
HF_ACTIVATIONS: dict[str, dict[str, str]] = {
    "gelu": {"function": "gelu", "approximate": "none"},
    "gelu_new": {"function": "gelu", "approximate": "tanh"},
    "gelu_pytorch_tanh": {"function": "gelu", "approximate": "tanh"},
    "relu": {"function": "relu"},
    "silu": {"function": "silu"},
    "swish": {"function": "silu"},
    "tanh": {"function": "tanh"},
}


def _clone(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().clone()


class TokenSpecBuilder:
    """Collects the ops and state of a token spec.

    Args:
        input_attrs: the ``input`` op's attrs (``shape``, ``layout: "tokens"``, ``vocab_size``).
        kind: the model's class name, for error messages.
    """

    def __init__(self, input_attrs: dict[str, Any], kind: str) -> None:
        self.kind = kind
        self.ops: list[Op] = [Op("input", "input", (), input_attrs)]
        self.state: dict[str, Tensor] = {}

    def linear(self, name: str, weight: Tensor, bias: Tensor | None, source: str) -> str:
        """``y = x W^T + b``, ``weight (out, in)`` (transpose a Hugging Face ``Conv1D`` first)."""
        out_features, in_features = weight.shape
        attrs = {"in_features": in_features, "out_features": out_features, "bias": bias is not None}
        self.ops.append(Op(name, "linear", (source,), attrs))
        self.state[f"{name}.weight"] = weight.detach().clone()
        if bias is not None:
            self.state[f"{name}.bias"] = bias.detach().clone()
        return name

    def norm(self, name: str, module: nn.Module, source: str) -> str:
        """A LayerNorm / RMSNorm over the features; ``nn.Identity`` is skipped."""
        if isinstance(module, nn.Identity):
            return source
        if not isinstance(module, NORM_MODULES):
            raise UnsupportedLayerError(
                f"{self.kind}: layer {name!r} of type {type(module).__name__} is not a LayerNorm "
                "or RMSNorm"
            )
        self.ops.append(norm_op(name, module, source))
        self.state.update(norm_weights(name, module))
        return name

    def activation(self, name: str, attrs: dict[str, str], source: str) -> str:
        self.ops.append(Op(name, "activation", (source,), dict(attrs)))
        return name

    def add(self, name: str, left: str, right: str) -> str:
        self.ops.append(Op(name, "add", (left, right), {}))
        return name

    def attention(
        self, name: str, weights: AttentionWeights, source: str, *, causal: bool = False
    ) -> str:
        """Multi-head self-attention; ``causal`` masks each token's view of later tokens."""
        if (weights.in_bias is None) != (weights.out_bias is None):
            raise UnsupportedLayerError(
                f"{self.kind}: attention {name!r} has a bias on only one of its input and output "
                "projections"
            )
        attrs: dict[str, Any] = {
            "embed_dim": weights.embed_dim,
            "num_heads": weights.num_heads,
            "bias": weights.in_bias is not None,
        }
        if causal:
            attrs["causal"] = True
        op = Op(name, "attention", (source,), attrs)
        self.ops.append(op)
        self.state.update(
            {k: v.detach().clone() for k, v in load_attention_state(op, weights).items()}
        )
        return name

    def embedding(self, name: str, table: Tensor, index: str) -> str:
        """A ``(rows, E)`` lookup table read by token id (``index="token"``) or position."""
        attrs = {"num_embeddings": len(table), "embedding_dim": int(table.shape[1]), "index": index}
        self.ops.append(Op(name, "embedding", ("input",), attrs))
        self.state[f"{name}.weight"] = table.detach().clone()
        return name

    def token_pool(self, name: str, mode: str, source: str) -> str:
        self.ops.append(Op(name, "token_pool", (source,), {"mode": mode}))
        return name

    def build(self) -> tuple[NetworkSpec, dict[str, Tensor]]:
        return NetworkSpec(tuple(self.ops)), self.state
