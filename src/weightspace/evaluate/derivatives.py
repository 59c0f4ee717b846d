r"""Derivatives of a model: what a re-upload of someone's checkpoint may have gone through.

Each derivative maps ``(spec, state_dict)`` to a new state dict (inputs are never modified) and
acts on every parametrised layer :math:`\ell` separately:

* :func:`add_noise` — :math:`W_\ell \leftarrow W_\ell + \epsilon\,\mathrm{rms}(W_\ell)\,
  \mathcal{N}(0, I)`, biases likewise with their own RMS;
* :func:`magnitude_prune` — zero the ``fraction`` of each layer's weights with the smallest
  :math:`|w|` (biases kept);
* :func:`quantize` — symmetric uniform quantisation of each weight and bias tensor,
  :math:`w \mapsto \mathrm{round}(w/s)\,s`, :math:`s = \max|w| / (2^{\text{bits}-1} - 1)`;
* :func:`finetune` — a few steps of SGD on cross-entropy over the task's training inputs.

The first three follow the same definitions as the encoder's training augmentations in
:mod:`weightspace.nn.augment`, which work on whole graph batches instead; these work on one state
dict, which is what the lineage-retrieval protocol needs, and add fine-tuning.
:data:`DERIVATIVES` names them; :func:`make_derivative` dispatches by name.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from weightspace.errors import WeightspaceError
from weightspace.spec import NetworkSpec

__all__ = [
    "DERIVATIVES",
    "DerivativeError",
    "add_noise",
    "finetune",
    "magnitude_prune",
    "make_derivative",
    "quantize",
]

#: Names of the derivative transforms, as :func:`make_derivative` accepts them.
DERIVATIVES: tuple[str, ...] = ("noise", "prune", "quantize", "finetune")

StateDict = dict[str, Tensor]


class DerivativeError(WeightspaceError, ValueError):
    """A derivative was asked with bad parameters or without the data it needs."""


def _copy(spec: NetworkSpec, state_dict: Mapping[str, Tensor]) -> StateDict:
    missing = [k for k in spec.param_shapes() if k not in state_dict]
    if missing:
        raise DerivativeError(f"state dict lacks {missing[:5]} that the architecture needs")
    return {k: state_dict[k].detach().clone() for k in spec.param_shapes()}


def add_noise(
    spec: NetworkSpec,
    state_dict: Mapping[str, Tensor],
    strength: float = 0.05,
    generator: torch.Generator | None = None,
) -> StateDict:
    r"""Gaussian noise with standard deviation ``strength`` × the tensor's RMS, per tensor.

    .. math:: t \leftarrow t + \epsilon \sqrt{\tfrac{1}{|t|}\textstyle\sum t^2}\; \xi,
        \quad \xi \sim \mathcal{N}(0, I)
    """
    if strength < 0:
        raise DerivativeError(f"noise strength must be >= 0, got {strength}")
    out = _copy(spec, state_dict)
    for key, t in out.items():
        rms = t.double().pow(2).mean().sqrt().to(t.dtype)
        noise = torch.randn(t.shape, generator=generator, dtype=t.dtype)
        out[key] = t + strength * rms * noise.to(t.device)
    return out


def magnitude_prune(
    spec: NetworkSpec, state_dict: Mapping[str, Tensor], fraction: float = 0.2
) -> StateDict:
    r"""Zero the :math:`\lfloor \text{fraction} \cdot |W_\ell| \rfloor` smallest-magnitude weights
    of each layer (ties broken by position); biases are kept."""
    if not 0.0 <= fraction <= 1.0:
        raise DerivativeError(f"prune fraction must lie in [0, 1], got {fraction}")
    out = _copy(spec, state_dict)
    for op in spec.layers:
        key = f"{op.name}.weight"
        w = out[key]
        cut = int(fraction * w.numel())
        if cut == 0:
            continue
        flat = w.reshape(-1).clone()
        order = torch.sort(flat.abs(), stable=True).indices
        flat[order[:cut]] = 0
        out[key] = flat.reshape(w.shape)
    return out


def quantize(spec: NetworkSpec, state_dict: Mapping[str, Tensor], bits: int = 8) -> StateDict:
    r"""Symmetric uniform quantisation of every tensor to ``bits`` bits (then de-quantised).

    .. math:: s = \frac{\max|t|}{2^{b-1} - 1}, \qquad t \leftarrow \mathrm{round}(t / s)\, s
    """
    if bits < 2:
        raise DerivativeError(f"quantisation needs at least 2 bits, got {bits}")
    levels = 2 ** (bits - 1) - 1
    out = _copy(spec, state_dict)
    for key, t in out.items():
        peak = t.abs().max()
        if peak == 0:
            continue
        step = peak / levels
        out[key] = torch.round(t / step) * step
    return out


def finetune(
    spec: NetworkSpec,
    state_dict: Mapping[str, Tensor],
    inputs: Tensor,
    labels: Tensor,
    steps: int = 5,
    learning_rate: float = 0.01,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
) -> StateDict:
    r"""``steps`` steps of plain SGD on the cross-entropy of ``to_module(spec, state_dict)``.

    Args:
        inputs: ``(N, *spec.input_shape)`` training inputs (reshaped to it if flat).
        labels: ``(N,)`` class indices.
        steps: optimiser steps, each on a random batch of ``batch_size`` examples.
        learning_rate: SGD step size.
        generator: draws the batches.
    """
    if steps < 0:
        raise DerivativeError(f"steps must be >= 0, got {steps}")
    if inputs.shape[0] != labels.shape[0] or inputs.shape[0] == 0:
        raise DerivativeError(
            f"fine-tuning needs as many labels as inputs (got {inputs.shape[0]} inputs and "
            f"{labels.shape[0]} labels), and at least one"
        )
    from weightspace.finetune import finetune_state_dicts

    state = _copy(spec, state_dict)
    x = inputs.reshape(inputs.shape[0], *spec.input_shape)
    (tuned,) = finetune_state_dicts(
        spec,
        [state],
        x,
        labels.long(),
        steps=steps,
        learning_rate=learning_rate,
        batch_size=batch_size,
        generator=generator,
    )
    return tuned


def make_derivative(
    kind: str,
    spec: NetworkSpec,
    state_dict: Mapping[str, Tensor],
    generator: torch.Generator | None = None,
    *,
    noise_strength: float = 0.05,
    prune_fraction: float = 0.2,
    quantize_bits: int = 8,
    finetune_data: tuple[Tensor, Tensor] | None = None,
    finetune_steps: int = 5,
    finetune_learning_rate: float = 0.01,
) -> StateDict:
    """Apply the derivative named ``kind`` (one of :data:`DERIVATIVES`).

    Raises:
        DerivativeError: unknown kind, or ``"finetune"`` without ``finetune_data=(x, y)``.
    """
    if kind == "noise":
        return add_noise(spec, state_dict, noise_strength, generator)
    if kind == "prune":
        return magnitude_prune(spec, state_dict, prune_fraction)
    if kind == "quantize":
        return quantize(spec, state_dict, quantize_bits)
    if kind == "finetune":
        if finetune_data is None:
            raise DerivativeError(
                "the 'finetune' derivative needs the task's training data: pass "
                "finetune_data=(inputs, labels)"
            )
        x, y = finetune_data
        return finetune(
            spec,
            state_dict,
            x,
            y,
            finetune_steps,
            finetune_learning_rate,
            generator=generator,
        )
    raise DerivativeError(f"unknown derivative {kind!r}; valid: {list(DERIVATIVES)}")
