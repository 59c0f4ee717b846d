"""``weightspace inspect`` end to end (JSON keys, exit codes, no tracebacks), and how every
command that reads checkpoints treats NaN weights and ``--allow-nonfinite``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from cli_runner import run_cli as run_in_process
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
    """Through the real entry point (``python -m weightspace``), in a subprocess."""
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
    files: Path, name: str, extra: tuple[str, ...], message: str, capsys: pytest.CaptureFixture
) -> None:
    code, _, err = run_in_process(capsys, "inspect", str(files / name), *extra)
    assert code == 1
    assert message in " ".join(err.split())
    assert name in err.replace("\n", "") or name == "plain.pt"
    assert "Traceback" not in err and err.count("\n") == 1


# ------------------------------------------------- every command, in-process: NaN weights


@pytest.fixture(scope="module")
def nan_setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An encoder directory, an index of one good model, a good and a NaN checkpoint."""
    from models import tiny_encoder
    from weightspace.cli import main

    root = tmp_path_factory.mktemp("nan")
    tiny_encoder().save(root / "encoder")
    mlp = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    spec, state = from_module(mlp)
    save_checkpoint(root / "good.safetensors", spec, state)
    state["0.weight"][1, 2] = float("nan")
    save_checkpoint(root / "nan.safetensors", spec, state)
    encoder = str(root / "encoder")
    with pytest.raises(SystemExit) as done:
        main(["index", "build", "--encoder", encoder, "--out", str(root / "index"),
              str(root / "good.safetensors")])  # fmt: skip
    assert done.value.code in (0, None)
    return root


def _commands(root: Path, name: str) -> dict[str, list[str]]:
    """Every command that reads checkpoint ``name``; outputs are named after it."""
    encoder, target, stem = str(root / "encoder"), str(root / name), Path(name).stem
    return {
        "embed": ["embed", target, "--encoder", encoder, "--out", str(root / f"{stem}.npy")],
        "predict": ["predict", target, "--encoder", encoder],
        "search": ["search", str(root / "index"), target, "--encoder", encoder],
        "index add": ["index", "add", str(root / "index"), target, "--encoder", encoder],
        "merge": [
            "merge",
            target,
            str(root / "good.safetensors"),
            "--method",
            "average",
            "--out",
            str(root / f"{stem}-merged.safetensors"),
        ],  # fmt: skip
    }


@pytest.mark.parametrize("command", ["embed", "predict", "search", "index add", "merge"])
def test_nonfinite_weights_are_refused_in_one_line_with_or_without_the_flag(
    nan_setup: Path, capsys: pytest.CaptureFixture, command: str
) -> None:
    args = _commands(nan_setup, "nan.safetensors")[command]
    for flag in ((), ("--allow-nonfinite",)):
        code, _, err = run_in_process(capsys, *args, *flag)
        assert code == 1, (flag, err)
        message = " ".join(err.split())
        assert "nan.safetensors" in message and "'0.weight' holds NaN or Inf" in message
        assert "Traceback" not in err and err.strip().startswith("error:")
        # the flag reached the command: the refusal says why it cannot help, never "pass it"
        assert "refused even with --allow-nonfinite" in message
        assert "pass allow_nonfinite" not in message
    assert not (nan_setup / "nan-merged.safetensors").exists()
    assert not (nan_setup / "nan.npy").exists()


def test_inspect_honours_allow_nonfinite(nan_setup: Path, capsys: pytest.CaptureFixture) -> None:
    target = str(nan_setup / "nan.safetensors")
    code, _, err = run_in_process(capsys, "inspect", target)
    assert code == 1 and "--allow-nonfinite" in err
    code, out, err = run_in_process(capsys, "inspect", target, "--allow-nonfinite", "--json")
    assert code == 0, err
    assert json.loads(out)["num_parameters"] == 47


def test_good_file_passes_the_same_commands(nan_setup: Path, capsys: pytest.CaptureFixture) -> None:
    """The refusals above come from the NaN, not from the set-up."""
    for command, args in _commands(nan_setup, "good.safetensors").items():
        code, _, err = run_in_process(capsys, *args)
        assert code == 0, (command, err)


def test_raising_model_factory_is_one_line_in_the_cli(
    files: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    name = f"cli_factories_{tmp_path.name}".replace("-", "_")
    (tmp_path / f"{name}.py").write_text("def broken():\n    raise KeyError('layer3')\n")
    monkeypatch.chdir(tmp_path)  # --model resolves from the working directory
    code, _, err = run_in_process(
        capsys, "inspect", str(files / "plain.pt"), "--model", f"{name}:broken"
    )
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"model factory '{name}:broken' raised KeyError: 'layer3'" in err
