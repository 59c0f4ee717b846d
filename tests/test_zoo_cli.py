"""`weightspace zoo generate|import|info` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from weightspace.cli import main


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


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
    code, _, err = _run(capsys, *args)
    assert code == 0, err
    assert "4 checkpoints" not in err and "zoo ready" in err
    code, stdout, _ = _run(capsys, "zoo", "info", out, "--json")
    info = json.loads(stdout)
    assert code == 0 and info["runs"] == 4 and info["checkpoints"] == 8
    assert set(info["tasks"]) == {"wine", "digits"}
    code, stdout, _ = _run(capsys, "zoo", "info", out)
    assert code == 0 and "checkpoints" in stdout
    code, _, err = _run(capsys, *args)  # already complete: nothing to do
    assert code == 0


def test_bad_names_exit_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "zoo", "generate", "--preset", "huge", "--out", str(tmp_path / "z"))
    assert code == 1 and "tiny" in err and "Traceback" not in err
    code, _, err = _run(
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
    code, _, err = _run(capsys, "zoo", "info", str(tmp_path / "nothing"))
    assert code == 1 and "no such zoo directory" in err


def test_import_lists_failed_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoints = tmp_path / "ckpts"
    checkpoints.mkdir()
    torch.save(
        nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).state_dict(),
        checkpoints / "a.pt",
    )
    table = tmp_path / "metrics.parquet"
    pd.DataFrame({"file": ["a.pt", "gone.pt"], "acc": [0.7, 0.1], "seed": [1, 2]}).to_parquet(table)
    code, _, err = _run(
        capsys,
        "zoo",
        "import",
        "--checkpoints",
        str(checkpoints),
        "--metrics",
        str(table),
        "--out",
        str(tmp_path / "zoo"),
        "--activation",
        "relu",
        "--map",
        "test_accuracy=acc",
    )
    assert code == 0, err
    assert "imported" in err and "gone.pt" in err and "1 rows not imported" in err
