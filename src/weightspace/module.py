"""``SpecModule``: an ``nn.Module`` that runs a :class:`~weightspace.spec.NetworkSpec`.

Parametrised layers are real ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` submodules (norms
real ``nn.LayerNorm`` / ``nn.RMSNorm``, embeddings ``nn.Embedding``, attentions batch-first
``nn.MultiheadAttention``) placed at their dotted state-dict names, so ``SpecModule(spec).load_state_dict(sd)`` takes the very state
dicts that :func:`weightspace.ingest.from_module` returns.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weightspace.errors import UnsupportedLayerError
from weightspace.spec import NetworkSpec, Op

__all__ = ["SpecModule", "to_module", "apply_activation"]


def apply_activation(x: Tensor, attrs: Mapping) -> Tensor:
    """Apply the activation described by an ``activation`` op's attrs."""
    fn = attrs["function"]
    if fn == "identity":
        return x
    if fn == "relu":
        return F.relu(x)
    if fn == "leaky_relu":
        return F.leaky_relu(x, float(attrs.get("negative_slope", 0.01)))
    if fn == "tanh":
        return torch.tanh(x)
    if fn == "gelu":
        return F.gelu(x, approximate=str(attrs.get("approximate", "none")))
    if fn == "silu":
        return F.silu(x)
    if fn == "sigmoid":
        return torch.sigmoid(x)
    if fn == "sine":  # SIREN: sin(w0 x), w0 recorded in the spec
        return torch.sin(float(attrs["w0"]) * x)
    raise ValueError(f"unknown activation {fn!r}")


def _make_norm(op: Op) -> nn.Module:
    """``nn.LayerNorm`` or ``nn.RMSNorm`` over the last dim, as a ``norm`` op describes it."""
    a = op.attrs
    size, affine = int(a["normalized_size"]), bool(a.get("affine", True))
    if a["mode"] == "layer":
        return nn.LayerNorm(
            size, eps=float(a["eps"]), elementwise_affine=affine, bias=bool(a.get("bias", True))
        )
    eps = a.get("eps")
    return nn.RMSNorm(size, eps=None if eps is None else float(eps), elementwise_affine=affine)


def _make_layer(op: Op) -> nn.Module:
    a = op.attrs
    bias = bool(a.get("bias", True))
    if op.kind == "linear":
        return nn.Linear(op.in_size, op.out_size, bias=bias)
    conv = nn.Conv1d if op.kind == "conv1d" else nn.Conv2d
    return conv(
        op.in_size,
        op.out_size,
        kernel_size=tuple(a["kernel_size"]),
        stride=tuple(a.get("stride", (1,) * len(a["kernel_size"]))),
        padding=a.get("padding", 0)
        if isinstance(a.get("padding", 0), str)
        else tuple(a.get("padding", (0,) * len(a["kernel_size"]))),
        dilation=tuple(a.get("dilation", (1,) * len(a["kernel_size"]))),
        bias=bias,
    )


def _set_submodule(root: nn.Module, dotted: str, module: nn.Module) -> None:
    *parents, leaf = dotted.split(".")
    node = root
    for part in parents:
        if not hasattr(node, part):
            node.add_module(part, nn.Module())
        node = getattr(node, part)
    node.add_module(leaf, module)


