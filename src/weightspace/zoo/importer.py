"""``zoo import``: turn a user's own sweep (checkpoint files + a metrics table) into a zoo.

The table (``.csv`` or ``.parquet``) needs the columns ``file`` (relative to the checkpoint
directory) and ``test_accuracy``; ``run``, ``epoch``, ``task`` and ``activation`` (per-row
activation, for sweeps that mix them) are used when present, and every other column is kept as
metadata. ``rename={"test_accuracy": "acc"}`` (CLI: ``--map test_accuracy=acc``) renames a column
before anything else.

Nothing is written until every row has passed: the table's cells
(:mod:`weightspace.zoo.metrics_table`: accuracies in [0, 1], whole epochs, files inside the
checkpoint directory, no file twice) and then its checkpoint, read with
:func:`weightspace.ingest.load_checkpoint` (``--activation``, ``--spec`` or ``--model`` tell it the
architecture). Any bad row is a :class:`~weightspace.zoo.metrics_table.MetricsTableError` listing
every one with its line, unless ``skip_bad_rows``: then the rest is imported and the bad rows
are returned and written to the manifest's ``failed`` list. The zoo is assembled in a temporary
directory beside ``out`` and renamed into place, so ``out`` either is the whole zoo or is left as
it was.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from weightspace.atomic import TEMP_MARK
from weightspace.errors import WeightspaceError
from weightspace.zoo.metrics_table import (
    REQUIRED_COLUMNS,
    BadRow,
    MetricsTableError,
    ValidRow,
    read_metrics_table,
    validate_rows,
)
from weightspace.zoo.store import (
    MANIFEST,
    TABLE,
    WEIGHTS,
    Zoo,
    ZooError,
    library_versions,
    write_manifest,
    write_shard,
    write_table,
)

__all__ = [
    "REQUIRED_COLUMNS",
    "MetricsTableError",
    "import_zoo",
    "parse_mapping",
    "read_metrics_table",
]

#: Columns the zoo table defines itself; user columns of these names are kept as ``user_<name>``.
RESERVED_COLUMNS = (
    "checkpoint_id",
    "run_id",
    "arch",
    "spec",
    "shard",
    "weights_form",
    "num_params",
    "source_row",
    "source_line",
)
#: Columns of the table that become the zoo's own columns instead of metadata.
CONSUMED_COLUMNS = ("run", "epoch", "task")
SHARD_SIZE = 256


def parse_mapping(items: list[str] | None) -> dict[str, str]:
    """``["test_accuracy=acc", …]`` → ``{"test_accuracy": "acc"}`` (new name → column in file)."""
    mapping: dict[str, str] = {}
    for item in items or []:
        new, sep, old = item.partition("=")
        if not sep or not new.strip() or not old.strip():
            raise WeightspaceError(f"--map {item!r}: expected NEW=OLD, e.g. test_accuracy=acc")
        mapping[new.strip()] = old.strip()
    return mapping


def _checkpoint_id(file: str, checkpoints: Path, used: set[str], row: int) -> str:
    """A unique id from the file's path relative to ``checkpoints`` (``run1/e3.pt`` →
    ``run1_e3``)."""
    root = checkpoints.absolute()
    relative = os.path.relpath(os.path.normpath(os.path.join(root, file)), root)
    stem = re.sub(r"\.(safetensors|pt|pth|bin|ckpt)$", "", relative)
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("_") or f"row{row}"
    candidate = base if base not in used else f"{base}-row{row}"
    used.add(candidate)
    return candidate


def _check_out(out: Path) -> None:
    """``out`` must be new, or an empty directory (it is replaced by the finished zoo)."""
    if (out / MANIFEST).exists():
        raise ZooError(f"{out}: already holds a zoo; choose a new --out")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ZooError(f"{out}: exists and is not a directory; choose a new --out")
    if out.is_dir() and any(out.iterdir()):
        raise ZooError(f"{out}: exists and is not empty; choose a new --out")


def _write_directory(out: Path, fill: Callable[[Path], None]) -> None:
    """Call ``fill(tmp)`` on a new directory beside ``out``, then rename it to ``out``.

    On any failure the temporary directory, and any parent directory this call created, are
    removed: ``out`` and its surroundings are left as they were.
    """
    out = out.absolute()
    created: list[Path] = []
    for parent in reversed(out.parents):
        if not parent.exists():
            parent.mkdir()
            created.append(parent)
    tmp = None
    try:
        while tmp is None:
            candidate = out.parent / f".{out.name}{TEMP_MARK}{secrets.token_hex(4)}"
            with contextlib.suppress(FileExistsError):
                candidate.mkdir()
                tmp = candidate
        fill(tmp)
        try:
            os.replace(tmp, out)  # replaces an empty directory, refuses a filled one
        except OSError as exc:
            raise ZooError(f"{out}: could not move the new zoo into place ({exc})") from None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for parent in reversed(created):
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise


def import_zoo(
    checkpoints: str | Path,
    metrics: str | Path,
    out: str | Path,
    *,
    activation: str | None = None,
    spec: str | Path | None = None,
    model: str | None = None,
    rename: Mapping[str, str] | None = None,
    skip_bad_rows: bool = False,
    show_progress: bool = True,
    console: Any = None,
    task: str | None = None,
    task_data: Any = None,
) -> tuple[Zoo, list[dict[str, Any]]]:
    """Import a sweep into a new zoo at ``out``; returns the zoo and the skipped rows.

    Each skipped row is ``{"row", "line", "file", "problem"}`` (``row`` 0-based among the data
    rows, ``line`` the CSV line with the header as line 1, ``None`` for parquet); it is empty
    unless ``skip_bad_rows``. ``task`` names the task of rows the table gives none (default
    ``"unknown"``); ``task_data`` (a validated :class:`~weightspace.zoo.task_data.TaskData`) is
    stored in the zoo under its one task's name, so that task resolves like a built-in one.

    Raises:
        MetricsTableError: some rows are bad (every one listed) and ``skip_bad_rows`` is off.
        ZooError: the table is unreadable or lacks columns, ``out`` already holds a zoo or is not
            empty, or no row at all could be imported. In every case nothing was written.
    """
    from weightspace.ingest import load_checkpoint

    checkpoints, out = Path(checkpoints), Path(out)
    if not checkpoints.is_dir():
        raise ZooError(f"{checkpoints}: checkpoint directory not found")
    _check_out(out)
    table = read_metrics_table(metrics, rename)
    valid, bad = validate_rows(table, checkpoints)
    default_task = task or "unknown"
    if task_data is not None:
        from weightspace.zoo.task_data import task_name_for

        task_name_for(
            [row.task if row.task is not None else default_task for row in valid], task_data
        )
    accepted: list[tuple[ValidRow, str, Any, dict[str, torch.Tensor]]] = []
    used: set[str] = set()

    from weightspace.zoo.generate import _progress

    with _progress(show_progress and bool(valid), console) as progress:
        bar = progress.add_task("import", total=len(valid))
        for row in valid:
            try:
                resolved, state = load_checkpoint(
                    row.path, activation=row.activation or activation, spec=spec, model=model
                )
            except WeightspaceError as exc:
                bad.append(BadRow(row.row, row.line, row.file, str(exc)))
            except Exception as exc:  # a user's factory or file can fail in any way
                bad.append(BadRow(row.row, row.line, row.file, f"{type(exc).__name__}: {exc}"))
            else:
                accepted.append(
                    (row, _checkpoint_id(row.file, checkpoints, used, row.row), resolved, state)
                )
            progress.update(bar, advance=1)
    bad.sort(key=lambda b: b.row)
    if bad and not skip_bad_rows:
        raise MetricsTableError(table.path, bad)
    if not accepted:
        shown = "; ".join(f"{b.where}{b.named}: {b.problem}" for b in bad[:5])
        raise ZooError(f"none of the {len(table)} rows of {metrics} could be imported: {shown}")
    skipped = [b.to_dict() for b in bad]
    manifest = {
        "kind": "imported",
        "complete": True,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": {
            "checkpoints": str(checkpoints.resolve()),
            "metrics": str(Path(metrics).resolve()),
            "activation": activation,
            "spec": None if spec is None else str(spec),
            "model": model,
            "map": dict(rename or {}),
            "skip_bad_rows": skip_bad_rows,
            "task": task,
        },
        "versions": library_versions(),
        "failed": skipped,
        "skipped": [],
    }
    _write_directory(
        out, lambda tmp: _write_zoo(tmp, table, accepted, manifest, default_task, task_data)
    )
    return Zoo.open(out), skipped


def _write_zoo(
    root: Path,
    table: Any,
    accepted: list[tuple[ValidRow, str, Any, dict[str, torch.Tensor]]],
    manifest: dict[str, Any],
    default_task: str = "unknown",
    task_data: Any = None,
) -> None:
    """Shards (one architecture each), the checkpoint table and the manifest (and the task's
    data, when given), into ``root``."""
    by_spec: dict[str, list[tuple[ValidRow, str, dict[str, torch.Tensor]]]] = {}
    for row, checkpoint_id, resolved, state in accepted:
        by_spec.setdefault(resolved.to_json(), []).append((row, checkpoint_id, state))
    records: list[dict[str, Any]] = []
    shard_index = 0
    for spec_json, items in by_spec.items():
        summary = _spec_summary(spec_json)
        for start in range(0, len(items), SHARD_SIZE):
            shard = f"{WEIGHTS}/imported-{shard_index:04d}.safetensors"
            shard_index += 1
            chunk = items[start : start + SHARD_SIZE]
            tensors = {f"{cid}/{k}": v for _, cid, state in chunk for k, v in state.items()}
            write_shard(
                root / shard,
                tensors,
                {"format": "weightspace-zoo", "spec": spec_json, "weights_form": "spec"},
            )
            for row, checkpoint_id, state in chunk:
                records.append(
                    _imported_row(
                        row, checkpoint_id, spec_json, summary, shard, state, default_task
                    )
                )
    records.sort(key=lambda r: r["source_row"])
    core = pd.DataFrame(records)
    core["epoch"] = core["epoch"].astype("Int64")
    core["source_line"] = core["source_line"].astype("Int64")
    rows = sorted((row for row, *_ in accepted), key=lambda r: r.row)
    metadata = table.typed([row.row for row in rows])
    for column in metadata.columns:
        if column.lower().endswith("accuracy"):  # the validated values, NaN where empty
            metadata[column] = [row.accuracies.get(column, math.nan) for row in rows]
    result = pd.concat([core, _metadata_columns(metadata, core)], axis=1)
    write_table(root / TABLE, result)
    if task_data is not None:
        from weightspace.zoo.task_data import store_task_data, task_name_for

        manifest = {
            **manifest,
            "task_data": store_task_data(root, task_name_for(result["task"]), task_data),
        }
    manifest = {
        **manifest,
        "num_runs": int(result["run_id"].nunique()),
        "num_checkpoints": len(result),
    }
    write_manifest(root, manifest)


def _metadata_columns(metadata: pd.DataFrame, core: pd.DataFrame) -> pd.DataFrame:
    """The user's other columns (reserved names become ``user_<name>``)."""
    kept: dict[str, pd.Series] = {}
    taken = set(core.columns)
    for column in metadata.columns:
        if column in CONSUMED_COLUMNS or column == "test_accuracy":
            continue
        name = str(column)
        while name in taken or name in RESERVED_COLUMNS:
            name = f"user_{name}"
        taken.add(name)
        kept[name] = metadata[column]
    return pd.DataFrame(kept, index=core.index)


def _spec_summary(spec_json: str) -> str:
    from weightspace.spec import NetworkSpec

    return NetworkSpec.from_json(spec_json).summary()


def _imported_row(
    row: ValidRow,
    checkpoint_id: str,
    spec_json: str,
    summary: str,
    shard: str,
    state: Mapping[str, torch.Tensor],
    default_task: str = "unknown",
) -> dict[str, Any]:
    return {
        "checkpoint_id": checkpoint_id,
        "run_id": row.run if row.run is not None else checkpoint_id,
        "epoch": row.epoch,
        "task": row.task if row.task is not None else default_task,
        "arch": summary,
        "spec": spec_json,
        "shard": shard,
        "weights_form": "spec",
        "num_params": int(sum(v.numel() for v in state.values())),
        "test_accuracy": row.test_accuracy,
        "source_row": row.row,
        "source_line": row.line,
    }
