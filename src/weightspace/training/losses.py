"""The training losses: NT-Xent between views, masked MSE on labels, the function head's KL."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from weightspace.nn.encoder import Encoder
    from weightspace.training.config import TrainConfig
    from weightspace.training.data import TrainingData

__all__ = [
    "batch_losses",
    "function_kl",
    "masked_mse",
    "nt_xent",
    "uses_contrastive",
    "weighted_sum",
]


def nt_xent(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    r"""NT-Xent (SimCLR): each of the ``2B`` views must pick its partner among ``2B - 1``.

    .. math::
        \ell = -\frac{1}{2B} \sum_{i} \log
        \frac{\exp(\cos(u_i, u_{p(i)}) / \tau)}{\sum_{k \ne i} \exp(\cos(u_i, u_k) / \tau)}

    Shapes: ``a, b (B, D)`` → scalar.
    """
    u = F.normalize(torch.cat([a, b]), dim=-1)  # (2B, D)
    similarity = u @ u.t() / temperature
    n = a.shape[0]
    similarity = similarity.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=u.device), -1e9)
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(u.device)
    return F.cross_entropy(similarity, partner)


def masked_mse(predicted: Tensor, target: Tensor) -> Tensor:
    known = torch.isfinite(target)
    if not bool(known.any()):
        return predicted.sum() * 0.0
    return F.mse_loss(predicted[known], target[known])


def function_kl(logits: Tensor, targets: Tensor, mask: Tensor, known: Tensor) -> Tensor:
    """Mean KL divergence from the target distributions to the head's, over probes and known
    models; padded classes (``~mask``) are excluded. Shapes: ``(B, P, C)``, ``(B, P, C)``,
    ``(B, C)``, ``(B,)`` → scalar."""
    if not bool(known.any()):
        return logits.sum() * 0.0
    logits, targets, mask = logits[known], targets[known], mask[known]
    log_q = logits.masked_fill(~mask.unsqueeze(1), -1e4).log_softmax(-1)
    kl = torch.xlogy(targets, targets) - targets * log_q.masked_fill(~mask.unsqueeze(1), 0.0)
    return kl.sum(-1).mean()


def uses_contrastive(config: TrainConfig) -> bool:
    """Whether a step compares two views by NT-Xent (else it encodes one view)."""
    if config.objective == "class":
        return config.class_contrastive_weight > 0
    return config.objective != "supervised"


def batch_losses(
    outputs: list[dict[str, Tensor]],
    index: Tensor,
    data: TrainingData,
    standardised: Tensor,
    encoder: Encoder,
    config: TrainConfig,
) -> dict[str, Tensor]:
    """The losses of one step, by name, from the heads' ``outputs`` on each view of the
    checkpoints at ``index``: NT-Xent between the two views' projections, and, averaged over
    the views, MSE on each standardised label (``standardised``: ``(n, T)``), task
    cross-entropy, the class cross-entropy (objective ``class``) and the function head's KL."""
    device = outputs[0]["projection"].device
    losses: dict[str, Tensor] = {}
    if uses_contrastive(config):
        losses["contrastive"] = nt_xent(
            outputs[0]["projection"], outputs[1]["projection"], config.temperature
        )
    if config.objective == "class" and data.class_labels is not None:
        labels = data.class_labels[index].to(device)
        losses["class_ce"] = sum(F.cross_entropy(o["class_logits"], labels) for o in outputs) / len(
            outputs
        )
    if config.objective in ("supervised", "both"):
        target = standardised[index].to(device)
        for i, name in enumerate(encoder.config.targets):
            key = "accuracy_mse" if name == "test_accuracy" else "gap_mse"
            losses[key] = sum(
                masked_mse(o["properties"][:, i], target[:, i]) for o in outputs
            ) / len(outputs)
        if encoder.task_head is not None:
            labels = data.task_labels[index].to(device)
            losses["task_ce"] = sum(
                F.cross_entropy(o["task_logits"], labels) for o in outputs
            ) / len(outputs)
    if data.function is not None:
        f = data.function
        probabilities, mask, known = f.probabilities[index], f.mask[index], f.known[index]
        losses["function_kl"] = sum(
            function_kl(
                o["function_logits"], probabilities.to(device), mask.to(device), known.to(device)
            )
            for o in outputs
        ) / len(outputs)
    return losses


def weighted_sum(losses: dict[str, Tensor], config: TrainConfig) -> Tensor:
    """The training objective: each loss times its weight in ``config``."""
    weights = {
        "contrastive": (
            config.class_contrastive_weight
            if config.objective == "class"
            else config.contrastive_weight
        ),
        "class_ce": config.class_weight,
        "accuracy_mse": config.accuracy_weight,
        "gap_mse": config.gap_weight,
        "task_ce": config.task_weight,
        "function_kl": config.function_weight or 0.0,
    }
    return sum(weights[k] * v for k, v in losses.items())
