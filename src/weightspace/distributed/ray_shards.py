"""The files of a Ray embedding job: its plan (inputs cut into shards, named after what fixes
their bits) and its shard files (``part-NNNNNN-<digest>.parquet``, with the index catalog beside
them for ``index build --ray``). The pipeline that writes them is
:mod:`weightspace.distributed.ray_embed`."""

from __future__ import annotations

import functools
import hashlib
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weightspace.atomic import atomic_write
from weightspace.errors import CheckpointError, WeightspaceError

__all__ = [
    "EmbedJobError",
    "Shard",
    "catalog_path",
    "expand_inputs",
    "largest_first",
    "plan_shards",
    "read_embeddings",
    "write_shard",
]


class EmbedJobError(WeightspaceError):
    """The output directory belongs to another job, or a shard could not be embedded."""


@dataclass(frozen=True)
class Shard:
    """A run of consecutive inputs embedded together and written as one file."""

    index: int
    sources: tuple[str, ...]
    name: str


# ------------------------------------------------------------------------------ planning
def expand_inputs(inputs: Iterable[str | Path]) -> list[str]:
    """Checkpoint files, files under plain directories (sorted) and zoo rows (``DIR#ID``, in the
    zoo's table order), as absolute sources in input order.

    Raises:
        CheckpointError: an input does not exist, or a plain directory holds no checkpoint file.
    """
    from weightspace.checkpoint_files import CHECKPOINT_SUFFIXES

    sources: list[str] = []
    resolve = _Resolver()
    for given in inputs:
        text, is_dir = resolve(os.fspath(given))
        path = Path(text)
        if is_dir and (path / "manifest.json").is_file():
            sources += [f"{path}#{checkpoint_id}" for checkpoint_id in _open_zoo(text).ids]
        elif is_dir:
            files = sorted(
                Path(root) / name
                for root, _dirs, names in os.walk(path)  # follows no directory link: no loop
                for name in names
                if Path(name).suffix in CHECKPOINT_SUFFIXES and (Path(root) / name).is_file()
            )
            if not files:
                raise CheckpointError(
                    path, f"holds no model zoo and no checkpoint files ({CHECKPOINT_SUFFIXES})"
                )
            sources += [str(p) for p in files]
        else:
            sources.append(text)
    return sources


class _Resolver:
    """``Path.resolve`` for many inputs: each directory is resolved once, and a path that is
    no symlink itself is its resolved directory joined with its name (one ``lstat`` per file,
    not one per path component)."""

    def __init__(self) -> None:
        self.directories: dict[str, str] = {}

    def __call__(self, text: str) -> tuple[str, bool]:
        """``text`` as an absolute path with symlinks resolved, and whether it is a directory.

        Raises:
            CheckpointError: ``text`` names nothing.
        """
        try:
            mode = os.lstat(text).st_mode
        except OSError:
            mode = None
        head, tail = os.path.split(text)
        if mode is None or stat.S_ISLNK(mode) or tail in ("", ".", ".."):
            if not os.path.exists(text):
                raise CheckpointError(Path(text), "no such file or directory")
            resolved = os.path.realpath(text)
            return resolved, os.path.isdir(resolved)
        parent = self.directories.get(head)
        if parent is None:
            parent = self.directories[head] = os.path.realpath(head or os.curdir)
        return os.path.join(parent, tail), stat.S_ISDIR(mode)


def plan_shards(
    sources: Sequence[str], shard_size: int, *, fingerprint: str, batch_size: int
) -> list[Shard]:
    """Cut ``sources`` into shards of ``shard_size``; each name hashes its sources and the
    encoder's ``fingerprint`` and ``batch_size`` (what fixes its vectors' bits)."""
    if shard_size < 1:
        raise EmbedJobError(f"shard size must be at least 1, got {shard_size}")
    shards = []
    for index, start in enumerate(range(0, len(sources), shard_size)):
        chunk = tuple(sources[start : start + shard_size])
        digest = hashlib.sha256(f"{fingerprint}\0{batch_size}\0".encode())
        digest.update("\0".join(chunk).encode())
        shards.append(Shard(index, chunk, f"part-{index:06d}-{digest.hexdigest()[:16]}.parquet"))
    return shards


