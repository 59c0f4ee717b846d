"""``zoo import``: turn a user's own sweep (checkpoint files + a metrics table) into a zoo.

The table (``.csv`` or ``.parquet``) needs the columns ``file`` (relative to the checkpoint
directory) and ``test_accuracy``; ``run``, ``epoch``, ``task`` and ``activation`` (per-row
activation, for sweeps that mix them) are used when present, and every other column is kept as
metadata. ``rename={"test_accuracy": "acc"}`` (CLI: ``--map test_accuracy=acc``) renames a column
before anything else.

Each checkpoint is read with :func:`weightspace.ingest.load_checkpoint` (``--activation``,
``--spec`` or ``--model`` tell it the architecture) and stored in spec form. Rows whose file is
missing or unreadable are returned, written to the manifest's ``failed`` list and printed by the
CLI — never silently dropped.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from weightspace.errors import WeightspaceError
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

__all__ = ["import_zoo", "parse_mapping", "read_metrics_table"]

REQUIRED_COLUMNS = ("file", "test_accuracy")
#: Columns the zoo table defines itself; user columns of these names are kept as ``user_<name>``.
RESERVED_COLUMNS = (
    "checkpoint_id",
    "run_id",
    "arch",
    "spec",
    "shard",
    "weights_form",
    "num_params",
)
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


def read_metrics_table(path: str | Path, rename: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Read the sweep's table, apply ``rename`` (new → old) and check the required columns."""
    path = Path(path)
    if not path.exists():
        raise ZooError(f"{path}: metrics table not found")
    try:
        if path.suffix == ".csv":
            table = pd.read_csv(path)
        elif path.suffix in (".parquet", ".pq"):
            table = pd.read_parquet(path)
        else:
            raise ZooError(f"{path}: unknown table type {path.suffix!r}; use .csv or .parquet")
    except ZooError:
        raise
    except Exception as exc:
        raise ZooError(f"{path}: unreadable table ({exc})") from None
    rename = dict(rename or {})
    missing_sources = [old for old in rename.values() if old not in table.columns]
    if missing_sources:
        raise ZooError(
            f"{path}: --map names columns {missing_sources} that the table lacks; it has "
            f"{list(table.columns)}"
        )
    table = table.rename(columns={old: new for new, old in rename.items()})
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ZooError(
            f"{path}: missing required columns {missing}; it has {list(table.columns)} "
            "(rename with --map test_accuracy=YOUR_COLUMN)"
        )
    return table


def _checkpoint_id(file: str, used: set[str], row: int) -> str:
    stem = re.sub(r"\.(safetensors|pt|pth|bin|ckpt)$", "", file)
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("_") or f"row{row}"
    candidate = base if base not in used else f"{base}-row{row}"
    used.add(candidate)
    return candidate


