"""``index build --ray`` (``weightspace.distributed.ray_index``) against the single-process
build."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from test_ray import save_mlp
from weightspace.distributed import RayUnavailableError, ray_index
from weightspace.distributed.ray_embed import (
    EmbedReport,
    ShardEmbedder,
    load_shard,
    plan_shards,
    read_embeddings,
)
from weightspace.distributed.ray_index import (
    IndexJobError,
    build_index_on_ray,
    catalog_entries,
    catalog_path,
    collect_shards,
    unit_vectors,
    write_catalog,
)
from weightspace.index import ModelIndex, iter_inputs
from weightspace.index.writing import build_index_from_vectors
from weightspace.nn.encoder import Encoder


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Eight checkpoints of two alternating architectures, a duplicate of the first (stored
    once), then a corrupt file (last in sorted order)."""
    folder = tmp_path / "checkpoints"
    for i in range(8):
        save_mlp(folder / f"m{i:02d}.safetensors", seed=i)
    save_mlp(folder / "m99_copy_of_m00.safetensors", seed=0)
    (folder / "zz_corrupt.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    return folder


def good_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("zz"))


def index_rows(index: ModelIndex) -> list[tuple]:
    """``(id, path, content_hash, spec_json, metrics)`` of every stored model."""
    return [
        (r.id, r.path, r.content_hash, r.spec_json, r.metrics)
        for r in (index.get(i) for i in range(len(index)))
    ]


# ------------------------------------------------------------------------------ without Ray
def test_shards_committed_by_the_driver_equal_the_single_process_index(
    tmp_path: Path, encoder_dir: Path, folder: Path
) -> None:
    """The driver's half (catalog files, collect, one commit) on shards cut as the Ray job
    cuts them, each embedded as its actor does: same ids, rows and vector bits."""
    batch = 2  # one model of each architecture per batch: bits differ from larger batches
    encoder = Encoder.load(encoder_dir)
    sources = [str(p.resolve()) for p in sorted(folder.iterdir())]
    work = tmp_path / "work"
    work.mkdir()
    embedder = ShardEmbedder(str(encoder_dir), encoder.fingerprint, str(work), 512, "cpu")
    for shard in plan_shards(sources, batch, fingerprint=encoder.fingerprint, batch_size=512):
        row = {"name": shard.name, "sources": json.dumps(shard.sources)}
        loaded = load_shard(row, str(encoder_dir), encoder.fingerprint, {})
        embedder({key: [value] for key, value in loaded.items()})
        write_catalog(work / shard.name, {})
    shards = sorted(work.glob("part-*.parquet"))
    records, vectors, failures, counts = collect_shards(shards)
    assert [source for source, _ in failures] == [sources[-1]]
    assert "zz_corrupt.safetensors" in failures[0][1]
    assert sum(counts) == len(records) == 9

    built = tmp_path / "ray-index"
    report = build_index_from_vectors(
        built,
        records,
        unit_vectors(vectors, counts),
        fingerprint=encoder.fingerprint,
        encoder=str(encoder_dir),
    )
    single, single_report = ModelIndex.build(
        tmp_path / "single", iter_inputs(good_files(folder)), encoder, batch_size=batch
    )
    ours = ModelIndex.open(built)
    assert report.added == single_report.added == list(range(8))
    assert report.duplicates == single_report.duplicates == [(sources[8], 0)]
    assert index_rows(ours) == index_rows(single)
    # the duplicate sits after every batch boundary it could shift, so all bits agree
    assert np.array_equal(ours.store.reconstruct_all(), single.store.reconstruct_all())
    assert ours.manifest["fingerprint"] == single.manifest["fingerprint"]


def test_catalog_files_name_their_shard_and_a_missing_one_is_an_error(tmp_path: Path) -> None:
    shard = tmp_path / "part-000003-0123456789abcdef.parquet"
    assert catalog_path(shard).name == "catalog-000003-0123456789abcdef.json"
    from weightspace.distributed.ray_embed import write_shard

    write_shard(shard, ["/a"], [("/a", "h")], np.ones((1, 2), np.float32), {}, "fp")
    with pytest.raises(IndexJobError, match="catalog-000003"):
        collect_shards([shard])
    catalog_path(shard).write_text("{}")
    with pytest.raises(IndexJobError, match="lacks /a"):
        collect_shards([shard])


