"""The model index: the vector store and the catalog joined, opened, searched and extended.

An index is a directory::

    INDEX/
      meta.sqlite                  the catalog (:mod:`weightspace.index.catalog`)
      vectors-<generation>.faiss   the vectors of the committed generation
                                   (:mod:`weightspace.index.vectors`)
      write.lock                   held by the one process allowed to write
                                   (:mod:`weightspace.index.writing`)

Row ``i`` of the vector store is catalog id ``i``. Opening checks the catalog against the
manifest and the vector file against its checksum (:mod:`weightspace.index.integrity`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from weightspace.errors import WeightspaceError
from weightspace.index.base import IndexBase
from weightspace.index.catalog import (
    META_FILE,
    RECORD_COLUMNS,
    ModelRecord,
    catalog_errors,
    connect,
    filter_query,
    hash_to_id,
    hits_from,
    load_committed,
    parse_filters,
    read_manifest,
    record_from_row,
    with_graph_only,
)
from weightspace.index.embedders import (
    Embedder,
    embed_loaded,
    embedder_fingerprint,
    encoder_from_manifest,
)
from weightspace.index.errors import EncoderMismatchError, IndexCorruptError, IndexFormatError
from weightspace.index.frames import SearchResults
from weightspace.index.integrity import check_catalog, check_file
from weightspace.index.model_index_writes import ModelIndexWrites
from weightspace.index.vectors import VectorStore

if TYPE_CHECKING:
    import sqlite3

    from weightspace.models import ModelInput
    from weightspace.nn.encoder import Encoder
    from weightspace.sources import LoadedModel

__all__ = ["ModelIndex"]


class ModelIndex(ModelIndexWrites, IndexBase):
    """A persistent, de-duplicated index of model embeddings with metadata.

    Open one with :meth:`open`, or make one with :meth:`build`. Reads (``search``, ``get``) are
    thread-safe; writes (``add``) take the index's file lock and commit atomically.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], store: VectorStore) -> None:
        self.path = path
        self.manifest = manifest
        self.store = store
        self._local = threading.local()

    # -------------------------------------------------------------- properties
    def load_encoder(self) -> Encoder:
        """The recorded encoder directory, loaded with ``weightspace.nn.Encoder.load`` and
        checked against the index's fingerprint.

        Raises:
            WeightspaceError: the index records no encoder directory, or (indexes built before
                format 2) an importable ``module:attr``, which is never imported: pass
                ``--encoder``.
            EncoderMismatchError: the directory holds another encoder now.
        """
        return encoder_from_manifest(self.path, self.manifest)

    @property
    def generation(self) -> int:
        return int(self.manifest["generation"])

    def __len__(self) -> int:
        return len(self.store)

    def __repr__(self) -> str:
        return (
            f"ModelIndex({str(self.path)!r}, models={len(self)}, dim={self.dim}, "
            f"kind={self.store.active_kind!r}, fingerprint={self.fingerprint[:12]!r})"
        )

    @property
    def format_version(self) -> int:
        return int(self.manifest["format_version"])

    def info(self) -> dict[str, Any]:
        """The manifest plus the live count, for ``/health`` and the CLI."""
        return {**self.manifest, "count": len(self), "path": str(self.path)}

    def check_catalog(self) -> None:
        """Cheap catalog check beyond :meth:`open`'s (:func:`~weightspace.index_integrity.
        check_catalog`): SQLite's ``quick_check`` and JSON in every row's metrics and spec."""
        check_catalog(self)

    # -------------------------------------------------------------- opening
    @classmethod
    def open(cls, path: str | Path) -> ModelIndex:
        """Open a committed index; refuse other format versions, damaged or inconsistent files.

        Checks on every open (cheap): the catalog's tables and row count against the manifest,
        the vector file against its recorded checksum (:func:`~weightspace.index.integrity.
        check_file`, quick mode), and the FAISS vector count.
        """
        if "://" in str(path):  # a DSN: Path() would fold its "//" and hide what it is
            raise IndexFormatError(
                f"{str(path).partition('@')[2] or str(path).partition('://')[0]}: a PostgreSQL "
                f"DSN, not an index directory; open it with the pgvector backend "
                f"(weightspace.index.postgres.PostgresIndex, `--backend pgvector --dsn`)"
            )
        path = Path(path)
        manifest, store = load_committed(path)
        return cls(path, manifest, store)

    @staticmethod
    def _read_manifest(path: Path) -> dict[str, Any]:
        """:func:`~weightspace.index.catalog.read_manifest` (kept for callers of the old name)."""
        return read_manifest(path)

    def _connection(self) -> sqlite3.Connection:
        """A read-only connection owned by the calling thread."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = connect(self.path / META_FILE)
            self._local.connection = connection
        return connection

    def close(self) -> None:
        """Close this thread's database connection (others close when their thread ends)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def check_embedder(self, embedder: Embedder) -> None:
        """Raise :class:`EncoderMismatchError` unless ``embedder`` built this index."""
        fingerprint = embedder_fingerprint(embedder)
        if fingerprint != self.fingerprint:
            raise EncoderMismatchError(
                f"{self.path}: built with encoder {self.fingerprint[:16]!r} "
                f"({self.encoder or 'unknown source'!r}), but the given encoder is "
                f"{fingerprint[:16]!r}; query with the same encoder or rebuild the index"
            )

    def refresh(self, *, strict: bool = False) -> bool:
        """Reload if another process committed a newer generation; return whether it did.

        Reads the manifest and the catalog's counts from disk. ``strict``: a damaged index on
        disk raises :class:`IndexFormatError` (else the loaded state is kept), and the vector
        file is checked against its checksum even when unchanged.
        """
        try:
            manifest = read_manifest(self.path)
            vectors = self.path / f"vectors-{self.generation}.faiss"
            if strict and manifest["generation"] == self.generation and self.format_version >= 2:
                try:
                    check_file(vectors, manifest["vectors_checksum"], repair_hint="repair it")
                except IndexCorruptError:
                    if vectors.exists():
                        raise
                    manifest = read_manifest(self.path)  # a writer committed meanwhile
        except IndexFormatError:
            if strict:
                raise
            return False
        if manifest["generation"] == self.generation:
            return False
        fresh = ModelIndex.open(self.path)
        self.manifest, self.store = fresh.manifest, fresh.store
        return True

    def stored_spec(self, path: str) -> str | None:
        """The spec JSON stored with the model read from ``path`` (as recorded), or ``None``."""
        rows = self.query_catalog(
            "SELECT spec_json FROM models WHERE path = ? AND spec_json != '' LIMIT 1", (str(path),)
        )
        return str(rows[0][0]) if rows else None

    def _hash_to_id(self) -> dict[str, int]:
        return hash_to_id(self.path / META_FILE)

    def query_catalog(self, sql: str, values: Sequence[Any] = ()) -> list[Any]:
        """Rows of a read-only catalog query on this thread's connection; SQLite errors become
        one-line :class:`IndexCorruptError` (or :class:`IndexBusyError`)."""
        with catalog_errors(self.path / META_FILE):
            return self._connection().execute(sql, values).fetchall()

    # -------------------------------------------------------------- reading
    def get(self, model_id: int) -> ModelRecord | None:
        """The stored metadata of one model, or ``None`` (also for ids no SQLite integer holds)."""
        model_id = int(model_id)
        if not 0 <= model_id < 2**63:
            return None
        rows = self.query_catalog(f"SELECT {RECORD_COLUMNS} FROM models WHERE id = ?", (model_id,))
        return self._flagged(record_from_row(rows[0], self.path)) if rows else None

    def find_hash(self, digest: str) -> ModelRecord | None:
        """The stored model with this content hash, or ``None``."""
        rows = self.query_catalog(
            f"SELECT {RECORD_COLUMNS} FROM models WHERE content_hash = ?", (str(digest),)
        )
        return self._flagged(record_from_row(rows[0], self.path)) if rows else None

    def _flagged(self, record: ModelRecord) -> ModelRecord:
        return with_graph_only({record.id: record}, self.query_catalog)[record.id]

    def _allowed_rows(self, filters: Mapping[str, Any]) -> np.ndarray:
        query, values = filter_query(filters)
        ids = [row[0] for row in self.query_catalog(query, values)]
        return np.asarray([i for i in ids if i < len(self.store)], dtype=np.int64)

    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        *,
        filters: Iterable[str] | Mapping[str, Any] | None = None,
    ) -> SearchResults:
        """Nearest stored models of each query vector ``(q, dim)`` (or ``(dim,)``): a list of
        hit lists, one per query (``.to_frame()`` makes a table; :meth:`search_arrays` gives
        FAISS-style arrays).

        Args:
            queries: embeddings from this index's encoder; normalised here.
            k: neighbours per query.
            filters: ``key=value`` strings or a mapping; keys are metric names (``task``,
                ``epoch``, ...) or ``path``, ``content_hash``, ``arch_summary``.
        """
        scores, rows = self._search_rows(queries, k, filters)
        ids = sorted({int(r) for r in rows.ravel() if r >= 0})
        records: dict[int, ModelRecord] = {}
        if ids:
            placeholders = ",".join("?" * len(ids))
            for row in self.query_catalog(
                f"SELECT {RECORD_COLUMNS} FROM models WHERE id IN ({placeholders})", ids
            ):
                records[row[0]] = record_from_row(row, self.path)
        records = with_graph_only(records, self.query_catalog)
        return SearchResults(hits_from(scores, rows, records))

    def _search_rows(
        self, queries: np.ndarray, k: int, filters: Iterable[str] | Mapping[str, Any] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Checked, normalised queries searched in the vector store: ``(scores, rows)``."""
        queries = self._checked_queries(queries, k)
        parsed = parse_filters(filters)
        allowed = self._allowed_rows(parsed) if parsed else None
        return self.store.search(queries, k, allowed_rows=allowed)

    def search_arrays(
        self,
        queries: np.ndarray,
        k: int = 10,
        *,
        filters: Iterable[str] | Mapping[str, Any] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` as FAISS answers: ``(scores, ids)``, both ``(q, k)``.

        ``scores[i, j]`` is the cosine similarity :math:`\\langle \\hat q_i, \\hat x_{id}
        \\rangle` (larger is nearer), rows sorted best first; ``ids`` are catalog ids for
        :meth:`get`. Where fewer than ``k`` models qualify, ``ids`` is ``-1`` and ``scores`` is
        ``-FLT_MAX``, as FAISS pads inner-product results.
        """
        scores, rows = self._search_rows(queries, k, filters)
        pad = k - rows.shape[1]
        ids = np.pad(rows.astype(np.int64), ((0, 0), (0, pad)), constant_values=-1)
        filled = np.pad(
            scores.astype(np.float32),
            ((0, 0), (0, pad)),
            constant_values=-np.finfo(np.float32).max,
        )
        return filled, ids

    def search_models(
        self,
        models: Sequence[LoadedModel | ModelInput],
        embedder: Embedder,
        k: int = 10,
        *,
        filters: Iterable[str] | Mapping[str, Any] | None = None,
    ) -> SearchResults:
        """Embed ``models`` with ``embedder`` (checked against the index) and search.

        ``models`` as :meth:`add` takes them (an ``nn.Module``, a path, ``(spec,
        state_dict)``, ...); one list of hits per model, in order (a directory counts as its
        files).
        """
        self.check_embedder(embedder)
        loaded = list(self.models_from(models))
        if not loaded:
            raise WeightspaceError("no models to search with")
        return self.search(embed_loaded(embedder, loaded), k, filters=filters)
