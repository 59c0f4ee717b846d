"""Commands fall back on the bundled ``pretrained:small`` when ``--encoder`` is omitted, and say
to pass ``--encoder`` when no bundle is installed; ``Encoder.from_pretrained`` /
``save_pretrained`` follow Hugging Face's conventions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import weightspace as ws
from cli_runner import run_cli
from models import tiny_encoder, torch_mlp
from weightspace.errors import WeightspaceError
from weightspace.index import ModelIndex
from weightspace.nn.encoder import Encoder, EncoderError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return tiny_encoder()


def use_bundle_root(monkeypatch: pytest.MonkeyPatch, root: Path) -> Path:
    import weightspace.pretrained

    root.mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(weightspace.pretrained, "_root", lambda: root)
    return root


@pytest.fixture
def bundled(encoder: Encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny encoder installed as the default bundle ``pretrained:small``."""
    root = use_bundle_root(monkeypatch, tmp_path / "bundle")
    encoder.save(root / "small")
    return root


@pytest.fixture
def no_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return use_bundle_root(monkeypatch, tmp_path / "empty-bundle")


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    out = []
    for seed in range(3):
        spec, state = ws.from_module(torch_mlp("relu", seed=seed), torch.zeros(1, 6))
        out.append(ws.save_checkpoint(tmp_path / f"m{seed}.safetensors", spec, state))
    return out


# ------------------------------------------------------------------------------ CLI defaults
def test_commands_default_to_the_bundled_encoder(
    encoder: Encoder, bundled: Path, files: list[Path], tmp_path: Path, capsys
) -> None:
    index_dir = str(tmp_path / "idx")
    code, out, err = run_cli(capsys, "index", "build", *map(str, files), "--out", index_dir)
    assert code == 0, err
    index = ModelIndex.open(index_dir)
    assert index.encoder == "pretrained:small" and index.fingerprint == encoder.fingerprint
    code, out, err = run_cli(capsys, "search", index_dir, str(files[1]), "--json", "-k", "1")
    assert code == 0 and json.loads(out)[0]["path"] == str(files[1].resolve()), err
    out_file = tmp_path / "z.npy"
    code, out, err = run_cli(capsys, "embed", *map(str, files), "--out", str(out_file))
    assert code == 0, err
    np.testing.assert_allclose(np.load(out_file), encoder.embed(files), atol=1e-5)
    code, out, err = run_cli(capsys, "predict", str(files[0]), "--json")
    assert code == 0, err
    expected = float(encoder.predict_accuracy([files[0]])[0])
    assert json.loads(out)["predicted_test_accuracy"] == pytest.approx(expected, abs=1e-4)


def test_without_a_bundle_commands_say_to_pass_encoder(
    no_bundle: Path, files: list[Path], tmp_path: Path, capsys
) -> None:
    commands = [
        ("index", "build", str(files[0]), "--out", str(tmp_path / "idx")),
        ("embed", str(files[0]), "--out", str(tmp_path / "z.npy")),
        ("predict", str(files[0])),
    ]
    for command in commands:
        code, out, err = run_cli(capsys, *command)
        assert code == 1, (command, out, err)
        assert "--encoder" in err and "Traceback" not in err, (command, err)
    assert not (tmp_path / "idx").exists() and not (tmp_path / "z.npy").exists()


def test_merge_without_encoder_and_no_decoder_falls_back_to_rebasin(
    bundled: Path, files: list[Path], tmp_path: Path, capsys
) -> None:
    out_file = tmp_path / "merged.safetensors"
    code, out, err = run_cli(capsys, "merge", str(files[0]), str(files[1]), "--out", str(out_file))
    assert code == 0 and "weight matching" in err, err
    assert out_file.is_file()


@pytest.mark.parametrize(
    "command", [("index", "build"), ("embed",), ("predict",)], ids=lambda c: "-".join(c)
)
def test_help_names_the_default(command: tuple[str, ...], capsys) -> None:
    code, out, _ = run_cli(capsys, *command, "--help")
    assert code == 0 and "pretrained:small" in " ".join(out.split())


# ------------------------------------------------------------------------------ Python API
def test_from_pretrained_takes_a_name_a_prefixed_name_or_a_directory(
    encoder: Encoder, bundled: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = encoder.save_pretrained(tmp_path / "mine")
    assert {p.name for p in saved.iterdir()} >= {"config.json", "encoder.safetensors"}
    monkeypatch.chdir(tmp_path)  # no ./small here, so "small" is the bundle
    loaded = [
        Encoder.from_pretrained("small"),
        Encoder.from_pretrained("pretrained:small"),
        Encoder.from_pretrained(saved),
        Encoder.from_pretrained(str(saved)),
        Encoder.load("pretrained:small"),
        ws.from_pretrained("small"),
    ]
    for other in loaded:
        assert other.fingerprint == encoder.fingerprint and not other.training
    # a local directory named like a bundle wins over the bundle, as in transformers
    changed = tiny_encoder()
    with torch.no_grad():
        next(changed.parameters()).add_(1.0)
    changed.save_pretrained(tmp_path / "small")
    assert Encoder.from_pretrained("small").fingerprint == changed.fingerprint
    assert Encoder.from_pretrained("pretrained:small").fingerprint == encoder.fingerprint


def test_from_pretrained_errors_name_the_problem(bundled: Path, tmp_path: Path) -> None:
    with pytest.raises(WeightspaceError, match="no bundled encoder named 'nope'.*small"):
        Encoder.from_pretrained("pretrained:nope")
    with pytest.raises(EncoderError, match="no such encoder directory"):
        Encoder.from_pretrained(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderError, match="config.json: missing"):
        Encoder.from_pretrained(tmp_path / "empty")