class SpecModule(nn.Module):
    """Interprets a :class:`NetworkSpec` op by op.

    Args:
        spec: the architecture; its layers are created with PyTorch's default initialisation.
    """

    def __init__(self, spec: NetworkSpec) -> None:
        super().__init__()
        self.spec = spec
        for op in spec.ops:
            if op.is_parametrised:
                _set_submodule(self, op.name, _make_layer(op))
            elif op.kind == "norm":
                _set_submodule(self, op.name, _make_norm(op))
            elif op.kind == "embedding":
                a = op.attrs
                table = nn.Embedding(int(a["num_embeddings"]), int(a["embedding_dim"]))
                _set_submodule(self, op.name, table)
            elif op.kind == "attention":
                a = op.attrs
                attention = nn.MultiheadAttention(
                    int(a["embed_dim"]),
                    int(a["num_heads"]),
                    bias=bool(a.get("bias", True)),
                    batch_first=True,
                )
                _set_submodule(self, op.name, attention)
        self._token_ops = _token_ops(spec)

    def forward(self, x: Tensor) -> Tensor:
        values: dict[str, Tensor] = {}
        for op in self.spec.ops:
            a = op.attrs
            if op.kind == "input":
                values[op.name] = x
                continue
            args = [values[name] for name in op.inputs]
            if op.kind == "norm" and args[0].dim() > 2 and op.inputs[0] not in self._token_ops:
                raise UnsupportedLayerError(
                    f"norm {op.name!r} reads a tensor of shape {list(args[0].shape)}: only a "
                    "norm over the neurons of a (batch, features) tensor is supported, not over "
                    "a spatial dimension"
                )
            if op.kind == "embedding" and a["index"] == "position":
                table = self.get_submodule(op.name).weight  # (P, E): row t for token t
                tokens = int(args[0].shape[1])
                y = table[:tokens].unsqueeze(0).expand(args[0].shape[0], -1, -1)
            elif op.kind == "attention":
                mask = None
                if a.get("causal"):  # token t attends to tokens <= t (GPT-style decoders)
                    t = int(args[0].shape[1])
                    mask = torch.ones(t, t, dtype=torch.bool, device=args[0].device).triu(1)
                attention = self.get_submodule(op.name)
                y = attention(args[0], args[0], args[0], need_weights=False, attn_mask=mask)[0]
            elif op.kind == "token_pool":
                y = args[0].mean(1) if a["mode"] == "mean" else args[0][:, 0]
            elif op.is_parametrised or op.kind in {"norm", "embedding"}:
                y = self.get_submodule(op.name)(args[0])
            elif op.kind == "activation":
                y = apply_activation(args[0], a)
            elif op.kind == "add":
                y = args[0]
                for other in args[1:]:
                    y = y + other
            elif op.kind == "flatten":
                y = torch.flatten(args[0], 1)
            elif op.kind == "global_pool":
                dims = tuple(range(2, args[0].dim()))
                y = args[0].mean(dims) if a["mode"] == "avg" else args[0].amax(dims)
            elif op.kind == "pool":
                fn = {
                    ("avg", 1): F.avg_pool1d,
                    ("max", 1): F.max_pool1d,
                    ("avg", 2): F.avg_pool2d,
                    ("max", 2): F.max_pool2d,
                }[(a["mode"], int(a["dims"]))]
                y = fn(args[0], a["kernel_size"], a["stride"], a.get("padding", 0))
            elif op.kind == "adaptive_pool":
                fn = {
                    ("avg", 1): F.adaptive_avg_pool1d,
                    ("max", 1): F.adaptive_max_pool1d,
                    ("avg", 2): F.adaptive_avg_pool2d,
                    ("max", 2): F.adaptive_max_pool2d,
                }[(a["mode"], int(a["dims"]))]
                y = fn(args[0], a["output_size"])
            else:  # pragma: no cover - NetworkSpec.validate rejects unknown kinds
                raise ValueError(f"unknown op kind {op.kind!r}")
            values[op.name] = y
        return values[self.spec.output.name]

    def extra_repr(self) -> str:
        return self.spec.summary()


def _token_ops(spec: NetworkSpec) -> frozenset[str]:
    """Names of the ops whose output is a ``(B, T, features)`` token tensor."""
    if not spec.is_tokens:
        return frozenset()
    out: set[str] = set()
    for op in spec.ops:
        if op.kind == "input" or (
            op.kind != "token_pool" and any(name in out for name in op.inputs)
        ):
            out.add(op.name)
    return frozenset(out)


def to_module(spec: NetworkSpec, state_dict: Mapping[str, Tensor] | None = None) -> SpecModule:
    """Build a :class:`SpecModule` for ``spec`` (in eval mode), loading ``state_dict`` if given.

    The module takes the state dict's dtype and device (and its own copies of the tensors).
    """
    if state_dict is None:
        return SpecModule(spec).eval()
    first = next(iter(state_dict.values()))
    # Built on the meta device, the layers skip their random initialisation (a quarter of a
    # second for an 11M-parameter model), which the loaded weights would overwrite anyway.
    with torch.device("meta"):
        module = SpecModule(spec)
    weights = {
        key: value.to(dtype=first.dtype, device=first.device, copy=True)
        if isinstance(value, Tensor) and value.is_floating_point()
        else value
        for key, value in state_dict.items()
    }
    module.load_state_dict(weights, strict=True, assign=True)
    return module.eval()
