"""Writing an index: embed in batches, then commit a new generation atomically.

Every write takes ``write.lock``, writes the new FAISS file under a fresh generation name
(temporary file, fsync, rename), then commits the SQLite rows, the batch's checksums and the new
generation number in one transaction; only then is the previous FAISS file removed. A writer
killed at any point leaves the previously committed index loadable: SQLite rolls back the
unfinished transaction and the manifest still names the previous FAISS file. A model whose
content hash (spec plus tensors) is already stored is not stored again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from weightspace.errors import WeightspaceError
from weightspace.index.catalog import (
    INDEX_FORMAT_VERSION,
    existing_generation,
    model_row,
    now,
)
from weightspace.index.commit import LOCK_FILE, ProgressCallback, commit, write_lock
from weightspace.index.embedders import (
    Embedder,
    content_hash,
    embed_loaded,
    embedder_fingerprint,
    graph_only_flags,
    recordable_encoder,
)
from weightspace.index.vectors import (
    DEFAULT_APPROXIMATE_THRESHOLD,
    IndexKind,
    VectorStore,
)

if TYPE_CHECKING:
    from weightspace.sources import LoadedModel

__all__ = [
    "AddReport",
    "ProgressCallback",
    "LOCK_FILE",
    "embed_batches",
    "write_lock",
    "commit",
    "build_index",
    "build_index_from_vectors",
    "dedupe_records",
    "resolve_ids",
]


@dataclass
class AddReport:
    """What an add stored: new ids, and inputs skipped as already stored (path, existing id)."""

    added: list[int] = field(default_factory=list)
    duplicates: list[tuple[str, int]] = field(default_factory=list)


def declared_dim(embedder: Embedder) -> int:
    """The embedder's ``dim`` attribute, needed when there is no first embedding to read it off."""
    dim = getattr(embedder, "dim", None)
    if dim is None:
        raise WeightspaceError(
            "no models to index and the encoder declares no dim; give at least one checkpoint"
        )
    return int(dim)


def embed_batches(
    models: Iterable[LoadedModel],
    embedder: Embedder,
    *,
    known_hashes: Mapping[str, int],
    batch_size: int,
    on_progress: ProgressCallback | None,
) -> tuple[list[dict[str, Any]], np.ndarray, AddReport]:
    """Hash, de-duplicate and embed in batches of ``batch_size``; nothing is written here.

    Returns the catalog rows of the new models, their unit vectors ``(len(rows), dim)`` and a
    report whose duplicates refer to ``known_hashes`` ids, or to a new model as ``-1 - its
    position`` (resolved to an id by the caller once committed). Each model is handed to the
    embedder as it wants it (:func:`~weightspace.index.embedders.embedder_inputs`).
    """
    report = AddReport()
    seen = dict(known_hashes)
    rows: list[dict[str, Any]] = []
    chunks: list[np.ndarray] = []
    batch: list[tuple[dict[str, Any], LoadedModel]] = []

    def flush() -> None:
        if not batch:
            return
        vectors = embed_loaded(embedder, [model for _, model in batch])
        chunks.append(vectors)
        for (row, _), flag in zip(batch, graph_only_flags(embedder, len(batch)), strict=True):
            row["graph_only"] = flag
        rows.extend(r for r, _ in batch)
        batch.clear()
        if on_progress is not None:
            on_progress("embed", len(rows), 0)  # total unknown: inputs are streamed

    for model in models:
        digest = content_hash(model.spec_json, model.tensors)
        if digest in seen:
            report.duplicates.append((model.path, seen[digest]))
            continue
        # a later duplicate of this model refers to it as -1 - its position until committed
        seen[digest] = -1 - (len(rows) + len(batch))
        record = model_row(
            {
                "path": model.path,
                "content_hash": digest,
                "spec_summary": model.spec_summary,
                "spec_json": model.spec_json,
                "metrics": model.metrics,
            }
        )
        batch.append((record, model))
        if len(batch) >= batch_size:
            flush()
    flush()
    if chunks:
        vectors = np.concatenate(chunks)
    else:
        dim = getattr(embedder, "dim", None)
        vectors = np.zeros((0, int(dim) if dim else 0), dtype=np.float32)
    return rows, vectors, report


def _refuse_existing(path: Path, overwrite: bool) -> None:
    """Refuse to build over a committed index at ``path`` unless ``overwrite``."""
    if not overwrite and existing_generation(path) is not None:
        raise WeightspaceError(
            f"{path}: an index already exists; use `index add` to extend it or "
            f"--overwrite to replace it"
        )


def _recorded_encoder(path: Path, encoder: str | None) -> str | None:
    """``encoder`` as an index records it (:func:`recordable_encoder`), or ``None`` for none;
    an importable ``module:attr`` is refused (an index never names code)."""
    if encoder is None:
        return None
    recorded = recordable_encoder(encoder)
    if recorded is None:
        raise WeightspaceError(
            f"{path}: an index records only an encoder directory or pretrained:NAME, not "
            f"{str(encoder)!r}"
        )
    return recorded


