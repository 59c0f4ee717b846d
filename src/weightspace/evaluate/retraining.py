r"""Derivatives that train: long fine-tuning, pruning then fine-tuning, distillation.

What a re-uploaded model may have gone through besides an exact symmetry: someone fine-tuned it
for an epoch or more with their own seed and learning rate, pruned it and fine-tuned the rest, or
distilled it into a freshly initialised network of the same architecture. All three train many
models of one architecture at once, like :mod:`weightspace.finetune`: parameters are stacked
along a leading model axis and one step is ``torch.func.vmap`` over ``torch.func.grad`` of
``functional_call``, each model on its own minibatch drawn by an explicit generator. The
optimiser is Adam (bias-corrected, :math:`\beta = (0.9, 0.999)`) with one learning rate per model.

Losses, for model :math:`m` on a minibatch :math:`B_m` of the task's training inputs:

* fine-tuning: :math:`\frac{1}{|B|}\sum_{b} \mathrm{CE}(f(x_b; \theta_m), y_b)`;
* distillation: :math:`\frac{1}{|B|}\sum_b -\sum_c p^{T}_{m,b,c} \log \mathrm{softmax}
  (f(x_b; \theta_m))_c`, with :math:`p^T = \mathrm{softmax}(f(x; \theta^{T}_m) / \tau)` the
  teacher's outputs at temperature :math:`\tau` (no labels are used);
* pruning then fine-tuning: the fine-tuning loss with a fixed 0/1 mask :math:`M` on each weight
  tensor, :math:`\theta \leftarrow M \odot \theta` after every step, so pruned weights stay 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, grad, vmap

from weightspace.errors import WeightspaceError
from weightspace.module import to_module
from weightspace.spec import NetworkSpec

__all__ = [
    "RetrainingError",
    "distill",
    "fresh_initialisation",
    "long_finetune",
    "steps_for_epochs",
    "train_stacked",
]

StateDict = dict[str, Tensor]


class RetrainingError(WeightspaceError, ValueError):
    """Bad settings or mismatched data for a training derivative."""


def steps_for_epochs(epochs: float, num_examples: int, batch_size: int) -> int:
    r""":math:`\lceil \text{epochs} \cdot N / B \rceil` steps (at least 1 for ``epochs > 0``)."""
    if epochs <= 0:
        return 0
    return max(1, math.ceil(epochs * num_examples / min(batch_size, num_examples)))


def _stack(state_dicts: Sequence[StateDict], names: Sequence[str]) -> dict[str, Tensor]:
    return {k: torch.stack([sd[k].float() for sd in state_dicts]) for k in names}  # (M, ...)


def _unstack(params: dict[str, Tensor], like: Sequence[StateDict]) -> list[StateDict]:
    return [
        {k: params[k][m].detach().to(like[m][k].dtype) for k in params} for m in range(len(like))
    ]


def train_stacked(
    spec: NetworkSpec,
    state_dicts: Sequence[StateDict],
    inputs: Tensor,
    targets: Tensor,
    *,
    steps: int,
    learning_rates: Tensor | Sequence[float],
    batch_size: int = 32,
    masks: Sequence[StateDict] | None = None,
    generator: torch.Generator | None = None,
) -> list[StateDict]:
    """Train ``M`` models of ``spec`` at once with Adam; return new state dicts.

    Args:
        spec: the architecture of every state dict.
        state_dicts: ``M`` starting points (not modified).
        inputs: ``(N, *input_shape)`` training inputs, shared by every model.
        targets: ``(N,)`` class indices (cross-entropy), or ``(M, N, C)`` soft targets per model
            (cross-entropy against probabilities: distillation).
        steps: optimiser steps.
        learning_rates: ``(M,)`` one step size per model.
        batch_size: examples per step and model, drawn with replacement.
        masks: per model, ``{key: 0/1 tensor}`` for the tensors to keep pruned (others free).
        generator: draws the minibatches (default: seed 0).
    """
    if not state_dicts:
        return []
    if steps < 0 or batch_size < 1:
        raise RetrainingError(f"steps must be >= 0 and batch_size >= 1, got {steps}, {batch_size}")
    num_models, n = len(state_dicts), inputs.shape[0]
    soft = targets.dim() == 3
    if n == 0 or targets.shape[int(soft)] != n or (soft and targets.shape[0] != num_models):
        raise RetrainingError(
            f"got {n} inputs and targets of shape {tuple(targets.shape)}; give (N,) labels or "
            f"({num_models}, N, C) soft targets for N > 0 inputs"
        )
    rates = torch.as_tensor(learning_rates, dtype=torch.float32).reshape(-1)
    if rates.shape[0] != num_models or bool((rates < 0).any()):
        raise RetrainingError(f"give one learning rate >= 0 per model ({num_models})")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    names = list(spec.param_shapes())
    template = to_module(spec)
    params = _stack(state_dicts, names)
    keep = {k: _stack(masks, [k])[k] for k in masks[0]} if masks else {}
    inputs, batch_size = inputs.float(), min(batch_size, n)

    def loss(p: dict[str, Tensor], x: Tensor, t: Tensor) -> Tensor:
        logits = functional_call(template, p, (x,))
        if soft:
            return -(t * F.log_softmax(logits, -1)).sum(-1).mean()
        return F.cross_entropy(logits, t)

    gradient = vmap(grad(loss))
    first = {k: torch.zeros_like(v) for k, v in params.items()}
    second = {k: torch.zeros_like(v) for k, v in params.items()}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    models = torch.arange(num_models).unsqueeze(1)  # (M, 1)
    for step in range(1, steps + 1):
        rows = torch.randint(n, (num_models, batch_size), generator=generator)  # (M, B)
        batch_targets = targets[models, rows] if soft else targets[rows]  # (M, B[, C])
        grads = gradient(params, inputs[rows], batch_targets)
        for k in names:
            first[k] = beta1 * first[k] + (1 - beta1) * grads[k]
            second[k] = beta2 * second[k] + (1 - beta2) * grads[k] ** 2
            m_hat = first[k] / (1 - beta1**step)
            v_hat = second[k] / (1 - beta2**step)
            lr = rates.view(-1, *(1,) * (params[k].dim() - 1))
            params[k] = params[k] - lr * m_hat / (v_hat.sqrt() + eps)
            if k in keep:
                params[k] = params[k] * keep[k]
    return _unstack(params, state_dicts)


def long_finetune(
    spec: NetworkSpec,
    state_dicts: Sequence[StateDict],
    inputs: Tensor,
    labels: Tensor,
    *,
    epochs: float = 1.0,
    learning_rates: Tensor | Sequence[float],
    batch_size: int = 32,
    masks: Sequence[StateDict] | None = None,
    min_steps: int = 0,
    generator: torch.Generator | None = None,
) -> list[StateDict]:
    """Fine-tune each model for ``epochs`` passes over ``(inputs, labels)`` (cross-entropy), and
    at least ``min_steps`` steps (small tasks), keeping ``masks`` (pruned weights) at 0."""
    steps = max(steps_for_epochs(epochs, inputs.shape[0], batch_size), min_steps)
    return train_stacked(
        spec,
        state_dicts,
        inputs,
        labels.long(),
        steps=steps,
        learning_rates=learning_rates,
        batch_size=batch_size,
        masks=masks,
        generator=generator,
    )


def fresh_initialisation(spec: NetworkSpec, generator: torch.Generator | None = None) -> StateDict:
    r"""PyTorch's default initialisation of ``spec``, drawn from ``generator``:
    :math:`w, b \sim \mathcal{U}(-1/\sqrt{\mathrm{fan\_in}}, 1/\sqrt{\mathrm{fan\_in}})`, with
    fan-in the inputs (times the kernel size) of each output neuron."""
    state: StateDict = {}
    for op in spec.layers:
        shape = op.weight_shape()
        bound = 1.0 / math.sqrt(math.prod(shape[1:]))
        state[f"{op.name}.weight"] = (torch.rand(shape, generator=generator) * 2 - 1) * bound
        if op.attrs.get("bias", True):
            state[f"{op.name}.bias"] = (torch.rand(shape[0], generator=generator) * 2 - 1) * bound
    return state


@torch.no_grad()
def _teacher_probabilities(
    spec: NetworkSpec, teachers: Sequence[StateDict], inputs: Tensor, temperature: float
) -> Tensor:
    template = to_module(spec)
    params = _stack(teachers, list(spec.param_shapes()))
    logits = vmap(lambda p: functional_call(template, p, (inputs.float(),)))(params)  # (M, N, C)
    return F.softmax(logits / temperature, dim=-1)


def distill(
    spec: NetworkSpec,
    teachers: Sequence[StateDict],
    inputs: Tensor,
    *,
    epochs: float = 4.0,
    learning_rate: float = 3e-3,
    temperature: float = 1.0,
    batch_size: int = 32,
    min_steps: int = 0,
    generator: torch.Generator | None = None,
) -> list[StateDict]:
    """Distil each teacher into a fresh initialisation of the same architecture.

    The students never see labels: they fit the teachers' output distributions on ``inputs``
    (the task's training inputs) for ``epochs`` passes, and at least ``min_steps`` steps.
    """
    if temperature <= 0:
        raise RetrainingError(f"the distillation temperature must be > 0, got {temperature}")
    soft = _teacher_probabilities(spec, teachers, inputs, temperature)  # (M, N, C)
    students = [fresh_initialisation(spec, generator) for _ in teachers]
    return train_stacked(
        spec,
        students,
        inputs,
        soft,
        steps=max(steps_for_epochs(epochs, inputs.shape[0], batch_size), min_steps),
        learning_rates=[learning_rate] * len(teachers),
        batch_size=batch_size,
        generator=generator,
    )
