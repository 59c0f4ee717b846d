"""Building and extending a :class:`~weightspace.index.ModelIndex`: embed, de-duplicate by
content hash, and commit a new generation under the write lock
(:mod:`weightspace.index.writing`, :mod:`weightspace.index.commit`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from weightspace.errors import WeightspaceError
from weightspace.index.catalog import INDEX_FORMAT_VERSION
from weightspace.index.embedders import Embedder, normalise
from weightspace.index.errors import IndexFormatError
from weightspace.index.vectors import DEFAULT_APPROXIMATE_THRESHOLD, IndexKind
from weightspace.index.writing import (
    AddReport,
    ProgressCallback,
    build_index,
    commit,
    dedupe_records,
    embed_batches,
    resolve_ids,
    write_lock,
)

if TYPE_CHECKING:
    from weightspace.index.model_index import ModelIndex
    from weightspace.models import ModelInput
    from weightspace.sources import LoadedModel

__all__ = ["ModelIndexWrites"]


class ModelIndexWrites:
    """The writing half of :class:`~weightspace.index.ModelIndex` (a mixin: it uses the
    index's path, manifest, store and checks)."""

    # -------------------------------------------------------------- building
    @classmethod
    def build(
        cls,
        path: str | Path,
        models: Iterable[LoadedModel | ModelInput],
        embedder: Embedder,
        *,
        encoder: str | None = None,
        kind: IndexKind = "auto",
        approximate_threshold: int = DEFAULT_APPROXIMATE_THRESHOLD,
        overwrite: bool = False,
        batch_size: int = 64,
        on_progress: ProgressCallback | None = None,
        lock_timeout: float = 10.0,
    ) -> tuple[ModelIndex, AddReport]:
        """Embed ``models`` and store them as a new index at ``path``; return it opened.

        An existing index at ``path`` is replaced only with ``overwrite=True``, and only when the
        new one is committed (:func:`~weightspace.index.writing.build_index`). ``encoder`` is
        the encoder's directory, recorded so that later commands can load it without
        ``--encoder``; an importable ``module:attr`` is refused (an index never names code).
        ``models`` may be in any form :func:`~weightspace.sources.iter_models` reads.
        """
        from weightspace.sources import iter_models

        report = build_index(
            Path(path),
            iter_models(models),
            embedder,
            encoder=encoder,
            kind=kind,
            approximate_threshold=approximate_threshold,
            overwrite=overwrite,
            batch_size=batch_size,
            on_progress=on_progress,
            lock_timeout=lock_timeout,
        )
        return cls.open(path), report

    def add(
        self,
        models: Iterable[LoadedModel | ModelInput],
        embedder: Embedder,
        *,
        batch_size: int = 64,
        on_progress: ProgressCallback | None = None,
        lock_timeout: float = 10.0,
    ) -> AddReport:
        """Embed and store ``models`` not stored yet (by content hash); commit atomically.

        ``models``: checkpoint paths (files, directories, zoos), modules (``nn.Module``), ``(spec,
        state_dict)`` pairs, SpecModules, NeuralGraphs or :class:`~weightspace.sources.
        LoadedModel` objects (:func:`~weightspace.sources.iter_models`). A plain state dict this
        index has read before (same path) is read with the spec stored then.
        """
        self.check_embedder(embedder)
        with write_lock(self.path, lock_timeout):
            self._reload_for_writing()
            records, vectors, report = embed_batches(
                self.models_from(models),
                embedder,
                known_hashes=self._hash_to_id(),
                batch_size=batch_size,
                on_progress=on_progress,
            )
            self._append_locked(records, vectors, report, on_progress)
        return report

    def add_vectors(
        self,
        vectors: np.ndarray,
        records: Sequence[Mapping[str, Any]],
        *,
        on_progress: ProgressCallback | None = None,
        lock_timeout: float = 10.0,
    ) -> AddReport:
        """Store precomputed vectors ``(n, dim)`` with metadata records.

        Each record needs ``path`` and ``content_hash``, and may have ``spec_summary``,
        ``spec_json`` and ``metrics``. The vectors must come from this index's encoder.
        """
        vectors = normalise(np.asarray(vectors, dtype=np.float32))
        if len(records) != len(vectors):
            raise ValueError(f"got {len(vectors)} vectors but {len(records)} records")
        with write_lock(self.path, lock_timeout):
            self._reload_for_writing()
            keep, rows, report = dedupe_records(records, self._hash_to_id())
            self._append_locked(rows, vectors[keep], report, on_progress)
        return report

    def _append_locked(
        self,
        rows: list[dict[str, Any]],
        vectors: np.ndarray,
        report: AddReport,
        on_progress: ProgressCallback | None,
    ) -> None:
        if not rows:
            return
        if vectors.shape[1] != self.dim:
            raise WeightspaceError(
                f"{self.path}: vectors have dim {vectors.shape[1]}, the index holds dim {self.dim}"
            )
        first_id = len(self.store)
        self.store.add(vectors)
        try:
            commit(
                self.path,
                self.manifest,
                self.store,
                rows,
                vectors,
                first_id=first_id,
                reset=False,
                on_progress=on_progress,
            )
        finally:
            self._reload_locked()  # on failure, back to the committed state
        resolve_ids(report, first_id, len(rows))

    def _reload_locked(self) -> None:
        fresh = type(self).open(self.path)  # type: ignore[attr-defined]
        self.manifest, self.store = fresh.manifest, fresh.store

    def _reload_for_writing(self) -> None:
        """Reload under the write lock; refuse to extend an old-format or damaged catalog."""
        self._reload_locked()
        if self.format_version < INDEX_FORMAT_VERSION:
            raise IndexFormatError(
                f"{self.path}: index format {self.format_version} has no checksums and cannot be "
                f"extended; upgrade it with `weightspace index repair {self.path}` (re-embeds "
                f"from the source files) or rebuild it"
            )
        self.check_catalog()
