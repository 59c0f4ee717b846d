"""Zoos generated into a ``pyarrow.fs`` URI (``weightspace.distributed.storage``, ``zoo generate
--out URI [--ray]``), tested with a local ``file://`` URI: the same zoo as on a local path, and an
interrupted job resumes from what the URI holds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from weightspace.distributed.ray_zoo import generate_to_uri
from weightspace.distributed.storage import StorageError, download, upload
from weightspace.zoo import Zoo
from weightspace.zoo.generate import generate_zoo
from weightspace.zoo.presets import get_preset
from weightspace.zoo.sweep import TrainSettings


@pytest.fixture(scope="module")
def preset():  # noqa: ANN201
    return dataclasses.replace(
        get_preset("tiny"),
        runs=2,
        runs_per_shard=1,
        settings=TrainSettings(epochs=1, checkpoint_epochs=(0, 1), batch_size=32),
        archs=("mlp-w8-d1-relu",),
    )


@pytest.fixture(scope="module")
def local_zoo(tmp_path_factory: pytest.TempPathFactory, preset) -> Path:  # noqa: ANN001
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        folder = tmp_path_factory.mktemp("local") / "zoo"
        generate_zoo(folder, preset, show_progress=False)
    finally:
        torch.set_num_threads(previous)
    return folder


def assert_same_zoo(ours: Path, reference: Path) -> None:
    a, b = Zoo.open(ours), Zoo.open(reference)
    assert list(a.ids) == list(b.ids) and len(a.ids) >= 2
    for checkpoint_id in a.ids:
        left, right = a.state_dict(checkpoint_id), b.state_dict(checkpoint_id)
        assert left.keys() == right.keys()
        assert all(torch.equal(left[k], right[k]) for k in left)
    columns = [c for c in a.table.columns if c not in ("created_at", "seconds")]
    assert a.table[columns].astype(str).equals(b.table[columns].astype(str))


def test_a_zoo_generated_into_a_file_uri_equals_the_local_one_and_resumes(
    tmp_path: Path,
    preset,
    local_zoo: Path,  # noqa: ANN001
) -> None:
    remote = tmp_path / "remote"
    uri = f"file://{remote}"
    info = generate_to_uri(uri, preset, show_progress=False, threads=1)
    assert info["checkpoints"] == len(Zoo.open(local_zoo).ids)
    assert not any(".tmp-" in p.name for p in remote.rglob("*"))  # no upload left half-way
    assert_same_zoo(remote, local_zoo)

    # an interrupted job: one shard never reached the URI, nor the final table
    parts = sorted((remote / "parts").glob("*.parquet"))
    lost = parts[0].name.removesuffix(".parquet")
    for path in [
        parts[0],
        remote / "weights" / f"{lost}.safetensors",
        remote / "checkpoints.parquet",
    ]:
        path.unlink()
    kept = {p: p.stat().st_mtime_ns for p in (remote / "weights").glob("*.safetensors")}
    generate_to_uri(uri, preset, show_progress=False, threads=1)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # finished shards not redone
    assert (remote / "weights" / f"{lost}.safetensors").is_file()
    assert_same_zoo(remote, local_zoo)


def test_upload_and_download_round_trip_and_bad_uris_are_one_line_errors(
    tmp_path: Path,
) -> None:
    local = tmp_path / "here"
    (local / "a").mkdir(parents=True)
    (local / "a" / "x.bin").write_bytes(b"\x00\x01" * 100)
    (local / "y.txt").write_text("y")
    uri = f"file://{tmp_path / 'there'}"
    assert sorted(upload(local, uri)) == ["a/x.bin", "y.txt"]
    assert upload(local, uri) == []  # nothing missing any more
    back = tmp_path / "back"
    assert sorted(download(uri, back)) == ["a/x.bin", "y.txt"]
    assert (back / "a" / "x.bin").read_bytes() == b"\x00\x01" * 100
    with pytest.raises(StorageError, match="nosuchscheme://bucket") as caught:
        upload(local, "nosuchscheme://bucket/zoo")
    assert "\n" not in str(caught.value)


def test_cli_zoo_generate_to_a_uri(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from weightspace.cli import main

    remote = tmp_path / "cli-zoo"
    args = ["zoo", "generate", "--preset", "tiny", "--out", f"file://{remote}", "--runs", "1"]
    args += ["--epochs", "1", "--archs", "mlp-w8-d1-relu", "--tasks", "digits"]
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 0, err
    assert "zoo ready" in err and len(Zoo.open(remote).ids) >= 1


@pytest.mark.slow
def test_ray_nodes_upload_their_shards_to_the_uri(
    tmp_path: Path,
    preset,
    local_zoo: Path,  # noqa: ANN001
) -> None:
    ray = pytest.importorskip("ray", reason="Ray is not installed (weightspace[distributed])")
    from weightspace.distributed.ray_zoo import ray_shard_runner

    uri = f"file://{tmp_path / 'remote'}"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        generate_to_uri(uri, preset, show_progress=False, shard_runner=ray_shard_runner(uri=uri))
    finally:
        ray.shutdown()
    assert_same_zoo(tmp_path / "remote", local_zoo)
