"""Where evaluated models come from: checkpoint tables, graph sources and retrieval galleries.

Every protocol reads the zoo's checkpoint table (one row per checkpoint, with ``checkpoint_id``
and ``run_id`` columns, and ``task`` / ``arch`` / ``epoch`` / accuracies where the zoo has them)
and loads graphs from a *graph source*: a :class:`~weightspace.zoo.Zoo` (``.graph(id)``), a
mapping id → graph or a function id → graph.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from weightspace.errors import WeightspaceError
from weightspace.graph import NeuralGraph

__all__ = [
    "ID_COLUMNS",
    "RUN_COLUMNS",
    "Gallery",
    "GraphSource",
    "ProtocolError",
    "column_name",
    "graph_from",
    "load_gallery",
    "rows_of",
]

#: Accepted names of the checkpoint-id column, in order of preference.
ID_COLUMNS = ("checkpoint_id", "id")
#: Accepted names of the run-id column, in order of preference.
RUN_COLUMNS = ("run_id", "run")

#: Where graphs come from: a mapping id → graph, a function id → graph, or a zoo (``.graph(id)``).
GraphSource = Mapping[str, NeuralGraph] | Callable[[str], NeuralGraph] | Any


class ProtocolError(WeightspaceError, ValueError):
    """A protocol got inconsistent inputs (empty split, missing column, too small a gallery)."""


def column_name(table: pd.DataFrame, candidates: Sequence[str], what: str) -> str:
    """The first of ``candidates`` that ``table`` has; :class:`ProtocolError` naming ``what``
    otherwise."""
    for name in candidates:
        if name in table.columns:
            return name
    raise ProtocolError(
        f"the table has no {what} column (looked for {list(candidates)}); it has "
        f"{list(table.columns)[:12]}"
    )


def graph_from(source: GraphSource, checkpoint_id: str) -> NeuralGraph:
    """Load the graph of ``checkpoint_id`` from a zoo, a mapping or a function."""
    if hasattr(source, "graph"):
        return source.graph(checkpoint_id)
    if isinstance(source, Mapping):
        try:
            return source[checkpoint_id]
        except KeyError:
            raise ProtocolError(f"no graph for checkpoint {checkpoint_id!r}") from None
    if callable(source):
        return source(checkpoint_id)
    raise ProtocolError(
        f"cannot load graphs from a {type(source).__name__}; pass a Zoo, a mapping id -> "
        "NeuralGraph or a function id -> NeuralGraph"
    )


def rows_of(table: pd.DataFrame, ids: Sequence[str]) -> pd.DataFrame:
    """The rows of ``ids``, in that order, indexed by checkpoint id."""
    id_col = column_name(table, ID_COLUMNS, "checkpoint id")
    indexed = table.set_index(id_col, drop=False)
    missing = [i for i in ids if i not in indexed.index]
    if missing:
        raise ProtocolError(f"checkpoints {missing[:5]} are not in the table")
    return indexed.loc[list(ids)]


@dataclass(frozen=True)
class Gallery:
    """Graphs of a set of checkpoints with the metadata retrieval needs, in one order."""

    ids: tuple[str, ...]
    graphs: list[NeuralGraph]
    runs: tuple[str, ...]
    tasks: tuple[str, ...] | None = None


def load_gallery(source: GraphSource, table: pd.DataFrame, ids: Sequence[str]) -> Gallery:
    """Load the graphs of ``ids`` from ``source`` with their runs and (if known) tasks."""
    rows = rows_of(table, ids)
    run_col = column_name(table, RUN_COLUMNS, "run id")
    tasks = tuple(str(t) for t in rows["task"]) if "task" in rows.columns else None
    return Gallery(
        ids=tuple(ids),
        graphs=[graph_from(source, i) for i in ids],
        runs=tuple(str(r) for r in rows[run_col]),
        tasks=tasks,
    )
