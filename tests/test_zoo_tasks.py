"""Zoo tasks: fixed splits, train-standardised features, no global RNG side effects."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from weightspace.zoo import UnknownNameError, get_task, list_tasks


@pytest.mark.parametrize("name", ["digits", "wine", "breast-cancer", "synthetic-3", "mnist1d"])
def test_task_splits_are_disjoint_standardised_and_recorded(name: str) -> None:
    task = get_task(name)
    indices = [set(task.split_indices[s].tolist()) for s in ("train", "val", "test")]
    assert not (indices[0] & indices[1] or indices[0] & indices[2] or indices[1] & indices[2])
    x = task.features["train"]
    assert torch.allclose(x.mean(0), torch.zeros(x.shape[1]), atol=1e-4)
    assert set(task.labels["train"].unique().tolist()) == set(range(task.num_classes))
    described = task.describe()
    assert described["split_sizes"]["train"] == len(task.split_indices["train"])
    assert len(described["split_sha256"]) == 64


def test_input_shapes_per_family() -> None:
    digits = get_task("digits")
    assert digits.inputs("test", "mlp").shape[1:] == (64,)
    assert digits.inputs("test", "cnn2d").shape[1:] == (1, 8, 8)
    assert get_task("mnist1d").inputs("val", "cnn1d").shape[1:] == (1, 40)
    with pytest.raises(Exception, match="supports mlp"):
        get_task("wine").input_shape("cnn2d")


def test_splits_are_deterministic_across_processes_of_the_cache() -> None:
    first = get_task("synthetic-5")
    get_task.cache_clear()
    second = get_task("synthetic-5")
    for split in ("train", "val", "test"):
        assert torch.equal(first.features[split], second.features[split])
    assert first.describe() == second.describe()


def test_mnist1d_leaves_global_rngs_alone() -> None:
    get_task.cache_clear()
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    get_task("mnist1d")
    expected_random, expected_numpy, expected_torch = (
        random.random(),
        np.random.rand(),
        torch.rand(1),
    )
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    assert (random.random(), np.random.rand(), torch.rand(1)) == (
        expected_random,
        expected_numpy,
        expected_torch,
    )


def test_unknown_task_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError, match="digits.*mnist1d"):
        get_task("cifar10")
    assert "synthetic-<seed>" in list_tasks()
