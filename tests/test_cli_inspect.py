"""``weightspace inspect`` end to end, in a subprocess: JSON keys, exit codes, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from weightspace.ingest import from_module, save_checkpoint


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "weightspace", *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ckpt")
    mlp = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    save_checkpoint(root / "mlp.safetensors", *from_module(mlp))
    torch.save(mlp.state_dict(), root / "plain.pt")
    torch.save(mlp, root / "pickled.pt")
    (root / "empty.safetensors").write_bytes(b"")
    (root / "spec.json").write_text(from_module(mlp)[0].to_json())
    return root


def test_inspect_json_has_the_documented_keys(files: Path) -> None:
    result = run_cli("inspect", str(files / "plain.pt"), "--activation", "relu", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["num_parameters"] == 6 * 5 + 5 + 5 * 2 + 2
    assert info["num_nodes"] == 6 + 5 + 2
    assert info["num_edges"] == 6 * 5 + 5 * 2
    assert [layer["kind"] for layer in info["layers"]] == ["linear", "activation", "linear"]
    table = run_cli("inspect", str(files / "mlp.safetensors"))
    assert table.returncode == 0 and "47 parameters" in table.stdout.replace(",", "")


@pytest.mark.parametrize(
    "name, extra, message",
    [
        ("empty.safetensors", (), "the file is empty"),
        ("pickled.pt", (), "refused"),
        ("plain.pt", (), "--activation"),
        ("missing.pt", (), "no such file"),
        ("plain.pt", ("--activation", "swish"), "unknown activation"),
    ],
)
def test_bad_input_exits_nonzero_without_traceback(
    files: Path, name: str, extra: tuple[str, ...], message: str
) -> None:
    result = run_cli("inspect", str(files / name), *extra)
    assert result.returncode != 0
    assert message in " ".join(result.stderr.split())
    assert name in result.stderr.replace("\n", "") or name == "plain.pt"
    assert "Traceback" not in result.stderr
