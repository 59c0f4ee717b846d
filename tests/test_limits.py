"""Resource limits: declared sizes are refused before anything large is allocated."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from weightspace.errors import CheckpointError, WeightspaceError
from weightspace.graph import graph_size
from weightspace.ingest import from_module, load_checkpoint, save_checkpoint
from weightspace.limits import (
    Limits,
    ResourceLimitError,
    default_limits,
    limits_from_environment,
    set_default_limits,
)

HUGE = (20_000, 10_000)  # a 200M-parameter layer: 800 MB of float32, never to be allocated


def sparse_linear(path: Path, rows: int, cols: int) -> Path:
    """A valid safetensors file declaring one float32 linear layer ``(rows, cols)`` plus bias,
    written as a sparse file (the header, then a hole): the test allocates and writes almost
    nothing, while reading it for real would allocate ``rows * cols`` parameters and more."""
    weight_bytes, bias_bytes = 4 * rows * cols, 4 * rows
    header = {
        "0.weight": {"dtype": "F32", "shape": [rows, cols], "data_offsets": [0, weight_bytes]},
        "0.bias": {
            "dtype": "F32",
            "shape": [rows],
            "data_offsets": [weight_bytes, weight_bytes + bias_bytes],
        },
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        handle.truncate(8 + len(raw) + weight_bytes + bias_bytes)
    return path


@pytest.fixture
def mlp_files(tmp_path: Path) -> Path:
    mlp = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    save_checkpoint(tmp_path / "mlp.safetensors", *from_module(mlp))
    torch.save(mlp.state_dict(), tmp_path / "mlp.pt")
    return tmp_path


@pytest.fixture
def restore_limits():
    before = default_limits()
    yield
    set_default_limits(before)


def test_limits_check_names_quantity_and_flag() -> None:
    limits = Limits(max_params=10, max_nodes=0)
    limits.check("f.pt", "params", 10)  # at the limit is fine
    limits.check("f.pt", "nodes", 10**12)  # 0 disables a bound
    with pytest.raises(ResourceLimitError, match=r"f\.pt: parameter count 11 .*--max-params"):
        limits.check("f.pt", "params", 11)
    assert limits.with_overrides(max_params=None, max_edges=5) == Limits(
        max_params=10, max_nodes=0, max_edges=5
    )


def test_environment_overrides_and_rejects_garbage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEIGHTSPACE_MAX_PARAMS", "1_000")
    assert limits_from_environment().max_params == 1000
    for bad in ("many", "-3"):
        monkeypatch.setenv("WEIGHTSPACE_MAX_PARAMS", bad)
        with pytest.raises(WeightspaceError, match="WEIGHTSPACE_MAX_PARAMS"):
            limits_from_environment()


def test_huge_safetensors_header_is_refused_before_reading(tmp_path: Path) -> None:
    path = sparse_linear(tmp_path / "huge.safetensors", *HUGE)
    with pytest.raises(ResourceLimitError, match=r"huge\.safetensors: parameter count 200,020,000"):
        load_checkpoint(path, activation="relu")
    # the bound is exact: a small file one parameter over is refused, one at it gets past the
    # check (and fails later, on its architecture: a lone 1-D tensor is no layer)
    small = sparse_linear(tmp_path / "small.safetensors", 10, 99)
    with pytest.raises(ResourceLimitError, match="parameter count 1,000 exceeds the limit of 999"):
        load_checkpoint(small, activation="relu", limits=Limits(max_params=999))
    assert load_checkpoint(small, activation="relu", limits=Limits(max_params=1000))[0]


def test_huge_file_in_inspect_is_refused_quickly_in_small_memory(tmp_path: Path) -> None:
    path = sparse_linear(tmp_path / "huge.safetensors", *HUGE)
    script = textwrap.dedent(
        f"""
        import resource, sys, time
        import torch, safetensors.torch, weightspace.ingest, weightspace.graph
        from weightspace.cli import main
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        start = time.perf_counter()
        try:
            main(["inspect", {str(path)!r}, "--activation", "relu"])
        except SystemExit as exc:
            code = exc.code
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
        print(code, rss, time.perf_counter() - start, file=sys.stderr)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    *message, figures = result.stderr.strip().splitlines()
    code, peak_mb, seconds = figures.split()
    assert code == "1"
    assert len(message) == 1 and "huge.safetensors" in message[0] and "200,020,000" in message[0]
    assert "Traceback" not in result.stderr
    # The declared tensor is 800 MB: a refusal before allocation grows the peak far less.
    assert float(peak_mb) < 300, f"peak RSS grew {peak_mb} MB: the tensor was allocated"
    assert float(seconds) < 30


