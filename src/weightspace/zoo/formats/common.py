"""What every release importer shares: its error type, safe file reading, packing checkpoints
into shards and a table, and the atomic zoo writer."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from weightspace.zoo.store import (
    CORE_COLUMNS,
    TABLE,
    WEIGHTS,
    ZooError,
    write_manifest,
    write_shard,
    write_table,
)

__all__ = [
    "CheckpointRecord",
    "ReleaseError",
    "check_out",
    "finish_import",
    "load_torch_file",
    "pack_records",
    "refuse_nonfinite",
    "release_paths",
    "safe_id",
    "user_column",
    "write_zoo",
]

#: Columns an imported zoo table defines itself (the core columns and a few more).
TABLE_COLUMNS = (*CORE_COLUMNS, "num_params", "split", "source_row")
#: Columns the zoo table defines itself; release columns of these names become ``user_<name>``.
RESERVED_COLUMNS = (*TABLE_COLUMNS, "source")


class ReleaseError(ZooError):
    """A published release is malformed: a file is missing or a field is inconsistent.

    The message is one line naming the file and the field.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def check_out(out: Path) -> None:
    """Refuse an ``out`` that holds a zoo or anything else (before any work is done)."""
    from weightspace.zoo.importer import _check_out

    _check_out(out)


def load_torch_file(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU: tensors and plain containers only, never
    code from the file. Any failure is a one-line :class:`ReleaseError` naming the file."""
    if not path.is_file():
        raise ReleaseError(path, "missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReleaseError(path, f"unreadable checkpoint ({reason[:200]})") from None


def release_paths(source: str | Path, out: str | Path) -> tuple[Path, Path]:
    """``(source, out)`` as paths, refusing a ``source`` that is not a directory."""
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise ReleaseError(source, "release directory not found")
    return source, out


def refuse_nonfinite(nonfinite: Sequence[Path], drop_nonfinite: bool, what: str) -> None:
    """Refuse a release some of whose ``what`` (e.g. ``"checkpoints"``) hold NaN/Inf, naming the
    first such file, unless ``drop_nonfinite`` (then they were left out and this does nothing)."""
    if nonfinite and not drop_nonfinite:
        raise ReleaseError(
            nonfinite[0],
            f"{len(nonfinite)} {what} hold NaN/Inf (this one first); pass --drop-nonfinite to "
            "leave them out",
        )


def user_column(name: Any, reserved: Sequence[str], taken: Mapping[str, Any]) -> str:
    """The table column for a release field ``name``: ``user_`` is prefixed while the name is
    ``reserved`` by the zoo or already ``taken``."""
    column = str(name)
    while column in reserved or column in taken:
        column = f"user_{column}"
    return column


def safe_id(text: str) -> str:
    """A checkpoint id from free text: runs of other characters than ``[A-Za-z0-9._-]`` become
    ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


@dataclass
class CheckpointRecord:
    """One checkpoint of a release, ready to be written.

    Args:
        checkpoint_id: unique id in the new zoo.
        run_id: the training run (all its checkpoints land on one side of every split).
        epoch: training epoch or step (``None`` when the release has none).
        task: the task name.
        spec: the architecture (:class:`~weightspace.spec.NetworkSpec`).
        state: tensors keyed like ``spec``'s layers.
        test_accuracy: NaN when the release has none (INRs).
        split: ``"train"``/``"val"``/``"test"``, or ``None``.
        extra: further table columns (release metadata).
    """

    checkpoint_id: str
    run_id: str
    epoch: int | None
    task: str
    spec: Any
    state: dict[str, torch.Tensor]
    test_accuracy: float = float("nan")
    split: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def pack_records(
    records: Sequence[CheckpointRecord], shard_size: int = 1024
) -> tuple[list[tuple[str, dict[str, torch.Tensor]]], pd.DataFrame]:
    """Shards (one architecture each, ``shard_size`` checkpoints at most) and the zoo table.

    The table keeps the order of ``records``; release columns whose names the zoo uses itself
    are kept as ``user_<name>``.
    """
    spec_json = [r.spec.to_json() for r in records]
    summaries = {text: r.spec.summary() for text, r in zip(spec_json, records, strict=True)}
    by_spec: dict[str, list[int]] = {}
    for position, text in enumerate(spec_json):
        by_spec.setdefault(text, []).append(position)
    shard_of: list[str] = [""] * len(records)
    shards: list[tuple[str, dict[str, torch.Tensor]]] = []
    for text, positions in by_spec.items():
        for start in range(0, len(positions), shard_size):
            chunk = positions[start : start + shard_size]
            name = f"weights/imported-{len(shards):04d}.safetensors"
            tensors = {
                f"{records[p].checkpoint_id}/{key}": value
                for p in chunk
                for key, value in records[p].state.items()
            }
            shards.append((text, tensors))
            for p in chunk:
                shard_of[p] = name
    table = pd.DataFrame(
        {
            "checkpoint_id": [r.checkpoint_id for r in records],
            "run_id": [r.run_id for r in records],
            "epoch": pd.array([r.epoch for r in records], dtype="Int64"),
            "task": [r.task for r in records],
            "arch": [summaries[t] for t in spec_json],
            "spec": spec_json,
            "shard": shard_of,
            "weights_form": "spec",
            "test_accuracy": np.array([r.test_accuracy for r in records], dtype=float),
            "num_params": [int(sum(v.numel() for v in r.state.values())) for r in records],
            "split": [r.split for r in records],
        }
    )
    names = sorted({key for r in records for key in r.extra}, key=str)
    extra: dict[str, list[Any]] = {}
    for key in names:
        extra[user_column(key, RESERVED_COLUMNS, extra)] = [r.extra.get(key) for r in records]
    if extra:
        table = pd.concat([table, pd.DataFrame(extra)], axis=1)
    return shards, table


def split_counts(table: pd.DataFrame) -> dict[str, int]:
    """Checkpoints per split (``train``/``val``/``test``), for the manifest."""
    return {name: int((table["split"] == name).sum()) for name in ("train", "val", "test")}


def write_zoo(
    out: Path,
    shards: Sequence[tuple[str, Mapping[str, torch.Tensor]]],
    table: pd.DataFrame,
    manifest: Mapping[str, Any],
    task_data: Any = None,
) -> None:
    """Write a zoo at ``out``: shards, table, manifest, in a temporary directory then renamed.

    Args:
        shards: ``(spec_json, {"{checkpoint_id}/{key}": tensor})`` per shard, in order; shard
            ``i`` becomes ``weights/imported-{i:04d}.safetensors``.
        table: one row per checkpoint; its ``shard`` column must name those files.
        manifest: written with ``kind``, ``complete`` and the counts filled in.
        task_data: a validated :class:`~weightspace.zoo.task_data.TaskData` stored inside the
            zoo under the table's (single) task name, so the task resolves by name.

    ``out`` must be new or an empty directory (checked first); on any failure nothing is left.
    """
    from weightspace.zoo.importer import _write_directory

    check_out(out)
    stored_task: dict[str, Any] = {}
    if task_data is not None:
        from weightspace.zoo.task_data import task_name_for

        task_name_for(table["task"], task_data)  # refuses a bad name before any work

    def fill(root: Path) -> None:
        if task_data is not None:
            from weightspace.zoo.task_data import store_task_data, task_name_for

            stored_task.update(store_task_data(root, task_name_for(table["task"]), task_data))
        for index, (spec_json, tensors) in enumerate(shards):
            write_shard(
                root / f"{WEIGHTS}/imported-{index:04d}.safetensors",
                tensors,
                {"format": "weightspace-zoo", "spec": spec_json, "weights_form": "spec"},
            )
        write_table(root / TABLE, table)
        write_manifest(
            root,
            {
                "kind": "imported",
                "complete": True,
                **manifest,
                **({"task_data": stored_task} if stored_task else {}),
                "num_runs": int(table["run_id"].nunique()),
                "num_checkpoints": len(table),
            },
        )

    _write_directory(out, fill)


def finish_import(
    out: Path,
    shards: Sequence[tuple[str, Mapping[str, torch.Tensor]]],
    table: pd.DataFrame,
    manifest: Mapping[str, Any],
    started: float,
    task_data: Any = None,
) -> Any:
    """Complete ``manifest`` (library versions, no failures or skips, seconds since
    ``started``, a :func:`time.perf_counter` value), write the zoo with :func:`write_zoo` and
    open it."""
    from weightspace.zoo.store import Zoo, library_versions

    full = {
        **manifest,
        "versions": library_versions(),
        "failed": [],
        "skipped": [],
        "import_seconds": round(time.perf_counter() - started, 3),
    }
    write_zoo(out, shards, table, full, task_data=task_data)
    return Zoo.open(out)
