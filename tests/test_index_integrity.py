"""Hardening of the index (issue 13): no code from data, checksums, repair, damaged catalogs,
zoo directories as input, and one-line errors for bad paths."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from test_index import StandInEmbedder, records, run_cli, save_mlp, unit
from weightspace.errors import CheckpointError
from weightspace.index import IndexCorruptError, IndexFormatError, ModelIndex, iter_inputs
from weightspace.index.integrity import FULL_CHECK_ON_OPEN_BYTES, verify_index
from weightspace.index.repair import repair_index

ENCODER = "test_index:StandInEmbedder"


@pytest.fixture
def checkpoints(tmp_path: Path) -> list[Path]:
    return [save_mlp(tmp_path / "ckpts" / f"m{i}.safetensors", seed=i) for i in range(6)]


@pytest.fixture
def built(tmp_path: Path, checkpoints: list[Path]) -> Path:
    path = tmp_path / "idx"
    ModelIndex.build(path, iter_inputs(checkpoints), StandInEmbedder())
    return path


def vector_file(index_dir: Path) -> Path:
    [file] = [p for p in index_dir.iterdir() if p.suffix == ".faiss"]
    return file


def flip_bytes(file: Path, count: int = 10, seed: int = 0, start: int = 0) -> None:
    data = bytearray(file.read_bytes())
    rng = np.random.default_rng(seed)
    for offset in rng.choice(np.arange(start, len(data)), size=count, replace=False):
        data[offset] ^= 0xFF
    file.write_bytes(bytes(data))


def execute(index_dir: Path, *statements: str) -> None:
    connection = sqlite3.connect(index_dir / "meta.sqlite")
    try:
        for statement in statements:
            connection.execute(statement)
        connection.commit()
    finally:
        connection.close()


def one_line_error(code: int, err: str) -> bool:
    return code == 1 and "Traceback" not in err and err.strip().startswith("error:")


# ------------------------------------------------------------------------------ no code from data
def test_index_never_imports_the_module_it_names(
    tmp_path: Path, built: Path, checkpoints: list[Path], capsys, monkeypatch
) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "planted_encoder.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from test_index import StandInEmbedder as Encoder\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    # an old (format 1) index recorded its encoder as module:attr
    execute(
        built,
        "UPDATE manifest SET value = '\"planted_encoder:Encoder\"' WHERE key = 'encoder'",
        "UPDATE manifest SET value = '1' WHERE key = 'format_version'",
    )
    for args in (
        ("search", str(built), str(checkpoints[0])),
        ("index", "add", str(built), str(checkpoints[0])),
        ("index", "repair", str(built)),
    ):
        code, _, err = run_cli(capsys, *args)
        assert one_line_error(code, err), err
        assert "--encoder" in err and "planted_encoder:Encoder" in err
    assert not marker.exists()
    index = ModelIndex.open(built)
    with pytest.raises(Exception, match="never imports"):
        index.load_encoder()
    assert not marker.exists()


def test_stored_encoder_directory_is_loaded_and_fingerprinted(
    tmp_path: Path, checkpoints: list[Path], capsys
) -> None:
    from models import tiny_encoder

    encoder_dir = tmp_path / "encoder"
    tiny_encoder().save(encoder_dir)
    index_dir = tmp_path / "idx"
    code, _, err = run_cli(
        capsys, "index", "build", "--encoder", str(encoder_dir), "--out", str(index_dir),
        *map(str, checkpoints[:4]),
    )  # fmt: skip
    assert code == 0, err
    assert ModelIndex.open(index_dir).encoder == str(encoder_dir.resolve())
    code, out, err = run_cli(capsys, "search", str(index_dir), str(checkpoints[2]), "--json")
    assert code == 0, err
    assert json.loads(out)[0]["path"] == str(checkpoints[2])
    code, out, err = run_cli(capsys, "index", "add", str(index_dir), *map(str, checkpoints))
    assert code == 0 and "2 added" in out, err
    # the directory now holds other weights: refused, not silently used
    other = tiny_encoder()
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    other.save(encoder_dir)
    code, _, err = run_cli(capsys, "search", str(index_dir), str(checkpoints[2]))
    assert one_line_error(code, err) and "--encoder" in err


def test_build_refuses_to_record_an_import(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="only an encoder directory"):
        ModelIndex.build(tmp_path / "idx", [], StandInEmbedder(), encoder="os:system")
    assert not (tmp_path / "idx" / "meta.sqlite").exists()


# ------------------------------------------------------------------------------ checksums
def test_flipped_bytes_in_the_vector_file_are_caught_and_repaired(
    built: Path, checkpoints: list[Path], capsys
) -> None:
    file = vector_file(built)
    assert file.stat().st_size <= FULL_CHECK_ON_OPEN_BYTES
    flip_bytes(file, 10, start=200)  # inside the stored vectors
    with pytest.raises(IndexCorruptError, match=str(file)):
        ModelIndex.open(built)
    for args in (
        ("index", "info", str(built)),
        ("search", str(built), str(checkpoints[1]), "--encoder", ENCODER),
        ("index", "add", str(built), str(checkpoints[1]), "--encoder", ENCODER),
    ):
        code, _, err = run_cli(capsys, *args)
        assert one_line_error(code, err) and file.name in err, err
    code, out, err = run_cli(capsys, "index", "repair", str(built))
    assert code == 0 and "6 from the catalog" in out, err
    code, out, err = run_cli(
        capsys, "search", str(built), str(checkpoints[1]), "--json", "--encoder", ENCODER
    )
    assert code == 0 and json.loads(out)[0]["path"] == str(checkpoints[1])
    assert json.loads(out)[0]["score"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("where", ["header", "sampled", "truncated"])
def test_quick_check_covers_header_samples_and_size(
    built: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import weightspace.index.integrity as integrity

    monkeypatch.setattr(integrity, "FULL_CHECK_ON_OPEN_BYTES", 0)  # quick checks only
    file = vector_file(built)
    if where == "header":
        flip_bytes(file, 1, start=0)
    elif where == "sampled":
        data = bytearray(file.read_bytes())
        offsets = integrity._sample_offsets(len(data))
        data[offsets[-1] if offsets else 10] ^= 1
        file.write_bytes(bytes(data))
    else:
        file.write_bytes(file.read_bytes()[:-4])
    with pytest.raises(IndexCorruptError, match=str(file)):
        ModelIndex.open(built)


def test_verify_reads_every_batch(built: Path, checkpoints: list[Path], monkeypatch) -> None:
    import weightspace.index.integrity as integrity

    index = ModelIndex.open(built)
    index.add_vectors(unit(5000, seed=3), records(5000, 100))  # a file larger than the samples
    assert verify_index(ModelIndex.open(built)) == {
        "status": "ok", "checked": "full", "models": 5006, "batches": 2,
    }  # fmt: skip
    # a bit flipped outside the header and the sampled blocks: only --verify sees it
    monkeypatch.setattr(integrity, "FULL_CHECK_ON_OPEN_BYTES", 0)
    file = vector_file(built)
    data = bytearray(file.read_bytes())
    sampled = {
        o + i
        for o in integrity._sample_offsets(len(data))
        for i in range(integrity.SAMPLE_BLOCK_BYTES)
    }
    target = next(i for i in range(len(data) - 64, integrity.HEAD_BYTES, -1) if i not in sampled)
    data[target] ^= 1
    file.write_bytes(bytes(data))
    reopened = ModelIndex.open(built)  # the quick check misses it
    with pytest.raises(IndexCorruptError, match="content"):
        verify_index(reopened)


def test_edited_catalog_row_fails_verify_and_is_not_laundered_by_repair(built: Path) -> None:
    execute(built, "UPDATE models SET metrics = '{\"i\": 99}' WHERE id = 2")
    index = ModelIndex.open(built)
    index.check_catalog()  # still valid JSON: only the checksum knows
    with pytest.raises(IndexCorruptError, match="catalog rows of models 0..5"):
        verify_index(index)
    with pytest.raises(IndexCorruptError, match="rebuild"):
        repair_index(built)


# ------------------------------------------------------------------------------ damaged catalogs
@pytest.mark.parametrize(
    "damage",
    [
        "UPDATE models SET metrics = '{not json' WHERE id = 1",
        "UPDATE models SET metrics = CAST(x'80ff' AS TEXT) WHERE id = 1",
        "DROP TABLE models",
        "DROP TABLE batches",
        "DELETE FROM models WHERE id = 3",
        "UPDATE manifest SET value = '\"x\"' WHERE key = 'dim'",
        "DELETE FROM manifest WHERE key = 'vectors_checksum'",
    ],
)
def test_damaged_catalog_gives_one_line_errors(
    built: Path, checkpoints: list[Path], damage: str, capsys
) -> None:
    execute(built, damage)
    for args in (
        ("index", "info", str(built)),
        ("search", str(built), str(checkpoints[1]), "-k", "6", "--encoder", ENCODER),
        ("index", "add", str(built), str(checkpoints[0]), "--encoder", ENCODER),
    ):
        code, out, err = run_cli(capsys, *args)
        assert one_line_error(code, err), (args, err)
        assert "meta.sqlite" in err or str(built) in err


def test_mangled_schema_is_refused_before_writing(
    built: Path, checkpoints: list[Path], capsys
) -> None:
    """The fuzz suite's find: a catalog whose models table lost a column made add crash."""
    execute(built, "ALTER TABLE models RENAME COLUMN embedding TO embedding_")
    for args in (
        ("index", "info", str(built)),
        ("index", "add", str(built), str(checkpoints[0]), "--encoder", ENCODER),
    ):
        code, _, err = run_cli(capsys, *args)
        assert one_line_error(code, err) and "lacks column(s) embedding" in err, err
    execute(built, "ALTER TABLE models RENAME COLUMN embedding_ TO embedding")
    code, _, err = run_cli(capsys, "index", "info", str(built), "--verify")
    assert code == 0, err


