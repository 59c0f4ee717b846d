"""SGD and Adam of the vectorised trainer, one step for every model's row of ``θ``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from weightspace.zoo.sweep import RunSpec, TrainSettings

__all__ = ["StackedOptimizer"]

#: PyTorch's fused Adam kernel (one pass over θ, g, m, v), when this build has it.
_FUSED_ADAM: Callable[..., None] | None = getattr(torch, "_fused_adam_", None)


class StackedOptimizer:
    """SGD (momentum, L2) and Adam (L2) on the flat ``θ (M, P)``, chosen per model.

    With ``g ← ∇θ + λ θ`` per model:

    * sgd:  ``b ← μ b + g``;  ``θ ← θ − η b``  (first step ``b = g``, as ``torch.optim.SGD``)
    * adam: ``m ← m + (1−β₁)(g − m)``; ``v ← β₂ v + (1−β₂) g²``;
      ``θ ← θ − η/(1−β₁ᵗ) · m / (√v / √(1−β₂ᵗ) + ε)``  (as ``torch.optim.Adam``)

    Adam's per-model step sizes ``η`` differ, so where PyTorch's fused Adam kernel exists it runs
    with ``η = 1`` on a zeroed buffer ``δ`` (giving ``δ = −m̂ / (√v̂ + ε)`` in one pass) and
    ``θ ← θ + η δ`` follows — the same math in three passes instead of eight.

    The caller orders the models so that SGD runs come first: each optimiser then works on a
    contiguous block of rows, in place, without masks.
    """

    def __init__(self, flat: Tensor, runs: Sequence[RunSpec], settings: TrainSettings) -> None:
        is_adam = [r.hyper.optimizer == "adam" for r in runs]
        if is_adam != sorted(is_adam):
            raise ValueError("runs must be ordered with the sgd runs first")
        self.num_sgd = len(runs) - sum(is_adam)
        column = dict(device=flat.device, dtype=flat.dtype)
        self.lr = torch.tensor([r.hyper.learning_rate for r in runs], **column).view(-1, 1)
        self.wd = torch.tensor([r.hyper.weight_decay for r in runs], **column).view(-1, 1)
        self.settings = settings
        self.first_moment = torch.zeros_like(flat)  # sgd momentum buffer / adam m
        self.second_moment = torch.zeros_like(flat[self.num_sgd :])  # adam v
        self.denom = torch.empty_like(self.second_moment)
        self.step_count = 0
        self.adam_step = torch.zeros((), **column)  # the fused kernel reads t from the device

    @torch.no_grad()
    def step(self, flat: Tensor, grad: Tensor) -> None:
        self.step_count += 1
        k = self.num_sgd
        grad = grad.addcmul_(self.wd, flat)  # g ← ∇θ + λ θ, in place
        if k > 0:
            buf = self.first_moment[:k]
            torch.add(grad[:k], buf, alpha=self.settings.momentum, out=buf)  # b ← μ b + g
            flat[:k].addcmul_(self.lr[:k], buf, value=-1.0)
        if k == flat.shape[0]:
            return
        beta1, beta2 = self.settings.betas
        g, m, v = grad[k:], self.first_moment[k:], self.second_moment
        if _FUSED_ADAM is not None:
            self.adam_step.add_(1.0)
            delta = self.denom.zero_()
            _FUSED_ADAM(
                [delta],
                [g],
                [m],
                [v],
                [],
                [self.adam_step],
                lr=1.0,
                beta1=beta1,
                beta2=beta2,
                weight_decay=0.0,
                eps=self.settings.eps,
                amsgrad=False,
                maximize=False,
            )
            flat[k:].addcmul_(self.lr[k:], delta)
            return
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bias1 = 1 - beta1**self.step_count
        bias2_sqrt = math.sqrt(1 - beta2**self.step_count)
        # in the preallocated buffer: m / (√v / √(1−β₂ᵗ) + ε), then θ ← θ − η/(1−β₁ᵗ) · that
        denom = torch.sqrt(v, out=self.denom).div_(bias2_sqrt).add_(self.settings.eps)
        update = torch.div(m, denom, out=denom)
        flat[k:].addcmul_(self.lr[k:], update, value=-1.0 / bias1)
