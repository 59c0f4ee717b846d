"""The function head's targets: what each checkpoint computes on fixed probe inputs of its task.

Computed once before training (one ``vmap`` per task and architecture); the loss that uses them
is :func:`weightspace.training.losses.function_kl`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from weightspace.errors import WeightspaceError
from weightspace.training.config import TrainError

__all__ = [
    "FunctionTargets",
    "by_task_and_architecture",
    "function_targets",
    "probe_inputs",
    "unknown_tasks",
]


@dataclass
class FunctionTargets:
    """What each checkpoint computes on its task's probe inputs (the function head's targets)."""

    probabilities: Tensor  # (n, P, C) softmax outputs, zero on padded classes
    mask: Tensor  # (n, C) bool: the classes of the checkpoint's task
    known: Tensor  # (n,) bool: finite outputs (diverged checkpoints are left out of the loss)


def unknown_tasks(tasks: Any) -> list[str]:
    """The names among ``tasks`` that are not built-in tasks (:mod:`weightspace.zoo.tasks`)."""
    from weightspace.zoo.tasks import get_task

    missing = []
    for name in sorted({str(t) for t in tasks}):
        try:
            get_task(name)
        except WeightspaceError:
            missing.append(name)
    return missing


def by_task_and_architecture(
    specs: list[Any], tasks: list[str], positions: list[int]
) -> list[tuple[str, list[int]]]:
    """``positions`` grouped by (task, architecture), in a fixed order: the unit of the
    vectorised work on checkpoints (one stacked forward or SGD step per group)."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i in positions:
        groups.setdefault((str(tasks[i]), specs[i].to_json()), []).append(i)
    return [(task, members) for (task, _), members in sorted(groups.items())]


def probe_inputs(task: str, spec: Any, probes: int, seed: int = 0) -> Tensor:
    """``probes`` fixed inputs ``(P, *input_shape)`` of the built-in task's training split, shaped
    for ``spec``: the first ``P`` of a permutation seeded by ``seed`` (the same rows for every
    architecture of the task)."""
    from weightspace.finetune import FinetuneError, task_training_data

    try:
        inputs, _ = task_training_data(task, spec)
    except FinetuneError as exc:
        raise TrainError(
            f"the function head needs the inputs of task {task!r}: {exc}; train with "
            "function_weight 0 (--function-weight 0)"
        ) from None
    if inputs.shape[0] < probes:
        raise TrainError(
            f"task {task!r} has {inputs.shape[0]} training examples, fewer than the "
            f"{probes} function probes; lower function_probes"
        )
    order = torch.randperm(inputs.shape[0], generator=torch.Generator().manual_seed(seed))
    return inputs[order[:probes]]


def function_targets(
    models: list[tuple[Any, Any]],
    tasks: list[str],
    probes: int,
    *,
    num_classes: int | None = None,
    seed: int = 0,
    chunk: int = 1024,
) -> FunctionTargets:
    """Softmax outputs of every model on ``probes`` fixed inputs of its task's training split.

    Models of one (task, architecture) run together: their parameters are stacked and one
    ``torch.func.vmap`` of ``functional_call`` evaluates them all (thousands of small models
    take seconds).

    Args:
        models: ``(spec, state_dict)`` pairs.
        tasks: each model's built-in task name.
        probes: ``P``, inputs per task (:func:`probe_inputs`).
        num_classes: ``C``, classes to pad to (default: the widest output among the models).
        seed: the probe choice.

    Raises:
        TrainError: a task is not built-in, or its inputs do not fit a model.
    """
    from torch.func import functional_call, vmap

    from weightspace.module import to_module

    missing = unknown_tasks(tasks)
    if missing:
        raise TrainError(
            f"the function head needs each checkpoint's task data, but task(s) {missing} are "
            "not built-in tasks (weightspace.zoo.tasks); train with function_weight 0 "
            "(--function-weight 0)"
        )
    specs = [spec for (spec, _), _ in zip(models, tasks, strict=True)]
    outputs: dict[int, Tensor] = {}
    for task, members in by_task_and_architecture(specs, tasks, list(range(len(models)))):
        spec = models[members[0]][0]
        x = probe_inputs(task, spec, probes, seed)
        template = to_module(spec).float()
        names = list(models[members[0]][1])

        def run(params: dict[str, Tensor], x: Tensor = x, template: Any = template) -> Tensor:
            return functional_call(template, params, (x,))

        with torch.no_grad():
            for start in range(0, len(members), chunk):
                part = members[start : start + chunk]
                params = {k: torch.stack([models[i][1][k].float() for i in part]) for k in names}
                logits = vmap(run)(params)  # (M, P, C_task)
                for i, row in zip(part, logits, strict=True):
                    outputs[i] = row
    width = max(int(o.shape[-1]) for o in outputs.values())
    num_classes = num_classes or width
    if width > num_classes:
        raise TrainError(f"a model has {width} outputs, more than num_classes={num_classes}")
    n = len(models)
    probabilities = torch.zeros(n, probes, num_classes)
    mask = torch.zeros(n, num_classes, dtype=torch.bool)
    known = torch.zeros(n, dtype=torch.bool)
    for i, logits in outputs.items():
        c = int(logits.shape[-1])
        mask[i, :c] = True
        if bool(torch.isfinite(logits).all()):
            probabilities[i, :, :c] = logits.softmax(-1)
            known[i] = True
    return FunctionTargets(probabilities, mask, known)
