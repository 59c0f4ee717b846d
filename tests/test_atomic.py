"""Atomic writes: outputs get the umask's usual mode (not mkstemp's private 0600), a failed
write leaves the previous file and no temporary behind."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from weightspace.atomic import TEMP_MARK, atomic_write, atomic_write_bytes
from weightspace.ingest import save_checkpoint
from weightspace.spec import mlp_spec


@pytest.fixture
def umask() -> Iterator[callable]:
    """Set the process umask for one test, and restore it afterwards."""
    previous = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_follow_the_umask(tmp_path: Path, umask, mask: int, expected: int) -> None:
    umask(mask)
    written = atomic_write_bytes(tmp_path / "a.bin", b"data")
    assert _mode(written) == expected
    # a writer that replaces the temporary's contents through its own open() keeps the mode
    atomic_write(tmp_path / "b.txt", lambda tmp: tmp.write_text("text"))
    assert _mode(tmp_path / "b.txt") == expected


def test_checkpoints_are_written_0644(tmp_path: Path, umask) -> None:
    spec = mlp_spec([4, 3, 2], "relu")
    state = {k: torch.zeros(s) for k, s in spec.param_shapes().items()}
    path = save_checkpoint(tmp_path / "m.safetensors", spec, state)
    assert _mode(path) == 0o644
    assert not [p for p in tmp_path.iterdir() if TEMP_MARK in p.name]


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = atomic_write_bytes(tmp_path / "out.json", b"old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"ha")
        raise RuntimeError("killed midway")

    with pytest.raises(RuntimeError, match="killed midway"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
