"""Faults on Ray: a worker that dies once mid-job (``embed --ray``, ``index build --ray``) is
replaced and its shard redone, so the job finishes with every input once.

The fault is injected through ``ray_embed.maybe_fail`` (the environment variable
``WEIGHTSPACE_TEST_FAIL_ONCE``, given to the workers of a local Ray started here): the first
attempt at one checkpoint kills its worker process with ``os._exit``, as a lost node would.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from weightspace.distributed.ray_embed import FAIL_ONCE_ENV, embed_files, read_embeddings
from weightspace.distributed.ray_index import build_index_on_ray
from weightspace.index import ModelIndex, iter_inputs
from weightspace.ingest import save_checkpoint
from weightspace.nn.encoder import Encoder
from weightspace.spec import mlp_spec

ARCHITECTURES = ([6, 8, 3], [5, 7, 7, 2])
DOOMED = "m05.safetensors"  # the checkpoint whose first attempt kills its worker


def save_mlp(path: Path, seed: int) -> Path:
    spec = mlp_spec(ARCHITECTURES[seed % 2], "relu")
    generator = torch.Generator().manual_seed(seed)
    state = {n: torch.randn(s, generator=generator) for n, s in spec.param_shapes().items()}
    return save_checkpoint(path, spec, state)


@pytest.fixture(scope="module")
def markers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the injected faults leave one file per checkpoint they have killed a worker on."""
    return tmp_path_factory.mktemp("fault-markers")


@pytest.fixture(scope="module")
def faulty_ray(markers: Path):
    ray = pytest.importorskip("ray", reason="Ray is not installed (weightspace[distributed])")
    pytest.importorskip("ray.data", reason="Ray Data is not installed (ray[data])")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {FAIL_ONCE_ENV: f"{DOOMED}:{markers}"}},
    )
    yield ray
    ray.shutdown()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    folder = tmp_path / "checkpoints"
    for i in range(8):
        save_mlp(folder / f"m{i:02d}.safetensors", seed=i)
    return folder


def killed(markers: Path) -> int:
    return len(list(markers.iterdir()))


@pytest.mark.slow
def test_embed_on_ray_survives_a_worker_killed_once(
    faulty_ray, markers: Path, tmp_path: Path, encoder_dir: Path, folder: Path
) -> None:
    before = killed(markers)
    report = embed_files([folder], encoder_dir, tmp_path / "out", batch_size=2, shard_size=2)
    assert killed(markers) == before + 1  # the fault did fire, once
    assert report.embedded == 8 and not report.failures and len(report.written) == 4
    table = read_embeddings(tmp_path / "out")
    expected = [str(p.resolve()) for p in sorted(folder.iterdir())]
    assert list(table["source"]) == expected  # each input exactly once, in order
    encoder = Encoder.load(encoder_dir)
    for start in range(0, 8, 2):  # each shard equals the single-process path over its inputs
        from weightspace.ingest import load_checkpoint

        models = [load_checkpoint(Path(s)) for s in expected[start : start + 2]]
        reference = encoder.embed(models)
        got = np.stack(table["z"].to_numpy()[start : start + 2])
        assert np.array_equal(got, reference.astype(got.dtype))


@pytest.mark.slow
def test_index_build_on_ray_survives_a_worker_killed_once(
    faulty_ray, markers: Path, tmp_path: Path, encoder_dir: Path, folder: Path
) -> None:
    before = killed(markers)
    done = build_index_on_ray(
        [folder], encoder_dir, out=tmp_path / "idx", batch_size=2, work_dir=tmp_path / "work"
    )
    assert killed(markers) == before + 1
    single, report = ModelIndex.build(
        tmp_path / "single", iter_inputs([folder]), Encoder.load(encoder_dir), batch_size=2
    )
    ours = ModelIndex.open(tmp_path / "idx")
    assert done.added.added == report.added == list(range(8)) and not done.added.duplicates
    rows = [(r.id, r.path, r.content_hash, r.spec_json) for r in map(ours.get, range(8))]
    assert rows == [(r.id, r.path, r.content_hash, r.spec_json) for r in map(single.get, range(8))]
    assert np.array_equal(ours.store.reconstruct_all(), single.store.reconstruct_all())
