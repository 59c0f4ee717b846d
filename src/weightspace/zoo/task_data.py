r"""A zoo's own task data: ``zoo import --task-data DATA.npz``.

An imported zoo's task is not one weightspace can generate (``cifar10``, a user's own data), so
chance levels, task-input probes, L/F retrieval and the function head would be skipped. Giving the
task's data at import stores it *inside the zoo* and registers it under the zoo's task name
whenever the zoo is opened, so :func:`weightspace.zoo.tasks.get_task` resolves it like a built-in
task. Nothing in the file is executed: it is read with ``numpy.load(allow_pickle=False)``.

``DATA.npz`` holds the arrays

* ``x_train``, ``x_test``: ``(N, *input_shape)`` finite numbers, the inputs exactly as the zoo's
  models take them (no standardisation is applied);
* ``y_train``, ``y_test``: ``(N,)`` integer class labels in ``[0, num_classes)``;
* ``x_val``, ``y_val`` (optional): without them the validation split is a stratified 20 % of the
  training split (``random_state=0``);
* ``num_classes`` (optional scalar): by default ``max(label) + 1``.

In the zoo: ``DIR/task_data/{task}.npz`` (the name reduced to ``[A-Za-z0-9._-]``) and
``manifest["task_data"]`` = ``{"name", "file", "sha256", "num_classes", "input_shape",
"split_sizes", "source"}``, ``sha256`` being :func:`content_digest` of the arrays (checked when the
zoo is opened).
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from weightspace.errors import WeightspaceError

__all__ = [
    "TASK_DATA_DIR",
    "TaskData",
    "TaskDataError",
    "content_digest",
    "read_task_data",
    "register_zoo_task_data",
    "store_task_data",
    "task_name_for",
]

TASK_DATA_DIR = "task_data"
VAL_FRACTION = 0.2
SPLITS = ("train", "val", "test")


class TaskDataError(WeightspaceError):
    """A task-data file is malformed (one line naming the file and the array)."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")


@dataclass(frozen=True)
class TaskData:
    """Validated task data: ``x[split]`` ``(N, *input_shape)`` float32, ``y[split]`` ``(N,)``
    int64, for ``split`` in train/val/test."""

    x: Mapping[str, np.ndarray]
    y: Mapping[str, np.ndarray]
    num_classes: int
    source: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.x["train"].shape[1:])

    def digest(self) -> str:
        """SHA-256 of the arrays' contents (names, dtypes, shapes, values): the same data gives
        the same digest whenever and wherever it is written."""
        arrays = {f"x_{s}": self.x[s] for s in SPLITS} | {f"y_{s}": self.y[s] for s in SPLITS}
        return content_digest({**arrays, "num_classes": np.int64(self.num_classes)})

    def to_bytes(self) -> bytes:
        """The canonical ``.npz`` (uncompressed) of these arrays."""
        buffer = io.BytesIO()
        arrays = {f"x_{s}": self.x[s] for s in SPLITS} | {f"y_{s}": self.y[s] for s in SPLITS}
        np.savez(buffer, num_classes=np.int64(self.num_classes), **arrays)
        return buffer.getvalue()


def content_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over the sorted arrays' names, dtypes, shapes and C-order bytes."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _labels(path: Path, name: str, values: np.ndarray) -> np.ndarray:
    if values.ndim != 1:
        raise TaskDataError(path, f"array {name}: expected shape (N,), got {values.shape}")
    if np.issubdtype(values.dtype, np.integer):
        return values.astype(np.int64)
    if np.issubdtype(values.dtype, np.floating):
        whole = np.isfinite(values) & (values == np.round(values))
        if whole.all():
            return values.astype(np.int64)
        raise TaskDataError(
            path, f"array {name}: {int((~whole).sum())} labels are not whole numbers"
        )
    raise TaskDataError(path, f"array {name}: labels must be integers, got dtype {values.dtype}")


