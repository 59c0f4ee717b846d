"""``a.pt`` beside ``a.safetensors`` (the same model saved twice) is named by every command that
reads checkpoints, with what the command did with it (:mod:`weightspace.twins`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import weightspace as ws
from cli_runner import run_cli
from models import tiny_encoder
from weightspace.twins import checkpoint_files_of, find_twins, same_weights, twin_of

torch.set_num_threads(1)


def mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def state_of(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """``a`` twice with the same weights (a ``.pt`` state dict and its ``convert``-ed
    ``.safetensors``), ``b`` twice with different weights, ``c`` once (a ``.safetensors``)."""
    directory = tmp_path / "models"
    directory.mkdir()
    for name, seed in (("a", 0), ("b", 1), ("c", 2)):
        torch.save(state_of(mlp(seed)), directory / f"{name}.pt")
        spec, state = ws.load_checkpoint(directory / f"{name}.pt", activation="relu")
        ws.save_checkpoint(directory / f"{name}.safetensors", spec, state)
    torch.save(state_of(mlp(5)), directory / "b.pt")  # b.pt: retrained since
    (directory / "c.pt").unlink()
    return directory


@pytest.fixture
def encoder_dir(tmp_path: Path) -> Path:
    path = tmp_path / "encoder"
    tiny_encoder().save(path)
    return path


def twin_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "are twins" in line]


# ------------------------------------------------------------------------------ the helper
def test_twins_are_one_folder_and_stem_compared_by_weights(folder: Path, tmp_path: Path) -> None:
    files = checkpoint_files_of([folder])
    assert len(files) == 5
    groups = {group.stem: group for group in find_twins(files)}
    assert set(groups) == {"a", "b"}
    assert groups["a"].same is True and groups["b"].same is False
    # a file named twice is one file, not a twin; the same stem in another folder is no twin
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "a.pt").write_bytes((folder / "a.pt").read_bytes())
    assert find_twins([folder / "a.pt", folder / "a.pt", other / "a.pt"]) == []
    assert twin_of(folder / "a.pt", [other / "a.pt", folder / "a.safetensors"]) == (
        folder / "a.safetensors"
    )
    (folder / "c.pt").write_bytes(b"not a checkpoint")
    assert same_weights([folder / "c.safetensors", folder / "c.pt"]) is None


def test_keys_do_not_matter_for_same_weights(tmp_path: Path) -> None:
    state = state_of(mlp(0))
    torch.save(state, tmp_path / "x.pt")
    save_file({f"renamed.{k}": v for k, v in state.items()}, str(tmp_path / "x.safetensors"))
    assert same_weights([tmp_path / "x.pt", tmp_path / "x.safetensors"]) is True


# ------------------------------------------------------------------------------ commands
def test_index_build_says_twins_are_stored_once(
    folder: Path, encoder_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code, out, err = run_cli(capsys, "index", "build", folder, "--out", tmp_path / "index",
                             "--encoder", encoder_dir, "--activation", "relu")  # fmt: skip
    assert code == 0, err
    lines = {line.split(" and ")[0].split("/")[-1]: line for line in twin_lines(err)}
    assert set(lines) == {"a.pt", "b.pt"}
    assert "same weights): stored once" in lines["a.pt"]
    assert "different weights): each stored" in lines["b.pt"]
    assert "4 added, 1 already stored" in out

    # index add of the same folder: the twins are named again, now both already stored
    code, out, err = run_cli(capsys, "index", "add", tmp_path / "index", folder,
                             "--activation", "relu")  # fmt: skip
    assert code == 0, err
    assert len(twin_lines(err)) == 2 and "0 added" in out


def test_search_names_the_stored_twin_of_the_query(
    folder: Path, encoder_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    index = tmp_path / "index"
    stored = [folder / "a.safetensors", folder / "c.safetensors"]
    code, _, err = run_cli(capsys, "index", "build", *stored, "--out", index,
                           "--encoder", encoder_dir)  # fmt: skip
    assert code == 0, err
    code, out, err = run_cli(capsys, "search", index, folder / "a.pt", "--json",
                             "--activation", "relu")  # fmt: skip
    assert code == 0, err
    [line] = twin_lines(err)
    assert "same weights" in line and "a.safetensors as id 0 (rank 1)" in line
    assert json.loads(out)[0]["path"] == str((folder / "a.safetensors").resolve())


def test_embed_predict_merge_and_convert_name_twins(
    folder: Path, encoder_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    a, b = [folder / "a.pt", folder / "a.safetensors"], [folder / "b.pt", folder / "b.safetensors"]
    code, _, err = run_cli(capsys, "embed", *a, "--out", tmp_path / "z.npy",
                           "--encoder", encoder_dir, "--activation", "relu")  # fmt: skip
    assert code == 0, err
    [line] = twin_lines(err)
    assert "same weights): each embedded (the same result twice)" in line

    code, _, err = run_cli(capsys, "predict", *b, "--encoder", encoder_dir,
                           "--activation", "relu", "--json")  # fmt: skip
    assert code == 0, err
    [line] = twin_lines(err)
    assert "different weights): each predicted" in line

    code, _, err = run_cli(capsys, "merge", *a, "--out", tmp_path / "m.safetensors",
                           "--activation", "relu")  # fmt: skip
    assert code == 0, err
    [line] = twin_lines(err)
    assert "the merge counts that one model 2 times" in line

    out_dir = tmp_path / "converted"
    code, out, err = run_cli(capsys, "convert", *a, folder / "c.safetensors",
                             "--out-dir", out_dir, "--activation", "relu")  # fmt: skip
    assert code == 0, err
    [line] = twin_lines(err)
    assert f"converted once, from {a[0]}" in line
    assert sorted(p.name for p in out_dir.iterdir()) == ["a.safetensors", "c.safetensors"]
    # twins of different weights would overwrite each other: refused, nothing written
    code, _, err = run_cli(capsys, "convert", *b, "--out-dir", tmp_path / "again",
                           "--activation", "relu")  # fmt: skip
    assert code == 1 and "would both be written" in err


def test_index_build_on_ray_names_twins_too(
    folder: Path, encoder_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The Ray path keeps one row per content as the single process does, and says so."""
    pytest.importorskip("ray")
    from weightspace.distributed import ray_index
    from weightspace.distributed.ray_embed import EmbedReport
    from weightspace.index import AddReport, ModelIndex
    from weightspace.nn.encoder import Encoder

    stored = ModelIndex.build(tmp_path / "stand-in", [], Encoder.load(encoder_dir))[0]

    def fake(inputs, encoder, **kwargs) -> ray_index.RayIndexReport:  # noqa: ANN001
        return ray_index.RayIndexReport(stored, AddReport([0, 1, 2, 3]), EmbedReport(), [])

    monkeypatch.setattr(ray_index, "build_index_on_ray", fake)
    code, _, err = run_cli(capsys, "index", "build", folder, "--out", tmp_path / "index",
                           "--encoder", encoder_dir, "--activation", "relu", "--ray")  # fmt: skip
    assert code == 0, err
    lines = {line.split(" and ")[0].split("/")[-1]: line for line in twin_lines(err)}
    assert set(lines) == {"a.pt", "b.pt"}
    assert "same weights): stored once" in lines["a.pt"]
    assert "different weights): each stored" in lines["b.pt"]