def test_zoo_rows_get_the_single_process_catalog_rows(tmp_path: Path) -> None:
    from weightspace.zoo.generate import generate_zoo
    from weightspace.zoo.presets import get_preset
    from weightspace.zoo.sweep import TrainSettings

    preset = dataclasses.replace(
        get_preset("tiny"),
        runs=1,
        settings=TrainSettings(epochs=1, checkpoint_epochs=(0, 1), batch_size=32),
        archs=("mlp-w8-d1-relu",),
    )
    zoo = generate_zoo(tmp_path / "zoo", preset, show_progress=False)
    expected = {m.path: m for m in iter_inputs([tmp_path / "zoo"])}
    assert len(expected) == len(zoo.ids) >= 2
    entries = catalog_entries(sorted(expected), {})
    assert entries.keys() == expected.keys()
    for source, model in expected.items():
        assert entries[source]["spec_json"] == model.spec_json
        assert entries[source]["spec_summary"] == model.spec_summary
        assert entries[source]["metrics"] == dict(model.metrics) != {}


def test_a_work_directory_of_other_loading_options_is_refused(tmp_path: Path) -> None:
    ray_index._check_index_job(tmp_path, {"activation": "relu"})
    ray_index._check_index_job(tmp_path, {"activation": "relu"})  # the same job resumes
    with pytest.raises(IndexJobError, match="other loading options"):
        ray_index._check_index_job(tmp_path, {"activation": "tanh"})


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from weightspace.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_index_build_ray_passes_options_and_lists_skipped_files(
    monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path, encoder_dir: Path
) -> None:
    calls: list[dict] = []
    stored = ModelIndex.build(tmp_path / "stand-in", [], Encoder.load(encoder_dir))[0]

    def fake(inputs, encoder, **kwargs) -> ray_index.RayIndexReport:
        from weightspace.index import AddReport

        calls.append({"inputs": inputs, "encoder": encoder, **kwargs})
        failures = [("/x.pt", "/x.pt: not a checkpoint")] if kwargs["skip_errors"] else []
        return ray_index.RayIndexReport(stored, AddReport([0, 1]), EmbedReport(), failures)

    monkeypatch.setattr(ray_index, "build_index_on_ray", fake)
    args = ["index", "build", "a.pt", "--encoder", str(encoder_dir), "--out", str(tmp_path / "o")]
    ray_args = ["--ray", "--ray-address", "auto", "--ray-workers", "3", "--batch-size", "7"]
    code, out, err = _run(capsys, *args, *ray_args)
    assert code == 0 and "2 added" in out and "skipped" not in err
    call = calls[-1]
    assert call["address"] == "auto" and call["num_workers"] == 3 and call["batch_size"] == 7
    assert call["out"] == tmp_path / "o" and call["dsn"] is None
    assert call["load_kwargs"]["finite_for"] == "embedding"
    code, _, err = _run(capsys, *args, *ray_args, "--skip-errors")
    assert code == 0 and "/x.pt: not a checkpoint" in err


def test_cli_index_build_ray_without_ray_or_with_bad_files_exits_cleanly(
    monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path, encoder_dir: Path, folder: Path
) -> None:
    def missing() -> None:
        raise RayUnavailableError('Ray is not installed; pip install "weightspace[distributed]"')

    monkeypatch.setattr(ray_index, "require_ray", missing)
    out = tmp_path / "idx"
    args = ["index", "build", str(folder), "--encoder", str(encoder_dir), "--out", str(out)]
    code, _, err = _run(capsys, *args, "--ray")
    assert code == 1 and "weightspace[distributed]" in err and "Traceback" not in err
    assert not out.exists()
    failures = [(f"/m{i}.pt", f"/m{i}.pt: bad {i}") for i in range(7)]
    message = str(ray_index._failure_error(failures, tmp_path))
    assert "7 input(s)" in message and "/m4.pt: bad 4" in message and "2 more" in message
    assert "\n" not in message and "--skip-errors" in message


