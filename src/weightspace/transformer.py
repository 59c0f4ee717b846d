r"""Token transformers as :class:`~weightspace.spec.NetworkSpec` s: read by module type.

``torch.fx`` cannot trace ``nn.TransformerEncoderLayer`` (its forward branches on the input), so
a transformer is read here module by module. Supported: an ``nn.Sequential`` (nested ones and
``nn.TransformerEncoder`` are expanded) of

==================================  ============================================================
``nn.Embedding``                    first: the token ids' embedding (a ``(B, T)`` long input)
:class:`AddPositions`               a learned positional embedding added to the stream
``nn.TransformerEncoderLayer``      batch first, ReLU or GELU, pre- or post-norm, dropout
                                    ignored (eval mode)
:class:`TokenPool`                  mean over tokens, or the first token
``nn.Linear``, ``nn.LayerNorm``,    per token before the pool, on ``(B, E)`` after it
``nn.RMSNorm``, activations
==================================  ============================================================

A post-norm layer :math:`x \to \mathrm{LN}_2(y + \mathrm{MLP}(y))`, :math:`y =
\mathrm{LN}_1(x + \mathrm{MHA}(x))` (pre-norm: :math:`y = x + \mathrm{MHA}(\mathrm{LN}_1 x)`,
:math:`y + \mathrm{MLP}(\mathrm{LN}_2 y)`) becomes ``attention``, ``add``, ``norm``, ``linear``,
``activation``, ``linear``, ``add``, ``norm`` ops named by the layer's own state-dict keys, so
``SpecModule(spec).load_state_dict(module.state_dict())`` takes the module's weights as they are.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from weightspace.attention import attention_weights, embedding_weights, encoder_layer_weights
from weightspace.errors import UnsupportedLayerError
from weightspace.norm import NORM_MODULES, norm_op, norm_weights
from weightspace.spec import NetworkSpec, Op

__all__ = [
    "AddPositions",
    "TokenPool",
    "is_token_model",
    "token_model_spec",
    "tiny_transformer",
]

_ACTIVATIONS: dict[type[nn.Module], str] = {
    nn.ReLU: "relu",
    nn.GELU: "gelu",
    nn.Tanh: "tanh",
    nn.SiLU: "silu",
    nn.Sigmoid: "sigmoid",
    nn.Identity: "identity",
}


class AddPositions(nn.Module):
    """``x + table.weight[:T]``: a learned positional embedding of ``num_positions`` rows.

    Shapes:
        - input: ``(B, T, E)``, ``T <= num_positions``
        - output: ``(B, T, E)``
    """

    def __init__(self, num_positions: int, dim: int) -> None:
        super().__init__()
        self.table = nn.Embedding(num_positions, dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.table.weight[: x.shape[1]]


class TokenPool(nn.Module):
    """``(B, T, E)`` to ``(B, E)``: the mean over tokens (``mode="mean"``) or the first token."""

    def __init__(self, mode: str = "mean") -> None:
        super().__init__()
        if mode not in ("mean", "first"):
            raise ValueError(f"TokenPool mode must be 'mean' or 'first', got {mode!r}")
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(1) if self.mode == "mean" else x[:, 0]

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


def tiny_transformer(
    vocab_size: int = 16,
    width: int = 8,
    num_heads: int = 2,
    num_layers: int = 1,
    feedforward: int = 16,
    num_outputs: int = 3,
    max_positions: int = 8,
    *,
    norm_first: bool = False,
    activation: str = "relu",
    pool: str = "mean",
) -> nn.Sequential:
    """A small token classifier: embedding, positions, encoder layers, pool, linear head."""
    layers: list[nn.Module] = [nn.Embedding(vocab_size, width), AddPositions(max_positions, width)]
    for _ in range(num_layers):
        layers.append(
            nn.TransformerEncoderLayer(
                width,
                num_heads,
                dim_feedforward=feedforward,
                dropout=0.0,
                activation=activation,
                batch_first=True,
                norm_first=norm_first,
            )
        )
    layers += [TokenPool(pool), nn.Linear(width, num_outputs)]
    return nn.Sequential(*layers)


def is_token_model(module: nn.Module) -> bool:
    """Whether ``module`` is read by :func:`token_model_spec` (a Sequential starting with an
    ``nn.Embedding`` that holds a transformer layer)."""
    if not isinstance(module, nn.Sequential) or not len(module):
        return False
    first = _flatten(module, "")[0][1]
    has_layer = any(
        isinstance(m, nn.TransformerEncoderLayer | nn.MultiheadAttention) for m in module.modules()
    )
    return isinstance(first, nn.Embedding) and has_layer


def _flatten(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    """Children in order with their dotted paths, nested Sequentials and encoders expanded."""
    out: list[tuple[str, nn.Module]] = []
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if isinstance(child, nn.Sequential):
            out += _flatten(child, f"{path}.")
        elif isinstance(child, nn.TransformerEncoder):
            out += _flatten(child.layers, f"{path}.layers.")
            if child.norm is not None:
                out.append((f"{path}.norm", child.norm))
        else:
            out.append((path, child))
    return out


def token_model_spec(
    module: nn.Module, example_input: Tensor | None = None
) -> tuple[NetworkSpec, dict[str, Tensor]]:
    """The ``(spec, state_dict)`` of a token model (module docstring), weights detached.

    Args:
        module: the model (its eval-mode function is read).
        example_input: ``(B, T)`` or ``(T,)`` token ids; fixes ``T``. Without it, ``T`` is the
            positional table's size.

    Raises:
        UnsupportedLayerError: naming the module path and type of the first unsupported part.
    """
    children = _flatten(module, "")
    kind = type(module).__name__
    if not children or not isinstance(children[0][1], nn.Embedding):
        raise UnsupportedLayerError(f"{kind}: a token model starts with an nn.Embedding")
    path0, embedding = children[0]
    table = embedding_weights(embedding, path0)
    seq_len = _sequence_length(children, example_input, kind)
    ops = [
        Op(
            "input",
            "input",
            (),
            {"shape": (seq_len,), "layout": "tokens", "vocab_size": len(table)},
        )
    ]
    attrs = {"num_embeddings": len(table), "embedding_dim": int(table.shape[1]), "index": "token"}
    ops.append(Op(path0, "embedding", ("input",), attrs))
    state = {f"{path0}.weight": table}
    current, pooled = path0, False

    for path, sub in children[1:]:
        name = type(sub).__name__
        if isinstance(sub, AddPositions):
            positions = embedding_weights(sub.table, f"{path}.table")
            attrs = {
                "num_embeddings": len(positions),
                "embedding_dim": int(positions.shape[1]),
                "index": "position",
            }
            ops.append(Op(f"{path}.table", "embedding", ("input",), attrs))
            ops.append(Op(f"{path}.add", "add", (current, f"{path}.table"), {}))
            state[f"{path}.table.weight"] = positions
            current = f"{path}.add"
        elif isinstance(sub, nn.TransformerEncoderLayer):
            if pooled:
                raise UnsupportedLayerError(f"{kind}: layer {path!r} ({name}) after the pool")
            if not sub.self_attn.batch_first:
                raise UnsupportedLayerError(
                    f"{kind}: layer {path!r} ({name}) is not batch_first; only (batch, tokens, "
                    "features) layers are supported"
                )
            current = _encoder_layer(ops, state, path, sub, current)
        elif isinstance(sub, TokenPool):
            if pooled:
                raise UnsupportedLayerError(f"{kind}: a second TokenPool {path!r}")
            ops.append(Op(path, "token_pool", (current,), {"mode": sub.mode}))
            current, pooled = path, True
        elif isinstance(sub, nn.Linear):
            ops.append(
                Op(
                    path,
                    "linear",
                    (current,),
                    {
                        "in_features": sub.in_features,
                        "out_features": sub.out_features,
                        "bias": sub.bias is not None,
                    },
                )
            )
            state[f"{path}.weight"] = sub.weight.detach().clone()
            if sub.bias is not None:
                state[f"{path}.bias"] = sub.bias.detach().clone()
            current = path
        elif isinstance(sub, NORM_MODULES):
            ops.append(norm_op(path, sub, current))
            state.update(norm_weights(path, sub))
            current = path
        elif type(sub) in _ACTIVATIONS:
            fn = _ACTIVATIONS[type(sub)]
            attrs = {"function": fn} | ({"approximate": sub.approximate} if fn == "gelu" else {})
            ops.append(Op(path, "activation", (current,), attrs))
            current = path
        elif isinstance(sub, nn.Dropout):
            continue
        else:
            raise UnsupportedLayerError(
                f"{kind}: layer {path!r} of type {name} is not supported in a token model "
                "(Embedding, AddPositions, TransformerEncoderLayer, TokenPool, Linear, norms, "
                "activations); a model the probe branch can run may be embedded by its function"
            )
    if not pooled:
        raise UnsupportedLayerError(
            f"{kind}: the model never pools its tokens; end it with a TokenPool and a head"
        )
    return NetworkSpec(tuple(ops)), state


def _sequence_length(
    children: list[tuple[str, nn.Module]], example_input: Tensor | None, kind: str
) -> int:
    if example_input is not None:
        if example_input.dtype not in (torch.int64, torch.int32) or example_input.dim() not in (
            1,
            2,
        ):
            raise UnsupportedLayerError(
                f"{kind}: the example input must be (B, T) or (T,) token ids (an integer tensor)"
            )
        return int(example_input.shape[-1])
    for _, sub in children:
        if isinstance(sub, AddPositions):
            return int(sub.table.num_embeddings)
    raise UnsupportedLayerError(
        f"{kind}: pass example_input (token ids) to fix the sequence length"
    )


def _encoder_layer(
    ops: list[Op], state: dict[str, Tensor], path: str, layer: nn.TransformerEncoderLayer, x: str
) -> str:
    """Append the ops of one encoder layer reading ``x``; return the name of its output."""
    weights = encoder_layer_weights(layer, path)
    attention = attention_weights(layer.self_attn, f"{path}.self_attn")
    e, h = attention.embed_dim, attention.num_heads
    attn = f"{path}.self_attn"
    attn_attrs = {"embed_dim": e, "num_heads": h, "bias": attention.in_bias is not None}
    if (attention.in_bias is None) != (attention.out_bias is None):
        raise UnsupportedLayerError(
            f"layer {attn!r}: in_proj and out_proj disagree on having a bias"
        )
    for key, value in layer.state_dict().items():
        state[f"{path}.{key}"] = value.detach().clone()
    norm1 = norm_op(f"{path}.norm1", layer.norm1, "")
    norm2 = norm_op(f"{path}.norm2", layer.norm2, "")
    lin1, lin2 = layer.linear1, layer.linear2

    def linear(name: str, module: nn.Linear, source: str) -> Op:
        attrs = {
            "in_features": module.in_features,
            "out_features": module.out_features,
            "bias": module.bias is not None,
        }
        return Op(name, "linear", (source,), attrs)

    def norm(template: Op, source: str) -> Op:
        return Op(template.name, "norm", (source,), dict(template.attrs))

    act = {"function": weights.activation}
    if weights.activation == "gelu":
        act["approximate"] = "none"
    if weights.norm_first:
        ops += [
            norm(norm1, x),
            Op(attn, "attention", (norm1.name,), attn_attrs),
            Op(f"{path}.add1", "add", (x, attn), {}),
            norm(norm2, f"{path}.add1"),
            linear(f"{path}.linear1", lin1, norm2.name),
            Op(f"{path}.act", "activation", (f"{path}.linear1",), act),
            linear(f"{path}.linear2", lin2, f"{path}.act"),
            Op(f"{path}.add2", "add", (f"{path}.add1", f"{path}.linear2"), {}),
        ]
        return f"{path}.add2"
    ops += [
        Op(attn, "attention", (x,), attn_attrs),
        Op(f"{path}.add1", "add", (x, attn), {}),
        norm(norm1, f"{path}.add1"),
        linear(f"{path}.linear1", lin1, norm1.name),
        Op(f"{path}.act", "activation", (f"{path}.linear1",), act),
        linear(f"{path}.linear2", lin2, f"{path}.act"),
        Op(f"{path}.add2", "add", (norm1.name, f"{path}.linear2"), {}),
        norm(norm2, f"{path}.add2"),
    ]
    return norm2.name
