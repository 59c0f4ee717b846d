"""Bulk embedding on Ray (``weightspace.distributed.ray_embed``) against the single-process path."""

from __future__ import annotations

import builtins
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from weightspace.distributed import RayUnavailableError, require_ray
from weightspace.distributed.ray_embed import (
    EmbedJobError,
    _check_job,
    expand_inputs,
    plan_shards,
    read_embeddings,
    write_shard,
)
from weightspace.ingest import save_checkpoint
from weightspace.nn.encoder import Encoder
from weightspace.spec import mlp_spec

ARCHITECTURES = ([6, 8, 3], [5, 7, 7, 2])


def save_mlp(path: Path, seed: int) -> Path:
    spec = mlp_spec(ARCHITECTURES[seed % 2], "relu")
    generator = torch.Generator().manual_seed(seed)
    state = {n: torch.randn(s, generator=generator) for n, s in spec.param_shapes().items()}
    return save_checkpoint(path, spec, state)


@pytest.fixture
def checkpoints(tmp_path: Path) -> list[Path]:
    """Eight good checkpoints of two alternating architectures, then one corrupt file."""
    folder = tmp_path / "checkpoints"
    good = [save_mlp(folder / f"m{i:02d}.safetensors", seed=i) for i in range(8)]
    bad = folder / "zz_corrupt.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    return [*good, bad]


# ------------------------------------------------------------------------------ without Ray
def test_missing_ray_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_ray(name: str, *args: object, **kwargs: object) -> object:
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "ray", raising=False)
    monkeypatch.delitem(sys.modules, "ray.data", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(RayUnavailableError, match=r"weightspace\[distributed\]"):
        require_ray()


def test_expand_inputs_keeps_order_and_refuses_missing_paths(tmp_path: Path, checkpoints) -> None:
    folder = checkpoints[0].parent
    sources = expand_inputs([checkpoints[3], folder])
    assert sources[0] == str(checkpoints[3].resolve())
    assert sources[1:] == [str(p.resolve()) for p in sorted(checkpoints)]
    with pytest.raises(Exception, match="no such file"):
        expand_inputs([tmp_path / "nowhere.safetensors"])


def test_shard_names_change_with_what_fixes_the_bits() -> None:
    sources = [f"/m{i}" for i in range(10)]
    shards = plan_shards(sources, 4, fingerprint="f", batch_size=2)
    assert [len(s.sources) for s in shards] == [4, 4, 2]
    assert sum((s.sources for s in shards), ()) == tuple(sources)
    again = plan_shards(sources, 4, fingerprint="f", batch_size=2)
    assert [s.name for s in shards] == [s.name for s in again]
    for other in (
        plan_shards(sources, 4, fingerprint="g", batch_size=2),
        plan_shards(sources, 4, fingerprint="f", batch_size=3),
        plan_shards(sources[::-1], 4, fingerprint="f", batch_size=2),
    ):
        assert not {s.name for s in shards} & {s.name for s in other}


def test_shards_are_handed_out_largest_first_with_input_order_among_equals(
    tmp_path: Path,
) -> None:
    from weightspace.distributed.ray_shards import largest_first, shard_cost

    sizes = [10, 10, 300, 300, 5000, 5000, 10, 10]  # bytes of each file
    sources = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"{i}.safetensors"
        path.write_bytes(b"x" * size)
        sources.append(str(path))
    sources += [f"{tmp_path}/zoo#a", f"{tmp_path}/zoo#b"]  # zoo rows: one byte each
    shards = plan_shards(sources, 2, fingerprint="f", batch_size=2)
    assert [shard_cost(s) for s in shards] == [20, 600, 10000, 20, 2]
    order = largest_first(shards)
    assert [s.index for s in order] == [2, 1, 0, 3, 4]
    assert sorted(order, key=lambda s: s.index) == shards  # a reordering, nothing lost


def test_shard_round_trip_keeps_order_vectors_and_failures(tmp_path: Path) -> None:
    vectors = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
    write_shard(
        tmp_path / "part-000000-x.parquet",
        ["/a", "/bad", "/b"],
        [("/a", "ha"), ("/b", "hb")],
        vectors,
        {"/bad": "/bad: not a checkpoint"},
        "fp",
    )
    table = read_embeddings(tmp_path)
    assert list(table["source"]) == ["/a", "/b"]
    assert list(table["content_hash"]) == ["ha", "hb"]
    assert np.array_equal(np.stack(table["z"].to_numpy()).astype(np.float32), vectors)
    everything = read_embeddings(tmp_path, with_failures=True)
    assert list(everything["error"].fillna("")) == ["", "/bad: not a checkpoint", ""]
    assert not list(tmp_path.glob("*.tmp-*"))


def test_an_output_directory_of_another_job_is_refused(tmp_path: Path) -> None:
    job = {"format_version": 1, "encoder_fingerprint": "a", "batch_size": 2, "shard_size": 4}
    _check_job(tmp_path, job)
    _check_job(tmp_path, dict(job))  # the same job resumes
    assert json.loads((tmp_path / "embedding_job.json").read_text()) == job
    with pytest.raises(EmbedJobError, match="encoder_fingerprint"):
        _check_job(tmp_path, {**job, "encoder_fingerprint": "b"})


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from weightspace.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_embed_ray_without_ray_exits_cleanly(
    monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path, encoder_dir: Path, checkpoints
) -> None:
    from weightspace.distributed import ray_embed

    def missing() -> None:
        raise RayUnavailableError('Ray is not installed; pip install "weightspace[distributed]"')

    monkeypatch.setattr(ray_embed, "require_ray", missing)
    args = ["embed", str(checkpoints[0]), "--encoder", str(encoder_dir), "--out", str(tmp_path)]
    code, _, err = _run(capsys, *args, "--ray")
    assert code == 1 and "weightspace[distributed]" in err and "Traceback" not in err


def test_cli_embed_ray_passes_its_options_and_fails_on_bad_inputs(
    monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path, encoder_dir: Path
) -> None:
    from weightspace.distributed import ray_embed

    calls: list[dict] = []

    def fake_embed_files(inputs, encoder, out, **kwargs) -> ray_embed.EmbedReport:
        calls.append({"inputs": inputs, "encoder": encoder, "out": out, **kwargs})
        return ray_embed.EmbedReport(embedded=3, failures=failures)

    monkeypatch.setattr(ray_embed, "embed_files", fake_embed_files)
    args = ["embed", "a.pt", "b", "--encoder", str(encoder_dir), "--out", str(tmp_path / "o")]
    ray_args = ["--ray", "--ray-address", "auto", "--ray-workers", "3", "--batch-size", "7"]
    failures: list[tuple[str, str]] = []
    code, out, _ = _run(capsys, *args, *ray_args)
    assert code == 0 and "3 embeddings" in out
    call = calls[-1]
    assert [str(p) for p in call["inputs"]] == ["a.pt", "b"] and call["address"] == "auto"
    assert call["num_workers"] == 3 and call["batch_size"] == 7
    assert call["load_kwargs"]["finite_for"] == "embedding"
    failures = [("/x.pt", "/x.pt: not a checkpoint")]
    code, _, err = _run(capsys, *args, *ray_args)
    assert code == 1 and "/x.pt: not a checkpoint" in err


# ------------------------------------------------------------------------------ on a local Ray
@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="Ray is not installed (weightspace[distributed])")
    pytest.importorskip("ray.data", reason="Ray Data is not installed (ray[data])")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_embeddings_equal_the_single_process_path_and_resume(
    local_ray, tmp_path: Path, encoder_dir: Path, checkpoints: list[Path]
) -> None:
    from weightspace.distributed.ray_embed import embed_files
    from weightspace.index import content_hash
    from weightspace.ingest import load_checkpoint

    out = tmp_path / "embeddings"
    # shards of 4 alternating architectures with batches of 2 cut the same batches as one
    # Encoder.embed over every input, so the vectors must agree bit for bit
    report = embed_files(
        [checkpoints[0].parent], encoder_dir, out, num_workers=2, batch_size=2, shard_size=4
    )
    good, bad = checkpoints[:-1], checkpoints[-1]
    assert report.embedded == len(good) and len(report.written) == 3 and not report.skipped
    assert [source for source, _ in report.failures] == [str(bad.resolve())]
    assert "zz_corrupt.safetensors" in report.failures[0][1]

    table = read_embeddings(out)
    assert list(table["source"]) == [str(p.resolve()) for p in good]
    vectors = np.stack(table["z"].to_numpy())
    expected = Encoder.load(encoder_dir).embed(good, batch_size=2)
    assert vectors.dtype == expected.dtype
    assert np.array_equal(vectors, expected)
    hashes = [content_hash(spec.to_json(), state) for spec, state in map(load_checkpoint, good)]
    assert list(table["content_hash"]) == hashes

    # resume: the done shards are left alone, a lost one is embedded again, identically
    lost = report.written[1]
    kept = {p: p.stat().st_mtime_ns for p in report.written if p != lost}
    lost.unlink()
    again = embed_files(
        [checkpoints[0].parent], encoder_dir, out, num_workers=2, batch_size=2, shard_size=4
    )
    assert again.written == [lost] and sorted(again.skipped) == sorted(kept)
    assert again.embedded == 4 and len(again.failures) == 1  # failures of skipped shards too
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert np.array_equal(np.stack(read_embeddings(out)["z"].to_numpy()), expected)


