"""The vectorised trainer agrees with a plain one-model-at-a-time PyTorch loop."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from weightspace.zoo import (
    HyperParams,
    RunSpec,
    TrainSettings,
    get_task,
    train_group,
    train_reference,
)
from weightspace.zoo.trainer import RunStreams


@pytest.fixture(autouse=True)
def _one_thread():
    """These ops are tiny; one thread avoids OpenMP thrashing on a shared machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


SETTINGS = TrainSettings(epochs=2, checkpoint_epochs=(0, 1, 2), batch_size=32)


def _runs(task: str, arch: str) -> list[RunSpec]:
    runs = [RunSpec.make(task, arch, i, zoo_seed=7) for i in range(3)]
    # Pin one run of each optimiser with dropout, label noise and a data fraction, so every
    # mechanism is exercised whatever the sweep happens to draw.
    runs[0] = dataclasses.replace(
        runs[0], hyper=HyperParams("adam", 1e-2, 1e-4, 1.0, 0.3, 0.5, 0.2)
    )
    runs[1] = dataclasses.replace(runs[1], hyper=HyperParams("sgd", 5e-2, 1e-3, 0.7, 0.2, 0.3, 0.1))
    return runs


def _assert_same(a, b, tolerance: float) -> None:
    assert (a.run_id, a.epoch) == (b.run_id, b.epoch)
    assert list(a.state_dict) == list(b.state_dict)
    for key in a.state_dict:
        torch.testing.assert_close(
            a.state_dict[key], b.state_dict[key], rtol=tolerance, atol=tolerance
        )
    for name, value in a.metrics.items():
        assert value == pytest.approx(b.metrics[name], abs=tolerance), name


@pytest.mark.parametrize(
    ("task", "arch"),
    [
        ("wine", "mlp-w16-d2-relu"),
        ("digits", "cnn2d-c4-d3-bn-res-gelu"),
        ("mnist1d", "cnn1d-c4-d2-tanh"),
        ("digits", "cnn2d-c8-d3-relu"),
        ("wine", "mlp-w8-d3-leaky_relu"),
    ],
)
def test_vectorised_equals_one_by_one(task: str, arch: str) -> None:
    data = get_task(task)
    runs = _runs(task, arch)
    if task == "mnist1d":  # keep it fast: fewer steps per epoch
        settings = dataclasses.replace(SETTINGS, epochs=1, checkpoint_epochs=(0, 1), batch_size=128)
    else:
        settings = SETTINGS
    grouped = train_group(data, arch, runs, settings)
    assert len(grouped) == len(runs) * len(settings.checkpoint_epochs)
    for run in runs:
        alone = train_reference(data, arch, run, settings)
        mine = [r for r in grouped if r.run_id == run.run_id]
        assert len(mine) == len(alone)
        for a, b in zip(mine, alone, strict=True):
            _assert_same(a, b, 2e-5)


def test_a_run_does_not_depend_on_its_group() -> None:
    data = get_task("wine")
    runs = [RunSpec.make("wine", "mlp-w8-d1-tanh", i, zoo_seed=1) for i in range(4)]
    together = train_group(data, "mlp-w8-d1-tanh", runs, SETTINGS)
    alone = train_group(data, "mlp-w8-d1-tanh", runs[2:3], SETTINGS)
    pick = [r for r in together if r.run_id == runs[2].run_id]
    for a, b in zip(pick, alone, strict=True):
        _assert_same(a, b, 1e-6)


def test_training_is_deterministic() -> None:
    data = get_task("wine")
    runs = [RunSpec.make("wine", "mlp-w8-d2-gelu", i, zoo_seed=3) for i in range(3)]
    first = train_group(data, "mlp-w8-d2-gelu", runs, SETTINGS)
    second = train_group(data, "mlp-w8-d2-gelu", runs, SETTINGS)
    for a, b in zip(first, second, strict=True):
        assert a.metrics == b.metrics
        for key in a.state_dict:
            assert torch.equal(a.state_dict[key], b.state_dict[key])


def test_run_streams_respect_fraction_and_noise() -> None:
    data = get_task("digits")
    run = dataclasses.replace(
        RunSpec.make("digits", "mlp-w8-d1-relu", 0, 0),
        hyper=HyperParams(train_fraction=0.25, label_noise=0.5),
    )
    streams = RunStreams(run, data)
    n = data.labels["train"].shape[0]
    assert streams.subset.numel() == round(0.25 * n)
    batches = streams.next_batches(10, 32)
    assert set(batches.flatten().tolist()) <= set(streams.subset.tolist())
    changed = (streams.labels != data.labels["train"]).sum().item()
    # half the subset is relabelled uniformly at random, so ~9/10 of those change class
    assert 0.3 * streams.subset.numel() < changed <= 0.5 * streams.subset.numel() + 1
    assert streams.next_dropout_masks(3, 32, 8) is None