# ------------------------------------------------------------------------------ on a local Ray
@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="Ray is not installed (weightspace[distributed])")
    pytest.importorskip("ray.data", reason="Ray Data is not installed (ray[data])")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_index_equals_the_single_process_index_and_resumes(
    local_ray, tmp_path: Path, encoder_dir: Path, folder: Path
) -> None:
    out, work = tmp_path / "idx", tmp_path / "shards"
    # batches of 2 hold one model per architecture, whose bits differ from any larger batch's:
    # shards cut otherwise than the single-process batches would show here
    kwargs = {"out": out, "batch_size": 2, "num_workers": 2, "work_dir": work}
    with pytest.raises(IndexJobError, match="zz_corrupt.safetensors") as caught:
        build_index_on_ray([folder], encoder_dir, **kwargs)
    assert "--skip-errors" in str(caught.value) and not out.exists()  # nothing indexed

    done = build_index_on_ray([folder], encoder_dir, skip_errors=True, **kwargs)
    assert done.embedding.skipped and not done.embedding.written  # the first run's shards
    assert [s for s, _ in done.failures] == [str((folder / "zz_corrupt.safetensors").resolve())]
    single, report = ModelIndex.build(
        tmp_path / "single", iter_inputs(good_files(folder)), Encoder.load(encoder_dir),
        batch_size=2, encoder=str(encoder_dir),
    )  # fmt: skip
    ours = ModelIndex.open(out)
    assert done.added.added == report.added and done.added.duplicates == report.duplicates
    assert index_rows(ours) == index_rows(single)
    assert np.array_equal(ours.store.reconstruct_all(), single.store.reconstruct_all())
    assert ours.manifest["encoder"] == single.manifest["encoder"]

    # resume: a lost shard is embedded again, the others are reused untouched
    shards = sorted(work.glob("part-*.parquet"))
    lost = shards[1]
    kept = {p: p.stat().st_mtime_ns for p in shards if p != lost}
    lost.unlink()
    catalog_path(lost).unlink()
    again = build_index_on_ray([folder], encoder_dir, skip_errors=True, overwrite=True, **kwargs)
    assert again.embedding.written == [lost] and len(again.embedding.skipped) == len(kept)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    rebuilt = ModelIndex.open(out)
    assert index_rows(rebuilt) == index_rows(single)
    assert np.array_equal(rebuilt.store.reconstruct_all(), single.store.reconstruct_all())
    assert len(read_embeddings(work)) == 9


@pytest.mark.slow
def test_ray_index_on_pgvector_equals_the_single_process_build(
    local_ray, tmp_path: Path, encoder_dir: Path, folder: Path
) -> None:
    pgserver = pytest.importorskip("pgserver", reason="pgserver is not installed")
    pytest.importorskip("psycopg", reason="psycopg is not installed")
    from weightspace.index.postgres import PostgresIndex

    try:
        server = pgserver.get_server(str(tmp_path / "pgdata"), cleanup_mode="stop")
    except Exception as exc:  # noqa: BLE001 - any failure to start means: no server here
        pytest.skip(f"no PostgreSQL server could be started with pgserver: {exc}")
    try:
        dsn = server.get_uri()
        done = build_index_on_ray(
            [folder], encoder_dir, dsn=dsn, schema="ray_built", batch_size=2,
            skip_errors=True, work_dir=tmp_path / "shards",
        )  # fmt: skip
        single, report = PostgresIndex.build(
            dsn, iter_inputs(good_files(folder)), Encoder.load(encoder_dir), schema="single",
            batch_size=2,
        )  # fmt: skip
        ours = done.index
        assert done.added.added == report.added and done.added.duplicates == report.duplicates
        ids = report.added
        assert [ours.get(i).path for i in ids] == [single.get(i).path for i in ids]
        assert [ours.get(i).metrics for i in ids] == [single.get(i).metrics for i in ids]
        assert np.array_equal(ours.vectors(), single.vectors())
        with pytest.raises(Exception, match="already"):
            build_index_on_ray(
                [folder], encoder_dir, dsn=dsn, schema="ray_built", batch_size=2,
                skip_errors=True, work_dir=tmp_path / "shards",
            )  # fmt: skip
        ours.close()
        single.close()
    finally:
        server.cleanup()
