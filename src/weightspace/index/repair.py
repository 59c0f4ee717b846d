"""``weightspace index repair``: rebuild an index's vector file from its catalog.

The catalog stores every model's unit vector beside its row; a batch whose stored vectors match
their checksum (:mod:`weightspace.index.integrity`) is copied back, any other model is
re-embedded from its source file, checked against its content hash.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from weightspace.index.catalog import (
    META_FILE,
    RECORD_COLUMNS,
    catalog_errors,
    connect,
    read_manifest,
    record_from_row,
)
from weightspace.index.embedders import (
    Embedder,
    content_hash,
    embed_loaded,
    embedder_fingerprint,
    encoder_from_manifest,
)
from weightspace.index.errors import EncoderMismatchError, IndexCorruptError
from weightspace.index.integrity import hasher_of, rows_digest
from weightspace.index.vectors import (
    DEFAULT_APPROXIMATE_THRESHOLD,
    DEFAULT_TARGET_RECALL,
    VectorStore,
)
from weightspace.index.writing import commit, write_lock

if TYPE_CHECKING:
    from weightspace.sources import ModelLoader

__all__ = ["repair_index"]


def repair_index(
    path: str | Path,
    *,
    embedder: Embedder | None = None,
    loader: ModelLoader | None = None,
    batch_size: int = 64,
    lock_timeout: float = 10.0,
) -> dict[str, int]:
    """Rebuild an index's vector file from the catalog's stored embeddings, re-embedding from
    the source files the models where the catalog lacks them (format 1) or they fail their
    checksum; commit it as a new generation with fresh checksums.

    The catalog rows themselves must be intact (a row that fails its checksum is refused: the
    right value is unknown); rebuild such an index from its sources instead.

    Args:
        path: the index directory.
        embedder: the encoder for re-embedding (default: the encoder directory the index
            records, checked against its fingerprint); only needed when something is re-embedded.
        loader: reads a source checkpoint file (default :func:`weightspace.ingest.load_model_file`).

    Returns:
        ``{"models", "from_catalog", "re_embedded"}``.
    """
    from weightspace.sources import load_model_file, load_source

    path = Path(path)
    meta = path / META_FILE
    with write_lock(path, lock_timeout):
        manifest = read_manifest(path)
        dim = int(manifest["dim"])
        with catalog_errors(meta):
            connection = connect(meta)
            try:
                columns = {row[1] for row in connection.execute("PRAGMA table_info(models)")}
                blob = "embedding" if "embedding" in columns else "NULL"
                records = connection.execute(
                    f"SELECT {RECORD_COLUMNS}, {blob} FROM models ORDER BY id"
                ).fetchall()
                batches = (
                    connection.execute(
                        "SELECT first_id, count, vectors_digest, rows_digest FROM batches"
                    ).fetchall()
                    if manifest["format_version"] >= 2
                    else []
                )
            finally:
                connection.close()
        if [r[0] for r in records] != list(range(len(records))):
            raise IndexCorruptError(f"{meta}: catalog ids are not 0..n-1; rebuild the index")
        trusted = np.zeros(len(records), dtype=bool)
        for first, count, vectors_sum, rows_sum in batches:
            span = records[first : first + count]
            if rows_digest(r[:7] for r in span) != rows_sum:
                raise IndexCorruptError(
                    f"{meta}: the catalog rows of models {first}..{first + count - 1} do not match "
                    f"their checksum; repair rebuilds vectors only: rebuild the index from its "
                    f"sources with `weightspace index build --overwrite`"
                )
            blobs = b"".join(r[7] if isinstance(r[7], bytes) else b"" for r in span)
            if hasher_of(blobs) == vectors_sum:
                trusted[first : first + count] = True
        rows = [record_from_row(r[:7], path) for r in records]  # damaged rows raise here
        vectors = np.zeros((len(records), dim), dtype=np.float32)
        missing: list[int] = []
        for i, record in enumerate(records):
            data = record[7]
            if trusted[i] and isinstance(data, bytes) and len(data) == 4 * dim:
                vectors[i] = np.frombuffer(data, dtype=np.float32)
            else:
                missing.append(i)
        if missing:
            embedder = embedder or encoder_from_manifest(path, manifest)
            if embedder_fingerprint(embedder) != manifest["fingerprint"]:
                raise EncoderMismatchError(
                    f"{path}: built with encoder {str(manifest['fingerprint'])[:16]}, the given "
                    f"one is {embedder_fingerprint(embedder)[:16]}; repair needs the original"
                )
            for start in range(0, len(missing), batch_size):
                chunk = missing[start : start + batch_size]
                loaded = [
                    load_source(rows[i].path, rows[i].spec_json, loader=loader or load_model_file)
                    for i in chunk
                ]
                for i, model in zip(chunk, loaded, strict=True):
                    if content_hash(model.spec_json, model.tensors) != rows[i].content_hash:
                        raise IndexCorruptError(
                            f"{rows[i].path}: its content changed since it was indexed as model "
                            f"{i}; rebuild the index from the current sources"
                        )
                vectors[chunk] = embed_loaded(embedder, loaded)
        state = manifest["store"]
        try:
            store = VectorStore(
                dim,
                kind=state.get("kind", "auto"),
                approximate_threshold=int(
                    state.get("approximate_threshold", DEFAULT_APPROXIMATE_THRESHOLD)
                ),
                target_recall=float(state.get("target_recall", DEFAULT_TARGET_RECALL)),
            )
        except (TypeError, ValueError):  # damaged settings: the defaults
            store = VectorStore(dim)
        store.add(vectors)
        keep = ("fingerprint", "encoder", "dim", "created_at")
        commit(
            path,
            {key: manifest[key] for key in keep if key in manifest},
            store,
            [
                {
                    "path": r.path,
                    "content_hash": r.content_hash,
                    "spec_summary": r.spec_summary,
                    "spec_json": r.spec_json,
                    "metrics": r.metrics,
                    "added_at": r.added_at,
                }
                for r in rows
            ],
            vectors,
            first_id=0,
            reset=True,
            on_progress=None,
        )
    return {
        "models": len(records),
        "from_catalog": len(records) - len(missing),
        "re_embedded": len(missing),
    }
