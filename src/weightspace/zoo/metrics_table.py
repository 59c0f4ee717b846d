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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from weightspace.zoo.metrics_rows import (
    REQUIRED_COLUMNS,
    BadRow,
    MetricsTable,
    MetricsTableError,
    ValidRow,
)
from weightspace.zoo.metrics_validation import validate_rows
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