def test_cli_max_params_sets_the_process_limit(mlp_files: Path, capsys, restore_limits) -> None:
    from weightspace.cli import main

    def run(*args: str) -> tuple[int, str]:
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        return code, capsys.readouterr().err

    target = str(mlp_files / "mlp.safetensors")
    code, err = run("--max-params", "46", "inspect", target)
    assert code == 1 and "parameter count 47" in err and "mlp.safetensors" in err
    code, err = run("--max-edges", "39", "inspect", target)
    assert code == 1 and "edge count 40" in err
    code, err = run("--max-nodes", "12", "inspect", target)
    assert code == 1 and "node count 13" in err
    # limits do not leak from one invocation into the next
    code, err = run("inspect", target)
    assert code == 0, err


def test_graph_size_counts_nodes_and_edges() -> None:
    mlp = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    spec, _ = from_module(mlp)
    assert graph_size(spec) == (6 + 5 + 2, 6 * 5 + 5 * 2)


def test_spec_too_large_is_refused_before_the_file_is_read(mlp_files: Path) -> None:
    mlp = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    spec, _ = from_module(mlp)
    with pytest.raises(ResourceLimitError, match="node count 13"):
        load_checkpoint(mlp_files / "missing.pt", spec=spec, limits=Limits(max_nodes=12))


def zip_bomb(path: Path, inner_bytes: int) -> Path:
    """A ``.pt``-shaped zip whose one deflated record expands to ``inner_bytes`` zeros."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("archive/data/0", "w", force_zip64=True) as record:
            chunk = bytes(1 << 20)
            for _ in range(inner_bytes >> 20):
                record.write(chunk)
    return path


def test_pt_archive_is_checked_from_its_directory(tmp_path: Path, monkeypatch) -> None:
    bomb = zip_bomb(tmp_path / "bomb.pt", 64 << 20)
    assert bomb.stat().st_size < 1 << 20  # a small file that claims 64 MiB
    calls: list = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a))
    with pytest.raises(ResourceLimitError, match=r"bomb\.pt: decompressed archive size"):
        load_checkpoint(bomb, activation="relu", limits=Limits(max_archive_bytes=16 << 20))
    # tensor data beyond 8 bytes per allowed parameter is refused the same way
    with pytest.raises(ResourceLimitError, match=r"bomb\.pt: tensor data \(bytes\)"):
        load_checkpoint(bomb, activation="relu", limits=Limits(max_params=1 << 20))
    assert calls == []  # torch.load never ran


def test_pt_parameters_are_counted_on_the_meta_device_first(mlp_files: Path, monkeypatch) -> None:
    real_load = torch.load
    devices: list = []

    def spy(*args, **kwargs):
        devices.append(str(kwargs.get("map_location")))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    with pytest.raises(ResourceLimitError, match=r"mlp\.pt: parameter count 47"):
        load_checkpoint(mlp_files / "mlp.pt", activation="relu", limits=Limits(max_params=46))
    assert devices == ["meta"]  # refused with shapes only: no tensor data was read
    spec, state = load_checkpoint(mlp_files / "mlp.pt", activation="relu")
    assert spec.num_parameters == 47 and devices == ["meta", "meta", "cpu"]


def test_legacy_pt_files_are_bounded_by_their_size(tmp_path: Path) -> None:
    mlp = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    path = tmp_path / "legacy.pt"
    torch.save(mlp.state_dict(), path, _use_new_zipfile_serialization=False)
    assert load_checkpoint(path, activation="relu")[0].num_parameters == 47
    with pytest.raises(ResourceLimitError, match="legacy.pt: decompressed archive size"):
        load_checkpoint(path, activation="relu", limits=Limits(max_archive_bytes=100))
    with pytest.raises(ResourceLimitError, match=r"legacy.pt: legacy \(non-zip\) file size"):
        load_checkpoint(path, activation="relu", limits=Limits(max_params=10))


def test_corrupt_zip_directory_is_a_checkpoint_error(mlp_files: Path, tmp_path: Path) -> None:
    data = (mlp_files / "mlp.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) - 30])  # end of central directory gone
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_checkpoint(tmp_path / "cut.pt", activation="relu")