def build_index(
    path: Path,
    models: Iterable[LoadedModel],
    embedder: Embedder,
    *,
    encoder: str | None = None,
    kind: IndexKind = "auto",
    approximate_threshold: int = DEFAULT_APPROXIMATE_THRESHOLD,
    overwrite: bool = False,
    batch_size: int = 64,
    on_progress: ProgressCallback | None = None,
    lock_timeout: float = 10.0,
) -> AddReport:
    """Embed ``models`` and store them as a new index at ``path``.

    An existing index at ``path`` is replaced only with ``overwrite=True``, and only when the
    new one is committed: a build that fails or is killed leaves it as it was. ``encoder`` is
    the encoder's directory, recorded so that later commands can load it without
    ``--encoder``; an importable ``module:attr`` is refused here (an index never names code).
    """
    fingerprint = embedder_fingerprint(embedder)
    path = Path(path)
    encoder = _recorded_encoder(path, encoder)
    _refuse_existing(path, overwrite)  # fail before embedding
    records, vectors, report = embed_batches(
        models, embedder, known_hashes={}, batch_size=batch_size, on_progress=on_progress
    )
    dim = int(vectors.shape[1]) if len(vectors) else declared_dim(embedder)
    store = VectorStore(dim, kind=kind, approximate_threshold=approximate_threshold)
    store.add(vectors)
    manifest = {
        "format_version": INDEX_FORMAT_VERSION,
        "fingerprint": fingerprint,
        "encoder": encoder,
        "dim": dim,
        "created_at": now(),
    }
    path.mkdir(parents=True, exist_ok=True)
    with write_lock(path, lock_timeout):
        _refuse_existing(path, overwrite)
        commit(
            path,
            manifest,
            store,
            records,
            vectors,
            first_id=0,
            reset=True,
            on_progress=on_progress,
        )
    resolve_ids(report, 0, len(records))
    return report


def dedupe_records(
    records: Sequence[Mapping[str, Any]], known: Mapping[str, int]
) -> tuple[list[int], list[dict[str, Any]], AddReport]:
    """The positions and catalog rows of ``records`` whose content hash is in neither ``known``
    (hash → id) nor earlier in ``records``, and a report of the others (see
    :func:`embed_batches` for how a duplicate of a new record refers to it)."""
    seen = dict(known)
    report = AddReport()
    keep: list[int] = []
    rows: list[dict[str, Any]] = []
    for i, record in enumerate(records):
        digest = str(record["content_hash"])
        if digest in seen:
            report.duplicates.append((str(record["path"]), seen[digest]))
            continue
        seen[digest] = -1 - len(keep)
        keep.append(i)
        rows.append(model_row(record))
    return keep, rows, report


def resolve_ids(report: AddReport, first_id: int, count: int) -> None:
    """Once ``count`` new rows are committed from ``first_id`` on: record their ids, and turn
    duplicates' references to new models (``-1 - position``) into ids."""
    report.added.extend(range(first_id, first_id + count))
    report.duplicates[:] = [
        (source, first_id - 1 - existing if existing < 0 else existing)
        for source, existing in report.duplicates
    ]


def build_index_from_vectors(
    path: Path,
    records: Sequence[Mapping[str, Any]],
    vectors: np.ndarray,
    *,
    fingerprint: str,
    encoder: str | None = None,
    kind: IndexKind = "auto",
    approximate_threshold: int = DEFAULT_APPROXIMATE_THRESHOLD,
    overwrite: bool = False,
    on_progress: ProgressCallback | None = None,
    lock_timeout: float = 10.0,
) -> AddReport:
    """:func:`build_index` for vectors embedded elsewhere (``index build --ray``): store
    ``records`` (``path``, ``content_hash``, optional ``spec_summary``, ``spec_json``,
    ``metrics``) with their unit ``vectors`` ``(len(records), dim)`` as a new index at ``path``,
    in one commit, de-duplicated by content hash as :func:`build_index` does (the first of equal
    models is kept; ids follow the order of ``records``).

    ``vectors`` are stored as given (already normalised by the caller, as
    :func:`embed_batches` does), so the stored bits are those the caller computed.
    """
    path = Path(path)
    encoder = _recorded_encoder(path, encoder)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(records):
        raise ValueError(f"got vectors of shape {vectors.shape} for {len(records)} records")
    keep, rows, report = dedupe_records(records, {})
    store = VectorStore(
        int(vectors.shape[1]), kind=kind, approximate_threshold=approximate_threshold
    )
    store.add(vectors[keep])
    manifest = {
        "format_version": INDEX_FORMAT_VERSION,
        "fingerprint": fingerprint,
        "encoder": encoder,
        "dim": int(vectors.shape[1]),
        "created_at": now(),
    }
    path.mkdir(parents=True, exist_ok=True)
    with write_lock(path, lock_timeout):
        _refuse_existing(path, overwrite)
        commit(
            path,
            manifest,
            store,
            rows,
            vectors[keep],
            first_id=0,
            reset=True,
            on_progress=on_progress,
        )
    resolve_ids(report, 0, len(rows))
    return report
