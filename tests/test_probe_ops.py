"""The probe branch's batched-product forward equals the ``vmap(functional_call)`` forward."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, vmap

from models import ARCHITECTURES, make_model
from weightspace.ingest import from_module
from weightspace.module import to_module
from weightspace.nn.probe_ops import stacked_forward, supports
from weightspace.spec import NetworkSpec, Op
from weightspace.zoo.architectures import ArchConfig, build_model

torch.set_num_threads(1)

# Zoo CNNs with strided convs, padding, kernel 3 and 5, residual adds and folded BatchNorm.
ZOO_ARCHS = [
    (ArchConfig("cnn2d", 6, 4, "relu", batchnorm=True, residual=True), (1, 8, 8)),
    (ArchConfig("cnn2d", 5, 2, "tanh", kernel=5), (1, 8, 8)),
    (ArchConfig("cnn1d", 4, 3, "gelu", batchnorm=True, residual=True, kernel=5), (1, 40)),
    (ArchConfig("cnn1d", 4, 1, "relu"), (1, 40)),
]


def _pooled_cnn() -> NetworkSpec:
    """conv (stride 1, dilation 2, no bias) -> max pool -> adaptive avg pool -> flatten -> linear."""
    conv = {
        "in_channels": 2,
        "out_channels": 3,
        "kernel_size": (3, 3),
        "stride": (1, 1),
        "padding": (2, 1),
        "dilation": (2, 1),
        "bias": False,
    }
    return NetworkSpec(
        (
            Op("x", "input", (), {"shape": (2, 9, 7)}),
            Op("c", "conv2d", ("x",), conv),
            Op("p", "pool", ("c",), {"mode": "max", "dims": 2, "kernel_size": 2, "stride": 2}),
            Op("a", "adaptive_pool", ("p",), {"mode": "avg", "dims": 2, "output_size": (2, 2)}),
            Op("f", "flatten", ("a",), {}),
            Op("fc", "linear", ("f",), {"in_features": 12, "out_features": 4, "bias": True}),
        )
    )


def _zoo_models(arch: ArchConfig, shape: tuple[int, ...], count: int) -> list:
    models = []
    for seed in range(count):
        torch.manual_seed(seed)
        module = build_model(arch, shape, 5).eval()
        for m in module.modules():  # non-trivial BatchNorm statistics to fold
            if isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.data.uniform_(0.5, 1.5)
        models.append(from_module(module, torch.zeros(1, *shape)))
    return models


def _cases() -> list:
    cases = [
        pytest.param([make_model(arch, act, seed=i) for i in range(3)], id=f"{arch}-{act}")
        for arch in ARCHITECTURES
        for act in ("relu", "tanh")
    ]
    cases += [pytest.param(_zoo_models(a, s, 3), id=a.name) for a, s in ZOO_ARCHS]
    spec = _pooled_cnn()
    pooled = []
    for seed in range(3):
        torch.manual_seed(seed)
        pooled.append((spec, dict(to_module(spec).state_dict())))
    cases.append(pytest.param(pooled, id="pool-dilation-nobias"))
    return cases


@pytest.mark.parametrize("models", _cases())
def test_stacked_forward_equals_vmap_functional_call(models: list) -> None:
    spec = models[0][0]
    if not supports(spec):
        pytest.skip(f"{spec.summary()} runs through vmap")
    state = {k: torch.stack([s[k] for _, s in models]).double() for k in models[0][1]}
    probes = torch.randn(4, *spec.input_shape, dtype=torch.float64)
    with torch.device("meta"):
        template = to_module(spec)
    want = vmap(lambda p: functional_call(template, p, (probes,)))(state)
    got = stacked_forward(spec, state, probes)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_chunked_forward_equals_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    from weightspace.nn import probe_ops

    models = _zoo_models(*ZOO_ARCHS[0], count=5)
    spec = models[0][0]
    state = {k: torch.stack([s[k] for _, s in models]) for k in models[0][1]}
    probes = torch.randn(3, *spec.input_shape)
    whole = stacked_forward(spec, state, probes)
    monkeypatch.setattr(probe_ops, "_CHUNK_BYTES", 1)  # one model a chunk
    torch.testing.assert_close(stacked_forward(spec, state, probes), whole)


def test_probes_get_gradients_and_unsupported_specs_are_refused() -> None:
    models = _zoo_models(*ZOO_ARCHS[0], count=2)
    spec = models[0][0]
    state = {k: torch.stack([s[k] for _, s in models]) for k in models[0][1]}
    probes = torch.randn(3, *spec.input_shape, requires_grad=True)
    stacked_forward(spec, state, probes).square().sum().backward()
    assert probes.grad is not None and float(probes.grad.abs().sum()) > 0
    norm = {"normalized_size": 4, "mode": "layer", "eps": 1e-5}
    with_norm = NetworkSpec(
        (
            Op("x", "input", (), {"shape": (4,)}),
            Op("n", "norm", ("x",), norm),
            Op("fc", "linear", ("n",), {"in_features": 4, "out_features": 2, "bias": True}),
        )
    )
    assert not supports(with_norm)