@pytest.mark.slow
def test_zoo_generated_on_ray_equals_one_machine_and_resumes(local_ray, tmp_path: Path) -> None:
    import dataclasses

    import pandas as pd

    from weightspace.distributed.ray_zoo import ray_shard_runner
    from weightspace.zoo.generate import generate_zoo, plan_shards
    from weightspace.zoo.presets import get_preset
    from weightspace.zoo.sweep import TrainSettings

    preset = dataclasses.replace(
        get_preset("tiny"),
        runs=2,
        runs_per_shard=1,
        settings=TrainSettings(epochs=1, checkpoint_epochs=(0, 1), batch_size=32),
        archs=("mlp-w8-d1-relu",),
    )
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = generate_zoo(tmp_path / "local", preset, show_progress=False)
    finally:
        torch.set_num_threads(previous)

    class Stop(Exception):
        pass

    def stop(name: str) -> None:
        raise Stop(name)

    out = tmp_path / "on-ray"
    with pytest.raises(Stop):  # the job interrupted after its first shard
        generate_zoo(
            out, preset, show_progress=False, shard_runner=ray_shard_runner(), on_shard_done=stop
        )
    first = next(p for p in (out / "weights").glob("*.safetensors"))
    stamp = first.stat().st_mtime_ns
    zoo = generate_zoo(out, preset, show_progress=False, shard_runner=ray_shard_runner())
    assert first.stat().st_mtime_ns == stamp, "a finished shard was trained again"
    assert len(list((out / "weights").glob("*.safetensors"))) == len(plan_shards(preset, 0)) > 1
    columns = [c for c in local.table.columns if c != "shard"]
    pd.testing.assert_frame_equal(zoo.table[columns], local.table[columns])
    for checkpoint_id in zoo.ids:
        a, b = zoo.module_state_dict(checkpoint_id), local.module_state_dict(checkpoint_id)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
