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
from weightspace.zoo.architectures import build_model, get_arch
from weightspace.zoo.streams import RunStreams, initial_parameters, mix32, mix32_int

# these ops are tiny; one thread avoids OpenMP thrashing on a shared machine
pytestmark = pytest.mark.usefixtures("one_thread")


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
    streams = RunStreams([run], data, steps=10, batch_size=32)
    n = data.labels["train"].shape[0]
    subset = streams.subset_order[0, : streams.sizes[0]]
    assert streams.sizes[0] == subset.numel() == round(0.25 * n) == streams.in_subset.sum()
    for epoch in (1, 2):
        batches = streams.epoch_batches(epoch)[:, 0]
        assert batches.shape == (10, 32)
        assert set(batches.flatten().tolist()) <= set(subset.tolist())
    # successive permutations of the subset: the first S positions of the stream are all of it
    stream = torch.cat([streams.epoch_batches(e)[:, 0].flatten() for e in (1, 2)])
    assert sorted(stream[: subset.numel()].tolist()) == sorted(subset.tolist())
    changed = (streams.labels[0] != data.labels["train"]).sum().item()
    # half the subset is relabelled uniformly at random, so ~9/10 of those change class
    assert 0.3 * subset.numel() < changed <= 0.5 * subset.numel() + 1
    assert streams.has_dropout == [False]


def test_mix32_matches_python_reference() -> None:
    words = [0, 1, 2, 12345, 2**31 - 1, 2**31, 2**32 - 1, 0x9E3779B9]
    x = torch.tensor([w - 2**32 if w >= 2**31 else w for w in words], dtype=torch.int32)
    got = [v & 0xFFFFFFFF for v in mix32(x.clone()).tolist()]
    assert got == [mix32_int(w) for w in words]


def test_dropout_rate_and_grouping() -> None:
    data = get_task("digits")
    runs = [
        dataclasses.replace(
            RunSpec.make("digits", "mlp-w8-d1-relu", i, 0), hyper=HyperParams(dropout=p)
        )
        for i, p in enumerate((0.0, 0.3, 0.5))
    ]
    streams = RunStreams(runs, data, steps=4, batch_size=64)
    keep = streams.dropout_keep(streams.dropout_words(1)[0], 33)  # odd unit count
    assert keep.shape == (3, 64, 33)
    rates = 1 - keep.float().mean(dim=(1, 2))
    assert rates[0] == 0 and abs(rates[1] - 0.3) < 0.03 and abs(rates[2] - 0.5) < 0.03
    alone = RunStreams(runs[1:2], data, steps=4, batch_size=64)
    assert torch.equal(alone.dropout_keep(alone.dropout_words(1)[0], 33)[0], keep[1])
    epoch = alone.dropout_keep(alone.dropout_words(1), 33)  # every step at once
    assert epoch.shape == (4, 1, 64, 33) and torch.equal(epoch[0, 0], keep[1])
    # the float path of the trainer: keep / (1 − p), written through a strided view
    out = torch.full((11, 3, 64, 3), float("nan")).permute(1, 2, 3, 0)  # (M, B, depth=3, W=11)
    multiplier = streams.dropout_multiplier(streams.dropout_words(1)[0], slice(None), out)
    expected = keep.float() * torch.tensor([1.0, 1 / 0.7, 2.0]).view(3, 1, 1)
    assert torch.equal(multiplier.reshape(3, 64, 33), expected)
    assert torch.equal(alone.epoch_batches(3)[:, 0], streams.epoch_batches(3)[:, 1])
    assert torch.equal(alone.labels[0], streams.labels[1])
    template = build_model(get_arch("cnn2d-c4-d2-bn-relu"), data.input_shape("cnn2d"), 10)
    seeds, scales = [r.seed for r in runs], [0.5, 1.0, 2.0]
    together = initial_parameters(template, seeds, scales)
    assert torch.equal(initial_parameters(template, seeds[1:2], scales[1:2])[0], together[1])
    assert together.abs().max() < 2.0 and together.std() > 0.05
