"""Search results as a pandas table: :func:`hits_to_frame` and :class:`SearchResults`.

.. code-block:: python

    results = index.search_models([model], encoder, k=5)   # SearchResults, a list of hit lists
    frame = results.to_frame()      # one row per hit: query, rank, score, id, path, metrics...
    scores, ids = index.search_arrays(z, k=5)               # FAISS-style (q, k) arrays
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from weightspace.index.catalog import SearchHit

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["FRAME_COLUMNS", "SearchResults", "hits_to_frame"]

#: The leading columns of :func:`hits_to_frame`; each metric follows as its own column.
FRAME_COLUMNS = ("query", "rank", "score", "id", "path", "arch_summary", "content_hash")


def hits_to_frame(hits: Sequence[SearchHit] | Sequence[Sequence[SearchHit]]) -> pd.DataFrame:
    """One row per hit: ``query`` (the query's position; 0 for a single hit list), ``rank``,
    ``score``, ``id``, ``path``, ``arch_summary``, ``content_hash``, then one column per stored
    metric (``task``, ``epoch``, ``test_accuracy``, ...; empty where a model lacks it). A metric
    named like a leading column is kept as ``metric_NAME``.

    Args:
        hits: one query's hits (what ``search(...)[i]`` is) or the lists of several queries.
    """
    import pandas as pd

    per_query = [hits] if hits and isinstance(hits[0], SearchHit) else hits
    rows = []
    for query, query_hits in enumerate(per_query):
        for hit in query_hits:  # type: ignore[union-attr]
            record = hit.record
            row = {
                "query": query,
                "rank": hit.rank,
                "score": hit.score,
                "id": record.id,
                "path": record.path,
                "arch_summary": record.spec_summary,
                "content_hash": record.content_hash,
            }
            for key, value in record.metrics.items():
                row[f"metric_{key}" if key in FRAME_COLUMNS else key] = value
            rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=list(FRAME_COLUMNS))
    return frame


class SearchResults(list):
    """What :meth:`ModelIndex.search` returns: a plain list (one list of
    :class:`~weightspace.index.catalog.SearchHit` per query) that also makes a table."""

    def to_frame(self) -> pd.DataFrame:
        """:func:`hits_to_frame` of every query's hits."""
        return hits_to_frame(self)
