"""The tables of a :class:`~weightspace.index.postgres.PostgresIndex` in one PostgreSQL schema:
connecting, creating them, reading the manifest, and turning a ``models`` row into a
:class:`~weightspace.index.catalog.ModelRecord`.

The layout (``manifest`` key → JSONB; ``models`` with a ``vector(dim)`` column) is described in
:mod:`weightspace.index.postgres`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from weightspace.errors import WeightspaceError
from weightspace.index.catalog import ModelRecord, json_scalar
from weightspace.index.errors import IndexFormatError
from weightspace.index.postgres_writes import _psycopg

__all__ = [
    "MODEL_COLUMNS",
    "check_schema_name",
    "connect",
    "create_tables",
    "read_manifest",
    "record_from_row",
    "safe_dsn",
]

#: the columns of ``models`` a :class:`ModelRecord` is read from, in :func:`record_from_row` order
MODEL_COLUMNS = "id, path, content_hash, spec_summary, spec_json, metrics::text, added_at"


def safe_dsn(dsn: str) -> str:
    """The DSN without its password, for messages."""
    head, at, tail = dsn.rpartition("@")
    if not at or "://" not in head:
        return dsn
    scheme, _, credentials = head.partition("://")
    return f"{scheme}://{credentials.partition(':')[0]}@{tail}"


def check_schema_name(schema: str) -> str:
    """``schema``, refused unless a plain identifier (it is written into SQL)."""
    if not schema.isidentifier() or not schema.isascii():
        raise WeightspaceError(f"schema {schema!r} must be a plain identifier")
    return schema


def connect(dsn: str) -> Any:
    """A new ``psycopg`` connection (no autocommit); an unreachable server is an
    :class:`IndexFormatError` naming the DSN without its password."""
    psycopg = _psycopg()
    try:
        return psycopg.connect(dsn, autocommit=False, connect_timeout=10)
    except psycopg.Error as exc:
        raise IndexFormatError(
            f"{safe_dsn(dsn)}: cannot connect to PostgreSQL ({' '.join(str(exc).split())})"
        ) from None


def _has_manifest(connection: Any, schema: str) -> bool:
    return bool(
        connection.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = %s "
            "AND table_name = 'manifest'",
            (schema,),
        ).fetchall()
    )


def read_manifest(dsn: str, schema: str) -> dict[str, Any]:
    """The ``manifest`` table of ``schema`` as a dict (empty where the schema has none)."""
    connection = connect(dsn)
    try:
        rows = (
            connection.execute(f"SELECT key, value::text FROM {schema}.manifest").fetchall()
            if _has_manifest(connection, schema)
            else []
        )
        connection.rollback()
    finally:
        connection.close()
    return {str(key): json.loads(value) for key, value in rows}


def create_tables(
    dsn: str, schema: str, manifest: Mapping[str, Any], dim: int, *, overwrite: bool
) -> None:
    """Create ``schema`` with its ``manifest`` (holding ``manifest``) and empty ``models``
    tables, in one transaction; with ``overwrite`` an index already there is dropped in it."""
    connection = connect(dsn)
    try:
        with connection.transaction():
            if _has_manifest(connection, schema) and not overwrite:
                raise WeightspaceError(
                    f"{safe_dsn(dsn)}: schema {schema!r} holds an index already; use `index "
                    f"add` to extend it or --overwrite to replace it"
                )
            connection.execute("CREATE EXTENSION IF NOT EXISTS vector")
            connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            connection.execute(f"CREATE SCHEMA {schema}")
            connection.execute(
                f"CREATE TABLE {schema}.manifest (key TEXT PRIMARY KEY, value JSONB NOT NULL)"
            )
            connection.execute(
                f"CREATE TABLE {schema}.models (id BIGSERIAL PRIMARY KEY, path TEXT NOT NULL, "
                "content_hash TEXT NOT NULL UNIQUE, spec_summary TEXT NOT NULL, "
                "spec_json TEXT NOT NULL, metrics JSONB NOT NULL, added_at TEXT NOT NULL, "
                f"embedding vector({int(dim)}) NOT NULL)"
            )
            for key, value in manifest.items():
                connection.execute(
                    f"INSERT INTO {schema}.manifest (key, value) VALUES (%s, %s::jsonb)",
                    (key, json.dumps(value)),
                )
    finally:
        connection.close()


def record_from_row(row: Sequence[Any]) -> ModelRecord:
    """The :class:`ModelRecord` of a row selected as :data:`MODEL_COLUMNS` (extra columns after
    them are ignored)."""
    metrics = json.loads(row[5])
    return ModelRecord(
        id=int(row[0]),
        path=row[1],
        content_hash=row[2],
        spec_summary=row[3],
        spec_json=row[4],
        metrics={str(k): v for k, v in metrics.items() if json_scalar(v) is not None},
        added_at=row[6],
    )
