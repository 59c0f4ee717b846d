"""Fuzz `zoo import` with random metrics tables (issue 13).

Random cells (numbers, words, NaN, Inf, empty, huge, negative), random / duplicated / escaping
file names, missing or repeated columns, broken quoting, random bytes, parquet: whatever the
table, the import either builds a zoo or fails with a :class:`~weightspace.errors.WeightspaceError`
(exit 1 from the CLI, no traceback), never hangs, and never writes outside ``--out``: the
directory around it, the checkpoint directory and the files beside it are byte-for-byte as they
were (plus the finished zoo on success).
"""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

from fuzzing import alarm
from weightspace.errors import WeightspaceError
from weightspace.zoo import Zoo, import_zoo

#: Seconds one import may take before the example counts as a hang.
HANG_SECONDS = 60

SPECIAL_CELLS = [
    "", " ", "n/a", "NaN", "nan", "inf", "-inf", "Infinity", "1e400", "-1e400", "-1", "-1.0",
    "5.0", "2.5", "0", "1", "0.5", "1.0000001", "1e-300", "99999999999999999999999", "0x10",
    "1_0", "true", "None", "null", "\x00", "é", '"', ",", "\n", "\r\n", "[/x]", "[red]",
]  # fmt: skip
FILE_CELLS = [
    "a.pt", "b.safetensors", "sub/d.pt", "./a.pt", "sub/../a.pt", "../outside.pt", "<OUTSIDE>",
    "<INSIDE>", "escape.pt", "loop.pt", "sub", "missing.pt", "broken.safetensors", "", "/",
    "/etc/passwd", "a.pt\x00", "..", ".", "../../", "sub/../../outside.pt", "[/x].pt",
]  # fmt: skip
#: Readable checkpoints inside the checkpoint directory (``<INSIDE>`` is ``a.pt`` again).
VALID_FILES = ["a.pt", "b.safetensors", "sub/d.pt"]
CLEAN_EXTRA_COLUMNS = ["epoch", "run", "task", "activation", "train_accuracy", "lr", "spec"]
COLUMN_NAMES = [
    "file", "test_accuracy", "epoch", "run", "task", "activation", "train_accuracy", "acc",
    "spec", "checkpoint_id", "user_spec", "source_row", "", "lr", "é",
]  # fmt: skip


