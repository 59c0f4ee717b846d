"""``weightspace convert`` and the architecture flags: self-describing checkpoints, one spec format
(``inspect --json`` → ``--spec``), case-insensitive activations, conflicting flags refused,
``--model`` factories from the working directory."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import torch
from torch import nn

from cli_runner import run_cli
from weightspace.cli.options import ConflictingOptionsError, activation_name, architecture_kwargs
from weightspace.errors import SpecError
from weightspace.ingest import load_checkpoint
from weightspace.spec import ACTIVATIONS, NetworkSpec


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2))


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    """A bare state dict of a tanh MLP: no architecture in the file."""
    path = tmp_path / "plain.pt"
    torch.save(_mlp().state_dict(), path)
    return path


def test_activation_names_ignore_case_and_separators() -> None:
    assert activation_name("ReLU") == "relu"
    assert activation_name("LeakyReLU") == "leaky_relu"
    assert activation_name("leaky-relu") == "leaky_relu"
    for name in ACTIVATIONS:
        assert activation_name(name.upper()) == name
    with pytest.raises(SpecError) as info:
        activation_name("swish")
    assert all(name in str(info.value) for name in ACTIVATIONS)


def test_conflicting_architecture_flags_are_an_error() -> None:
    with pytest.raises(ConflictingOptionsError, match="--activation and --model"):
        architecture_kwargs("tanh", None, "models:mlp")
    with pytest.raises(ConflictingOptionsError, match="--spec and --model"):
        architecture_kwargs(None, Path("s.json"), "models:mlp")
    assert architecture_kwargs("TanH", None, None)["activation"] == "tanh"


def test_convert_stores_the_spec_so_later_commands_need_no_flag(
    capsys: pytest.CaptureFixture, plain: Path, tmp_path: Path
) -> None:
    out = tmp_path / "mlp.safetensors"
    code, stdout, err = run_cli(
        capsys, "convert", str(plain), "--activation", "TANH", "--out", str(out)
    )
    assert code == 0, err
    spec, state = load_checkpoint(out)  # no architecture argument: read from the metadata
    assert spec.activations == ("tanh",)
    original = _mlp()
    x = torch.randn(4, 6)
    from weightspace.module import to_module

    torch.testing.assert_close(to_module(spec, state)(x), original(x))
    code, stdout, err = run_cli(capsys, "inspect", str(out), "--json")
    assert code == 0, err
    assert json.loads(stdout)["activations"] == ["tanh"]


def test_inspect_json_feeds_back_as_spec(
    capsys: pytest.CaptureFixture, plain: Path, tmp_path: Path
) -> None:
    code, stdout, err = run_cli(capsys, "inspect", str(plain), "--activation", "tanh", "--json")
    assert code == 0, err
    spec_file = tmp_path / "inspect.json"
    spec_file.write_text(stdout)
    out = tmp_path / "from-spec.safetensors"
    code, _, err = run_cli(
        capsys, "convert", str(plain), "--spec", str(spec_file), "--out", str(out)
    )
    assert code == 0, err
    assert load_checkpoint(out)[0] == NetworkSpec.from_dict(json.loads(stdout)["spec"])
    # the bare spec object (what to_json writes) is read the same way
    bare = tmp_path / "bare.json"
    bare.write_text(load_checkpoint(out)[0].to_json())
    assert load_checkpoint(plain, spec=bare)[0] == load_checkpoint(out)[0]


def test_convert_refuses_conflicts_unknown_names_and_bad_outputs(
    capsys: pytest.CaptureFixture, plain: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.safetensors"
    code, _, err = run_cli(
        capsys, "convert", str(plain), "--activation", "tanh", "--model", "m:f", "--out", str(out)
    )
    assert code == 1 and "give only one" in err and "Traceback" not in err
    assert not out.exists()
    code, _, err = run_cli(
        capsys, "convert", str(plain), "--activation", "swish", "--out", str(out)
    )
    assert code == 1 and "leaky_relu" in err and not out.exists()
    code, _, err = run_cli(capsys, "convert", str(plain), "--activation", "tanh", "--out", "x.pt")
    assert code == 1 and ".safetensors" in err
    out.write_bytes(b"keep me")
    code, _, err = run_cli(capsys, "convert", str(plain), "--activation", "tanh", "--out", str(out))
    assert code == 1 and "--overwrite" in err and out.read_bytes() == b"keep me"
    code, _, err = run_cli(
        capsys, "convert", str(plain), "--activation", "tanh", "--out", str(out), "--overwrite"
    )
    assert code == 0, err
    assert load_checkpoint(out)[0].activations == ("tanh",)


def test_model_factory_resolves_from_the_working_directory(
    capsys: pytest.CaptureFixture, plain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module_name = f"user_models_{uuid.uuid4().hex[:8]}"  # fresh, so no cached import hides a bug
    project = tmp_path / "project"
    project.mkdir()
    (project / f"{module_name}.py").write_text(
        "from torch import nn\n\n"
        "def mlp():\n"
        "    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2))\n"
    )
    monkeypatch.chdir(project)
    out = tmp_path / "traced.safetensors"
    code, _, err = run_cli(
        capsys, "convert", str(plain), "--model", f"{module_name}:mlp", "--out", str(out)
    )
    assert code == 0, err
    assert load_checkpoint(out)[0].activations == ("tanh",)


def test_convert_many_files_into_a_folder_in_one_call(
    capsys: pytest.CaptureFixture, plain: Path, tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in _mlp().state_dict().items()}, str(other))
    out_dir = tmp_path / "converted"  # created by the command
    code, _, err = run_cli(
        capsys, "convert", str(plain), str(other), "--activation", "tanh", "--out-dir", str(out_dir)
    )
    assert code == 0, err
    assert sorted(p.name for p in out_dir.iterdir()) == ["other.safetensors", "plain.safetensors"]
    x = torch.randn(3, 6)
    from weightspace.module import to_module

    for name in ("plain", "other"):
        spec, state = load_checkpoint(out_dir / f"{name}.safetensors")
        torch.testing.assert_close(to_module(spec, state)(x), _mlp()(x))


def test_convert_many_reports_each_failure_by_name(
    capsys: pytest.CaptureFixture, plain: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    missing = tmp_path / "missing.pt"
    out_dir = tmp_path / "out"
    args = ("convert", str(broken), str(plain), str(missing), "--activation", "tanh")
    code, _, err = run_cli(capsys, *args, "--out-dir", str(out_dir))
    assert code == 1 and "Traceback" not in err
    assert str(broken) in err and str(missing) in err and "2 of 3" in err
    # the good file is still converted, the bad ones leave nothing behind
    assert [p.name for p in out_dir.iterdir()] == ["plain.safetensors"]
    # --skip-errors: exit 0 while any file converted, still listing the failures ...
    code, _, err = run_cli(capsys, *args, "--out-dir", str(out_dir), "--overwrite", "--skip-errors")
    assert code == 0, err
    assert str(broken) in err and str(missing) in err
    # ... and 1 when every file failed
    code, _, err = run_cli(
        capsys,
        "convert",
        str(broken),
        "--activation",
        "tanh",
        "--out-dir",
        str(tmp_path / "n"),
        "--skip-errors",
    )
    assert code == 1 and "all 1 inputs failed" in err
    assert not any((tmp_path / "n").iterdir())


def test_convert_output_flags_are_checked_before_any_work(
    capsys: pytest.CaptureFixture, plain: Path, tmp_path: Path
) -> None:
    out_dir = tmp_path / "out"
    code, _, err = run_cli(
        capsys,
        "convert",
        str(plain),
        str(plain),
        "--activation",
        "tanh",
        "--out",
        str(tmp_path / "x.safetensors"),
    )
    assert code == 1 and "--out-dir" in err and not (tmp_path / "x.safetensors").exists()
    code, _, err = run_cli(capsys, "convert", str(plain), "--activation", "tanh")
    assert code == 1 and "--out" in err
    twin = tmp_path / "plain.safetensors"  # same stem as plain.pt: one output for two inputs
    twin.write_bytes(b"")
    code, _, err = run_cli(
        capsys, "convert", str(plain), str(twin), "--activation", "tanh", "--out-dir", str(out_dir)
    )
    assert code == 1 and str(twin) in err and not out_dir.exists()
