"""Writing to a :class:`~weightspace.index.postgres.PostgresIndex`: embedding and storing
batches, one transaction each.

``INSERT ... ON CONFLICT (content_hash) DO NOTHING`` makes concurrent writers lose nothing and
store nothing twice; a batch whose connection is lost rolls back and is retried on a new
connection. Models embedded by the graph branch alone (``Encoder.last_fallback``) are listed in
the ``graph_only`` table, created by the first batch that needs one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from weightspace.errors import WeightspaceError
from weightspace.index.catalog import model_row, now
from weightspace.index.embedders import Embedder, embed_loaded, graph_only_flags, normalise
from weightspace.index.writing import AddReport, ProgressCallback

if TYPE_CHECKING:
    from weightspace.models import ModelInput
    from weightspace.sources import LoadedModel

__all__ = ["PostgresWrites"]

_RETRIES = 3


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise WeightspaceError(
            "the PostgreSQL backend needs psycopg: pip install 'weightspace[pgvector]'"
        ) from None
    return psycopg


def _vector_text(vector: np.ndarray) -> str:
    """pgvector's text form, ``[x1,x2,...]``, exact for float32 (``repr`` round-trips)."""
    return "[" + ",".join(repr(float(x)) for x in np.asarray(vector, dtype=np.float32)) + "]"


class PostgresWrites:
    """The writing half of :class:`~weightspace.index.postgres.PostgresIndex` (a mixin: it
    uses the index's connection, schema, dimension and embedder check)."""

    schema: str
    dim: int
    path: str

    def add(
        self,
        models: Iterable[LoadedModel | ModelInput],
        embedder: Embedder,
        *,
        batch_size: int = 64,
        on_progress: ProgressCallback | None = None,
    ) -> AddReport:
        """Embed and store ``models`` not stored yet (by content hash), one transaction per
        batch; safe to run from several processes at once."""
        from weightspace.index.embedders import content_hash

        self.check_embedder(embedder)
        report = AddReport()
        batch: list[tuple[dict[str, Any], LoadedModel]] = []
        done = 0

        def flush() -> None:
            nonlocal done
            if batch:
                vectors = embed_loaded(embedder, [model for _, model in batch])
                for (row, _), flag in zip(
                    batch, graph_only_flags(embedder, len(batch)), strict=True
                ):
                    row["graph_only"] = flag
                self._write([row for row, _ in batch], vectors, report)
                done += len(batch)
                batch.clear()
                if on_progress is not None:
                    on_progress("embed", done, 0)

        for model in self.models_from(models):
            digest = content_hash(model.spec_json, model.tensors)
            row = model_row(
                {
                    "path": model.path,
                    "content_hash": digest,
                    "spec_summary": model.spec_summary,
                    "spec_json": model.spec_json,
                    "metrics": model.metrics,
                }
            )
            batch.append((row, model))
            if len(batch) >= batch_size:
                flush()
        flush()
        return report

    def add_vectors(
        self, vectors: np.ndarray, records: Sequence[Mapping[str, Any]], **_: Any
    ) -> AddReport:
        """Store precomputed vectors ``(n, dim)`` from this index's encoder with their records
        (``path``, ``content_hash``, optional ``spec_summary``, ``spec_json``, ``metrics``)."""
        vectors = normalise(np.asarray(vectors, dtype=np.float32))
        if len(records) != len(vectors):
            raise ValueError(f"got {len(vectors)} vectors but {len(records)} records")
        report = AddReport()
        self._write([model_row(record) for record in records], vectors, report)
        return report

    def _write(
        self, rows: Sequence[Mapping[str, Any]], vectors: np.ndarray, report: AddReport
    ) -> None:
        """One transaction; a lost connection rolls it back, and it is retried on a new one."""
        if vectors.shape[1] != self.dim:
            raise WeightspaceError(
                f"{self.path}: vectors have dim {vectors.shape[1]}, the index holds dim {self.dim}"
            )
        psycopg = _psycopg()
        for attempt in range(_RETRIES):
            try:
                added, duplicates = self._insert_rows(rows, vectors)
            except psycopg.OperationalError:
                self.close()
                if attempt == _RETRIES - 1:
                    raise
                time.sleep(0.1 * (attempt + 1))
                continue
            report.added.extend(added)
            report.duplicates.extend(duplicates)
            return

    def _insert_rows(
        self, rows: Sequence[Mapping[str, Any]], vectors: np.ndarray
    ) -> tuple[list[int], list[tuple[str, int]]]:
        """Insert a batch in one statement (arrays unnested in order); rows whose content hash
        is stored already, by another writer or earlier in the batch, are reported instead."""
        connection = self._conn()
        stamp = now()
        with connection.transaction():
            inserted = connection.execute(
                f"INSERT INTO {self.schema}.models (path, content_hash, spec_summary, spec_json, "
                "metrics, added_at, embedding) "
                "SELECT path, content_hash, spec_summary, spec_json, metrics, %s, embedding::vector "
                "FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::jsonb[], "
                "%s::text[]) WITH ORDINALITY AS incoming(path, content_hash, spec_summary, "
                "spec_json, metrics, embedding, position) ORDER BY position "
                "ON CONFLICT (content_hash) DO NOTHING RETURNING content_hash, id",
                (
                    stamp,
                    [str(row["path"]) for row in rows],
                    [str(row["content_hash"]) for row in rows],
                    [str(row["spec_summary"]) for row in rows],
                    [str(row["spec_json"]) for row in rows],
                    [json.dumps(row["metrics"], sort_keys=True) for row in rows],
                    [_vector_text(vector) for vector in vectors],
                ),
            ).fetchall()
            new: dict[str, Any] = {str(digest): int(model_id) for digest, model_id in inserted}
            others = sorted({str(row["content_hash"]) for row in rows} - set(new))
            existing = dict(
                connection.execute(
                    f"SELECT content_hash, id FROM {self.schema}.models "
                    "WHERE content_hash = ANY(%s)",
                    (others,),
                ).fetchall()
                if others
                else []
            )
            flagged = [new.get(str(r["content_hash"])) for r in rows if r.get("graph_only")]
            flagged = [i for i in flagged if i is not None]
            if flagged:  # created by the first batch that needs it (older indexes lack it)
                connection.execute(
                    f"CREATE TABLE IF NOT EXISTS {self.schema}.graph_only (id BIGINT PRIMARY KEY)"
                )
                connection.execute(
                    f"INSERT INTO {self.schema}.graph_only (id) SELECT unnest(%s::bigint[]) "
                    "ON CONFLICT DO NOTHING",
                    (sorted(set(flagged)),),
                )
        added: list[int] = []
        duplicates: list[tuple[str, int]] = []
        for row in rows:
            digest = str(row["content_hash"])
            if digest in new:
                added.append(new.pop(digest))  # a later row of the same hash is a duplicate
                existing[digest] = added[-1]
            else:
                duplicates.append((str(row["path"]), int(existing[digest])))
        return added, duplicates
