"""Validating every row of a ``zoo import`` metrics table before anything is written.

The rules (numbers, epochs, files inside the checkpoint directory, no file listed twice) are
listed in :mod:`weightspace.zoo.metrics_table`'s docstring; every failure of every row is
reported at once.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from weightspace.zoo.metrics_rows import (
    _DECIMAL,
    _INT64_MAX,
    _NON_FINITE_WORDS,
    BadRow,
    MetricsTable,
    ValidRow,
    _shown,
)

__all__ = ["validate_rows"]


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
