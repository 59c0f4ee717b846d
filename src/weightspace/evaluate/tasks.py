r"""What evaluation needs to know about a task: its chance level and its data.

The one chance-level helper of the package: a classifier that guesses scores :math:`1/C` on a
task with :math:`C` classes. A task weightspace does not know (an imported sweep's) has no known
level: NaN, so that metrics which need it are skipped rather than computed against a made-up
number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np
from torch import Tensor

from weightspace.errors import WeightspaceError

__all__ = ["chance_level", "chance_levels", "task_test_inputs", "task_training_data"]


@lru_cache(maxsize=256)
def chance_level(task: str) -> float:
    r"""Chance accuracy :math:`1/C` of the registered task ``task``; NaN for an unknown task."""
    from weightspace.zoo.tasks import get_task

    try:
        return 1.0 / get_task(str(task)).num_classes
    except WeightspaceError:
        return float("nan")


def chance_levels(
    tasks: Sequence[str], chance: float | Mapping[str, float] | None = None
) -> np.ndarray:
    """One chance level per entry of ``tasks``.

    Args:
        tasks: a task name per model.
        chance: one level for all, a mapping task → level (tasks it lacks fall back to
            :func:`chance_level`), or ``None`` for :func:`chance_level` of every task.

    Returns:
        ``(len(tasks),)`` float array, NaN where the level is unknown.
    """
    if isinstance(chance, int | float):
        return np.full(len(tasks), float(chance))
    given = dict(chance or {})
    return np.array(
        [given[t] if t in given else chance_level(str(t)) for t in tasks], dtype=np.float64
    )


def task_training_data(task: str, input_shape: Sequence[int]) -> tuple[Tensor, Tensor]:
    """The training split of the registered ``task``: inputs shaped ``(N, *input_shape)``, labels.

    Raises:
        WeightspaceError: the task is not registered (the message lists the valid names), or its
            inputs do not fit ``input_shape``.
    """
    from weightspace.evaluate.tables import ProtocolError
    from weightspace.zoo.tasks import get_task

    t = get_task(str(task))
    x = t.features["train"]
    if x[0].numel() != math.prod(input_shape):
        raise ProtocolError(
            f"task {task!r} has {x[0].numel()} input features per example but the architecture "
            f"takes inputs of shape {tuple(input_shape)}"
        )
    return x.reshape(x.shape[0], *input_shape), t.labels["train"].long()


def task_test_inputs(task: str) -> Tensor:
    """The test inputs of the registered ``task``, flat ``(N, F)``."""
    from weightspace.zoo.tasks import get_task

    return get_task(str(task)).features["test"]
