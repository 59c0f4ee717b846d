"""The records of a ``zoo import`` metrics table: the table as read, its valid and bad rows, and
the error listing every bad row (see :mod:`weightspace.zoo.metrics_table`)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from weightspace.zoo.store import ZooError

__all__ = ["REQUIRED_COLUMNS", "BadRow", "MetricsTable", "MetricsTableError", "ValidRow"]


REQUIRED_COLUMNS = ("file", "test_accuracy")
#: A plain decimal number: no underscores, hex, words or surrounding junk.
_DECIMAL = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_NON_FINITE_WORDS = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "-infinity"}
_INT64_MAX = 2**63 - 1
#: Longest cell quoted back in a message.
_SHOWN = 60


class MetricsTableError(ZooError):
    """Rows of a metrics table are bad; :attr:`problems` lists every one (nothing was written)."""

    def __init__(self, path: str | Path, problems: list[BadRow]) -> None:
        self.path = str(path)
        self.problems = list(problems)
        lines = "\n".join(f"  {p.where}{p.named}: {p.problem}" for p in self.problems)
        super().__init__(
            f"{self.path}: {len(self.problems)} bad row(s); nothing was written (fix them, or "
            f"pass --skip-bad-rows to import the rest):\n{lines}"
        )


@dataclass(frozen=True)
class BadRow:
    """One refused row.

    Attributes:
        row: 0-based index among the table's data rows.
        line: its line in the CSV file (header = line 1); ``None`` for parquet.
        file: the ``file`` cell as written (``""`` when absent).
        problem: every reason, ``"; "``-joined.
    """

    row: int
    line: int | None
    file: str
    problem: str

    @property
    def named(self) -> str:
        """``" (a.pt)"``: the file cell, shortened, for messages (empty when there is none)."""
        return f" ({_shown(self.file)[1:-1]})" if self.file else ""

    @property
    def where(self) -> str:
        """``"line 5"`` (CSV) or ``"row 4"`` (parquet, counted from 1)."""
        return f"line {self.line}" if self.line is not None else f"row {self.row + 1}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the manifest and the CLI)."""
        return {"row": self.row, "line": self.line, "file": self.file, "problem": self.problem}


@dataclass(frozen=True)
class ValidRow:
    """A row that passed validation, with its cells parsed.

    Attributes:
        row, line: as in :class:`BadRow`.
        file: the ``file`` cell as written; ``path``: where it resolves (inside the checkpoints).
        test_accuracy: in ``[0, 1]``; ``epoch``: ``None`` when not given.
        run, task, activation: ``None`` when empty or absent.
        accuracies: every ``*accuracy`` column of the row that is not empty, parsed.
    """

    row: int
    line: int | None
    file: str
    path: Path
    test_accuracy: float
    epoch: int | None
    run: str | None
    task: str | None
    activation: str | None
    accuracies: Mapping[str, float] = field(default_factory=dict)


@dataclass
class MetricsTable:
    """A metrics table as read: ``frame`` holds one row per data row, metadata columns typed.

    Attributes:
        path: the file.
        frame: columns renamed by ``--map``; CSV cells are strings (``None`` when empty), typed
            by :meth:`typed`.
        lines: CSV line of each row (header = 1), or ``None`` for every parquet row.
        raw: the cells as they appear in the file (strings for CSV), for validation.
    """

    path: Path
    frame: pd.DataFrame
    lines: list[int | None]
    raw: list[dict[str, Any]] = field(repr=False)

    def __len__(self) -> int:
        return len(self.raw)

    def typed(self, rows: list[int]) -> pd.DataFrame:
        """These rows (0-based), re-indexed; a CSV column whose every cell among them is an
        integer becomes Int64, one whose every cell is a number float64 (parquet keeps its
        types)."""
        subset = self.frame.iloc[rows].reset_index(drop=True)
        if self.lines and self.lines[0] is None:  # parquet
            return subset
        return pd.DataFrame({c: _infer(list(subset[c])) for c in subset.columns})


def _infer(values: list[str | None]) -> pd.Series:
    """A metadata column: Int64 if every cell is an integer, float64 if every cell is a number,
    else strings (``None`` for empty cells)."""
    present = [v for v in values if v is not None]
    if present and all(re.fullmatch(r"[+-]?\d{1,19}", v.strip()) for v in present):
        numbers_ = [int(v) for v in present]
        if all(-_INT64_MAX <= x <= _INT64_MAX for x in numbers_):
            return pd.Series([None if v is None else int(v) for v in values], dtype="Int64")
    if present and all(
        _DECIMAL.fullmatch(v.strip()) or v.strip().lower() in _NON_FINITE_WORDS for v in present
    ):
        return pd.Series([math.nan if v is None else float(v) for v in values], dtype="float64")
    return pd.Series(values, dtype="object")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."
