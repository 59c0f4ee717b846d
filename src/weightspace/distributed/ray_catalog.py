"""The index rows of an ``index build --ray`` job: each shard's catalog file
(``catalog-NNNNNN-<digest>.json``: spec JSON, spec summary and zoo metrics of its embedded
sources, as the single-process ``index build`` records them) and the driver's reading of shards
and catalog files, in input order, into records and vectors for one commit
(:mod:`weightspace.distributed.ray_index`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from weightspace.atomic import atomic_write_bytes
from weightspace.distributed.ray_shards import _open_zoo, catalog_path
from weightspace.errors import WeightspaceError

__all__ = [
    "IndexJobError",
    "catalog_entries",
    "catalog_path",
    "collect_shards",
    "unit_vectors",
    "write_catalog",
]


class IndexJobError(WeightspaceError):
    """Inputs could not be embedded, or the work directory belongs to another job."""


# ------------------------------------------------------------------------------ catalog rows
def _zoo_metrics(row: Mapping[str, Any]) -> dict[str, Any]:
    """A zoo row's metadata as the single-process path stores it (``sources.iter_zoo``)."""
    from weightspace.index.catalog import json_scalar

    return {
        str(key): scalar
        for key, value in row.items()
        if not str(key).startswith("spec") and (scalar := json_scalar(value)) is not None
    }


def catalog_entries(
    sources: Sequence[str], load_kwargs: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """``source → {spec_json, spec_summary, metrics}`` as the single-process ``index build``
    records them: a zoo row's spec and metrics from the zoo's table (no weights read), a
    file's spec from :func:`weightspace.sources.load_model_file` with the job's options."""
    from weightspace.sources import load_model_file

    entries: dict[str, dict[str, Any]] = {}
    by_zoo: dict[str, list[str]] = {}
    for source in sources:
        directory, sep, checkpoint_id = source.rpartition("#")
        if sep and Path(directory).is_dir():
            by_zoo.setdefault(directory, []).append(checkpoint_id)
            continue
        model = load_model_file(Path(source), None, **load_kwargs)
        entries[source] = {
            "spec_json": model.spec_json,
            "spec_summary": model.spec_summary,
            "metrics": {},
        }
    for directory, ids in by_zoo.items():
        zoo = _open_zoo(directory)
        table = zoo.table[zoo.table["checkpoint_id"].astype(str).isin(set(ids))]
        for row in table.to_dict(orient="records"):
            checkpoint_id = str(row["checkpoint_id"])
            spec = zoo.spec(checkpoint_id)
            entries[f"{directory}#{checkpoint_id}"] = {
                "spec_json": spec.to_json(),
                "spec_summary": spec.summary(),
                "metrics": _zoo_metrics(row),
            }
    return entries


def write_catalog(shard: Path, load_kwargs: Mapping[str, Any]) -> Path:
    """Ray task: the catalog rows of a written shard's embedded sources, written atomically."""
    import pyarrow.parquet as pq

    table = pq.read_table(shard, columns=["source", "error"]).to_pydict()
    sources = [s for s, e in zip(table["source"], table["error"], strict=True) if e is None]
    entries = catalog_entries(sources, load_kwargs)
    return atomic_write_bytes(catalog_path(shard), json.dumps(entries, sort_keys=True).encode())


# ------------------------------------------------------------------------------ the driver
def collect_shards(
    shards: Sequence[Path],
) -> tuple[list[dict[str, Any]], np.ndarray, list[tuple[str, str]], list[int]]:
    """Read shards and their catalog files, in the order given, into index records, their
    embeddings ``(n, dim)`` as float32 (as the single-process path casts them; not yet
    normalised), the failures, and each shard's row count.

    Raises:
        IndexJobError: a shard's catalog file is missing or lacks one of its sources.
    """
    import pyarrow.parquet as pq

    records: list[dict[str, Any]] = []
    chunks: list[np.ndarray] = []
    failures: list[tuple[str, str]] = []
    counts: list[int] = []
    for shard in shards:
        table = pq.read_table(shard)
        columns = table.drop_columns(["z"]).to_pydict()  # z: straight from Arrow, below
        try:
            entries = json.loads(catalog_path(shard).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise IndexJobError(f"{catalog_path(shard)}: unreadable ({exc}); rerun") from None
        flags = columns.get("graph_only") or [False] * table.num_rows  # older shards: none
        rows = zip(columns["source"], columns["content_hash"], columns["error"], flags, strict=True)
        embedded = []
        for position, (source, digest, error, graph_only) in enumerate(rows):
            if error is not None:
                failures.append((source, error))
                continue
            if source not in entries:
                raise IndexJobError(f"{catalog_path(shard)}: lacks {source}; delete it and rerun")
            records.append(
                {
                    "path": source,
                    "content_hash": digest,
                    **entries[source],
                    "graph_only": bool(graph_only),
                }
            )
            embedded.append(position)
        counts.append(len(embedded))
        if embedded:
            z = table.column("z").take(embedded).combine_chunks().flatten().to_numpy()
            chunks.append(z.reshape(len(embedded), -1).astype(np.float32))
    dim = int(chunks[0].shape[1]) if chunks else 0
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
    return records, vectors, failures, counts


def unit_vectors(vectors: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    r"""Rows scaled to unit length, :math:`v / \lVert v \rVert_2`, one shard (``counts`` rows)
    at a time, as the single-process path normalises each batch it embeds."""
    from weightspace.index.embedders import normalise

    parts = np.split(vectors, np.cumsum(counts)[:-1]) if len(counts) else [vectors]
    return np.concatenate([normalise(part) for part in parts])
