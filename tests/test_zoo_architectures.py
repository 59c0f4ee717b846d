"""Zoo architectures: registry, name grammar, ordinary modules, BatchNorm folding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightspace.zoo import (
    ArchConfig,
    UnknownNameError,
    build_model,
    fold_batchnorm,
    get_arch,
    list_archs,
)


def test_registry_patterns() -> None:
    mlps = list_archs("mlp*")
    assert mlps and all(n.startswith("mlp-") for n in mlps)
    assert "cnn1d-c16-d3-bn-res-tanh" in list_archs("cnn1d*")
    assert "cnn2d-c8-d2-relu" in list_archs()


@pytest.mark.parametrize(
    "name", ["mlp-w32-d2-relu", "cnn2d-c8-d2-relu", "cnn1d-c16-d3-bn-res-tanh", "mlp-w24-d3-gelu"]
)
def test_names_round_trip(name: str) -> None:
    assert get_arch(name).name == name


@pytest.mark.parametrize(
    "name", ["mlp-w32-relu", "cnn3d-c8-d2-relu", "cnn2d-c8-d2-res-relu", "mlp-w512-d2-relu"]
)
def test_bad_names_raise_listing_valid_ones(name: str) -> None:
    with pytest.raises(UnknownNameError, match="mlp-w"):
        get_arch(name)


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("mlp-w16-d3-leaky_relu", (64,)),
        ("cnn2d-c8-d4-bn-res-gelu", (1, 8, 8)),
        ("cnn1d-c4-d2-tanh", (1, 40)),
    ],
)
def test_models_are_plain_modules_with_standard_keys(name: str, shape: tuple[int, ...]) -> None:
    model = build_model(name, shape, 10)
    assert isinstance(model, nn.Module)
    assert model(torch.randn(5, *shape)).shape == (5, 10)
    keys = list(model.state_dict())
    if name.startswith("mlp"):
        assert isinstance(model, nn.Sequential) and keys[0] == "0.weight"
    else:
        assert keys[0] == "blocks.0.conv.weight" and keys[-1] == "head.bias"


def test_fold_batchnorm_preserves_the_function() -> None:
    model = build_model("cnn2d-c8-d3-bn-res-relu", (1, 8, 8), 10)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-1, 1)
    model.eval()
    folded = fold_batchnorm("cnn2d-c8-d3-bn-res-relu", model.state_dict())
    plain = build_model("cnn2d-c8-d3-res-relu", (1, 8, 8), 10).eval()
    plain.load_state_dict(folded)
    x = torch.randn(7, 1, 8, 8)
    assert torch.allclose(model(x), plain(x), atol=1e-5)


def test_fold_matches_ingest_from_module() -> None:
    ingest = pytest.importorskip("weightspace.ingest")
    model = build_model("cnn1d-c8-d3-bn-res-tanh", (1, 40), 10)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d):
            module.running_var.uniform_(0.5, 2)
    spec, traced = ingest.from_module(model.eval(), torch.randn(2, 1, 40))
    ours = fold_batchnorm(get_arch("cnn1d-c8-d3-bn-res-tanh"), model.state_dict())
    assert sorted(ours) == sorted(traced)
    for key in ours:
        torch.testing.assert_close(ours[key], traced[key])


def test_invalid_config_raises() -> None:
    with pytest.raises(Exception, match="depth"):
        ArchConfig("mlp", 32, 7, "relu")
