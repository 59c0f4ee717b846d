"""The files of a zoo directory (the layout is in :mod:`weightspace.zoo.store`): their names, the
manifest that says what the zoo is, and the atomic writers of its shards and tables.
"""

from __future__ import annotations

import contextlib
import json
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from weightspace.atomic import TEMP_MARK, atomic_write
from weightspace.errors import WeightspaceError

__all__ = [
    "CORE_COLUMNS",
    "FORMAT_VERSION",
    "MANIFEST",
    "PARTS",
    "TABLE",
    "WEIGHTS",
    "ZooError",
    "directory_size",
    "library_versions",
    "read_manifest",
    "remove_temporaries",
    "write_manifest",
    "write_shard",
    "write_table",
]

FORMAT_VERSION = 1
FORMAT_NAME = "weightspace-zoo"
MANIFEST = "manifest.json"
TABLE = "checkpoints.parquet"
WEIGHTS = "weights"
PARTS = "parts"

#: Columns every zoo table has (generated zoos add the sweep's hyper-parameters and more).
CORE_COLUMNS: tuple[str, ...] = (
    "checkpoint_id",
    "run_id",
    "epoch",
    "task",
    "arch",
    "spec",
    "shard",
    "weights_form",
    "test_accuracy",
)


class ZooError(WeightspaceError):
    """A zoo directory is missing, malformed, from a newer format, or inconsistent."""


def remove_temporaries(root: str | Path) -> int:
    """Delete leftover temporary files (of killed writers) under ``root``; returns how many."""
    count = 0
    for tmp in Path(root).rglob(f"*{TEMP_MARK}*"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            count += 1
    return count


def library_versions() -> dict[str, str]:
    """Versions of Python, weightspace and the libraries that decide a zoo's numbers."""
    import importlib.metadata as metadata

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in (
        "weightspace",
        "numpy",
        "scikit-learn",
        "pandas",
        "pyarrow",
        "safetensors",
        "mnist1d",
    ):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_manifest(root: str | Path, manifest: Mapping[str, Any]) -> None:
    """Atomically write ``manifest.json`` (adds ``format`` and ``format_version``)."""
    data = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **manifest}
    text = json.dumps(data, indent=2, sort_keys=False, default=str)
    atomic_write(Path(root) / MANIFEST, lambda tmp: tmp.write_text(text + "\n"))


def read_manifest(root: str | Path) -> dict[str, Any]:
    """Read and check ``manifest.json``; refuses zoos written by a newer format version."""
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise ZooError(f"{root}: no such zoo directory")
    if not path.exists():
        raise ZooError(f"{path}: missing; {root} is not a weightspace zoo (run `zoo generate`)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ZooError(f"{path}: not valid JSON ({exc})") from None
    if manifest.get("format") != FORMAT_NAME:
        raise ZooError(
            f"{path}: not a weightspace zoo manifest (format={manifest.get('format')!r})"
        )
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ZooError(
            f"{path}: zoo format version {version} is newer than this weightspace supports "
            f"({FORMAT_VERSION}); upgrade weightspace to read it"
        )
    return manifest


def _own_contiguous(tensor: Tensor) -> Tensor:
    """``tensor`` contiguous and alone in its storage (safetensors refuses shared storage; the
    trainer hands out rows of one tensor per key)."""
    tensor = tensor.contiguous()
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        tensor = tensor.clone()
    return tensor


def write_shard(
    path: str | Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, str]
) -> None:
    """Atomically save one safetensors shard (``"{checkpoint_id}/{key}"`` → tensor)."""
    from safetensors.torch import save_file

    contiguous = {k: _own_contiguous(v.detach().cpu()) for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(contiguous, str(tmp), metadata=dict(metadata)))


def write_table(path: str | Path, table: pd.DataFrame) -> None:
    """Atomically write a parquet table."""
    atomic_write(path, lambda tmp: table.to_parquet(tmp, index=False))


def directory_size(root: str | Path) -> int:
    """Bytes of every regular file under ``root``."""
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())
