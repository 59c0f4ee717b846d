"""What an index returns: the stored metadata of a model (:class:`ModelRecord`) and a search
hit (:class:`SearchHit`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from weightspace.spec import NetworkSpec

__all__ = ["ModelRecord", "SearchHit"]


#: Metrics shown in a :class:`SearchHit`'s repr, when a record has them.
_KEY_METRICS = ("task", "run", "epoch", "test_accuracy")


@dataclass(frozen=True)
class ModelRecord:
    """The stored metadata of one model, with the architecture it was read with
    (``spec_json``; :attr:`spec` parses it), so it can be read again without flags."""

    id: int
    path: str
    content_hash: str
    spec_summary: str
    spec_json: str = field(repr=False)
    metrics: dict[str, Any]
    added_at: str
    #: embedded by the graph branch alone: the model could not be run on the encoder's probes
    #: (``Encoder.last_fallback``); indexes built before this flag existed read ``False``
    graph_only: bool = False

    @property
    def spec(self) -> NetworkSpec | None:
        """The stored architecture as a :class:`~weightspace.spec.NetworkSpec` (``None`` when
        the record has none)."""
        if not self.spec_json:
            return None
        from weightspace.spec import NetworkSpec

        return NetworkSpec.from_json(self.spec_json)

    def to_dict(self, *, include_spec: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "path": self.path,
            "content_hash": self.content_hash,
            "arch_summary": self.spec_summary,
            "metrics": self.metrics,
            "added_at": self.added_at,
            "graph_only": self.graph_only,
        }
        if include_spec:
            out["spec"] = json.loads(self.spec_json) if self.spec_json else None
        return out


@dataclass(frozen=True)
class SearchHit:
    """One neighbour: its cosine ``score`` and stored metadata."""

    rank: int
    score: float
    record: ModelRecord

    def __repr__(self) -> str:
        shown = {k: self.record.metrics[k] for k in _KEY_METRICS if k in self.record.metrics}
        extra = "".join(f", {k}={v!r}" for k, v in shown.items())
        return (
            f"SearchHit(rank={self.rank}, score={self.score:.4f}, id={self.record.id}, "
            f"path={self.record.path!r}, arch={self.record.spec_summary!r}{extra})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "score": self.score, **self.record.to_dict()}
