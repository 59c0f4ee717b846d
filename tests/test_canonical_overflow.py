"""A checkpoint whose weights are finite but whose canonical form overflows float32 (weights
near 1e38, rescaled into the next layer): every embedding path refuses it in one line naming
the file and the problem, and leaves the index as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from weightspace.cli import main
from weightspace.distributed.ray_workers import load_shard
from weightspace.errors import NonFiniteWeightsError
from weightspace.index import ModelIndex
from weightspace.ingest import save_checkpoint
from weightspace.nn.encoder import Encoder
from weightspace.spec import mlp_spec
from weightspace.symmetry import canonical_overflow, canonicalize, first_canonical_overflow

SPEC = mlp_spec([6, 8, 3], "relu")


def state(seed: int, largest: float | None = None) -> dict[str, torch.Tensor]:
    """Random weights; with ``largest``, the first layer's weights scaled to reach it."""
    generator = torch.Generator().manual_seed(seed)
    weights = {n: torch.randn(s, generator=generator) for n, s in SPEC.param_shapes().items()}
    if largest is not None:
        first = weights["0.weight"]
        weights["0.weight"] = first * (largest / float(first.abs().max()))
    return weights


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    """A good checkpoint and one whose canonical form overflows (its own weights finite)."""
    good = save_checkpoint(tmp_path / "in" / "good.safetensors", SPEC, state(0))
    huge = save_checkpoint(tmp_path / "in" / "huge.safetensors", SPEC, state(1, largest=1e38))
    return good, huge


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """Exit status and stderr of the ``weightspace`` console script."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def test_the_overflow_is_found_and_said_only_where_there_is_one() -> None:
    huge = state(1, largest=1e38)
    assert all(bool(torch.isfinite(t).all()) for t in huge.values())
    assert not all(bool(torch.isfinite(t).all()) for t in canonicalize(SPEC, huge).values())
    problem = canonical_overflow(SPEC, huge)
    assert problem is not None and "canonical form is not finite" in problem
    assert "2.weight" in problem and "\n" not in problem
    assert canonical_overflow(SPEC, state(0)) is None
    assert canonical_overflow(SPEC, state(0, largest=1e6)) is None
    already = state(0)
    already["0.bias"][0] = float("nan")  # not finite to begin with: the loaders' business
    assert canonical_overflow(SPEC, already) is None
    error = first_canonical_overflow([("a.pt", SPEC, state(0)), ("b.pt", SPEC, huge)])
    assert isinstance(error, NonFiniteWeightsError) and str(error).startswith("b.pt: ")
    assert first_canonical_overflow([("a.pt", SPEC, state(0))]) is None


def test_index_build_names_the_file_and_keeps_the_old_index(
    capsys: pytest.CaptureFixture, tmp_path: Path, encoder_dir: Path, files: tuple[Path, Path]
) -> None:
    good, huge = files
    out = tmp_path / "idx"
    base = ["index", "build", "--encoder", str(encoder_dir), "--out", str(out)]
    code, err = run(capsys, *base[:2], str(good), *base[2:])
    assert code == 0
    before = ModelIndex.open(out)
    rows = [before.get(i).path for i in range(len(before))]
    code, err = run(capsys, *base[:2], str(good), str(huge), *base[2:], "--overwrite")
    assert code == 1 and "Traceback" not in err
    message = err.strip()
    assert "\n" not in message and str(huge) in message
    assert "canonical form is not finite" in message and "model:" not in message
    after = ModelIndex.open(out)
    assert [after.get(i).path for i in range(len(after))] == rows == [str(good.resolve())]


def test_embed_names_the_file_and_writes_nothing(
    capsys: pytest.CaptureFixture, tmp_path: Path, encoder_dir: Path, files: tuple[Path, Path]
) -> None:
    good, huge = files
    out = tmp_path / "z.npy"
    code, err = run(
        capsys, "embed", str(good), str(huge), "--encoder", str(encoder_dir), "--out", str(out)
    )
    assert code == 1 and "Traceback" not in err
    assert str(huge) in err and "canonical form is not finite" in err and "model:" not in err
    assert not out.exists()


def test_a_ray_worker_records_the_file_and_the_problem(
    encoder_dir: Path, files: tuple[Path, Path]
) -> None:
    """What ``index build --ray`` and ``embed --ray`` report (their shards' failures)."""
    good, huge = files
    fingerprint = Encoder.load(encoder_dir).fingerprint
    sources = [str(good.resolve()), str(huge.resolve())]
    row = {"name": "part-000000-0.parquet", "sources": json.dumps(sources)}
    loaded = load_shard(row, str(encoder_dir), fingerprint, {"finite_for": "embedding"})
    failures = dict(json.loads(loaded["failures"]))
    assert list(failures) == [sources[1]]
    assert failures[sources[1]].startswith(f"{sources[1]}: its canonical form is not finite")
    assert [source for source, _ in json.loads(loaded["embedded"])] == [sources[0]]


@pytest.mark.slow
def test_index_build_on_ray_names_the_file_and_skips_it_when_told(
    tmp_path: Path, encoder_dir: Path, files: tuple[Path, Path]
) -> None:
    ray = pytest.importorskip("ray", reason="Ray is not installed (weightspace[distributed])")
    pytest.importorskip("ray.data", reason="Ray Data is not installed (ray[data])")
    from weightspace.distributed.ray_index import IndexJobError, build_index_on_ray

    good, huge = files
    out, work = tmp_path / "idx", tmp_path / "shards"
    options = {"load_kwargs": {"finite_for": "embedding"}, "work_dir": work}
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with pytest.raises(IndexJobError) as caught:
            build_index_on_ray([good, huge], encoder_dir, out=out, **options)
        message = str(caught.value)
        assert "\n" not in message and str(huge.resolve()) in message
        assert "canonical form is not finite" in message and "model:" not in message
        assert not out.exists()  # nothing indexed
        report = build_index_on_ray([good, huge], encoder_dir, out=out, skip_errors=True, **options)
    finally:
        ray.shutdown()
    assert [source for source, _ in report.failures] == [str(huge.resolve())]
    assert [report.index.get(i).path for i in range(len(report.index))] == [str(good.resolve())]
