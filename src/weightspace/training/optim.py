"""The optimiser: AdamW with decay on matrices only, linear warm-up, then cosine decay."""

from __future__ import annotations

import math
from typing import Any

import torch

from weightspace.nn.encoder import Encoder
from weightspace.training.config import TrainConfig

__all__ = ["make_optimizer"]


def _parameter_groups(
    encoder: Encoder, weight_decay: float, probe_lr: float | None = None
) -> list[dict[str, Any]]:
    """Matrices decay, biases/norms/tables do not; with ``probe_lr`` the probe generator's
    parameters form their own group at that learning rate (decayed like the others)."""
    decay, no_decay, probe = [], [], []
    for name, parameter in encoder.named_parameters():
        if probe_lr is not None and name.startswith("probe_generator."):
            probe.append(parameter)
            continue
        is_table = ".weight" in name and any(
            t in name for t in ("depth", "role", "activation", "position", "kind", "seeds", "norm")
        )
        (decay if parameter.dim() >= 2 and not is_table else no_decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if probe:
        groups.append({"params": probe, "weight_decay": 0.0, "lr": probe_lr})
    return groups


def make_optimizer(
    encoder: Encoder, config: TrainConfig, total_steps: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    r"""AdamW and its schedule over ``total_steps``: with ``w`` warm-up steps and ``r`` the
    final ratio, the factor of the peak learning rate at step ``s`` is

    .. math::
        f(s) = \frac{s + 1}{w} \ (s < w), \qquad
        f(s) = r + (1 - r) \, \tfrac12 \big(1 + \cos(\pi \min(1, \tfrac{s - w}{T - w}))\big).
    """
    probe_lr = (
        None if config.probe_lr_scale == 1.0 else config.probe_lr_scale * config.learning_rate
    )
    optimizer = torch.optim.AdamW(
        _parameter_groups(encoder, config.weight_decay, probe_lr), lr=config.learning_rate
    )
    warmup = max(1, int(config.warmup_fraction * total_steps))

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
