"""What every release importer shares: its error type and the atomic zoo writer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from weightspace.zoo.store import TABLE, WEIGHTS, ZooError, write_manifest, write_shard, write_table

__all__ = ["ReleaseError", "check_out", "write_zoo"]


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


def write_zoo(
    out: Path,
    shards: Sequence[tuple[str, Mapping[str, torch.Tensor]]],
    table: pd.DataFrame,
    manifest: Mapping[str, Any],
) -> None:
    """Write a zoo at ``out``: shards, table, manifest, in a temporary directory then renamed.

    Args:
        shards: ``(spec_json, {"{checkpoint_id}/{key}": tensor})`` per shard, in order; shard
            ``i`` becomes ``weights/imported-{i:04d}.safetensors``.
        table: one row per checkpoint; its ``shard`` column must name those files.
        manifest: written with ``kind``, ``complete`` and the counts filled in.

    ``out`` must be new or an empty directory (checked first); on any failure nothing is left.
    """
    from weightspace.zoo.importer import _write_directory

    check_out(out)

    def fill(root: Path) -> None:
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
                "num_runs": int(table["run_id"].nunique()),
                "num_checkpoints": len(table),
            },
        )

    _write_directory(out, fill)
