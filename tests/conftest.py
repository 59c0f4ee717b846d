"""Shared fixtures: dtypes, seeds, and the zoo of test architectures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

# The CI machine has 2 cores; small tensors run fastest on one thread and threads fight otherwise.
torch.set_num_threads(1)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    """Run a test in both float32 and float64 (tolerances come from weightspace.testing)."""
    return request.param


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test, the previous count restored after it (for tests that run
    code which sets its own count, such as zoo generation)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def encoder_dir(tmp_path) -> object:
    """A small random encoder saved under ``tmp_path / "encoder"`` (graph branch only)."""
    from weightspace.nn.encoder import Encoder, EncoderConfig

    config = EncoderConfig(hidden=16, edge_hidden=8, num_layers=2, embedding_dim=8)
    Encoder(config).save(tmp_path / "encoder")
    return tmp_path / "encoder"
