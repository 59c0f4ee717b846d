"""The SQLite catalog of an index: its manifest, one row per model, one row per committed batch.

``meta.sqlite`` holds the manifest (format version, encoder directory and fingerprint, dim,
store settings, generation, checksum of the vector file), one ``models`` row per model (path,
content hash, spec, metrics, embedding) and one ``batches`` row per committed write (its
checksums, :mod:`weightspace.index.integrity`). Reads go through :func:`connect` (never
``mode=ro``: the first reader after a killed writer must roll back its journal); every SQLite
failure becomes one line (:func:`catalog_errors`).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from weightspace.errors import WeightspaceError
from weightspace.index.errors import IndexBusyError, IndexCorruptError, IndexFormatError
from weightspace.index.integrity import check_file, validate_manifest
from weightspace.index.records import ModelRecord, SearchHit
from weightspace.index.vectors import VectorStore

__all__ = [
    "INDEX_FORMAT_VERSION",
    "READABLE_FORMAT_VERSIONS",
    "META_FILE",
    "SCHEMA",
    "RECORD_COLUMNS",
    "GRAPH_ONLY_SCHEMA",
    "with_graph_only",
    "ModelRecord",
    "SearchHit",
    "parse_filters",
    "filter_query",
    "catalog_errors",
    "connect",
    "now",
    "json_scalar",
    "record_from_row",
    "model_row",
    "read_manifest",
    "existing_generation",
    "load_committed",
    "hash_to_id",
    "hits_from",
]

#: Version of the on-disk layout written; 2 added embeddings in the catalog and checksums.
INDEX_FORMAT_VERSION = 2
#: Versions this code opens; a version-1 index is searchable but has no checksums and cannot be
#: extended until ``weightspace index repair`` upgrades it.
READABLE_FORMAT_VERSIONS = (1, 2)

META_FILE = "meta.sqlite"
_FILTER_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_COLUMN_FILTERS = {"path": "path", "content_hash": "content_hash", "arch_summary": "spec_summary"}


SCHEMA = """
CREATE TABLE manifest (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE models (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    content_hash TEXT NOT NULL UNIQUE,
    spec_summary TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    metrics TEXT NOT NULL,
    added_at TEXT NOT NULL,
    embedding BLOB
);
CREATE TABLE batches (
    generation INTEGER PRIMARY KEY,
    first_id INTEGER NOT NULL,
    count INTEGER NOT NULL,
    vectors_digest TEXT NOT NULL,
    rows_digest TEXT NOT NULL,
    committed_at TEXT NOT NULL
);
"""
RECORD_COLUMNS = "id, path, content_hash, spec_summary, spec_json, metrics, added_at"
#: Ids of the models embedded by the graph branch alone (``ModelRecord.graph_only``); a table
#: of its own, so indexes written before it existed open unchanged (they lack it: no flags)
GRAPH_ONLY_SCHEMA = "CREATE TABLE IF NOT EXISTS graph_only (id INTEGER PRIMARY KEY)"


def with_graph_only(
    records: dict[int, ModelRecord], query: Callable[..., list[Any]]
) -> dict[int, ModelRecord]:
    """``records`` (by id) with :attr:`ModelRecord.graph_only` read from the ``graph_only``
    table through ``query(sql, values)``, where the index has one."""
    if not records:
        return records
    found = query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'graph_only'")
    if not found:
        return records
    ids = sorted(records)
    placeholders = ",".join("?" * len(ids))
    flagged = {
        row[0] for row in query(f"SELECT id FROM graph_only WHERE id IN ({placeholders})", ids)
    }
    return {i: replace(r, graph_only=True) if i in flagged else r for i, r in records.items()}


def parse_filters(filters: Iterable[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``["task=digits", "epoch=10"]`` → ``{"task": "digits", "epoch": 10}``.

    Values that parse as JSON numbers or booleans are compared as such; everything else as text.
    """
    if filters is None:
        return {}
    if isinstance(filters, Mapping):
        items = list(filters.items())
    else:
        items = []
        for text in filters:
            key, sep, value = str(text).partition("=")
            if not sep or not key.strip():
                raise WeightspaceError(f"filter {text!r} is not of the form key=value")
            items.append((key.strip(), value.strip()))
    parsed: dict[str, Any] = {}
    for key, value in items:
        if not _FILTER_KEY.match(key):
            raise WeightspaceError(
                f"filter key {key!r} may only hold letters, digits, '_', '.' and '-'"
            )
        if isinstance(value, str):
            with contextlib.suppress(json.JSONDecodeError):
                decoded = json.loads(value)
                if isinstance(decoded, bool | int | float):
                    value = decoded
        parsed[key] = value
    return parsed


@contextlib.contextmanager
def catalog_errors(meta: Path) -> Iterator[None]:
    """Turn SQLite failures (a damaged file, a dropped table, a busy lock) into one-line errors."""
    try:
        yield
    except (sqlite3.Error, UnicodeDecodeError) as exc:  # text that is not UTF-8 too
        text = " ".join(str(exc).split())
        if "locked" in text or "busy" in text:
            raise IndexBusyError(
                f"{meta}: the catalog is locked by another process ({text})"
            ) from None
        raise IndexCorruptError(
            f"{meta}: the catalog is damaged ({text}); check it with `weightspace index info "
            f"--verify`, then rebuild the index"
        ) from None


def connect(meta: Path) -> sqlite3.Connection:
    """A connection for reading. Not ``mode=ro``: after a killed writer, the first reader must be
    able to roll back the hot journal SQLite left behind."""
    connection = sqlite3.connect(meta, timeout=30, check_same_thread=False)
    connection.execute("PRAGMA query_only=ON")
    return connection


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def filter_query(filters: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """The SQL selecting the ids of models matching parsed ``filters``, and its values."""
    clauses, values = [], []
    for key, value in filters.items():
        if key in _COLUMN_FILTERS:
            clauses.append(f"{_COLUMN_FILTERS[key]} = ?")
        else:  # the key passed _FILTER_KEY: letters, digits, '_', '.', '-' only
            clauses.append(f"json_extract(metrics, '$.\"{key}\"') = ?")
        values.append(value)
    return "SELECT id FROM models WHERE " + " AND ".join(clauses), values


def json_scalar(value: Any) -> Any:
    """A JSON-safe scalar, or ``None`` for values that are not (NaN, arrays, objects)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return None


def record_from_row(row: Sequence[Any], index_path: Path) -> ModelRecord:
    """A catalog row as a :class:`ModelRecord`; a damaged row is an :class:`IndexCorruptError`."""
    try:
        metrics = json.loads(row[5])
        if not isinstance(metrics, dict):
            raise ValueError("not a JSON object")
        if not all(isinstance(v, str) for v in (row[1], row[2], row[3], row[4], row[6])):
            raise ValueError("a text column holds another type")
    except (TypeError, ValueError) as exc:
        raise IndexCorruptError(
            f"{index_path / META_FILE}: catalog row {row[0]} is damaged ({exc}); check the "
            f"index with `weightspace index info --verify` and rebuild it"
        ) from None
    return ModelRecord(
        id=int(row[0]),
        path=row[1],
        content_hash=row[2],
        spec_summary=row[3],
        spec_json=row[4],
        metrics=metrics,
        added_at=row[6],
    )


def model_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record to store (``path``, ``content_hash``, optional spec and metrics) as a catalog
    row, its metrics reduced to JSON scalars."""
    metrics = {
        str(k): s
        for k, v in dict(record.get("metrics", {})).items()
        if (s := json_scalar(v)) is not None
    }
    return {
        "path": str(record["path"]),
        "content_hash": str(record["content_hash"]),
        "spec_summary": str(record.get("spec_summary", "")),
        "spec_json": str(record.get("spec_json", "")),
        "metrics": metrics,
        "graph_only": bool(record.get("graph_only", False)),
    }


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest, checked against the catalog in one read transaction: the tables exist,
    the rows and (format 2) the committed batches add up to the manifest's count."""
    meta = path / META_FILE
    try:
        connection = connect(meta)
        try:
            connection.execute("BEGIN")  # one snapshot: a writer commits all or nothing
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
            if "manifest" not in tables:
                raise IndexFormatError(
                    f"{meta}: not a weightspace index database (no manifest table); an "
                    f"interrupted first build leaves this behind: run `weightspace index "
                    f"build --overwrite` again"
                )
            rows = connection.execute("SELECT key, value FROM manifest").fetchall()
            counts = None
            if "models" in tables:
                counts = connection.execute("SELECT count(*) FROM models").fetchone()[0]
            batched = None
            if "batches" in tables:
                batched = connection.execute(
                    "SELECT coalesce(sum(count), 0) FROM batches"
                ).fetchone()[0]
            connection.commit()
        finally:
            connection.close()
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        raise IndexFormatError(
            f"{meta}: not a weightspace index database, or a damaged one "
            f"({' '.join(str(exc).split())}); rebuild it with `weightspace index build "
            f"--overwrite`"
        ) from None
    return validate_manifest(
        path,
        rows,
        tables,
        models=counts,
        batched=batched,
        readable=READABLE_FORMAT_VERSIONS,
        current=INDEX_FORMAT_VERSION,
    )


def existing_generation(path: Path) -> int | None:
    """The committed generation of the index at ``path``; ``None`` if nothing was committed.

    An index of another format version, or a damaged one, counts as existing (``0``): it is
    replaced only on request.
    """
    meta = path / META_FILE
    if not meta.is_file():
        return None
    try:
        connection = connect(meta)
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        finally:
            connection.close()
    except (sqlite3.DatabaseError, UnicodeDecodeError):
        return 0
    if "manifest" not in tables:
        return None  # an interrupted first build committed nothing
    try:
        return int(read_manifest(path)["generation"])
    except IndexFormatError:
        return 0


def load_committed(path: Path) -> tuple[dict[str, Any], VectorStore]:
    """The committed generation of the index at ``path``: its manifest and vector store.

    Checks (cheap): the catalog's tables and row count against the manifest, the vector file
    against its recorded checksum (:func:`~weightspace.index.integrity.check_file`, quick
    mode), and the FAISS vector count. A generation replaced by a writer meanwhile is re-read.
    """
    path = Path(path)
    meta = path / META_FILE
    if not path.is_dir() or not meta.is_file():
        raise IndexFormatError(
            f"{path}: not a weightspace index (no {META_FILE}); create one with "
            f"`weightspace index build`"
        )
    for _attempt in range(5):
        manifest = read_manifest(path)
        vectors = path / f"vectors-{manifest['generation']}.faiss"
        try:
            if manifest["format_version"] >= 2:
                check_file(
                    vectors,
                    manifest["vectors_checksum"],
                    repair_hint=f"run `weightspace index repair {path}`",
                )
            store = VectorStore.load(vectors, int(manifest["dim"]), manifest["store"])
        except (IndexCorruptError, RuntimeError) as exc:
            if not vectors.exists():
                time.sleep(0.05)  # a writer committed a newer generation meanwhile: re-read
                continue
            if isinstance(exc, IndexCorruptError):
                raise
            raise IndexCorruptError(
                f"{vectors}: cannot read the FAISS index ({str(exc).splitlines()[0][:200]}); "
                f"run `weightspace index repair {path}`"
            ) from None
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise IndexCorruptError(
                f"{meta}: the manifest's store settings are damaged ({exc}); run "
                f"`weightspace index repair {path}`"
            ) from None
        if len(store) != int(manifest["count"]):
            raise IndexCorruptError(
                f"{vectors}: holds {len(store)} vectors but {meta} lists "
                f"{manifest['count']} models; run `weightspace index repair {path}`"
            )
        return manifest, store
    raise IndexFormatError(
        f"{path}: the vectors file of the committed generation is missing; run "
        f"`weightspace index repair {path}`"
    )


def hash_to_id(meta: Path) -> dict[str, int]:
    """Content hash → id of every stored model, read on a fresh connection."""
    with catalog_errors(meta):
        connection = connect(meta)
        try:
            return dict(connection.execute("SELECT content_hash, id FROM models").fetchall())
        finally:
            connection.close()


def hits_from(
    scores: np.ndarray, rows: np.ndarray, records: Mapping[int, ModelRecord]
) -> list[list[SearchHit]]:
    """Search results ``(q, k)`` of scores and row ids joined with their records, ranked from 1;
    rows of ``-1`` (fewer candidates than ``k``) and ids without a record are left out."""
    results: list[list[SearchHit]] = []
    for score_row, id_row in zip(scores, rows, strict=True):
        hits: list[SearchHit] = []
        for score, row in zip(score_row, id_row, strict=True):
            if row < 0 or int(row) not in records:
                continue
            hits.append(SearchHit(len(hits) + 1, float(score), records[int(row)]))
        results.append(hits)
    return results
