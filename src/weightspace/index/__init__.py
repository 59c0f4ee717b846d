"""A persistent vector index of checkpoints: FAISS for the vectors, SQLite for the metadata.

An index is a directory::

    INDEX/
      meta.sqlite              manifest (format version, encoder directory and fingerprint, dim,
                               kind, recall, generation, checksum of the vector file), one row per
                               model (path, content hash, spec, metrics, embedding) and one row per
                               committed batch (its checksums)
      vectors-<generation>.faiss   the FAISS index of the committed generation
      write.lock               held by the one process allowed to write

The package, by concept (the path from a file to the index visits each once):

* :mod:`weightspace.sources` — checkpoint files, directories and zoo rows → :class:`LoadedModel`
  (re-exported here);
* :mod:`~weightspace.index.embedders` — the :class:`Embedder` protocol, fingerprints, content
  hashes, unit vectors;
* :mod:`~weightspace.index.vectors` — :class:`VectorStore`, exact or approximate FAISS search;
* :mod:`~weightspace.index.catalog` — the SQLite catalog: manifest, records, filters;
* :mod:`~weightspace.index.writing` — batches embedded, then committed atomically under a lock;
* :mod:`~weightspace.index.model_index` — :class:`ModelIndex`, the two joined;
* :mod:`~weightspace.index.postgres` — :class:`PostgresIndex`, the same interface over
  PostgreSQL + pgvector (many writers; ``--backend pgvector --dsn``);
* :mod:`~weightspace.index.integrity`, :mod:`~weightspace.index.repair` — checksums, ``index info
  --verify`` and ``index repair``.

Scores are inner products of L2-normalised vectors, i.e. cosine similarities in ``[-1, 1]``.
No code from data: an index records its encoder as a directory path and a fingerprint only.
Importing this package loads numpy only; FAISS, torch and the zoo load on first use.
"""

from __future__ import annotations

from weightspace.index.catalog import (
    INDEX_FORMAT_VERSION,
    READABLE_FORMAT_VERSIONS,
    ModelRecord,
    SearchHit,
    parse_filters,
)
from weightspace.index.embedders import (
    CanonicalisingEmbedder,
    Embedder,
    content_hash,
    embed_loaded,
    embed_models,
    embedder_fingerprint,
    embedder_inputs,
    encoder_from_manifest,
    load_embedder,
    load_encoder_directory,
)
from weightspace.index.errors import (
    EncoderMismatchError,
    IndexBusyError,
    IndexCorruptError,
    IndexFormatError,
)
from weightspace.index.frames import SearchResults, hits_to_frame
from weightspace.index.model_index import ModelIndex
from weightspace.index.postgres import PostgresIndex
from weightspace.index.vectors import (
    DEFAULT_APPROXIMATE_THRESHOLD,
    DEFAULT_TARGET_RECALL,
    IndexKind,
    VectorStore,
)
from weightspace.index.writing import AddReport, ProgressCallback
from weightspace.sources import (
    LoadedModel,
    ModelLoader,
    iter_inputs,
    iter_models,
    iter_zoo,
    load_model_file,
    load_source,
)

__all__ = [
    "SearchResults",
    "hits_to_frame",
    "INDEX_FORMAT_VERSION",
    "READABLE_FORMAT_VERSIONS",
    "DEFAULT_APPROXIMATE_THRESHOLD",
    "DEFAULT_TARGET_RECALL",
    "IndexKind",
    "ProgressCallback",
    "IndexFormatError",
    "IndexCorruptError",
    "EncoderMismatchError",
    "IndexBusyError",
    "Embedder",
    "CanonicalisingEmbedder",
    "LoadedModel",
    "ModelLoader",
    "ModelRecord",
    "SearchHit",
    "AddReport",
    "VectorStore",
    "ModelIndex",
    "PostgresIndex",
    "content_hash",
    "embed_models",
    "embed_loaded",
    "embedder_inputs",
    "embedder_fingerprint",
    "encoder_from_manifest",
    "load_model_file",
    "iter_zoo",
    "iter_inputs",
    "iter_models",
    "load_embedder",
    "load_encoder_directory",
    "load_source",
    "parse_filters",
]