def import_zoo(
    checkpoints: str | Path,
    metrics: str | Path,
    out: str | Path,
    *,
    activation: str | None = None,
    spec: str | Path | None = None,
    model: str | None = None,
    rename: Mapping[str, str] | None = None,
    show_progress: bool = True,
    console: Any = None,
) -> tuple[Zoo, list[dict[str, Any]]]:
    """Import a sweep into a new zoo at ``out``; returns the zoo and the failed rows.

    Each failed row is ``{"row", "file", "problem"}`` (``row`` is 0-based in the table).

    Raises:
        ZooError: the table is unreadable or lacks columns, ``out`` already holds a zoo, or no
            row at all could be imported.
    """
    from weightspace.ingest import load_checkpoint

    checkpoints, out = Path(checkpoints), Path(out)
    if not checkpoints.is_dir():
        raise ZooError(f"{checkpoints}: checkpoint directory not found")
    if (out / MANIFEST).exists():
        raise ZooError(f"{out}: already holds a zoo; choose a new --out")
    table = read_metrics_table(metrics, rename)
    has_activation_column = "activation" in table.columns
    failed: list[dict[str, Any]] = []
    accepted: list[tuple[int, str, Any, dict[str, torch.Tensor]]] = []
    used: set[str] = set()

    from weightspace.zoo.generate import _progress

    with _progress(show_progress, console) as progress:
        bar = progress.add_task("import", total=len(table))
        for row, record in enumerate(table.itertuples(index=False)):
            file = str(record.file)
            row_activation = activation
            if has_activation_column and pd.notna(record.activation):
                row_activation = str(record.activation)
            try:
                resolved, state = load_checkpoint(
                    checkpoints / file, activation=row_activation, spec=spec, model=model
                )
            except WeightspaceError as exc:
                failed.append({"row": row, "file": file, "problem": str(exc)})
            except Exception as exc:  # a user's factory or file can fail in any way
                failed.append({"row": row, "file": file, "problem": f"{type(exc).__name__}: {exc}"})
            else:
                accepted.append((row, _checkpoint_id(file, used, row), resolved, state))
            progress.update(bar, advance=1)
    if not accepted:
        shown = "; ".join(f"{f['file']}: {f['problem']}" for f in failed[:5])
        raise ZooError(f"none of the {len(table)} rows of {metrics} could be imported: {shown}")

    by_spec: dict[str, list[tuple[int, str, dict[str, torch.Tensor]]]] = {}
    for row, checkpoint_id, resolved, state in accepted:
        by_spec.setdefault(resolved.to_json(), []).append((row, checkpoint_id, state))
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    shard_index = 0
    for spec_json, items in by_spec.items():
        summary = _spec_summary(spec_json)
        for start in range(0, len(items), SHARD_SIZE):
            shard = f"{WEIGHTS}/imported-{shard_index:04d}.safetensors"
            shard_index += 1
            chunk = items[start : start + SHARD_SIZE]
            tensors = {f"{cid}/{k}": v for _, cid, state in chunk for k, v in state.items()}
            write_shard(
                out / shard,
                tensors,
                {"format": "weightspace-zoo", "spec": spec_json, "weights_form": "spec"},
            )
            for row, checkpoint_id, state in chunk:
                rows.append(
                    _imported_row(
                        table.iloc[row], row, checkpoint_id, spec_json, summary, shard, state
                    )
                )
    result = pd.DataFrame(rows).sort_values("source_row", kind="stable").reset_index(drop=True)
    result["epoch"] = result["epoch"].astype("Int64")
    write_table(out / TABLE, result)
    write_manifest(
        out,
        {
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
            },
            "versions": library_versions(),
            "failed": failed,
            "skipped": [],
            "num_runs": int(result["run_id"].nunique()),
            "num_checkpoints": len(result),
        },
    )
    return Zoo.open(out), failed


def _spec_summary(spec_json: str) -> str:
    from weightspace.spec import NetworkSpec

    return NetworkSpec.from_json(spec_json).summary()


def _imported_row(
    source: pd.Series,
    row: int,
    checkpoint_id: str,
    spec_json: str,
    summary: str,
    shard: str,
    state: Mapping[str, torch.Tensor],
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "checkpoint_id": checkpoint_id,
        "run_id": str(source["run"])
        if "run" in source and pd.notna(source["run"])
        else checkpoint_id,
        "epoch": int(source["epoch"]) if "epoch" in source and pd.notna(source["epoch"]) else None,
        "task": str(source["task"]) if "task" in source and pd.notna(source["task"]) else "unknown",
        "arch": summary,
        "spec": spec_json,
        "shard": shard,
        "weights_form": "spec",
        "num_params": int(sum(v.numel() for v in state.values())),
        "source_row": row,
    }
    for column, value in source.items():
        if column in ("run", "epoch", "task"):
            continue
        name = f"user_{column}" if column in RESERVED_COLUMNS else str(column)
        record[name] = value
    record["test_accuracy"] = float(source["test_accuracy"])
    return record