def test_huge_and_negative_ids_are_not_found(built: Path) -> None:
    index = ModelIndex.open(built)
    assert index.get(99999999999999999999999) is None
    assert index.get(-1) is None
    assert index.get(5) is not None


# ------------------------------------------------------------------------------ format 1 upgrade
def test_repair_upgrades_a_format_1_index_from_its_sources(
    built: Path, checkpoints: list[Path], capsys
) -> None:
    execute(
        built,
        "UPDATE manifest SET value = '1' WHERE key = 'format_version'",
        "UPDATE models SET embedding = NULL",
        "DROP TABLE batches",
    )
    code, out, err = run_cli(capsys, "index", "info", str(built))
    assert code == 0 and "no checksums" in json.loads(out)["integrity"]["status"]
    code, _, err = run_cli(
        capsys, "index", "add", str(built), str(checkpoints[0]), "--encoder", ENCODER
    )
    assert one_line_error(code, err) and "index repair" in err
    code, out, err = run_cli(capsys, "index", "repair", str(built), "--encoder", ENCODER)
    assert code == 0 and "6 re-embedded" in out, err
    index = ModelIndex.open(built)
    assert index.format_version == 2 and verify_index(index)["status"] == "ok"
    [hits] = index.search_models(list(iter_inputs(checkpoints[4:5])), StandInEmbedder(), k=1)
    assert hits[0].record.path == str(checkpoints[4])


