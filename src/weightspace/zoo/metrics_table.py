"""The metrics table of ``zoo import``: read it, and validate every row before anything is written.

A table (``.csv`` or ``.parquet``) names one checkpoint per row (column ``file``, relative to the
checkpoint directory) with its ``test_accuracy``; ``run``, ``epoch``, ``task`` and ``activation``
are used when present and every other column is kept as metadata.

A row is *bad* when any of these fails (every failure of every row is reported at once, each with
its CSV line, the header being line 1; parquet rows are counted from 1):

* ``test_accuracy`` and every other ``*accuracy`` column (the optional ones may be empty) is a
  plain decimal number, finite, with :math:`0 \\le a \\le 1`;
* ``epoch``, when given, is an integer :math:`e \\ge 0` (``2.0`` is 2; ``2.5`` is refused, never
  truncated);
* ``file`` resolves, symlinks followed, to a regular file inside the checkpoint directory;
* no file is listed twice: a repeat with the same labels is bad; with different labels every
  listing of that file is bad, since no one can tell which is right;
* a CSV row has as many cells as the header.

A table that cannot be read at all (not UTF-8, not CSV/parquet, no header, duplicate or empty
column names, a required column missing) is one :class:`~weightspace.zoo.store.ZooError`.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from weightspace.zoo.store import ZooError

__all__ = [
    "BadRow",
    "MetricsTable",
    "MetricsTableError",
    "REQUIRED_COLUMNS",
    "ValidRow",
    "read_metrics_table",
    "validate_rows",
]

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


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def _read_csv(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, rows of cells, and each row's first line (blank lines skipped)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ZooError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    start = 1
    try:
        for cells in reader:
            first, start = start, reader.line_num + 1
            if not cells:
                continue
            if header is None:
                header = cells
                continue
            rows.append(cells)
            lines.append(first)
    except csv.Error as exc:
        raise ZooError(f"{path}: not a readable CSV table (line {start}: {exc})") from None
    if header is None:
        raise ZooError(f"{path}: empty table (no header line)")
    return header, rows, lines


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


def _check_columns(path: Path, columns: list[Any], rename: Mapping[str, str]) -> list[str]:
    """Column names after ``rename`` (new → old); refuses odd headers and missing columns."""
    names = [str(c) for c in columns]
    empty = [i + 1 for i, name in enumerate(names) if not name.strip()]
    if empty:
        raise ZooError(f"{path}: column(s) {empty} of the header have no name")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ZooError(f"{path}: the header names columns {repeated} more than once")
    sources = list(rename.values())
    if len(set(sources)) != len(sources):
        raise ZooError(f"--map names one column twice: {sources}")
    missing_sources = [old for old in sources if old not in names]
    if missing_sources:
        raise ZooError(
            f"{path}: --map names columns {missing_sources} that the table lacks; it has {names}"
        )
    backwards = {old: new for new, old in rename.items()}
    renamed = [backwards.get(n, n) for n in names]
    clashes = sorted({n for n in renamed if renamed.count(n) > 1})
    if clashes:
        raise ZooError(f"{path}: after --map, columns {clashes} appear twice")
    missing = [c for c in REQUIRED_COLUMNS if c not in renamed]
    if missing:
        raise ZooError(
            f"{path}: missing required columns {missing}; it has {names} "
            "(rename with --map test_accuracy=YOUR_COLUMN)"
        )
    return renamed


def read_metrics_table(path: str | Path, rename: Mapping[str, str] | None = None) -> MetricsTable:
    """Read the sweep's table and apply ``rename`` (new name → column in the file).

    Raises:
        ZooError: the file is missing, unreadable, of an unknown type, has a malformed header, or
            lacks a required column (after ``rename``).
    """
    path = Path(path)
    rename = dict(rename or {})
    if not path.is_file():
        raise ZooError(f"{path}: metrics table not found")
    if path.suffix == ".csv":
        header, rows, csv_lines = _read_csv(path)
        names = _check_columns(path, header, rename)
        width = len(names)
        cells = [[(c if c.strip() else None) for c in r[:width]] for r in rows]
        cells = [r + [None] * (width - len(r)) for r in cells]
        frame = pd.DataFrame(
            {
                name: pd.Series([r[j] for r in cells], dtype="object")
                for j, name in enumerate(names)
            },
            index=range(len(rows)),
        )
        raw: list[dict[str, Any]] = []
        for r in rows:
            record: dict[str, Any] = dict(zip(names, r, strict=False))
            if len(r) != width:
                record["__cells__"] = len(r)
            raw.append(record)
        lines: list[int | None] = list(csv_lines)
    elif path.suffix in (".parquet", ".pq"):
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:
            raise ZooError(f"{path}: unreadable parquet table ({type(exc).__name__})") from None
        frame.columns = _check_columns(path, list(frame.columns), rename)
        frame = frame.reset_index(drop=True)
        raw = frame.to_dict("records")
        lines = [None] * len(frame)
    else:
        raise ZooError(f"{path}: unknown table type {path.suffix!r}; use .csv or .parquet")
    if not raw:
        raise ZooError(f"{path}: the table has a header but no rows")
    return MetricsTable(path, frame, lines, raw)


# ---------------------------------------------------------------------------------------------
# validating
# ---------------------------------------------------------------------------------------------
def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    if isinstance(value, float | np.floating) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _number(value: Any) -> Decimal | float | str:
    """A cell as a number (``Decimal`` from text, ``float`` from parquet), or why it is none."""
    if isinstance(value, bool | np.bool_):
        return f"{_shown(value)} is a boolean, not a number"
    if isinstance(value, Decimal):  # parquet decimal columns
        return value
    if isinstance(value, numbers.Integral):
        return Decimal(int(value))
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in _NON_FINITE_WORDS:
            return f"{_shown(value)} is not finite"
        if _DECIMAL.fullmatch(text):
            try:
                return Decimal(text)
            except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
                pass
    return f"{_shown(value)} is not a number"


def _accuracy(column: str, value: Any) -> float | str:
    """``value`` as an accuracy in [0, 1], or the problem."""
    number = _number(value)
    if isinstance(number, str):
        return f"{column} {number}"
    if isinstance(number, float) and not math.isfinite(number):
        return f"{column} {_shown(value)} is not finite"
    if isinstance(number, Decimal) and not number.is_finite():
        return f"{column} {_shown(value)} is not finite"
    if not 0 <= number <= 1:
        return f"{column} {_shown(value)} is outside [0, 1]"
    return float(number)


def _epoch(value: Any) -> int | str:
    """``value`` as an epoch (an integer >= 0), or the problem."""
    number = _number(value)
    if isinstance(number, str):
        return f"epoch {number}"
    if isinstance(number, float):
        if not math.isfinite(number):
            return f"epoch {_shown(value)} is not finite"
        number = Decimal(number)
    if number != number.to_integral_value():
        return f"epoch {_shown(value)} is not a whole number"
    if number < 0:
        return f"epoch {_shown(value)} is negative"
    if number > _INT64_MAX:
        return f"epoch {_shown(value)} is too large"
    return int(number)


def _label(value: Any) -> str | None:
    """A run, task or activation cell as text (``None`` when empty); ``3.0`` reads as ``"3"``."""
    if _is_missing(value):
        return None
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def _resolve(root: Path, cell: Any) -> Path | str:
    """Where the ``file`` cell points, or the problem: it must be a regular file in ``root``."""
    if _is_missing(cell):
        return "file is empty"
    if not isinstance(cell, str):
        return f"file cell {_shown(cell)} is not a path"
    if any(ord(c) < 32 for c in cell):
        return "the file name holds control characters"
    try:
        resolved = (root / cell).resolve()
        if not resolved.is_relative_to(root):
            return f"the file resolves to {resolved}, outside --checkpoints {root}"
        if not resolved.exists():
            return f"no such file in {root}"
        if not resolved.is_file():
            return "not a regular file"
    except (OSError, RuntimeError, ValueError) as exc:  # loops, over-long names
        return f"the file name cannot be resolved ({type(exc).__name__}: {exc})"
    return resolved


def validate_rows(
    table: MetricsTable, checkpoints: str | Path
) -> tuple[list[ValidRow], list[BadRow]]:
    """Check every row of ``table`` (see the module docstring); never raises on a bad cell.

    Returns:
        The rows that passed, parsed, and every bad row with all its problems, in table order.
    """
    root = Path(checkpoints).resolve()
    accuracy_columns = ["test_accuracy"] + [
        c for c in table.frame.columns if c != "test_accuracy" and c.lower().endswith("accuracy")
    ]
    width = len(table.frame.columns)
    problems: dict[int, list[str]] = {}
    parsed: dict[int, dict[str, Any]] = {}
    listings: dict[Path, list[int]] = {}
    for i, record in enumerate(table.raw):
        found: list[str] = []
        if "__cells__" in record:
            found.append(f"{record['__cells__']} cells, but the header has {width} columns")
        values: dict[str, Any] = {}
        for column in accuracy_columns:
            cell = record.get(column)
            if _is_missing(cell):
                if column == "test_accuracy":
                    found.append("test_accuracy is empty")
                continue
            result = _accuracy(column, cell)
            if isinstance(result, str):
                found.append(result)
            else:
                values[column] = result
        epoch_cell = record.get("epoch")
        if not _is_missing(epoch_cell):
            epoch = _epoch(epoch_cell)
            if isinstance(epoch, str):
                found.append(epoch)
            else:
                values["epoch"] = epoch
        path = _resolve(root, record.get("file"))
        if isinstance(path, str):
            found.append(path)
        else:
            values["path"] = path
            listings.setdefault(path, []).append(i)
        problems[i] = found
        parsed[i] = values
    for rows in listings.values():
        if len(rows) < 2:
            continue
        first = _labels(table.raw[rows[0]], parsed[rows[0]])
        differing = sorted(
            {
                key
                for r in rows[1:]
                for key, value in _labels(table.raw[r], parsed[r]).items()
                if value != first.get(key)
            }
        )
        where = _where_all(table, rows)
        if differing:
            for r in rows:
                problems[r].append(f"the file is listed on {where} with different {differing}")
        else:
            for r in rows[1:]:
                problems[r].append(f"the file is listed more than once ({where})")
    valid: list[ValidRow] = []
    bad: list[BadRow] = []
    for i, record in enumerate(table.raw):
        file_cell = record.get("file")
        file_text = (
            file_cell
            if isinstance(file_cell, str)
            else ("" if file_cell is None else str(file_cell))
        )
        if problems[i]:
            bad.append(BadRow(i, table.lines[i], file_text, "; ".join(problems[i])))
            continue
        values = parsed[i]
        valid.append(
            ValidRow(
                row=i,
                line=table.lines[i],
                file=file_text,
                path=values["path"],
                test_accuracy=values["test_accuracy"],
                epoch=values.get("epoch"),
                run=_label(record.get("run")),
                task=_label(record.get("task")),
                activation=_label(record.get("activation")),
                accuracies={c: values[c] for c in accuracy_columns if c in values},
            )
        )
    return valid, bad


def _labels(record: Mapping[str, Any], parsed: Mapping[str, Any]) -> dict[str, Any]:
    """A row's cells other than ``file``, parsed where parsing succeeded (``0.50`` = ``0.5``),
    empty cells as ``None``: what two listings of one file must agree on."""
    return {
        key: parsed.get(key, None if _is_missing(value) else str(value).strip())
        for key, value in record.items()
        if key not in ("file", "__cells__")
    }


def _where_all(table: MetricsTable, rows: list[int]) -> str:
    """``"lines 2, 5"`` (CSV) or ``"rows 1, 4"`` (parquet)."""
    if table.lines[rows[0]] is None:
        return "rows " + ", ".join(str(r + 1) for r in rows)
    return "lines " + ", ".join(str(table.lines[r]) for r in rows)
