"""The work of Ray workers without Ray (``weightspace.distributed.ray_workers``): an actor that
loads its own shard (CPU-only clusters) writes the same file, bit for bit, as CPU tasks feeding
an actor (GPU clusters); and the driver's input expansion resolves paths as ``Path.resolve``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from test_ray import save_mlp
from weightspace.distributed.ray_catalog import catalog_path
from weightspace.distributed.ray_shards import expand_inputs, plan_shards
from weightspace.distributed.ray_workers import ShardEmbedder, load_shard
from weightspace.nn.encoder import Encoder


@pytest.fixture
def sources(tmp_path: Path) -> list[str]:
    """Five checkpoints of two architectures, then a corrupt file."""
    folder = tmp_path / "checkpoints"
    for i in range(5):
        save_mlp(folder / f"m{i:02d}.safetensors", seed=i)
    (folder / "zz_corrupt.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad")
    return expand_inputs([folder])


def test_an_actor_loading_its_own_shard_writes_the_two_stage_file(
    tmp_path: Path, encoder_dir: Path, sources: list[str]
) -> None:
    fingerprint = Encoder.load(encoder_dir).fingerprint
    (shard,) = plan_shards(sources, 8, fingerprint=fingerprint, batch_size=512)
    row = {"name": shard.name, "sources": json.dumps(shard.sources)}
    written = {}
    for stages in ("two", "one"):
        out = tmp_path / stages
        out.mkdir()
        embedder = ShardEmbedder(
            str(encoder_dir), fingerprint, str(out), 512, "cpu", load_kwargs={}, catalog=True
        )
        if stages == "two":  # GPU clusters: CPU tasks load, the actor embeds the bank
            batch = load_shard(row, str(encoder_dir), fingerprint, {}, catalog=True)
        else:  # CPU-only clusters: the row alone, the actor loads it
            batch = row
        result = embedder({key: [value] for key, value in batch.items()})
        assert result["count"] == [5] and result["name"] == [shard.name]
        assert [source for source, _ in json.loads(result["failures"][0])] == [sources[-1]]
        written[stages] = (
            pq.read_table(out / shard.name).to_pydict(),
            json.loads(catalog_path(out / shard.name).read_text()),
        )
    assert written["one"] == written["two"]
    table, catalog = written["one"]
    assert table["source"] == sources and sorted(catalog) == sorted(sources[:-1])
    assert all(z is not None for z in table["z"][:-1]) and table["z"][-1] is None


def test_inputs_resolve_as_path_resolve_does(tmp_path: Path, sources: list[str]) -> None:
    folder = Path(sources[0]).parent
    links = tmp_path / "links"
    links.mkdir()
    (links / "to_file.safetensors").symlink_to(sources[1])
    (links / "to_folder").symlink_to(folder, target_is_directory=True)
    given = [
        links / "to_file.safetensors",  # a symlinked file
        links / "to_folder" / "m02.safetensors",  # a file under a symlinked directory
        links / "to_folder",  # a symlinked directory, expanded
        Path(os.path.relpath(sources[3])),  # relative to the working directory
        folder / ".." / folder.name / "m04.safetensors",  # through ..
    ]
    expanded = expand_inputs(given)
    assert expanded[:2] == [str(given[0].resolve()), str(given[1].resolve())]
    assert expanded[2:8] == sources
    assert expanded[8:] == [str(given[3].resolve()), str(given[4].resolve())]
    (links / "dangling.safetensors").symlink_to(tmp_path / "nowhere")
    for missing in (tmp_path / "nowhere.safetensors", links / "dangling.safetensors"):
        with pytest.raises(Exception, match="no such file"):
            expand_inputs([missing])


@pytest.mark.slow
def test_loading_on_tasks_or_in_the_actors_gives_the_same_shards(
    tmp_path: Path, encoder_dir: Path, sources: list[str]
) -> None:
    """The pipeline of GPU clusters (CPU tasks feed the actors) run on CPUs, against the
    CPU-only one (actors load their own shards): the same files, bit for bit."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (weightspace[distributed])")
    pytest.importorskip("ray.data", reason="Ray Data is not installed (ray[data])")
    from weightspace.distributed.ray_embed import embed_files

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        tables = {}
        for loading_tasks in (True, False):
            out = tmp_path / f"tasks-{loading_tasks}"
            # one actor: with two, the actors would hold both CPUs and leave none to the tasks
            report = embed_files(
                sources, encoder_dir, out, num_workers=1, shard_size=2, loading_tasks=loading_tasks
            )
            assert report.embedded == 5 and [s for s, _ in report.failures] == [sources[-1]]
            tables[loading_tasks] = [pq.read_table(p).to_pydict() for p in report.written]
    finally:
        ray.shutdown()
    assert tables[True] == tables[False] and len(tables[True]) == 3