def test_repair_refuses_a_changed_source(built: Path, checkpoints: list[Path]) -> None:
    execute(built, "UPDATE models SET embedding = NULL WHERE id = 0")
    save_mlp(checkpoints[0], seed=77)  # the file was overwritten since it was indexed
    with pytest.raises(IndexCorruptError, match="changed since it was indexed"):
        repair_index(built, embedder=StandInEmbedder())


# ------------------------------------------------------------------------------ inputs
def test_build_from_a_zoo_directory(tmp_path: Path, capsys) -> None:
    from weightspace.zoo import generate_zoo, get_preset
    from weightspace.zoo.sweep import TrainSettings

    preset = dataclasses.replace(
        get_preset("tiny"),
        runs=2,
        runs_per_shard=2,
        settings=TrainSettings(epochs=1, checkpoint_epochs=(0, 1), batch_size=32),
        archs=("mlp-w8-d1-relu",),
    )
    zoo = generate_zoo(tmp_path / "zoo", preset, show_progress=False)
    index_dir = tmp_path / "idx"
    code, out, err = run_cli(
        capsys, "index", "build", "--encoder", ENCODER, "--out", str(index_dir), str(zoo.root)
    )
    assert code == 0, err
    index = ModelIndex.open(index_dir)
    assert len(index) == len(zoo)
    first = zoo.ids[0]
    record = index.get(0)
    assert record.path == f"{zoo.root.resolve()}#{first}"
    assert record.metrics["checkpoint_id"] == first
    assert record.metrics["test_accuracy"] == pytest.approx(float(zoo.row(first)["test_accuracy"]))
    # repair can reload zoo rows as sources
    execute(index_dir, "UPDATE models SET embedding = NULL")
    assert repair_index(index_dir, embedder=StandInEmbedder())["re_embedded"] == len(zoo)


def test_symlink_loop_is_refused(tmp_path: Path, built: Path, capsys) -> None:
    loop_a, loop_b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    os.symlink(loop_b, loop_a)
    os.symlink(loop_a, loop_b)
    with pytest.raises(CheckpointError, match="symlink loop"):
        list(iter_inputs([loop_a]))
    code, _, err = run_cli(capsys, "index", "add", str(built), str(loop_a), "--encoder", ENCODER)
    assert one_line_error(code, err) and "symlink loop" in err
    # a loop inside a directory of checkpoints is skipped, the real files are read
    folder = tmp_path / "folder"
    folder.mkdir()
    save_mlp(folder / "real.safetensors", seed=50)
    os.symlink(folder, folder / "self")
    os.symlink(folder / "x.safetensors", folder / "x.safetensors.pt")
    assert [Path(m.path).name for m in iter_inputs([folder])] == ["real.safetensors"]
    assert len(ModelIndex.open(built)) == 6


def test_not_an_index_is_still_a_format_error(tmp_path: Path) -> None:
    with pytest.raises(IndexFormatError, match="not a weightspace index"):
        ModelIndex.open(tmp_path)
