"""Elementwise pieces of the vectorised trainer: activation gradients (autograd's own kernels),
in-place activations and dropout multipliers applied to a block of models' rows."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from weightspace.zoo.architectures import LEAKY_RELU_SLOPE

__all__ = [
    "IN_PLACE_ACTIVATIONS",
    "ActivationBackward",
    "activation_backward",
    "multiply_rows",
    "multiply_rows_",
]

ActivationBackward = Callable[[Tensor, Tensor | None, Tensor, Tensor], Tensor]


def activation_backward(name: str) -> ActivationBackward:
    """``(grad_out, pre_activation, activation, out) ↦ grad_in`` written into ``out``, with the
    kernels autograd itself uses."""
    aten = torch.ops.aten
    functions: dict[str, ActivationBackward] = {
        "relu": lambda g, z, a, out: aten.threshold_backward.grad_input(g, a, 0, grad_input=out),
        "leaky_relu": lambda g, z, a, out: aten.leaky_relu_backward.grad_input(
            g, z, LEAKY_RELU_SLOPE, False, grad_input=out
        ),
        "tanh": lambda g, z, a, out: aten.tanh_backward.grad_input(g, a, grad_input=out),
        "gelu": lambda g, z, a, out: aten.gelu_backward.grad_input(g, z, grad_input=out),
    }
    return functions[name]


#: Activations computed in place when their input is not needed by the backward pass.
IN_PLACE_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu_,
    "tanh": torch.tanh_,
}


def multiply_rows(x: Tensor, multiplier: Tensor, out: Tensor, rows: slice | None) -> Tensor:
    """``out ← x ⊙ multiplier`` where ``multiplier`` is 1 outside ``rows`` (of dim 0): there a
    plain copy. Returns ``out``."""
    if rows is None:
        return torch.mul(x, multiplier, out=out)
    start, stop = rows.start or 0, x.shape[0] if rows.stop is None else rows.stop
    if start > 0:
        out[:start].copy_(x[:start])
    if stop < x.shape[0]:
        out[stop:].copy_(x[stop:])
    torch.mul(x[start:stop], multiplier[start:stop], out=out[start:stop])
    return out


def multiply_rows_(x: Tensor, multiplier: Tensor, rows: slice | None) -> Tensor:
    """``x ← x ⊙ multiplier`` in place, only on ``rows`` (of dim 0; elsewhere the multiplier is
    1). Returns ``x``."""
    if rows is None:
        return x.mul_(multiplier)
    x[rows].mul_(multiplier[rows])
    return x
