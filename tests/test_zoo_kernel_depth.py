"""Zoo CNNs with kernel 5 and depth 5 (the ``wild-park-small`` preset): names round-trip, the
module is what the name says, and the vectorised trainer still equals a one-model loop."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from weightspace.errors import WeightspaceError
from weightspace.zoo import (
    HyperParams,
    RunSpec,
    TrainSettings,
    get_task,
    train_group,
    train_reference,
)
from weightspace.zoo.architectures import ArchConfig, UnknownNameError, build_model, get_arch


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize(
    "name", ["cnn2d-c8-d5-k5-res-gelu", "cnn1d-c4-d2-k7-bn-tanh", "cnn2d-c16-d5-relu"]
)
def test_names_round_trip(name: str) -> None:
    arch = get_arch(name)
    assert arch.name == name
    assert ArchConfig.parse(arch.name) == arch


def test_kernel_three_keeps_its_old_name_and_bad_values_are_refused() -> None:
    assert get_arch("cnn2d-c8-d3-relu").kernel == 3
    with pytest.raises(UnknownNameError):
        get_arch("cnn2d-c8-d3-k3-relu")  # one name per architecture
    with pytest.raises(WeightspaceError, match="kernel"):
        ArchConfig("cnn2d", 8, 3, "relu", kernel=4)
    with pytest.raises(WeightspaceError, match="depth"):
        ArchConfig("cnn2d", 8, 6, "relu")
    with pytest.raises(WeightspaceError, match="depth"):
        ArchConfig("mlp", 8, 5, "relu")


def test_module_has_the_named_kernel_and_depth() -> None:
    model = build_model("cnn2d-c8-d5-k5-res-relu", (1, 8, 8), 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5
    assert all(c.kernel_size == (5, 5) and c.padding == (2, 2) for c in convs)
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


@pytest.mark.parametrize(
    ("task", "arch"), [("digits", "cnn2d-c4-d5-k5-res-tanh"), ("digits", "cnn2d-c4-d2-k5-relu")]
)
def test_vectorised_equals_one_by_one_with_kernel_five(task: str, arch: str) -> None:
    settings = TrainSettings(epochs=1, checkpoint_epochs=(0, 1), batch_size=64)
    runs = [RunSpec.make(task, arch, i, zoo_seed=3) for i in range(2)]
    runs[0] = dataclasses.replace(
        runs[0], hyper=HyperParams("adam", 1e-2, 1e-4, 1.0, 0.3, 0.5, 0.2)
    )
    data = get_task(task)
    grouped = train_group(data, arch, runs, settings)
    for run in runs:
        alone = train_reference(data, arch, run, settings)
        mine = [r for r in grouped if r.run_id == run.run_id]
        assert len(mine) == len(alone) == 2
        for a, b in zip(mine, alone, strict=True):
            assert list(a.state_dict) == list(b.state_dict)
            for key in a.state_dict:
                torch.testing.assert_close(
                    a.state_dict[key], b.state_dict[key], rtol=2e-5, atol=2e-5
                )
            for metric, value in a.metrics.items():
                assert value == pytest.approx(b.metrics[metric], abs=2e-5), metric
    # the trained kernel really is 5×5
    assert grouped[-1].state_dict["blocks.0.conv.weight"].shape[-2:] == (5, 5)