def _listing(root: Path) -> dict[str, bytes | str | None]:
    """Every path under ``root`` → bytes (files), link target (symlinks) or None (folders)."""
    found: dict[str, bytes | str | None] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            found[key] = str(path.readlink())
        elif path.is_file():
            found[key] = path.read_bytes()
        else:
            found[key] = None
    return found


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ROOT/ckpts`` (good, broken and linked checkpoints) and ``ROOT/outside.pt`` beside it."""
    root = tmp_path_factory.mktemp("fuzz")
    checkpoints = root / "ckpts"
    (checkpoints / "sub").mkdir(parents=True)

    def mlp() -> nn.Module:
        return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))

    torch.manual_seed(0)
    torch.save(mlp().state_dict(), checkpoints / "a.pt")
    torch.save(mlp().state_dict(), checkpoints / "sub" / "d.pt")
    torch.save(mlp().state_dict(), root / "outside.pt")
    save_file(mlp().state_dict(), str(checkpoints / "b.safetensors"))
    (checkpoints / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    (checkpoints / "escape.pt").symlink_to(root / "outside.pt")
    (checkpoints / "loop.pt").symlink_to(checkpoints / "loop.pt")
    return root


# ---------------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------------
numbers_as_text = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(min_value=0, max_value=1).map(str),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
)
any_cell = st.one_of(
    st.sampled_from(SPECIAL_CELLS),
    st.sampled_from(FILE_CELLS),
    numbers_as_text,
    st.text(max_size=12),
)


@st.composite
def tables(draw: st.DrawFn) -> dict:
    """A table description: columns, rows of cells, and how to write it to disk."""
    clean = draw(st.integers(0, 2)) == 0  # a third of the tables: valid cells, distinct files
    if clean:
        extra = draw(st.lists(st.sampled_from(CLEAN_EXTRA_COLUMNS), max_size=4, unique=True))
        columns = draw(st.permutations(["file", "test_accuracy", *extra]))
    elif draw(st.integers(0, 3)):  # mostly a plausible header
        extra = draw(st.lists(st.sampled_from(COLUMN_NAMES), max_size=4))
        columns = draw(st.permutations(["file", "test_accuracy", *extra]))
        if draw(st.integers(0, 9)) == 0:
            columns = [c for c in columns if c != draw(st.sampled_from(["file", "test_accuracy"]))]
    else:
        columns = draw(st.lists(st.sampled_from(COLUMN_NAMES), max_size=6))
    files = draw(st.permutations(VALID_FILES))
    rows = []
    for r in range(draw(st.integers(1, 3) if clean else st.integers(0, 6))):
        row = []
        for column in columns:
            if column == "file" and (clean and r < len(files)):
                row.append(files[r])
            elif column == "file" and draw(st.integers(0, 3)):
                row.append(draw(st.sampled_from(FILE_CELLS)))
            elif column.endswith("accuracy") and (clean or draw(st.integers(0, 2))):
                row.append(draw(st.floats(min_value=0, max_value=1).map(str)))
            elif column == "epoch" and (clean or draw(st.integers(0, 2))):
                row.append(str(draw(st.integers(0, 20))))
            elif column == "activation" and (clean or draw(st.integers(0, 2))):
                row.append(draw(st.sampled_from(["relu", "tanh", ""] + ([] if clean else ["x"]))))
            else:
                row.append(draw(any_cell))
        if not clean and draw(st.integers(0, 9)) == 0:  # a ragged row
            row = row[: draw(st.integers(0, len(row)))] + draw(st.lists(any_cell, max_size=2))
        rows.append(row)
    forms = ["csv", "parquet"] if clean else ["csv", "csv", "raw", "mutated", "bytes", "parquet"]
    form = draw(st.sampled_from(forms))
    return {
        "columns": columns,
        "rows": rows,
        "form": form,
        "noise": draw(st.binary(max_size=64)),
        "positions": draw(st.lists(st.integers(0, 10**6), max_size=4)),
        "skip_bad_rows": draw(st.booleans()),
        "nested_out": draw(st.booleans()),
    }


def _render(world: Path, table: dict, folder: Path) -> Path:
    """Write the described table into ``folder``; returns its path."""

    def fill(cell: str) -> str:
        return cell.replace("<OUTSIDE>", str(world / "outside.pt")).replace(
            "<INSIDE>", str(world / "ckpts" / "a.pt")
        )

    columns = [fill(c) for c in table["columns"]]
    rows = [[fill(c) for c in row] for row in table["rows"]]
    form = table["form"]
    if form == "parquet":
        path = folder / "metrics.parquet"
        try:
            width = len(columns)
            cells = [(r + [None] * width)[:width] for r in rows]
            frame = pd.DataFrame(cells, columns=columns)
            frame.to_parquet(path)
            return path
        except Exception:  # pandas/pyarrow refuse some headers; then it is a CSV
            form = "csv"
    path = folder / "metrics.csv"
    if form == "bytes":
        path.write_bytes(table["noise"])
        return path
    if form == "raw":  # no quoting: commas and newlines inside cells break the structure
        text = "\n".join(",".join(r) for r in [columns, *rows]) + "\n"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        return path
    buffer = io.StringIO()
    csv.writer(buffer).writerows([columns, *rows])
    data = bytearray(buffer.getvalue().encode("utf-8", "surrogatepass"))
    if form == "mutated" and data:
        for position, byte in zip(table["positions"], table["noise"], strict=False):
            data[position % len(data)] = byte
    path.write_bytes(bytes(data))
    return path


def _import_via_api(checkpoints: Path, metrics: Path, out: Path, skip: bool) -> bool:
    try:
        import_zoo(
            checkpoints, metrics, out, activation="relu", skip_bad_rows=skip, show_progress=False
        )
    except WeightspaceError:
        return False
    return True


def _import_via_cli(checkpoints: Path, metrics: Path, out: Path, skip: bool) -> bool:
    from weightspace.cli import main

    argv = ["zoo", "import", "--checkpoints", str(checkpoints), "--metrics", str(metrics)]
    argv += ["--out", str(out), "--activation", "relu"] + (["--skip-bad-rows"] if skip else [])
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    assert code in (0, 1), stderr.getvalue()
    assert "Traceback" not in stderr.getvalue()
    return code == 0


def _check_one(world: Path, table: dict, via: str) -> None:
    """One fuzzed import: a zoo or a WeightspaceError, on time, nothing written outside --out."""
    before_world = _listing(world)
    work = Path(tempfile.mkdtemp(dir=world.parent))
    try:
        metrics = _render(world, table, work)
        out = work / "out" / "zoo" if table["nested_out"] else work / "zoo"
        before = _listing(work)
        importer = _import_via_api if via == "api" else _import_via_cli
        with alarm(HANG_SECONDS):
            succeeded = importer(world / "ckpts", metrics, out, table["skip_bad_rows"])
        after = _listing(work)
        event(f"{via} {table['form']}: {'imported' if succeeded else 'refused'}")
        if succeeded:
            zoo = Zoo.open(out)
            assert len(zoo) > 0
            assert zoo.table["test_accuracy"].between(0, 1).all()
            inside = str(out.relative_to(work))
            after = {
                k: v
                for k, v in after.items()
                if k != inside and not k.startswith(inside + "/") and not inside.startswith(k + "/")
            }
            before = {k: v for k, v in before.items() if not inside.startswith(k + "/")}
        assert after == before, "the import wrote outside --out"
        assert _listing(world) == before_world, "the import touched the checkpoints or beside"
    finally:
        shutil.rmtree(work, ignore_errors=True)


FUZZ_SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    "derandomize": False,
}


@settings(max_examples=60, **FUZZ_SETTINGS)
@given(table=tables(), via=st.sampled_from(["api", "api", "api", "cli"]))
def test_fuzzed_tables_never_crash_or_write_outside_out(world: Path, table: dict, via: str) -> None:
    _check_one(world, table, via)


@pytest.mark.slow
@settings(max_examples=10_000, **FUZZ_SETTINGS)
@given(table=tables())
def test_fuzzed_tables_slow(world: Path, table: dict) -> None:
    """10,000 tables through the whole import (API: validation, checkpoint loading, writing);
    8-15 minutes on a busy 2-core machine."""
    _check_one(world, table, "api")


@pytest.mark.slow
@settings(max_examples=500, **FUZZ_SETTINGS)
@given(table=tables())
def test_fuzzed_tables_slow_cli(world: Path, table: dict) -> None:
    """500 tables through ``weightspace zoo import`` in process (Typer rebuilds the whole
    command tree on every call, 0.1-0.4 s, so the bulk goes through the API above)."""
    _check_one(world, table, "cli")
