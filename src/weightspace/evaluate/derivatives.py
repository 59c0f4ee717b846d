r"""Derivatives of a model: what a re-upload of someone's checkpoint may have gone through.

Cheap, one state dict at a time (:data:`DERIVATIVES`, :func:`make_derivative`), acting on every
parametrised layer :math:`\ell` separately:

* :func:`add_noise` — :math:`W_\ell \leftarrow W_\ell + \epsilon\,\mathrm{rms}(W_\ell)\,
  \mathcal{N}(0, I)`, biases likewise with their own RMS;
* :func:`magnitude_prune` — zero the ``fraction`` of each layer's weights with the smallest
  :math:`|w|` (biases kept);
* :func:`quantize` — symmetric uniform quantisation of each weight and bias tensor,
  :math:`w \mapsto \mathrm{round}(w/s)\,s`, :math:`s = \max|w| / (2^{\text{bits}-1} - 1)`;
* :func:`finetune` — a few steps of SGD on cross-entropy over the task's training inputs.

The first three follow the same definitions as the encoder's training augmentations in
:mod:`weightspace.nn.augment`, so a method trained with them has seen them. The lineage protocol
therefore defaults to derivatives that a re-uploader really makes and that no augmentation
imitates (:data:`LINEAGE_DERIVATIVES`, many models at once with :func:`make_derivatives`):

* ``"finetune-long"`` — fine-tuning for :attr:`DerivativeSettings.long_finetune_epochs` (>= 1)
  epochs with a new seed and a learning rate drawn log-uniformly per model
  (:func:`weightspace.evaluate.retraining.long_finetune`);
* ``"distill"`` — distillation into a fresh initialisation of the same architecture
  (:func:`weightspace.evaluate.retraining.distill`);
* ``"prune-finetune"`` — magnitude pruning, then fine-tuning with the pruned weights held at 0;
* ``"net2net"`` — function-preserving widening (:mod:`weightspace.evaluate.net2net`): a
  *different, wider* architecture computing exactly the same function.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from weightspace.errors import WeightspaceError
from weightspace.spec import NetworkSpec

__all__ = [
    "ALL_DERIVATIVES",
    "DERIVATIVES",
    "LINEAGE_DERIVATIVES",
    "TRAINING_DERIVATIVES",
    "DerivativeError",
    "DerivativeSettings",
    "add_noise",
    "finetune",
    "magnitude_prune",
    "make_derivative",
    "make_derivatives",
    "quantize",
]

#: Names of the cheap derivative transforms, as :func:`make_derivative` accepts them.
DERIVATIVES: tuple[str, ...] = ("noise", "prune", "quantize", "finetune")
#: The lineage protocol's default derivatives (see the module docstring).
LINEAGE_DERIVATIVES: tuple[str, ...] = ("finetune-long", "distill", "prune-finetune", "net2net")
#: Every name :func:`make_derivatives` accepts.
ALL_DERIVATIVES: tuple[str, ...] = DERIVATIVES + LINEAGE_DERIVATIVES
#: Derivatives that need the task's training data.
TRAINING_DERIVATIVES: frozenset[str] = frozenset(
    {"finetune", "finetune-long", "distill", "prune-finetune"}
)

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


@dataclass(frozen=True)
class DerivativeSettings:
    """How strong each derivative is (defaults keep the lineage protocol at seconds per query
    batch on CPU)."""

    noise_strength: float = 0.05  # "noise": relative standard deviation
    prune_fraction: float = 0.2  # "prune": share of each layer's weights zeroed
    quantize_bits: int = 8  # "quantize"
    finetune_steps: int = 5  # "finetune": a few SGD steps
    finetune_learning_rate: float = 0.01
    long_finetune_epochs: float = 1.0  # "finetune-long" and "prune-finetune": passes over data
    long_finetune_learning_rates: tuple[float, float] = (3e-4, 3e-3)  # Adam, log-uniform range
    long_finetune_min_steps: int = 50  # small tasks: at least this many steps
    pruned_fraction: float = 0.5  # "prune-finetune": share of each layer's weights zeroed
    distill_epochs: float = 2.0  # "distill": passes over the training inputs
    distill_learning_rate: float = 3e-3  # Adam
    distill_min_steps: int = 200  # small tasks: at least this many steps
    widen_fraction: float = 0.5  # "net2net": added neurons per free hidden layer
    batch_size: int = 32  # minibatch of the training derivatives

    def __post_init__(self) -> None:
        if self.long_finetune_epochs < 1:
            raise DerivativeError(
                f"a long fine-tune runs at least 1 epoch, got {self.long_finetune_epochs}"
            )
        low, high = self.long_finetune_learning_rates
        if not 0 < low <= high:
            raise DerivativeError(f"bad learning-rate range {self.long_finetune_learning_rates}")


def _log_uniform(
    count: int, bounds: tuple[float, float], generator: torch.Generator | None
) -> Tensor:
    low, high = math.log(bounds[0]), math.log(bounds[1])
    return torch.exp(low + (high - low) * torch.rand(count, generator=generator))  # (count,)


def make_derivatives(
    kind: str,
    spec: NetworkSpec,
    state_dicts: Sequence[Mapping[str, Tensor]],
    *,
    data: tuple[Tensor, Tensor] | None = None,
    generator: torch.Generator | None = None,
    settings: DerivativeSettings = DerivativeSettings(),
) -> tuple[NetworkSpec, list[StateDict]]:
    """Apply derivative ``kind`` (one of :data:`ALL_DERIVATIVES`) to many models of ``spec``.

    Training derivatives run vectorised over the models (:mod:`weightspace.evaluate.retraining`).

    Args:
        state_dicts: models of ``spec`` (not modified).
        data: ``(inputs (N, *input_shape), labels (N,))``, the task's training split; needed by
            :data:`TRAINING_DERIVATIVES`.
        generator: every random draw (noise, minibatches, learning rates, initialisations).

    Returns:
        ``(spec_of_the_derivatives, state_dicts)``: ``spec`` itself except for ``"net2net"``.

    Raises:
        DerivativeError: unknown kind, missing data, or an architecture the kind cannot handle
            (``"net2net"`` on a network without a free hidden layer).
    """
    from weightspace.evaluate import retraining
    from weightspace.evaluate.net2net import WideningError, net2net_widen

    if kind not in ALL_DERIVATIVES:
        raise DerivativeError(f"unknown derivative {kind!r}; valid: {list(ALL_DERIVATIVES)}")
    states = [_copy(spec, sd) for sd in state_dicts]
    if kind in TRAINING_DERIVATIVES and data is None:
        raise DerivativeError(
            f"the {kind!r} derivative needs the task's training data: pass data=(inputs, labels)"
        )
    if kind == "net2net":
        out = []
        for state in states:
            try:
                wider, widened = net2net_widen(spec, state, settings.widen_fraction, generator)
            except WideningError as exc:
                raise DerivativeError(str(exc)) from None
            out.append(widened)
        return (wider if out else spec), out
    if kind in DERIVATIVES:
        return spec, [
            make_derivative(
                kind,
                spec,
                state,
                generator,
                noise_strength=settings.noise_strength,
                prune_fraction=settings.prune_fraction,
                quantize_bits=settings.quantize_bits,
                finetune_data=data,
                finetune_steps=settings.finetune_steps,
                finetune_learning_rate=settings.finetune_learning_rate,
            )
            for state in states
        ]
    assert data is not None
    x, y = data
    x = x.reshape(x.shape[0], *spec.input_shape)
    if kind == "distill":
        out = retraining.distill(
            spec,
            states,
            x,
            epochs=settings.distill_epochs,
            learning_rate=settings.distill_learning_rate,
            batch_size=settings.batch_size,
            min_steps=settings.distill_min_steps,
            generator=generator,
        )
    else:
        masks = None
        if kind == "prune-finetune":
            states = [magnitude_prune(spec, state, settings.pruned_fraction) for state in states]
            masks = [
                {f"{op.name}.weight": (s[f"{op.name}.weight"] != 0).float() for op in spec.layers}
                for s in states
            ]
        out = retraining.long_finetune(
            spec,
            states,
            x,
            y,
            epochs=settings.long_finetune_epochs,
            learning_rates=_log_uniform(
                len(states), settings.long_finetune_learning_rates, generator
            ),
            batch_size=settings.batch_size,
            masks=masks,
            min_steps=settings.long_finetune_min_steps,
            generator=generator,
        )
    return spec, [
        {k: v.to(original[k].dtype) for k, v in new.items()}
        for new, original in zip(out, states, strict=True)
    ]
