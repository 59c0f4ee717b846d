"""What the SQLite :class:`~weightspace.index.ModelIndex` and the
:class:`~weightspace.index.postgres.PostgresIndex` share: the manifest's fields and reading model
files with the specs an index stored."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from weightspace.errors import WeightspaceError
from weightspace.index.embedders import normalise

if TYPE_CHECKING:
    from weightspace.models import ModelInput
    from weightspace.sources import LoadedModel, ModelLoader

__all__ = ["IndexBase"]


class IndexBase:
    """Manifest properties and model reading for an index with a ``manifest`` dict and a
    :meth:`stored_spec` lookup (subclasses provide both)."""

    manifest: dict[str, Any]

    def stored_spec(self, path: str) -> str | None:  # pragma: no cover - overridden
        """The spec JSON stored with the model read from ``path`` (as recorded), or ``None``."""
        raise NotImplementedError

    # -------------------------------------------------------------- properties
    @property
    def fingerprint(self) -> str:
        return str(self.manifest["fingerprint"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def encoder(self) -> str | None:
        """The encoder directory recorded at build time, if any (never imported: see
        :meth:`load_encoder`)."""
        value = self.manifest.get("encoder")
        return None if value is None else str(value)

    def _checked_queries(self, queries: np.ndarray, k: int) -> np.ndarray:
        r"""Query vectors ``(q, dim)`` (or one ``(dim,)``) as float32 unit rows, after checking
        ``k >= 1`` and the width; each row :math:`q_i / \lVert q_i \rVert_2`."""
        if k < 1:
            raise WeightspaceError(f"k must be at least 1, got {k}")
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise WeightspaceError(
                f"query vectors have shape {queries.shape}; this index holds dim {self.dim}"
            )
        return normalise(queries, source="query")

    # -------------------------------------------------------------- reading models
    def file_loader(self, loader: ModelLoader | None = None) -> ModelLoader:
        """``loader`` (default :func:`~weightspace.sources.load_model_file`) falling back to the
        spec this index stored for a file it read before (:meth:`stored_spec`)."""
        from weightspace.sources import load_model_file, with_stored_specs

        return with_stored_specs(loader or load_model_file, self.stored_spec)

    def models_from(
        self, models: Iterable[LoadedModel | ModelInput], *, loader: ModelLoader | None = None
    ) -> Iterable[LoadedModel]:
        """``models`` in any accepted form as :class:`~weightspace.sources.LoadedModel` objects,
        files read with :meth:`file_loader`."""
        from weightspace.sources import iter_models

        return iter_models(models, loader=self.file_loader(loader))
