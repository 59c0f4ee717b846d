r"""The adapter tasks of ``zoo generate --preset lora`` (:mod:`weightspace.zoo.lora_zoo`) and
their data.

**Tasks** (4 classes each, on uniform random token sequences :math:`t_1 \dots t_8`): task
``S`` counts the tokens in a set :math:`S` of 6 of the 12 token ids and buckets the count,
:math:`y = \min(\max(\#\{i: t_i \in S\} - 2, 0), 3)` (classes "≤ 2", 3, 4, "≥ 5"), with

==========  ==========================
``low``     :math:`\{0, \dots, 5\}`
``even``    :math:`\{0, 2, \dots, 10\}`
``mid``     :math:`\{3, \dots, 8\}`
``pairs``   :math:`\{0, 1, 4, 5, 8, 9\}`
``outer``   :math:`\{0, 1, 2, 9, 10, 11\}`
``thirds``  :math:`\{0, 1, 3, 4, 6, 9\}`
==========  ==========================

so every task is within reach of an adapter of the per-token MLP and the head (a membership
feature, averaged by the mean pool); the base's own task, ``max`` (:math:`\max_i t_i \bmod 4`),
is not among them.

**Task data.** The splits are a function of ``seed`` alone (:func:`token_splits`), so opening a
lora zoo can register its six tasks ``lora-seq-<task>`` (:func:`register_lora_tasks`): their
inputs are the token ids (stored as float, exact), so F retrieval and ``probing-task`` read the
tasks' own sequences. Registration re-derives the data from the manifest's seed and checks it
against the zoo (one checkpoint's recorded test accuracy must be reproduced), so a zoo whose
sequences cannot be regenerated is refused rather than scored on other data. It also rebuilds
the base (:func:`~weightspace.zoo.lora_zoo.lora_base`, checked tensor for tensor against the
zoo's frozen layers) and registers it (:func:`weightspace.nn.adapter_features.register_base`), so the adapter features
and the ``<method>-delta`` bench rows can read each checkpoint's update :math:`\Delta W`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from weightspace.zoo.store import ZooError

__all__ = [
    "TASKS",
    "lora_task_data",
    "register_lora_tasks",
    "task_labels",
    "token_splits",
]

TASK = "lora-seq"
VOCAB, LENGTH, CLASSES = 12, 8, 4
#: adapter task → the token ids it counts
TASK_SETS: dict[str, tuple[int, ...]] = {
    "low": (0, 1, 2, 3, 4, 5),
    "even": (0, 2, 4, 6, 8, 10),
    "mid": (3, 4, 5, 6, 7, 8),
    "pairs": (0, 1, 4, 5, 8, 9),
    "outer": (0, 1, 2, 9, 10, 11),
    "thirds": (0, 1, 3, 4, 6, 9),
}
TASKS = tuple(TASK_SETS)


def task_labels(task: str, tokens: Tensor) -> Tensor:
    """The labels ``(N,)`` of ``task`` (module docstring; or ``"max"``, the base's task) for
    token sequences ``(N, 8)``."""
    if task == "max":
        return tokens.max(1).values % 4
    if task not in TASK_SETS:
        raise ZooError(f"lora: unknown task {task!r}; valid: {list(TASKS)}")
    count = torch.isin(tokens, torch.tensor(TASK_SETS[task])).sum(1)
    return (count - 2).clamp(0, 3)


def token_splits(seed: int) -> tuple[torch.Generator, dict[str, Tensor]]:
    """The zoo's token sequences ``{"train": (2000, 8), "val": (500, 8), "test": (1000, 8)}``
    (int64 in ``[0, 12)``) and the generator that drew them, which training goes on using."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (3500, LENGTH), generator=gen)
    return gen, {"train": tokens[:2000], "val": tokens[2000:2500], "test": tokens[2500:]}


def lora_task_data(seed: int) -> dict[str, Any]:
    """The :class:`~weightspace.zoo.task_data.TaskData` of every adapter task of a zoo generated
    with ``seed``, by task name (``lora-seq-<task>``); inputs are the token ids as float32."""
    from weightspace.zoo.task_data import TaskData

    _, splits = token_splits(seed)
    out = {}
    for task in TASKS:
        out[f"{TASK}-{task}"] = TaskData(
            x={s: x.numpy().astype(np.float32) for s, x in splits.items()},
            y={s: task_labels(task, x).numpy().astype(np.int64) for s, x in splits.items()},
            num_classes=CLASSES,
            source=f"lora preset (seed {seed})",
        )
    return out


_REGISTERED_DIRS: dict[int, Path] = {}


def _data_dir(seed: int) -> Path:
    """A directory, removed when the process exits, holding the task files of ``seed``."""
    import atexit
    import shutil
    import tempfile

    if seed not in _REGISTERED_DIRS:
        directory = Path(tempfile.mkdtemp(prefix=f"weightspace-lora-{seed}-"))
        atexit.register(shutil.rmtree, directory, True)
        _REGISTERED_DIRS[seed] = directory
    return _REGISTERED_DIRS[seed]


def register_lora_tasks(zoo: Any) -> list[str]:
    """Register the adapter tasks of a lora-preset ``zoo`` (module docstring, *Task data*) so
    :func:`weightspace.zoo.tasks.get_task` resolves them; a no-op (``[]``) for other zoos.

    Returns:
        The registered task names.

    Raises:
        ZooError: the regenerated sequences do not reproduce the zoo's recorded accuracy of its
            first checkpoint (the zoo was made by another version of the generator).
    """
    from weightspace.atomic import atomic_write_bytes
    from weightspace.zoo.tasks import register_task_data

    config = zoo.manifest.get("config") or {}
    if config.get("preset") != "lora" or not isinstance(config.get("seed"), int):
        return []
    seed = int(config["seed"])
    data = lora_task_data(seed)
    _check_reproduced(zoo, data)
    from weightspace.nn.adapter_features import register_base
    from weightspace.zoo.lora_zoo import lora_base  # it imports this module

    try:  # adapter features and `<method>-delta` read the update over the base
        register_base(lora_base(zoo))
    except ZooError as exc:  # the tasks still serve; those rows then say no base is registered
        import warnings

        warnings.warn(f"no adapter base registered: {exc}", RuntimeWarning, stacklevel=2)
    directory = _data_dir(seed)
    for name, task_data in data.items():
        path = directory / f"{name}.npz"
        if not path.exists():
            atomic_write_bytes(path, task_data.to_bytes())
        register_task_data(name, path, task_data.digest())
    return list(data)


def _check_reproduced(zoo: Any, data: dict[str, Any]) -> None:
    """Refuse data on which the zoo's first checkpoint does not score its recorded accuracy."""
    from weightspace.module import to_module

    row = zoo.table.iloc[0]
    task = str(row["task"])
    if task not in data or "test_accuracy" not in zoo.table:
        raise ZooError(f"{zoo.root}: a lora zoo, but its first row's task {task!r} is not one")
    spec, state = zoo.spec(str(row["checkpoint_id"])), zoo.state_dict(str(row["checkpoint_id"]))
    x = torch.from_numpy(data[task].x["test"]).long()
    with torch.no_grad():
        predicted = to_module(spec, state)(x).argmax(-1).numpy()
    accuracy = float((predicted == data[task].y["test"]).mean())
    if abs(accuracy - float(row["test_accuracy"])) > 1e-6:
        raise ZooError(
            f"{zoo.root}: the lora task data regenerated from seed {zoo.manifest['config']['seed']}"
            f" give checkpoint {row['checkpoint_id']} a test accuracy of {accuracy:.4f}, not the "
            f"recorded {float(row['test_accuracy']):.4f}; this zoo's sequences cannot be rebuilt"
        )
