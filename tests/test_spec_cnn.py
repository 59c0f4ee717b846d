"""``cnn_spec``: the small-CNN spec builder shared by tests and benchmarks."""

from __future__ import annotations

import pytest
import torch

from weightspace.module import to_module
from weightspace.spec import cnn_spec


@pytest.mark.parametrize("flatten", [False, True])
def test_cnn_spec_builds_the_module_it_describes(flatten: bool) -> None:
    spec = cnn_spec([3, 5], "tanh", input_shape=(2, 6, 5), classes=4, flatten=flatten)
    module = to_module(spec)
    out = module(torch.randn(7, 2, 6, 5))
    assert out.shape == (7, 4)
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(2, 3), (3, 5)]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    head = [m for m in module.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert head.in_features == (5 * 6 * 5 if flatten else 5) and head.bias is not None
    assert spec.num_parameters == sum(p.numel() for p in module.parameters())


def test_the_reference_cnn_has_1338_parameters() -> None:
    # 1→8→8→8 3x3 convs and a linear 8→10 (the throughput goal's architecture):
    # (9·1 + 1)·8 + 2·(9·8 + 1)·8 + (8 + 1)·10 = 80 + 1168 + 90
    assert cnn_spec([8, 8, 8]).num_parameters == 1338


def test_cnn_spec_activation_follows_every_conv() -> None:
    spec = cnn_spec([4, 4, 4], "gelu")
    kinds = [op.kind for op in spec.ops]
    assert kinds == ["input", *["conv2d", "activation"] * 3, "global_pool", "linear"]
    assert {op.attrs["function"] for op in spec.ops if op.kind == "activation"} == {"gelu"}
