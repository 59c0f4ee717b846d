"""The zoo as ``bench`` reads it: its table, its graphs (loaded once), splits and galleries."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from weightspace.evaluate.api import ModelSet

__all__ = [
    "GraphCache",
    "first_line",
    "gallery_runs",
    "ids_of_runs",
    "model_set",
    "read_json",
    "split_runs",
    "zoo_table",
]


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (at most 300 characters), for the report."""
    return str(exc).split("\n")[0][:300]


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or ``None`` when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def zoo_table(zoo: Any) -> pd.DataFrame:
    """The zoo's rows, ids as strings, columns that hold nothing (an imported zoo without
    epochs or tasks) dropped so every consumer sees them as missing."""
    table = zoo.table.copy()
    table["checkpoint_id"] = table["checkpoint_id"].astype(str)
    if "run_id" not in table.columns or table["run_id"].isna().all():
        table["run_id"] = table["checkpoint_id"]
    table["run_id"] = table["run_id"].astype(str)
    empty = [c for c in table.columns if table[c].isna().all()]
    return table.drop(columns=empty)


class GraphCache:
    """Graphs of a zoo, loaded once."""

    def __init__(self, zoo: Any) -> None:
        self.zoo = zoo
        self._graphs: dict[str, Any] = {}

    def many(self, ids: Sequence[str]) -> list[Any]:
        """The graphs of these checkpoint ids, in order."""
        for i in ids:
            if i not in self._graphs:
                self._graphs[i] = self.zoo.graph(i)
        return [self._graphs[i] for i in ids]


def ids_of_runs(table: pd.DataFrame, runs: Sequence[str]) -> list[str]:
    """The checkpoint ids of these runs, in table order."""
    keep = table["run_id"].isin(set(map(str, runs)))
    return list(table.loc[keep, "checkpoint_id"])


def model_set(table: pd.DataFrame, graphs: GraphCache, ids: Sequence[str]) -> ModelSet:
    """The models of these checkpoint ids, with their zoo rows."""
    rows = table.set_index("checkpoint_id", drop=False).loc[list(ids)]
    return ModelSet(graphs.many(list(ids)), rows.reset_index(drop=True))


def split_runs(run_ids: Sequence[str], seed: int) -> dict[str, list[str]]:
    """The package's one run splitter (15 % validation, 15 % test runs)."""
    from weightspace.evaluate.splits import split_runs as split

    return split(list(run_ids), 0.15, 0.15, seed)


def gallery_runs(table: pd.DataFrame, test_ids: Sequence[str], cap: int, seed: int) -> list[str]:
    """Whole held-out runs, drawn in a seeded order until ``cap`` checkpoints."""
    rows = table[table["checkpoint_id"].isin(set(test_ids))]
    runs = sorted(rows["run_id"].unique())
    order = np.random.default_rng(seed).permutation(len(runs))
    sizes = rows.groupby("run_id").size()
    chosen, total = [], 0
    for i in order:
        if total + sizes[runs[i]] > cap and chosen:
            continue
        chosen.append(runs[i])
        total += int(sizes[runs[i]])
    return ids_of_runs(rows, chosen)
