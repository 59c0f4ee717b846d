"""Validation metrics after each epoch (they decide early stopping and the kept weights)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from weightspace.nn.augment import augment
from weightspace.nn.encoder import Encoder
from weightspace.training.config import TrainConfig
from weightspace.training.data import TrainingData, batches
from weightspace.training.losses import function_kl, nt_xent

__all__ = ["validate"]


def _kendall_tau(predicted: np.ndarray, actual: np.ndarray) -> float:
    from weightspace.evaluate.metrics import kendall_tau

    keep = np.isfinite(actual)
    if keep.sum() < 2:
        return float("nan")
    return float(kendall_tau(actual[keep], predicted[keep]))


@torch.no_grad()
def validate(
    encoder: Encoder,
    data: TrainingData,
    index: Tensor,
    config: TrainConfig,
    device: torch.device,
) -> dict[str, float]:
    """Validation metrics of ``encoder`` on the checkpoints at ``index`` (fixed views)."""
    encoder.eval()
    generator = torch.Generator().manual_seed(config.seed * 7919 + 17)
    metrics: dict[str, float] = {}
    projections: list[list[Tensor]] = [[], []]
    properties, logits, function_logits, class_logits = [], [], [], []
    parts = batches(
        index, data.bank.spec_index, config.batch_size, config.batch_by_architecture, None
    )
    index = torch.cat(parts)  # metrics below follow the batch order
    for part in parts:
        batch = data.bank.select(part)
        z = encoder(batch.to(device))
        heads = encoder.heads(z)
        properties.append(heads["properties"].cpu())
        if "task_logits" in heads:
            logits.append(heads["task_logits"].cpu())
        if "class_logits" in heads:
            class_logits.append(heads["class_logits"].cpu())
        if "function_logits" in heads:
            function_logits.append(heads["function_logits"].cpu())
        for view in range(2):
            augmented = augment(batch, config.augment, generator).to(device)
            projections[view].append(encoder.heads(encoder(augmented))["projection"].cpu())
    a, b = torch.cat(projections[0]), torch.cat(projections[1])
    metrics["val_contrastive"] = float(nt_xent(a, b, config.temperature))
    similarity = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).t()
    metrics["val_view_top1"] = float(
        (similarity.argmax(1) == torch.arange(a.shape[0])).float().mean()
    )

    predicted = torch.cat(properties).double()
    mean = torch.tensor(encoder.config.target_mean, dtype=torch.float64)
    std = torch.tensor(encoder.config.target_std, dtype=torch.float64)
    predicted = (predicted * std + mean).numpy()
    actual = data.targets[index].double().numpy()
    for i, name in enumerate(encoder.config.targets):
        key = "accuracy" if name == "test_accuracy" else "gap"
        tau = _kendall_tau(predicted[:, i], actual[:, i])
        metrics[f"val_{key}_tau"] = tau
        if key == "accuracy":
            keep = np.isfinite(actual[:, i])
            err = predicted[keep, i] - actual[keep, i]
            variance = float(np.var(actual[keep, i])) or 1.0
            metrics["val_accuracy_mae"] = float(np.abs(err).mean())
            metrics["val_accuracy_r2"] = 1.0 - float(np.mean(err**2)) / variance
    if logits:
        labels = data.task_labels[index]
        metrics["val_task_accuracy"] = float((torch.cat(logits).argmax(1) == labels).float().mean())
    if function_logits and data.function is not None:
        f = data.function
        predicted_f = torch.cat(function_logits)
        mask, known = f.mask[index], f.known[index]
        metrics["val_function_kl"] = float(
            function_kl(predicted_f, f.probabilities[index], mask, known)
        )
        masked = predicted_f.masked_fill(~mask.unsqueeze(1), -1e4)
        same = masked.argmax(-1) == f.probabilities[index].argmax(-1)  # (n, P)
        metrics["val_function_agreement"] = (
            float(same[known].float().mean()) if bool(known.any()) else float("nan")
        )
    if class_logits and data.class_labels is not None:
        labels = data.class_labels[index]
        predicted_class = torch.cat(class_logits)
        metrics["val_class_ce"] = float(F.cross_entropy(predicted_class, labels))
        metrics["val_class_top1"] = float((predicted_class.argmax(1) == labels).float().mean())
    supervised = config.objective != "contrastive" and "val_accuracy_tau" in metrics
    if config.objective == "class" and "val_class_top1" in metrics:
        metrics["val_score"] = metrics["val_class_top1"]
    else:
        key = "val_accuracy_tau" if supervised else "val_view_top1"
        metrics["val_score"] = metrics[key]
    if not math.isfinite(metrics["val_score"]):
        metrics["val_score"] = -1.0
    return metrics