def shard_cost(shard: Shard) -> int:
    """An estimate of a shard's work: the bytes of its checkpoint files (loading,
    canonicalisation and the graph branch all scale with a model's weights), one byte for each
    zoo row (rows of one zoo cost about the same) or missing file."""
    cost = 0
    for source in shard.sources:
        try:
            cost += max(os.stat(source).st_size, 1)
        except OSError:  # a zoo row (DIR#ID), or a file that vanished: its shard reports it
            cost += 1
    return cost


def largest_first(shards: Sequence[Shard]) -> list[Shard]:
    """The shards in the order to hand them out: by :func:`shard_cost`, largest first, input
    order among equals.

    With one shard in flight per worker, this is the longest-processing-time rule: workers
    pick up the next shard as they free up, so the last shards, which decide when the job
    ends, are the smallest, and no worker waits at the end for more than the smallest shards'
    time (Graham 1969: makespan within 4/3 of the optimum). Shards of a model zoo's 20,000
    files spanned 0.3 to 24 MB here, and in input order one of the largest could come last.
    """
    costs = {shard.index: shard_cost(shard) for shard in shards}
    return sorted(shards, key=lambda shard: (-costs[shard.index], shard.index))


# ------------------------------------------------------------------------------ zoos
def _open_zoo(directory: str) -> Any:
    """The zoo, opened once per process (Ray reuses worker processes) until its manifest
    changes."""
    manifest = Path(directory) / "manifest.json"
    return _open_zoo_cached(directory, manifest.stat().st_mtime_ns if manifest.is_file() else 0)


@functools.lru_cache(maxsize=8)
def _open_zoo_cached(directory: str, stamp: int) -> Any:
    from weightspace.zoo import Zoo

    return Zoo.open(directory)


# ------------------------------------------------------------------------------ shard files
def catalog_path(shard: Path) -> Path:
    """The catalog file beside the shard ``part-NNNNNN-<digest>.parquet``."""
    return shard.with_name(shard.name.replace("part-", "catalog-", 1)).with_suffix(".json")


def write_shard(
    path: Path,
    inputs: Sequence[str],
    embedded: Sequence[Sequence[str]],
    vectors: Any,
    failures: Mapping[str, str],
    fingerprint: str,
    graph_only: Sequence[bool] | None = None,
) -> Path:
    """One row per input, in input order: ``source, content_hash, z, error, graph_only``
    (atomic write); ``graph_only`` (one flag per embedded source, ``Encoder.last_fallback``)
    marks the models embedded by the graph branch alone, null for inputs not embedded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    position = {source: i for i, (source, _) in enumerate(embedded)}
    hashes = dict(embedded)
    dim = 0 if vectors is None else int(vectors.shape[1])
    value_type = (
        pa.float64() if vectors is not None and vectors.dtype.itemsize == 8 else pa.float32()
    )
    z = [
        None if source not in position else vectors[position[source]].tolist() for source in inputs
    ]
    flags = [
        None if source not in position else bool(graph_only and graph_only[position[source]])
        for source in inputs
    ]
    table = pa.table(
        {
            "source": pa.array(list(inputs), pa.string()),
            "content_hash": pa.array([hashes.get(s) for s in inputs], pa.string()),
            "z": pa.array(z, pa.list_(value_type, dim) if dim else pa.list_(value_type)),
            "error": pa.array([failures.get(s) for s in inputs], pa.string()),
            "graph_only": pa.array(flags, pa.bool_()),
        }
    ).replace_schema_metadata({"weightspace.encoder_fingerprint": fingerprint})
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def _shard_failures(path: Path) -> list[tuple[str, str]]:
    """``(source, reason)`` of the inputs a written shard could not embed."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["source", "error"]).to_pydict()
    return [(s, e) for s, e in zip(table["source"], table["error"], strict=True) if e is not None]


def read_embeddings(out_dir: str | Path, *, with_failures: bool = False) -> Any:
    """Every shard of ``out_dir`` as one pandas DataFrame (``source, content_hash, z, error``),
    in input order; without ``with_failures``, only the embedded rows."""
    import pandas as pd
    import pyarrow.parquet as pq

    files = sorted(Path(out_dir).glob("part-*.parquet"))
    if not files:
        raise EmbedJobError(f"{out_dir}: holds no embedding shards (part-*.parquet)")
    table = pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)
    return table if with_failures else table[table["error"].isna()].reset_index(drop=True)
