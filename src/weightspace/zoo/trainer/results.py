"""What both training paths share: the record of one checkpoint, the loss and accuracy behind
its metrics, and the number of steps in an epoch."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from weightspace.zoo.sweep import TrainSettings
from weightspace.zoo.tasks import Task

__all__ = [
    "EVAL_CHUNK",
    "EVAL_ELEMENTS",
    "EVAL_MIN_CHUNK",
    "METRIC_NAMES",
    "CheckpointResult",
    "accumulate_metrics",
    "steps_per_epoch",
]

METRIC_NAMES = (
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "test_loss",
    "test_accuracy",
)
EVAL_CHUNK = 1024
#: The vectorised evaluation takes ``clamp(EVAL_ELEMENTS // (M·A), EVAL_MIN_CHUNK, EVAL_CHUNK)``
#: examples at a time (``A``: largest intermediate per example and model), so that its
#: intermediates stay ~10 MB (cache- and allocator-friendly on CPU).
EVAL_ELEMENTS = 5 * 2**19
EVAL_MIN_CHUNK = 64


@dataclass
class CheckpointResult:
    """One checkpoint: the raw ``nn.Module`` state dict and its metrics.

    ``finite`` is False when training diverged (NaN/Inf weights or buffers); such checkpoints are
    recorded as skipped, never stored.
    """

    run_id: str
    epoch: int
    state_dict: Mapping[str, Tensor]
    metrics: dict[str, float]
    finite: bool = True


def accumulate_metrics(
    logits: Tensor, labels: Tensor, weights: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Per-model summed loss and correct count. logits ``(M, N, K)``, labels ``(M|1, N)``."""
    models, n, _ = logits.shape
    labels = labels.expand(models, n)
    # one max reduction gives both the argmax (its first maximal index, as ``argmax``) and the
    # shift of the cross-entropy ``m + log Σ exp(ℓ − m) − ℓ_y`` (much faster on CPU than
    # ``argmax`` plus ``logsumexp`` over 10 classes)
    top, predicted = logits.max(-1)
    shifted = (logits - top.unsqueeze(-1)).exp_().sum(-1).log_()
    loss = shifted.add_(top).sub_(logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1))
    correct = (predicted == labels).to(logits.dtype)
    if weights is not None:
        loss, correct = loss * weights, correct * weights
    return loss.sum(1), correct.sum(1)


def steps_per_epoch(task: Task, settings: TrainSettings) -> int:
    """Optimiser steps per epoch: ``max(1, ⌊N_train / B⌋)``."""
    return max(1, int(task.labels["train"].shape[0]) // settings.batch_size)
