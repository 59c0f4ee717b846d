"""Zoo tasks: small classification datasets that need no download.

============================  ======  ========  =======  =============================
name                          inputs  classes   samples  architectures
============================  ======  ========  =======  =============================
``digits``                    8×8     10        1797     mlp (64 features), cnn2d (1×8×8)
``mnist1d``                   40      10        4000     mlp (40 features), cnn1d (1×40)
``wine``                      13      3         178      mlp
``breast-cancer``             30      2         569      mlp
``synthetic-<seed>``          20      4         2000     mlp
============================  ======  ========  =======  =============================

``digits``, ``wine`` and ``breast-cancer`` are scikit-learn's bundled copies; ``mnist1d`` comes
from the ``mnist1d`` package's procedural generator (never its download path);
``synthetic-<seed>`` is ``sklearn.datasets.make_classification`` with ``random_state=seed``.

An imported zoo's own task (``zoo import --task-data DATA.npz``, :mod:`weightspace.zoo.task_data`)
is registered with :func:`register_task_data` when the zoo is opened: its splits are the file's,
and its inputs are used as stored (not standardised), since the zoo's models were trained on them.

Every task is split once into train/val/test (60/20/20, stratified, ``random_state=0``) and its
features are standardised with the training split's per-feature mean and standard deviation
(``x ← (x − μ_train) / σ_train``, σ = 1 where a feature is constant). The split is recorded in the
zoo manifest as sizes plus a SHA-256 of the index arrays.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from weightspace.errors import WeightspaceError
from weightspace.zoo.architectures import UnknownNameError, _suggest

__all__ = [
    "Task",
    "get_task",
    "is_builtin_task",
    "list_tasks",
    "register_task",
    "register_task_data",
]

SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
SPLIT_SEED = 0
MNIST1D_SAMPLES = 4000


@dataclass(frozen=True, eq=False)
class Task:
    """A classification task with fixed, standardised train/val/test splits.

    Args:
        name: registry name.
        features: ``{"train"|"val"|"test": (N, F) float32}`` standardised features.
        labels: ``{"train"|"val"|"test": (N,) int64}``.
        num_classes: number of classes.
        image_shape: spatial shape of one input for CNNs (``(8, 8)`` or ``(40,)``), or ``()`` when
            the task is tabular (MLPs only).
        split_indices: the original row indices of each split (recorded, hashed in the manifest).
    """

    name: str
    features: dict[str, Tensor]
    labels: dict[str, Tensor]
    num_classes: int
    image_shape: tuple[int, ...] = ()
    split_indices: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_features(self) -> int:
        return int(self.features["train"].shape[1])

    @property
    def families(self) -> tuple[str, ...]:
        """Architecture families this task can train."""
        if len(self.image_shape) == 2:
            return ("mlp", "cnn2d")
        if len(self.image_shape) == 1:
            return ("mlp", "cnn1d")
        return ("mlp",)

    def input_shape(self, family: str) -> tuple[int, ...]:
        """Shape of one input (without batch) for an architecture ``family``."""
        if family == "mlp":
            return (self.num_features,)
        if family not in self.families:
            raise WeightspaceError(
                f"task {self.name!r} cannot train {family} architectures; it supports "
                f"{', '.join(self.families)}"
            )
        return (1, *self.image_shape)

    def inputs(self, split: str, family: str) -> Tensor:
        """Inputs of ``split`` shaped for ``family``: ``(N, F)`` or ``(N, 1, *image_shape)``."""
        x = self.features[split]
        return x.reshape(x.shape[0], *self.input_shape(family))

    def describe(self) -> dict[str, object]:
        """JSON-able record of the task and its splits, for the manifest."""
        digest = hashlib.sha256()
        for split in ("train", "val", "test"):
            digest.update(np.ascontiguousarray(self.split_indices[split], dtype=np.int64).tobytes())
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "num_features": self.num_features,
            "image_shape": list(self.image_shape),
            "split_sizes": {s: int(self.labels[s].shape[0]) for s in ("train", "val", "test")},
            "split_seed": SPLIT_SEED,
            "split_sha256": digest.hexdigest(),
        }


_LOADERS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray, tuple[int, ...]]]] = {}
#: Spatial dims of each built-in task's inputs (0: tabular), known without loading the data.
_IMAGE_DIMS: dict[str, int] = {"digits": 2, "mnist1d": 1, "wine": 0, "breast-cancer": 0}


#: Tasks whose data an imported zoo carries: name → (``.npz`` path, content digest).
_DATA_TASKS: dict[str, tuple[Path, str]] = {}


def is_builtin_task(name: str) -> bool:
    """Whether ``name`` is a task weightspace generates itself (or one registered in code)."""
    return name in _LOADERS or re.fullmatch(r"synthetic-(\d+)", name) is not None


def register_task_data(name: str, path: str | Path, sha256: str) -> None:
    """Register the task-data file ``path`` (checked against ``sha256``) under ``name``.

    Registering the same data again is a no-op; other data under a name already taken is
    refused, so one name never means two datasets in one process.

    Raises:
        WeightspaceError: ``name`` is a built-in task, is taken by other data, or the file's
            content digest (:func:`~weightspace.zoo.task_data.content_digest`) differs from
            ``sha256`` (the zoo was modified).
    """
    path = Path(path)
    if is_builtin_task(name):
        raise WeightspaceError(
            f"{path}: task data cannot be registered under the built-in {name!r}"
        )
    known = _DATA_TASKS.get(name)
    if known is not None and known[1] == sha256:
        return
    if known is not None:
        raise WeightspaceError(
            f"{path}: task {name!r} is already registered with other data ({known[0]}); "
            "open zoos whose tasks share a name but not their data in separate processes"
        )
    from weightspace.zoo.task_data import content_digest

    try:
        with np.load(path, allow_pickle=False) as archive:
            digest = content_digest({key: archive[key] for key in archive.files})
    except Exception as exc:
        raise WeightspaceError(f"{path}: task data unreadable ({exc})") from None
    if digest != sha256:
        raise WeightspaceError(
            f"{path}: task data does not match the SHA-256 recorded in the zoo's manifest"
        )
    _DATA_TASKS[name] = (path, sha256)


def registered_task_digest(name: str) -> str | None:
    """The content digest of the task data registered under ``name``, if any."""
    known = _DATA_TASKS.get(name)
    return None if known is None else known[1]


def _data_task(name: str) -> Task:
    """The :class:`Task` of registered task data (splits as stored, inputs flattened)."""
    path, _ = _DATA_TASKS[name]
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    shape = tuple(int(s) for s in arrays["x_train"].shape[1:])
    image_shape = (
        shape if len(shape) == 2 else shape[1:] if len(shape) == 3 and shape[0] == 1 else ()
    )
    features, labels, indices, offset = {}, {}, {}, 0
    for split in ("train", "val", "test"):
        x = arrays[f"x_{split}"].astype(np.float32)
        features[split] = torch.from_numpy(x.reshape(len(x), -1))
        labels[split] = torch.from_numpy(arrays[f"y_{split}"].astype(np.int64))
        indices[split] = np.arange(offset, offset + len(x))
        offset += len(x)
    return Task(
        name=name,
        features=features,
        labels=labels,
        num_classes=int(arrays["num_classes"]),
        image_shape=image_shape,
        split_indices=indices,
    )


def task_families(name: str) -> tuple[str, ...]:
    """Architecture families task ``name`` supports (validates the name; loads data only for
    user-registered tasks)."""
    dims = 0 if re.fullmatch(r"synthetic-(\d+)", name) else _IMAGE_DIMS.get(name)
    if dims is None:
        return get_task(name).families
    return ("mlp", "cnn2d") if dims == 2 else ("mlp", "cnn1d") if dims == 1 else ("mlp",)


def register_task(
    name: str,
) -> Callable[
    [Callable[[], tuple[np.ndarray, np.ndarray, tuple[int, ...]]]],
    Callable[[], tuple[np.ndarray, np.ndarray, tuple[int, ...]]],
]:
    """Decorator registering a loader ``() -> (X (N, F), y (N,), image_shape)`` under ``name``."""

    def decorator(
        loader: Callable[[], tuple[np.ndarray, np.ndarray, tuple[int, ...]]],
    ) -> Callable[[], tuple[np.ndarray, np.ndarray, tuple[int, ...]]]:
        _LOADERS[name] = loader
        return loader

    return decorator


def list_tasks(pattern: str = "*") -> list[str]:
    """Registered task names matching ``pattern``; ``synthetic-<seed>`` stands for the family."""
    names = [*_LOADERS, *_DATA_TASKS, "synthetic-<seed>"]
    return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))


@register_task("digits")
def _load_digits() -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.data, data.target, (8, 8)


@register_task("wine")
def _load_wine() -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    from sklearn.datasets import load_wine

    data = load_wine()
    return data.data, data.target, ()


@register_task("breast-cancer")
def _load_breast_cancer() -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return data.data, data.target, ()


@register_task("mnist1d")
def _load_mnist1d() -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    from weightspace.extras import require

    mnist1d_data = require("mnist1d.data", "bench", feature="the mnist1d task")
    get_dataset_args, make_dataset = mnist1d_data.get_dataset_args, mnist1d_data.make_dataset

    args = get_dataset_args()
    args.num_samples = MNIST1D_SAMPLES
    # make_dataset reseeds the global RNGs; leave the caller's streams untouched.
    python_state, numpy_state = random.getstate(), np.random.get_state()
    torch_state = torch.random.get_rng_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.random.set_rng_state(torch_state)
    x = np.concatenate([data["x"], data["x_test"]])
    y = np.concatenate([data["y"], data["y_test"]])
    return x, y, (x.shape[1],)


def _load_synthetic(seed: int) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=2000,
        n_features=20,
        n_informative=8,
        n_redundant=4,
        n_classes=4,
        n_clusters_per_class=2,
        class_sep=1.0,
        flip_y=0.02,
        random_state=seed,
    )
    return x, y, ()


def _split(y: np.ndarray) -> dict[str, np.ndarray]:
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(y))
    train_fraction, val_fraction, test_fraction = SPLIT_FRACTIONS
    train, rest = train_test_split(
        indices, train_size=train_fraction, stratify=y, random_state=SPLIT_SEED
    )
    val, test = train_test_split(
        rest,
        test_size=test_fraction / (val_fraction + test_fraction),
        stratify=y[rest],
        random_state=SPLIT_SEED,
    )
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


@functools.lru_cache(maxsize=32)
def get_task(name: str) -> Task:
    """The task called ``name`` (cached; the data are generated locally, never downloaded).

    Raises:
        UnknownNameError: the name is not registered; the message lists the valid names.
    """
    if name in _DATA_TASKS:
        return _data_task(name)
    match = re.fullmatch(r"synthetic-(\d+)", name)
    if match:
        x, y, image_shape = _load_synthetic(int(match[1]))
    elif name in _LOADERS:
        x, y, image_shape = _LOADERS[name]()
    else:
        raise UnknownNameError(_suggest("task", name, list_tasks()))
    x = np.asarray(x, dtype=np.float64).reshape(len(y), -1)
    y = np.asarray(y, dtype=np.int64)
    splits = _split(y)
    mean = x[splits["train"]].mean(axis=0)
    std = x[splits["train"]].std(axis=0)
    std[std < 1e-8] = 1.0
    x = (x - mean) / std
    return Task(
        name=name,
        features={s: torch.from_numpy(x[i].astype(np.float32)) for s, i in splits.items()},
        labels={s: torch.from_numpy(y[i]) for s, i in splits.items()},
        num_classes=int(y.max()) + 1,
        image_shape=tuple(image_shape),
        split_indices=splits,
    )
