r"""Builders of common :class:`~weightspace.spec.NetworkSpec` s: an MLP (:func:`mlp_spec`), a
SIREN (:func:`siren_spec`) and a small CNN (:func:`cnn_spec`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from weightspace.errors import SpecError
from weightspace.spec_ops import NORM_MODES, SIREN_FIRST_W0, SIREN_HIDDEN_W0, Op

if TYPE_CHECKING:
    from weightspace.spec import NetworkSpec

__all__ = ["cnn_spec", "mlp_spec", "siren_spec"]


def siren_spec(
    sizes: list[int] | tuple[int, ...],
    *,
    first_w0: float = SIREN_FIRST_W0,
    hidden_w0: float = SIREN_HIDDEN_W0,
) -> NetworkSpec:
    r"""The spec of a SIREN: ``Linear, sin(w0 ·), …, Linear`` (no activation after the last).

    Layer :math:`l` computes :math:`h_l = \sin(w_{0,l}\,(W_l h_{l-1} + b_l))`, with
    :math:`w_{0,1}` = ``first_w0`` and :math:`w_{0,l}` = ``hidden_w0`` after. An INR takes
    coordinates (``sizes[0]``, e.g. 2 for an image) and returns intensities (``sizes[-1]``).
    """
    from weightspace.spec import NetworkSpec  # it imports this module

    spec = mlp_spec(sizes, "sine")
    ops, seen = [], 0
    for op in spec.ops:
        if op.kind == "activation":
            seen += 1
            op = Op(
                op.name,
                op.kind,
                op.inputs,
                {**op.attrs, "w0": first_w0 if seen == 1 else hidden_w0},
            )
        ops.append(op)
    return NetworkSpec(tuple(ops))


def mlp_spec(
    sizes: list[int] | tuple[int, ...],
    activation: str = "relu",
    *,
    prefix: str = "",
    bias: bool = True,
    norm: str | None = None,
    eps: float = 1e-5,
) -> NetworkSpec:
    """The spec of ``nn.Sequential(Linear, act, Linear, act, ..., Linear)``.

    Args:
        sizes: ``[n_in, h_1, ..., n_out]``.
        activation: the activation between layers (none after the last).
        prefix: state-dict prefix (``""`` gives keys ``"0.weight"``, ``"2.weight"``, ...).
        bias: whether every layer has a bias.
        norm: ``"layer"`` or ``"rms"`` to put an affine ``nn.LayerNorm`` / ``nn.RMSNorm`` after
            every hidden layer, before its activation (``Linear, norm, act, Linear, ...``).
        eps: the norms' epsilon.
    """
    from weightspace.spec import NetworkSpec  # it imports this module

    if norm is not None and norm not in NORM_MODES:
        raise SpecError(f"norm must be one of {list(NORM_MODES)} or None, got {norm!r}")
    if len(sizes) < 2:
        raise SpecError("an MLP needs at least an input and an output size")
    ops = [Op("x", "input", (), {"shape": (int(sizes[0]),)})]
    prev = "x"
    index = 0
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        name = f"{prefix}{index}"
        ops.append(
            Op(name, "linear", (prev,), {"in_features": n_in, "out_features": n_out, "bias": bias})
        )
        prev = name
        index += 1
        if i < len(sizes) - 2 and norm is not None:
            norm_name = f"{prefix}{index}"
            attrs = {"mode": norm, "normalized_size": n_out, "eps": eps, "affine": True}
            if norm == "layer":
                attrs["bias"] = True
            ops.append(Op(norm_name, "norm", (prev,), attrs))
            prev = norm_name
            index += 1
        if i < len(sizes) - 2:
            act_name = f"{prefix}{index}"
            ops.append(Op(act_name, "activation", (prev,), {"function": activation}))
            prev = act_name
            index += 1
    return NetworkSpec(tuple(ops))


def cnn_spec(
    channels: Sequence[int],
    activation: str = "relu",
    *,
    input_shape: tuple[int, int, int] = (1, 8, 8),
    classes: int = 10,
    flatten: bool = False,
) -> NetworkSpec:
    """The spec of a small CNN: 3x3 convolutions (stride 1, padding 1, with bias), ``activation``
    after each, then global average pooling — or, with ``flatten``, the last feature map
    flattened — and a linear layer (with bias) to ``classes``.

    Ops are named ``c{i}`` (conv), ``a{i}`` (activation), ``gp`` (pool or flatten), ``fc``.

    Args:
        channels: output channels of each conv, e.g. ``[8, 8, 8]``.
        activation: the activation after every conv.
        input_shape: ``(C, H, W)`` of the input.
        classes: outputs of the final linear layer.
        flatten: flatten the last map (``C·H·W`` features) instead of pooling it (``C``).
    """
    from weightspace.spec import NetworkSpec  # it imports this module

    ops = [Op("x", "input", (), {"shape": tuple(input_shape)})]
    prev, width = "x", int(input_shape[0])
    for i, out in enumerate(channels):
        attrs = {
            "in_channels": width,
            "out_channels": out,
            "kernel_size": (3, 3),
            "stride": (1, 1),
            "padding": (1, 1),
            "dilation": (1, 1),
            "bias": True,
        }
        ops += [Op(f"c{i}", "conv2d", (prev,), attrs)]
        ops += [Op(f"a{i}", "activation", (f"c{i}",), {"function": activation})]
        prev, width = f"a{i}", out
    if flatten:
        ops += [Op("gp", "flatten", (prev,), {})]
        features = width * int(input_shape[1]) * int(input_shape[2])
    else:
        ops += [Op("gp", "global_pool", (prev,), {"mode": "avg"})]
        features = width
    linear = {"in_features": features, "out_features": classes, "bias": True}
    ops += [Op("fc", "linear", ("gp",), linear)]
    return NetworkSpec(tuple(ops))