def read_task_data(path: str | Path) -> TaskData:
    """Read and check ``DATA.npz`` (see the module docstring).

    Raises:
        TaskDataError: missing file or array, shapes that disagree, non-finite inputs (rows
            counted), labels that are not integers in ``[0, num_classes)``.
    """
    path = Path(path)
    if not path.is_file():
        raise TaskDataError(path, "missing")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as exc:
        raise TaskDataError(path, f"unreadable .npz ({exc})") from None
    required = ["x_train", "y_train", "x_test", "y_test"]
    missing = [key for key in required if key not in arrays]
    if ("x_val" in arrays) != ("y_val" in arrays):
        missing.append("y_val" if "x_val" in arrays else "x_val")
    if missing:
        raise TaskDataError(path, f"missing arrays {missing}; needs {required} (+ x_val, y_val)")
    splits = [s for s in SPLITS if f"x_{s}" in arrays]
    x: dict[str, np.ndarray] = {}
    y: dict[str, np.ndarray] = {}
    for split in splits:
        inputs = arrays[f"x_{split}"]
        if inputs.ndim < 2 or not len(inputs):
            raise TaskDataError(
                path, f"array x_{split}: expected shape (N, *input_shape), got {inputs.shape}"
            )
        if not (
            np.issubdtype(inputs.dtype, np.floating) or np.issubdtype(inputs.dtype, np.integer)
        ):
            raise TaskDataError(path, f"array x_{split}: expected numbers, got {inputs.dtype}")
        if inputs.shape[1:] != arrays["x_train"].shape[1:]:
            raise TaskDataError(
                path,
                f"array x_{split}: examples of shape {inputs.shape[1:]}, but x_train's are "
                f"{arrays['x_train'].shape[1:]}",
            )
        bad = ~np.isfinite(inputs.reshape(len(inputs), -1).astype(np.float64)).all(axis=1)
        if bad.any():
            raise TaskDataError(path, f"array x_{split}: {int(bad.sum())} rows hold NaN/Inf")
        labels = _labels(path, f"y_{split}", arrays[f"y_{split}"])
        if len(labels) != len(inputs):
            raise TaskDataError(
                path,
                f"array y_{split}: {len(labels)} labels for {len(inputs)} inputs in x_{split}",
            )
        x[split], y[split] = inputs.astype(np.float32), labels
    top = max(int(labels.max()) for labels in y.values()) + 1
    num_classes = top
    if "num_classes" in arrays:
        given = arrays["num_classes"]
        if given.shape != () or not np.issubdtype(given.dtype, np.integer) or int(given) < 2:
            raise TaskDataError(path, "array num_classes: expected one integer >= 2")
        num_classes = int(given)
    for split, labels in y.items():
        outside = int(((labels < 0) | (labels >= num_classes)).sum())
        if outside:
            raise TaskDataError(
                path,
                f"array y_{split}: {outside} labels lie outside [0, {num_classes}) "
                "(the declared classes)",
            )
    if num_classes < 2:
        raise TaskDataError(path, "arrays y_*: a classification task needs at least 2 classes")
    if "val" not in x:
        x["train"], y["train"], x["val"], y["val"] = _carve_validation(x["train"], y["train"])
    return TaskData(x=x, y=y, num_classes=num_classes, source=str(path))


def _carve_validation(
    x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split a stratified :data:`VAL_FRACTION` off the training data (``random_state=0``)."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(y)
    stratify = y if len(y) >= 10 and counts[counts > 0].min() >= 2 else None
    n_val = max(1, round(VAL_FRACTION * len(y)))
    if len(y) < 2:
        return x, y, x[:0], y[:0]
    if stratify is not None and n_val < int((counts > 0).sum()):
        stratify = None
    train, val = train_test_split(
        np.arange(len(y)), test_size=n_val, stratify=stratify, random_state=0
    )
    train, val = np.sort(train), np.sort(val)
    return x[train], y[train], x[val], y[val]


def check_registrable(name: str, data: TaskData) -> None:
    """Refuse, before anything is written, a name this process already knows with other data."""
    from weightspace.zoo.tasks import registered_task_digest

    known = registered_task_digest(name)
    if known is not None and known != data.digest():
        raise TaskDataError(
            data.source,
            f"task {name!r} is already registered in this process with other data; "
            "choose another --task-name",
        )


def task_name_for(tasks: Iterable[Any], data: TaskData | None = None) -> str:
    """The one task of a zoo that is given task data (refuses several, and built-in names)."""
    from weightspace.zoo.tasks import is_builtin_task

    names = sorted({str(t) for t in tasks})
    if len(names) != 1:
        raise TaskDataError(
            "--task-data", f"needs a zoo of one task, but the release has tasks {names}"
        )
    if is_builtin_task(names[0]) or names[0] == "unknown":
        raise TaskDataError(
            "--task-data",
            f"the zoo's task is called {names[0]!r}, which "
            + ("is a built-in task" if names[0] != "unknown" else "names no task")
            + "; give it its own name with --task-name",
        )
    if data is not None:
        check_registrable(names[0], data)
    return names[0]


def store_task_data(root: Path, name: str, data: TaskData) -> dict[str, Any]:
    """Write ``root/task_data/{name}.npz`` atomically; return its manifest entry."""
    from weightspace.atomic import atomic_write_bytes

    payload = data.to_bytes()
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).lstrip(".") or "task"
    relative = f"{TASK_DATA_DIR}/{stem}.npz"
    (root / TASK_DATA_DIR).mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(root / relative, payload)
    return {
        "name": name,
        "file": relative,
        "sha256": data.digest(),
        "num_classes": data.num_classes,
        "input_shape": list(data.input_shape),
        "split_sizes": {s: int(len(data.y[s])) for s in SPLITS},
        "source": data.source,
    }


def register_zoo_task_data(root: str | Path, entry: Mapping[str, Any]) -> None:
    """Make the task data stored in the zoo at ``root`` resolvable by its task name."""
    from weightspace.zoo.tasks import register_task_data

    root = Path(root)
    path = root / str(entry.get("file", ""))
    if path.resolve().parent != (root / TASK_DATA_DIR).resolve() or path.suffix != ".npz":
        raise TaskDataError(
            root / "manifest.json",
            f"field task_data.file: {path} is not in the zoo's {TASK_DATA_DIR}/ directory",
        )
    register_task_data(str(entry["name"]), path, str(entry["sha256"]))
