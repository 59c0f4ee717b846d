"""`--skip-errors` behaves the same in every command that reads many checkpoints: without it the
first bad input stops the command (exit 1, naming it); with it, bad inputs are listed on stderr
by name and reason and the rest is used; when every input fails, exit 1 and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_runner import run_cli
from models import make_state_dict, tiny_encoder
from weightspace.cli.skipping import AllInputsFailedError, SkipLog
from weightspace.errors import CheckpointError
from weightspace.ingest import save_checkpoint
from weightspace.spec import mlp_spec

torch.set_num_threads(1)

SPEC = mlp_spec([6, 5, 2], "tanh")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("skip")
    tiny_encoder().save(root / "encoder")
    for s in range(2):
        save_checkpoint(root / f"good{s}.safetensors", SPEC, make_state_dict(SPEC, seed=s))
    (root / "broken.safetensors").write_bytes(b"\x00" * 5)
    (root / "empty").mkdir()
    return {
        "root": root,
        "encoder": root / "encoder",
        "good": root / "good0.safetensors",
        "good1": root / "good1.safetensors",
        "broken": root / "broken.safetensors",
        "missing": root / "missing.safetensors",
        "empty": root / "empty",
    }


def _command(name: str, paths: dict[str, Path], out: Path, *inputs: Path) -> list[str]:
    files = [str(p) for p in inputs]
    encoder = str(paths["encoder"])
    if name == "embed":
        return ["embed", *files, "--encoder", encoder, "--out", str(out / "z.npy")]
    if name == "index build":
        return ["index", "build", *files, "--encoder", encoder, "--out", str(out / "index")]
    return ["predict", *files, "--encoder", encoder, "--json"]


COMMANDS = ["embed", "index build", "predict"]


@pytest.mark.parametrize("command", COMMANDS)
def test_without_the_flag_the_first_bad_input_stops(
    inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    args = _command(command, inputs, tmp_path, inputs["good"], inputs["broken"])
    code, _, err = run_cli(capsys, *args)
    assert code == 1 and "broken.safetensors" in err and "Traceback" not in err
    assert not (tmp_path / "z.npy").exists() and not (tmp_path / "index").exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_with_the_flag_bad_inputs_are_listed_and_the_rest_used(
    inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    bad = [inputs["broken"], inputs["missing"]]
    args = _command(command, inputs, tmp_path, inputs["good"], *bad, inputs["good1"])
    code, out, err = run_cli(capsys, *args, "--skip-errors")
    assert code == 0, err
    assert "skipped 2 input(s)" in err
    listed = [line.strip() for line in err.splitlines() if line.startswith("  ")]
    assert [line.split(":")[0] for line in listed] == [str(p) for p in bad]
    assert all(len(line.split(": ", 1)[1]) > 5 for line in listed)  # a reason each
    if command == "embed":
        assert np.load(tmp_path / "z.npy").shape[0] == 2
    elif command == "index build":
        assert "2 added" in out
    else:
        assert len(json.loads(out)) == 2


@pytest.mark.parametrize("command", COMMANDS)
def test_with_the_flag_all_failing_is_exit_1_and_writes_nothing(
    inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    args = _command(command, inputs, tmp_path, inputs["broken"], inputs["missing"])
    code, _, err = run_cli(capsys, *args, "--skip-errors")
    assert code == 1 and "all 2 inputs failed" in err and "Traceback" not in err
    assert "broken.safetensors" in err and "missing.safetensors" in err
    assert not (tmp_path / "z.npy").exists() and not (tmp_path / "index").exists()


def test_index_add_skips_too(
    inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    index = tmp_path / "index"
    code, _, err = run_cli(
        capsys, "index", "build", str(inputs["good"]), "--encoder", str(inputs["encoder"]),
        "--out", str(index),
    )  # fmt: skip
    assert code == 0, err
    code, out, err = run_cli(
        capsys, "index", "add", str(index), str(inputs["empty"]), str(inputs["good1"]),
        "--skip-errors",
    )  # fmt: skip
    assert code == 0, err
    assert "1 added" in out and f"{inputs['empty']}:" in err


def test_skip_log_names_the_source_once() -> None:
    log = SkipLog(enabled=True)
    log.record("a.pt", CheckpointError("a.pt", "truncated"))
    log.record("b.pt", ValueError("b.pt: odd"))
    assert [(s.source, s.reason) for s in log.skipped] == [("a.pt", "truncated"), ("b.pt", "odd")]
    with pytest.raises(AllInputsFailedError, match="all 2 inputs failed"):
        log.check_some(done=0)
    log.check_some(done=1)
    SkipLog(enabled=True).check_some(done=0)  # nothing given, nothing skipped: not an error
