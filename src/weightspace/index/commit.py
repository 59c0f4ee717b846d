"""Committing a generation of an index: the write lock, the new FAISS file (temporary file,
fsync, rename), then the SQLite rows, the batch's checksums and the new generation number in
one transaction; only then is the previous FAISS file removed (:func:`commit`). A writer killed
at any point leaves the previously committed index loadable."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from weightspace.index.catalog import (
    GRAPH_ONLY_SCHEMA,
    INDEX_FORMAT_VERSION,
    META_FILE,
    RECORD_COLUMNS,
    SCHEMA,
    catalog_errors,
    now,
)
from weightspace.index.errors import IndexBusyError
from weightspace.index.integrity import file_digest, rows_digest, vectors_digest
from weightspace.index.vectors import VectorStore, faiss_module

__all__ = ["LOCK_FILE", "ProgressCallback", "commit", "write_lock"]

#: ``on_progress(stage, done, total)`` with stage ``"embed"`` or ``"write"``; total 0 if unknown.
ProgressCallback = Callable[[str, int, int], None]

LOCK_FILE = "write.lock"
_VECTORS_PATTERN = re.compile(r"^vectors-(\d+)\.faiss$")


@contextlib.contextmanager
def write_lock(path: Path, timeout: float) -> Iterator[None]:
    from filelock import FileLock, Timeout

    lock = FileLock(str(path / LOCK_FILE))
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise IndexBusyError(
            f"{path}: another process is writing this index (lock {path / LOCK_FILE} held for "
            f"{timeout:.0f} s); wait for it to finish"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _generations_on_disk(path: Path) -> list[int]:
    return [int(m.group(1)) for p in path.iterdir() if (m := _VECTORS_PATTERN.match(p.name))]


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (where the filesystem allows it)."""
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def commit(
    path: Path,
    manifest: Mapping[str, Any],
    store: VectorStore,
    rows: Sequence[Mapping[str, Any]],
    vectors: np.ndarray,
    *,
    first_id: int,
    reset: bool,
    on_progress: ProgressCallback | None,
    chunk: int = 10_000,
) -> None:
    """Write the new generation's FAISS file, then its rows, its batch checksums and the
    manifest (with the file's checksum) in one transaction.

    ``vectors`` ``(len(rows), dim)`` are the rows' unit vectors, stored in the catalog too (so
    ``index repair`` can rebuild the FAISS file). The caller holds the write lock. Killed before
    the COMMIT, the previous generation stays the committed one and its FAISS file is untouched.
    """
    generation = max([*_generations_on_disk(path), 0]) + 1
    vectors_file = path / f"vectors-{generation}.faiss"
    temporary = path / f".vectors-{generation}.faiss.tmp-{os.getpid()}"
    store.save(temporary)
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    checksum = file_digest(temporary)
    os.replace(temporary, vectors_file)
    _fsync_directory(path)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(vectors) != len(rows):
        raise ValueError(f"got {len(vectors)} vectors for {len(rows)} rows")

    # a damaged catalog (a mangled schema, a dropped table) fails here as one line
    with catalog_errors(path / META_FILE):
        connection = sqlite3.connect(path / META_FILE, timeout=30, isolation_level=None)
        try:
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("BEGIN IMMEDIATE")
            try:
                if reset:
                    for table in ("manifest", "models", "batches", "graph_only"):
                        connection.execute(f"DROP TABLE IF EXISTS {table}")
                    for statement in SCHEMA.strip().split(";"):
                        if statement.strip():
                            connection.execute(statement)
                stamp = now()
                catalog = [
                    (
                        first_id + offset,
                        row["path"],
                        row["content_hash"],
                        row["spec_summary"],
                        row["spec_json"],
                        json.dumps(row["metrics"], sort_keys=True),
                        str(row.get("added_at") or stamp),
                    )
                    for offset, row in enumerate(rows)
                ]
                for start in range(0, len(rows), chunk):
                    connection.executemany(
                        f"INSERT INTO models ({RECORD_COLUMNS}, embedding) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [
                            (*values, vectors[start + offset].tobytes())
                            for offset, values in enumerate(catalog[start : start + chunk])
                        ],
                    )
                    if on_progress is not None:
                        on_progress("write", min(start + chunk, len(rows)), len(rows))
                flagged = [(first_id + i,) for i, row in enumerate(rows) if row.get("graph_only")]
                if flagged:  # the table is created by the first batch that needs it
                    connection.execute(GRAPH_ONLY_SCHEMA)
                    connection.executemany("INSERT INTO graph_only (id) VALUES (?)", flagged)
                if rows:
                    connection.execute(
                        "INSERT INTO batches (generation, first_id, count, vectors_digest, "
                        "rows_digest, committed_at) VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            generation,
                            first_id,
                            len(rows),
                            vectors_digest(vectors),
                            rows_digest(catalog),
                            stamp,
                        ),
                    )
                new_manifest = {
                    **manifest,
                    "format_version": INDEX_FORMAT_VERSION,
                    "generation": generation,
                    "count": len(store),
                    "store": store.state(),
                    "vectors_checksum": checksum,
                    "updated_at": stamp,
                    "faiss_version": faiss_module().__version__,
                }
                connection.executemany(
                    "INSERT OR REPLACE INTO manifest (key, value) VALUES (?, ?)",
                    [(key, json.dumps(value)) for key, value in new_manifest.items()],
                )
                connection.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
                with contextlib.suppress(OSError):
                    vectors_file.unlink()
                raise
        finally:
            connection.close()
    for old in _generations_on_disk(path):
        if old != generation:
            with contextlib.suppress(OSError):
                (path / f"vectors-{old}.faiss").unlink()
    for stray in path.glob(".vectors-*.tmp-*"):
        with contextlib.suppress(OSError):
            stray.unlink()
