"""The vectorised path: :func:`train_group` trains many runs of one architecture at once."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from weightspace.zoo.architectures import ArchConfig, build_model, get_arch
from weightspace.zoo.streams import RunStreams, initial_parameters
from weightspace.zoo.sweep import RunSpec, TrainSettings
from weightspace.zoo.tasks import Task
from weightspace.zoo.trainer.network import StackedNetwork
from weightspace.zoo.trainer.optimizer import StackedOptimizer
from weightspace.zoo.trainer.results import METRIC_NAMES, CheckpointResult, steps_per_epoch

__all__ = ["ProgressCallback", "train_group"]

ProgressCallback = Callable[[int], None]


def _hidden_units(arch: ArchConfig) -> int:
    """Dropout units per example over all hidden layers: ``depth × width``."""
    return arch.depth * arch.width


def _metrics_dict(values: dict[str, list[float]], model: int) -> dict[str, float]:
    return {name: values[name][model] for name in METRIC_NAMES}


def _blocks(flags: Sequence[bool]) -> list[tuple[int, int]]:
    """``[start, stop)`` of every maximal run of True in ``flags``."""
    blocks: list[tuple[int, int]] = []
    for i, flag in enumerate(flags):
        if flag and blocks and blocks[-1][1] == i:
            blocks[-1] = (blocks[-1][0], i + 1)
        elif flag:
            blocks.append((i, i + 1))
    return blocks


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_group(
    task: Task,
    arch: ArchConfig | str,
    runs: Sequence[RunSpec],
    settings: TrainSettings,
    *,
    device: torch.device | str = "cpu",
    progress: ProgressCallback | None = None,
    timings: dict[str, float] | None = None,
) -> list[CheckpointResult]:
    """Train ``runs`` (all of ``arch`` on ``task``) together; checkpoints at ``settings``' epochs.

    The step loop issues no host↔device transfers or syncs: batch indices and dropout words of an
    epoch are computed on the device from the runs' counter-based streams
    (:class:`~weightspace.zoo.streams.RunStreams`) before its first step.

    Args:
        progress: called with the number of model-epochs finished after every epoch.
        timings: if given, filled with wall-clock seconds (device-synchronised at the phase
            boundaries): ``setup`` (streams, initialisation, data), ``epochs`` (training steps)
            and ``checkpoints`` (evaluation and copying the weights out).

    Returns:
        One :class:`CheckpointResult` per run and checkpoint epoch, ordered by epoch then run.
    """
    clock = time.perf_counter()
    arch = get_arch(arch)
    device = torch.device(device)
    models = len(runs)
    family = arch.family
    position = {run.run_id: i for i, run in enumerate(runs)}
    # sgd runs first (one block of rows per optimiser); the runs with dropout last among the sgd
    # runs and first among the adam runs, so that one block of rows draws dropout masks
    runs = sorted(
        runs,
        key=lambda r: (
            r.hyper.optimizer == "adam",
            (r.hyper.dropout > 0) != (r.hyper.optimizer == "adam"),
            position[r.run_id],
        ),
    )
    steps = steps_per_epoch(task, settings)
    batch = settings.batch_size
    streams = RunStreams(runs, task, steps, batch, device)
    streams.plan_epochs(range(1, settings.epochs + 1))
    template = build_model(arch, task.input_shape(family), task.num_classes)
    initial = initial_parameters(
        template, [r.seed for r in runs], [r.hyper.init_scale for r in runs], device
    )
    network = StackedNetwork(arch, task.input_shape(family), task.num_classes, initial, device)
    optimizer = StackedOptimizer(network.flat, runs, settings)

    x_train = network.prepare_inputs(task.inputs("train", family).to(device))
    splits = {
        s: (network.prepare_inputs(task.inputs(s, family).to(device)), task.labels[s].to(device))
        for s in ("val", "test")
    }
    train_labels = streams.labels  # (M, N)
    train_weights = streams.in_subset.to(network.flat.dtype)
    dropout_rows = [slice(start, stop) for start, stop in _blocks(streams.has_dropout)]
    units = _hidden_units(arch)
    inputs = torch.empty(models * batch, x_train.shape[1], device=device)
    words = torch.empty(models, batch * ((units + 1) // 2), dtype=torch.int32, device=device)
    scratch = torch.empty_like(words)
    # per layer contiguous (depth, M, B, W); rows without dropout stay 1
    multiplier = torch.ones(arch.depth, models, batch, arch.width, device=device)
    results: list[CheckpointResult] = []
    spent = {"setup": 0.0, "epochs": 0.0, "checkpoints": 0.0}

    def lap(phase: str) -> None:
        nonlocal clock
        if timings is not None:
            _sync(device)
            now = time.perf_counter()
            spent[phase] += now - clock
            clock = now

    def checkpoint(epoch: int) -> None:
        values: dict[str, Tensor] = {}
        values["train_loss"], values["train_accuracy"] = network.evaluate(
            x_train, train_labels, train_weights
        )
        for split, (x, y) in splits.items():
            values[f"{split}_loss"], values[f"{split}_accuracy"] = network.evaluate(x, y)
        listed = {k: v.cpu().double().tolist() for k, v in values.items()}
        finite = network.finite().cpu().tolist()
        for m, (run, state) in enumerate(zip(runs, network.state_dicts(), strict=True)):
            results.append(
                CheckpointResult(
                    run.run_id, epoch, state, _metrics_dict(listed, m), bool(finite[m])
                )
            )

    lap("setup")
    if 0 in settings.checkpoint_epochs:
        checkpoint(0)
        lap("checkpoints")
    for epoch in range(1, settings.epochs + 1):
        indices = streams.epoch_batches(epoch)  # (steps, M, B)
        dropout_keys = streams.dropout_words(epoch) if dropout_rows else None  # (steps, M)
        for step in range(steps):
            idx = indices[step]  # (M, B)
            x = torch.index_select(x_train, 0, idx.view(-1), out=inputs)
            y = train_labels.gather(1, idx)  # (M, B)
            dropout = None
            if dropout_keys is not None:
                for rows in dropout_rows:
                    streams.dropout_multiplier(
                        dropout_keys[step, rows],
                        rows,
                        multiplier[:, rows].permute(1, 2, 0, 3),
                        words[rows],
                        scratch[rows],
                    )
                dropout = multiplier
            network.loss_backward(
                x.view(models, batch, -1),
                y,
                dropout=dropout,
                dropout_rows=dropout_rows[0] if len(dropout_rows) == 1 else None,
                bn_momentum=settings.bn_momentum,
            )
            optimizer.step(network.flat, network.grad)
            network.steps_taken += 1
        lap("epochs")
        if epoch in settings.checkpoint_epochs:
            checkpoint(epoch)
            lap("checkpoints")
        if progress is not None:
            progress(models)
    results.sort(key=lambda r: (r.epoch, position[r.run_id]))
    if timings is not None:
        timings.update(spent)
    return results
