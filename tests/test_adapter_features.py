"""Adapter features: exact GL(r) invariance, agreement of the factor and update paths, bases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from weightspace.lora import LoraAdapter, LoraError, LoraFactors, apply_adapter, random_gl
from weightspace.nn.adapter_features import (
    FEATURE_KINDS,
    AdapterBase,
    adapter_features,
    delta_features,
    find_base,
    graph_features,
    merged_delta,
    register_base,
)
from weightspace.spec import mlp_spec

torch.set_num_threads(1)

SHAPES = {"0": (9, 6), "2": (4, 9)}  # module -> (out, in) of mlp_spec([6, 9, 4])


def _adapter(seed: int, rank: int = 3, alpha: float = 6.0) -> LoraAdapter:
    gen = torch.Generator().manual_seed(seed)
    modules = {
        name: LoraFactors(
            torch.randn(rank, n_in, generator=gen, dtype=torch.float64),
            torch.randn(n_out, rank, generator=gen, dtype=torch.float64),
            alpha / rank,
        )
        for name, (n_out, n_in) in SHAPES.items()
    }
    return LoraAdapter(modules, r=rank, alpha=alpha, base_model="tiny")


def _base(seed: int = 0) -> AdapterBase:
    spec = mlp_spec([6, 9, 4], "relu")
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, (n_out, n_in) in SHAPES.items():
        state[f"{name}.weight"] = torch.randn(n_out, n_in, generator=gen, dtype=torch.float64)
        state[f"{name}.bias"] = torch.randn(n_out, generator=gen, dtype=torch.float64)
    return AdapterBase("tiny", spec, state, tuple(SHAPES))


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("kind", FEATURE_KINDS)
@pytest.mark.parametrize("seed", range(4))
def test_features_are_gl_invariant(kind: str, seed: int) -> None:
    adapter = _adapter(seed)
    gen = torch.Generator().manual_seed(100 + seed)
    transformed, matrices = random_gl(adapter, gen, log_range=2.0)
    assert all(torch.linalg.cond(g) > 1.1 for g in matrices.values())  # not just a rotation
    before, after = adapter_features(adapter, kind), adapter_features(transformed, kind)
    assert _relative(after, before) < 1e-5
    # the factors did change: the invariance is not that of an unchanged input
    assert not torch.allclose(transformed.modules["0"].A, adapter.modules["0"].A)


@pytest.mark.parametrize("kind", FEATURE_KINDS)
def test_features_see_the_update(kind: str) -> None:
    """Negative control: changing A alone (no matching B) or another adapter changes them."""
    adapter = _adapter(0)
    f = adapter.modules["0"]
    broken = LoraAdapter(
        {**adapter.modules, "0": LoraFactors(2 * f.A + 0.5, f.B, f.scaling)}, 3, 6.0
    )
    reference = adapter_features(adapter, kind)
    assert _relative(adapter_features(broken, kind), reference) > 1e-2
    assert _relative(adapter_features(_adapter(1), kind), reference) > 1e-2


@pytest.mark.parametrize("kind", FEATURE_KINDS)
def test_factor_path_equals_update_path(kind: str) -> None:
    """From the factors (canonical form, no ΔW formed) = from ΔW itself (its SVD)."""
    adapter = _adapter(2, rank=5)
    deltas = [adapter.modules[m].delta() for m in sorted(adapter.modules)]
    assert _relative(adapter_features(adapter, kind), delta_features(deltas, kind)) < 1e-8


def test_features_ignore_scale_convention_and_padding_rank() -> None:
    """ΔW alone matters: alpha rescaled into B, or rank padded with zero components."""
    adapter = _adapter(3, rank=2)
    padded = {
        name: LoraFactors(
            torch.cat([f.A, torch.randn(2, f.A.shape[1], dtype=torch.float64)]),
            torch.cat([3 * f.B * f.scaling, torch.zeros(f.B.shape[0], 2, dtype=torch.float64)], 1),
            1 / 3,
        )
        for name, f in adapter.modules.items()
    }
    other = LoraAdapter(padded, r=4, alpha=4 / 3)
    assert _relative(adapter_features(other), adapter_features(adapter)) < 1e-8


def test_input_features_are_invariant_to_permuting_the_output_side() -> None:
    """A base permutation acting on a module's outputs (ΔW -> P ΔW, as permuting the hidden
    neurons it feeds does) leaves the input-side features alone; on the inputs it does not."""
    delta = _adapter(4).modules["0"].delta()
    perm = torch.randperm(delta.shape[0], generator=torch.Generator().manual_seed(0))
    reference = delta_features([delta], "input")
    assert _relative(delta_features([delta[perm]], "input"), reference) < 1e-10
    perm_in = torch.randperm(delta.shape[1], generator=torch.Generator().manual_seed(1))
    assert _relative(delta_features([delta[:, perm_in]], "input"), reference) > 1e-2


def test_merged_delta_recovers_the_update_and_refuses_other_bases() -> None:
    base = _base()
    adapter = _adapter(5)
    merged = apply_adapter(base.spec, base.state, adapter)
    deltas = merged_delta(base.spec, merged, base)
    for name, f in adapter.modules.items():
        torch.testing.assert_close(deltas[name], f.delta(), rtol=1e-12, atol=1e-12)
    other = dict(merged)
    other["0.bias"] = other["0.bias"] + 1.0  # not made by merging into this base
    with pytest.raises(LoraError, match="differs from base 'tiny'"):
        merged_delta(base.spec, other, base)


def test_graph_features_need_a_registered_base() -> None:
    from weightspace.graph import to_graph

    base = _base(7)
    spec = mlp_spec([6, 9, 4], "tanh")  # an architecture nobody registers
    state = {k: v.clone() for k, v in base.state.items()}
    with pytest.raises(LoraError, match="no adapter base is registered"):
        find_base(spec)
    register_base(base)
    adapters = [_adapter(s) for s in range(3)]
    graphs = [to_graph(base.spec, apply_adapter(base.spec, state, a)) for a in adapters]
    z = graph_features(graphs)
    expected = np.stack([adapter_features(a) for a in adapters])
    assert z.shape == expected.shape
    np.testing.assert_allclose(z, expected, rtol=1e-6, atol=1e-9)
