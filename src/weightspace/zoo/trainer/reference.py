"""The plain path: one model, an ordinary ``nn.Module`` and ``torch.optim`` loop on the same
streams — the oracle the vectorised trainer must agree with, and the baseline of
``benchmarks/bench_zoo.py``."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weightspace.zoo.architectures import (
    BN_EPS,
    ArchConfig,
    build_model,
    get_arch,
    hidden_activation_modules,
)
from weightspace.zoo.streams import RunStreams, initial_parameters
from weightspace.zoo.sweep import RunSpec, TrainSettings
from weightspace.zoo.tasks import Task
from weightspace.zoo.trainer.results import (
    EVAL_CHUNK,
    CheckpointResult,
    accumulate_metrics,
    steps_per_epoch,
)

__all__ = ["evaluate_module", "init_state_dict", "train_reference"]


def init_state_dict(model: nn.Module, seed: int, init_scale: float) -> dict[str, Tensor]:
    """The initial raw state dict of ``model`` for a run with ``seed``.

    Parameters come from :func:`~weightspace.zoo.streams.initial_parameters` (linear/conv
    weights and biases ``U(−s/√fan_in, s/√fan_in)`` with ``s = init_scale``, from the run's
    counter-based init stream; BatchNorm γ = 1, β = 0); buffers are BatchNorm's μ = 0, σ² = 1.
    """
    flat = initial_parameters(model, [seed], [init_scale])[0]
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    offset = 0
    for key, param in model.named_parameters():
        state[key] = flat[offset : offset + param.numel()].view(param.shape).clone()
        offset += param.numel()
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            state[f"{name}.running_mean"] = torch.zeros_like(state[f"{name}.running_mean"])
            state[f"{name}.running_var"] = torch.ones_like(state[f"{name}.running_var"])
            state[f"{name}.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    return state


@torch.no_grad()
def evaluate_module(
    model: nn.Module, x: Tensor, labels: Tensor, weights: Tensor | None = None
) -> tuple[float, float]:
    """Mean loss and accuracy of one ``model`` on ``x``; ``weights (N,)`` selects examples."""
    was_training = model.training
    model.eval()
    loss_sum, correct = torch.zeros(()), torch.zeros(())
    for start in range(0, x.shape[0], EVAL_CHUNK):
        logits = model(x[start : start + EVAL_CHUNK]).unsqueeze(0)
        w = None if weights is None else weights[start : start + EVAL_CHUNK].unsqueeze(0)
        chunk_loss, chunk_correct = accumulate_metrics(
            logits, labels[start : start + EVAL_CHUNK].unsqueeze(0), w
        )
        loss_sum += chunk_loss[0].cpu()
        correct += chunk_correct[0].cpu()
    count = max(float(x.shape[0] if weights is None else weights.sum()), 1.0)
    model.train(was_training)
    return float(loss_sum / count), float(correct / count)


def train_reference(
    task: Task,
    arch: ArchConfig | str,
    run: RunSpec,
    settings: TrainSettings,
    *,
    device: torch.device | str = "cpu",
) -> list[CheckpointResult]:
    """Train one run with a plain ``nn.Module`` + ``torch.optim`` loop (same streams and math).

    Dropout is applied by forward hooks on the hidden activations with the run's masks, so the
    module is exactly :func:`build_model`'s.
    """
    arch = get_arch(arch)
    device = torch.device(device)
    family = arch.family
    steps = steps_per_epoch(task, settings)
    batch = settings.batch_size
    streams = RunStreams([run], task, steps, batch, device)
    model = build_model(arch, task.input_shape(family), task.num_classes)
    model.load_state_dict(init_state_dict(model, run.seed, run.hyper.init_scale))
    model.to(device)
    hp = run.hyper
    if hp.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(),
            lr=hp.learning_rate,
            momentum=settings.momentum,
            weight_decay=hp.weight_decay,
        )
    else:
        optimizer = torch.optim.Adam(
            model.parameters(),
            lr=hp.learning_rate,
            betas=settings.betas,
            eps=settings.eps,
            weight_decay=hp.weight_decay,
        )
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            module.momentum, module.eps = settings.bn_momentum, BN_EPS

    current_mask: list[Tensor | None] = [None]
    keep_scale = torch.tensor(1.0 / (1.0 - hp.dropout), device=device)
    width = arch.width

    def make_hook(layer: int) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], Tensor | None]:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
            mask = current_mask[0]
            if mask is None or not module.training:
                return None
            keep = mask[:, layer * width : (layer + 1) * width].to(output.dtype) * keep_scale
            return output * keep.view(*keep.shape, *([1] * (output.dim() - 2)))

        return hook

    if hp.dropout > 0:
        for layer, act in enumerate(hidden_activation_modules(model, arch)):
            act.register_forward_hook(make_hook(layer))

    x_train = task.inputs("train", family).to(device)
    labels = streams.labels[0]
    weights = streams.in_subset[0].to(x_train.dtype)
    splits = {
        s: (task.inputs(s, family).to(device), task.labels[s].to(device)) for s in ("val", "test")
    }
    results: list[CheckpointResult] = []

    def checkpoint(epoch: int) -> None:
        metrics: dict[str, float] = {}
        metrics["train_loss"], metrics["train_accuracy"] = evaluate_module(
            model, x_train, labels, weights
        )
        for split, (x, y) in splits.items():
            metrics[f"{split}_loss"], metrics[f"{split}_accuracy"] = evaluate_module(model, x, y)
        state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        finite = all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
        results.append(CheckpointResult(run.run_id, epoch, state, metrics, bool(finite)))

    if 0 in settings.checkpoint_epochs:
        checkpoint(0)
    model.train()
    for epoch in range(1, settings.epochs + 1):
        indices = streams.epoch_batches(epoch)[:, 0]  # (steps, B)
        keeps = None
        if hp.dropout > 0:  # (steps, 1, B, units)
            keeps = streams.dropout_keep(streams.dropout_words(epoch), width * arch.depth)
        for step in range(steps):
            idx = indices[step]
            if keeps is not None:
                current_mask[0] = keeps[step, 0]
            loss = F.cross_entropy(model(x_train[idx]), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        current_mask[0] = None
        if epoch in settings.checkpoint_epochs:
            checkpoint(epoch)
            model.train()
    return results
