"""`weightspace zoo generate|import|info` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from cli_runner import run_cli


def test_generate_info_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "zoo")
    args = (
        "zoo",
        "generate",
        "--preset",
        "tiny",
        "--out",
        out,
        "--runs",
        "2",
        "--epochs",
        "1",
        "--archs",
        "mlp-w8-d1-relu",
        "--tasks",
        "wine,digits",
    )
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "4 checkpoints" not in err and "zoo ready" in err
    code, stdout, _ = run_cli(capsys, "zoo", "info", out, "--json")
    info = json.loads(stdout)
    assert code == 0 and info["runs"] == 4 and info["checkpoints"] == 8
    assert set(info["tasks"]) == {"wine", "digits"}
    code, stdout, _ = run_cli(capsys, "zoo", "info", out)
    assert code == 0 and "checkpoints" in stdout
    code, _, err = run_cli(capsys, *args)  # already complete: nothing to do
    assert code == 0


def test_bad_names_exit_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(
        capsys, "zoo", "generate", "--preset", "huge", "--out", str(tmp_path / "z")
    )
    assert code == 1 and "tiny" in err and "Traceback" not in err
    code, _, err = run_cli(
        capsys,
        "zoo",
        "generate",
        "--preset",
        "tiny",
        "--out",
        str(tmp_path / "z"),
        "--archs",
        "resnet50",
    )
    assert code == 1 and "mlp-w" in err
    code, _, err = run_cli(capsys, "zoo", "info", str(tmp_path / "nothing"))
    assert code == 1 and "no such zoo directory" in err


def _sweep(tmp_path: Path) -> Path:
    checkpoints = tmp_path / "ckpts"
    checkpoints.mkdir()
    torch.save(
        nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).state_dict(),
        checkpoints / "a.pt",
    )
    return checkpoints


def _import(capsys: pytest.CaptureFixture[str], tmp_path: Path, table: Path, *extra: str):
    return run_cli(
        capsys,
        "zoo",
        "import",
        "--checkpoints",
        str(tmp_path / "ckpts"),
        "--metrics",
        str(table),
        "--out",
        str(tmp_path / "zoo"),
        "--activation",
        "relu",
        "--map",
        "test_accuracy=acc",
        *extra,
    )


def test_import_lists_skipped_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _sweep(tmp_path)
    table = tmp_path / "metrics.parquet"
    pd.DataFrame({"file": ["a.pt", "gone.pt"], "acc": [0.7, 0.1], "seed": [1, 2]}).to_parquet(table)
    code, _, err = _import(capsys, tmp_path, table)
    assert code == 1 and "row 2" in err and "gone.pt" in err and "Traceback" not in err
    assert not (tmp_path / "zoo").exists()
    code, _, err = _import(capsys, tmp_path, table, "--skip-bad-rows")
    assert code == 0, err
    assert "imported" in err and "gone.pt" in err and "1 bad rows skipped" in err
    manifest = json.loads((tmp_path / "zoo" / "manifest.json").read_text())
    assert [(f["row"], f["file"]) for f in manifest["failed"]] == [(1, "gone.pt")]


def test_import_refuses_a_bad_table_in_one_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's cases: a non-numeric cell, out-of-range accuracies, a fractional epoch, a
    duplicate, an escaping path, a file name that looks like Rich markup."""
    checkpoints = _sweep(tmp_path)
    (checkpoints / "b[red].pt").write_bytes((checkpoints / "a.pt").read_bytes())
    table = tmp_path / "metrics.csv"
    table.write_text(
        "file,acc,epoch\n"
        "a.pt,n/a,1\n"
        "a.pt,inf,1\n"
        "a.pt,5.0,2.5\n"
        "../metrics.csv,-1.0,1\n"
        "b[red].pt,0.5,x\n"
        "[/x].pt,0.5,1\n"
    )
    before = sorted(p.name for p in tmp_path.iterdir())
    code, stdout, err = _import(capsys, tmp_path, table)
    assert code == 1, err
    assert "Traceback" not in err and "6 bad row(s)" in err
    for line in range(2, 8):
        assert f"line {line} (" in err
    assert "b[red].pt" in err and "[/x].pt" in err  # printed as text, not read as markup
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_zoo_presets_lists_every_preset(capsys: pytest.CaptureFixture[str]) -> None:
    from weightspace.zoo.presets import list_presets

    code, out, _ = run_cli(capsys, "zoo", "presets")
    assert code == 0
    assert all(name in out for name in list_presets())
