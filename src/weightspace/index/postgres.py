"""A model index in PostgreSQL with pgvector: many writers and readers share one index.

The same interface as :class:`~weightspace.index.ModelIndex` (``build``, ``open``, ``add``,
``add_vectors``, ``search``, ``search_models``, ``get``, ``find_hash``, ``check_embedder``), over
one database schema (default ``weightspace``)::

    manifest (key TEXT PRIMARY KEY, value JSONB)       backend, format version, fingerprint,
                                                       encoder directory, dim
    models   (id BIGSERIAL, path, content_hash UNIQUE, spec_summary, spec_json, metrics JSONB,
              added_at, embedding VECTOR(dim))         with an HNSW index (inner product)

Every batch of models is one transaction; ``INSERT ... ON CONFLICT (content_hash) DO NOTHING``
makes concurrent writers lose nothing and store nothing twice, and a batch whose connection is
lost rolls back and is retried on a new connection. Scores are inner products of unit vectors
(cosine similarities), as in the FAISS index. Unfiltered searches go through the HNSW index
(``hnsw.ef_search``); filtered ones scan the matching rows exactly, so a filter never returns
fewer than ``k`` hits while ``k`` match. Creating the tables and reading the manifest are in
:mod:`weightspace.index.postgres_schema`, writing in :mod:`weightspace.index.postgres_writes`.

Needs ``psycopg`` (``pip install weightspace[pgvector]``) and a server with the ``vector``
extension; tests start one with the ``pgserver`` wheel.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from weightspace.errors import WeightspaceError
from weightspace.index.base import IndexBase
from weightspace.index.catalog import (
    ModelRecord,
    SearchHit,
    now,
    parse_filters,
)
from weightspace.index.embedders import (
    Embedder,
    embed_loaded,
    embedder_fingerprint,
    encoder_from_manifest,
    is_import_reference,
)
from weightspace.index.errors import EncoderMismatchError, IndexFormatError
from weightspace.index.postgres_schema import (
    MODEL_COLUMNS,
    check_schema_name,
    connect,
    create_tables,
    read_manifest,
    record_from_row,
    safe_dsn,
)
from weightspace.index.postgres_writes import PostgresWrites, _vector_text
from weightspace.index.writing import AddReport, ProgressCallback, declared_dim

if TYPE_CHECKING:
    from weightspace.models import ModelInput
    from weightspace.nn.encoder import Encoder
    from weightspace.sources import LoadedModel

__all__ = ["PostgresIndex", "POSTGRES_FORMAT_VERSION", "BACKEND"]

BACKEND = "pgvector"
POSTGRES_FORMAT_VERSION = 1
_COLUMN_FILTERS = {"path": "path", "content_hash": "content_hash", "arch_summary": "spec_summary"}


class PostgresIndex(PostgresWrites, IndexBase):
    """A de-duplicated index of model embeddings in PostgreSQL + pgvector.

    Args (of :meth:`open` and :meth:`build`):
        dsn: a libpq connection string, ``postgresql://user:password@host:port/database``.
        schema: the schema holding the index's tables (several indexes share a database).
    """

    def __init__(self, dsn: str, manifest: dict[str, Any], *, schema: str) -> None:
        self.dsn = dsn
        self.schema = schema
        self.manifest = manifest
        self.ef_search = 64  # HNSW candidates per query (at least k)
        self._connection: Any = None
        self._settings: tuple[int, tuple[int, bool]] | None = None

    # -------------------------------------------------------------- connection
    def _conn(self) -> Any:
        if self._connection is None or self._connection.closed:
            self._connection = connect(self.dsn)
        return self._connection

    def close(self) -> None:
        """Close the connection (a later call opens a new one)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    # -------------------------------------------------------------- properties
    @property
    def path(self) -> str:
        """Where the index lives, for messages: the DSN without its password, and the schema."""
        return f"{safe_dsn(self.dsn)}#{self.schema}"

    def load_encoder(self) -> Encoder:
        """The recorded encoder directory, checked against the fingerprint (nothing imported)."""
        return encoder_from_manifest(self.path, self.manifest)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return int(self._read(f"SELECT count(*) FROM {self.schema}.models")[0][0])

    def __repr__(self) -> str:
        return (
            f"PostgresIndex({self.path!r}, dim={self.dim}, fingerprint={self.fingerprint[:12]!r})"
        )

    def info(self) -> dict[str, Any]:
        return {**self.manifest, "count": len(self), "path": self.path}

    def refresh(self, *, strict: bool = False) -> bool:
        """Nothing to reload: every query reads the committed state."""
        return False

    def check_embedder(self, embedder: Embedder) -> None:
        """Raise :class:`EncoderMismatchError` unless ``embedder`` built this index."""
        fingerprint = embedder_fingerprint(embedder)
        if fingerprint != self.fingerprint:
            raise EncoderMismatchError(
                f"{self.path}: built with encoder {self.fingerprint[:16]!r}, but the given "
                f"encoder is {fingerprint[:16]!r}; query with the same encoder or rebuild the index"
            )

    # -------------------------------------------------------------- opening and building
    @classmethod
    def open(cls, dsn: str, *, schema: str = "weightspace") -> PostgresIndex:
        """Open the index in ``schema``; a database without one is an :class:`IndexFormatError`."""
        schema = check_schema_name(schema)
        manifest = read_manifest(dsn, schema)
        if manifest.get("backend") != BACKEND:
            raise IndexFormatError(
                f"{safe_dsn(dsn)}: holds no weightspace index in schema {schema!r}; build one "
                f"with `weightspace index build --backend pgvector --dsn DSN`"
            )
        if manifest.get("format_version") != POSTGRES_FORMAT_VERSION:
            raise IndexFormatError(
                f"{safe_dsn(dsn)}: index format {manifest.get('format_version')!r}, this "
                f"weightspace reads {POSTGRES_FORMAT_VERSION}; rebuild it"
            )
        return cls(dsn, manifest, schema=schema)

    @classmethod
    def build(
        cls,
        dsn: str,
        models: Iterable[LoadedModel | ModelInput],
        embedder: Embedder,
        *,
        schema: str = "weightspace",
        encoder: str | None = None,
        overwrite: bool = False,
        batch_size: int = 64,
        on_progress: ProgressCallback | None = None,
        vector_index: bool = True,
    ) -> tuple[PostgresIndex, AddReport]:
        """Create the index's tables in ``schema`` and add ``models``; ``overwrite`` drops an
        index already there (in the same transaction that creates the new tables).
        ``vector_index=False`` leaves the HNSW index to the caller (:meth:`create_vector_index`
        once its own bulk ``add_vectors`` are done, as ``index build --ray`` does)."""
        schema = check_schema_name(schema)
        if encoder is not None and (is_import_reference(encoder) or "://" in encoder):
            raise WeightspaceError(f"an index records only an encoder directory, not {encoder!r}")
        from weightspace.sources import iter_models

        models = iter(iter_models(models))
        first = next(models, None)
        if first is None or getattr(embedder, "dim", None) is not None:
            embedder_dim = declared_dim(embedder)
        else:  # the width of the first embedding
            embedder_dim = int(embed_loaded(embedder, [first]).shape[1])
        manifest = {
            "backend": BACKEND,
            "format_version": POSTGRES_FORMAT_VERSION,
            "fingerprint": embedder_fingerprint(embedder),
            "encoder": encoder,
            "dim": embedder_dim,
            "created_at": now(),
        }
        create_tables(dsn, schema, manifest, embedder_dim, overwrite=overwrite)
        index = cls(dsn, manifest, schema=schema)
        chained = models if first is None else _chain(first, models)
        report = index.add(chained, embedder, batch_size=batch_size, on_progress=on_progress)
        if vector_index:
            index.create_vector_index()
        return index, report

    def create_vector_index(self) -> None:
        """Build the HNSW index over the stored vectors (``build`` does, after its first
        models: one bulk build is far faster than inserting into the graph row by row); later
        adds insert into it. Idempotent."""
        connection = self._conn()
        with connection.transaction():
            connection.execute("SET LOCAL maintenance_work_mem = '256MB'")
            connection.execute(
                f"CREATE INDEX IF NOT EXISTS models_embedding_hnsw ON {self.schema}.models "
                "USING hnsw (embedding vector_ip_ops) WITH (m = 16, ef_construction = 64)"
            )

    # -------------------------------------------------------------- reading
    def _read(self, sql: str, values: Sequence[Any] = ()) -> list[Any]:
        connection = self._conn()
        try:
            return connection.execute(sql, values).fetchall()
        finally:
            connection.rollback()

    def get(self, model_id: int) -> ModelRecord | None:
        """The stored metadata of one model, or ``None`` (also for ids no BIGINT holds)."""
        model_id = int(model_id)
        if not 0 <= model_id < 2**63:
            return None
        rows = self._read(
            f"SELECT {MODEL_COLUMNS} FROM {self.schema}.models WHERE id = %s", (model_id,)
        )
        return self._flagged([record_from_row(rows[0])])[0] if rows else None

    def _flagged(self, records: list[ModelRecord]) -> list[ModelRecord]:
        """``records`` with :attr:`ModelRecord.graph_only` from the ``graph_only`` table, where
        the index has one."""
        ids = [r.id for r in records]
        if (
            not ids
            or not self._read("SELECT to_regclass(%s)", (f"{self.schema}.graph_only",))[0][0]
        ):
            return records
        found = self._read(f"SELECT id FROM {self.schema}.graph_only WHERE id = ANY(%s)", (ids,))
        flagged = {int(row[0]) for row in found}
        return [replace(r, graph_only=True) if r.id in flagged else r for r in records]

    def find_hash(self, digest: str) -> ModelRecord | None:
        rows = self._read(
            f"SELECT {MODEL_COLUMNS} FROM {self.schema}.models WHERE content_hash = %s",
            (str(digest),),
        )
        return self._flagged([record_from_row(rows[0])])[0] if rows else None

    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        *,
        filters: Iterable[str] | Mapping[str, Any] | None = None,
    ) -> list[list[SearchHit]]:
        """Nearest stored models of each query vector ``(q, dim)`` (or ``(dim,)``), as
        :meth:`ModelIndex.search <weightspace.index.ModelIndex.search>`."""
        queries = self._checked_queries(queries, k)
        clauses, values = [], []
        for key, value in parse_filters(filters).items():
            if key in _COLUMN_FILTERS:
                clauses.append(f"{_COLUMN_FILTERS[key]} = %s")
                values.append(str(value))
            else:
                clauses.append("metrics -> %s = %s::jsonb")
                values.extend([key, json.dumps(value)])
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = (
            f"SELECT {MODEL_COLUMNS}, -(embedding <#> %s::vector) AS score FROM {self.schema}.models "
            f"{where} ORDER BY embedding <#> %s::vector LIMIT %s"
        )
        connection = self._conn()
        # session settings, changed only when they must (each SET is a round trip); filtered
        # searches scan the matching rows exactly: HNSW would stop short of k
        settings = (max(int(self.ef_search), k), not clauses)
        if self._settings != (id(connection), settings):
            connection.execute(f"SET hnsw.ef_search = {settings[0]}")
            connection.execute(f"SET enable_indexscan = {'on' if settings[1] else 'off'}")
            connection.commit()
            self._settings = (id(connection), settings)
        results: list[list[SearchHit]] = []
        try:
            for query in queries:
                text = _vector_text(query)
                rows = connection.execute(sql, (text, *values, text, k)).fetchall()
                results.append(
                    [
                        SearchHit(rank, float(row[7]), record_from_row(row))
                        for rank, row in enumerate(rows, start=1)
                    ]
                )
        finally:
            connection.rollback()
        flagged = {r.id: r for r in self._flagged([h.record for hits in results for h in hits])}
        return [[replace(h, record=flagged[h.record.id]) for h in hits] for hits in results]

    def stored_spec(self, path: str) -> str | None:
        """The spec JSON stored with the model read from ``path`` (as recorded), or ``None``."""
        rows = self._read(
            f"SELECT spec_json FROM {self.schema}.models WHERE path = %s AND spec_json != '' "
            "LIMIT 1",
            (str(path),),
        )
        return str(rows[0][0]) if rows else None

    def search_models(
        self,
        models: Sequence[LoadedModel | ModelInput],
        embedder: Embedder,
        k: int = 10,
        *,
        filters: Iterable[str] | Mapping[str, Any] | None = None,
    ) -> list[list[SearchHit]]:
        """Embed ``models`` (any form :meth:`add` takes) with ``embedder`` (checked against
        the index) and search."""
        self.check_embedder(embedder)
        loaded = list(self.models_from(models))
        if not loaded:
            raise WeightspaceError("no models to search with")
        return self.search(embed_loaded(embedder, loaded), k, filters=filters)

    def vectors(self) -> np.ndarray:
        """Every stored unit vector ``(n, dim)`` in id order."""
        rows = self._read(f"SELECT embedding::text FROM {self.schema}.models ORDER BY id")
        return np.asarray([json.loads(row[0]) for row in rows], dtype=np.float32).reshape(
            len(rows), self.dim
        )


def _chain(first: LoadedModel, rest: Iterable[LoadedModel]) -> Iterator[LoadedModel]:
    yield first
    yield from rest
