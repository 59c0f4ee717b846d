"""Sine activations (SIREN): spec, graph, module and symmetries."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models import small_encoder_config
from weightspace.errors import SpecError, SymmetryError
from weightspace.graph import to_graph, to_state_dict
from weightspace.layout import layout_of
from weightspace.module import to_module
from weightspace.nn import Encoder
from weightspace.nn.features import NodeEmbedding, ScalarFeatures
from weightspace.spec import (
    ACTIVATION_IDS,
    ACTIVATIONS,
    SIREN_FIRST_W0,
    SIREN_HIDDEN_W0,
    NetworkSpec,
    Op,
    siren_spec,
)
from weightspace.symmetry import (
    canonicalize,
    canonicalize_sign,
    flip_signs,
    random_permutation,
    random_rescale,
    random_sign_flip,
    rescale,
)
from weightspace.testing import assert_function_preserved, assert_invariant, tolerance_for

torch.set_num_threads(1)

SMALL = small_encoder_config()


def _siren(seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[NetworkSpec, dict]:
    """A small INR: (x, y) coordinates in, one intensity out, SIREN initialisation."""
    spec = siren_spec([2, 12, 12, 1])
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for i, layer in enumerate(spec.layers):
        n_in = layer.in_size
        bound = 1 / n_in if i == 0 else math.sqrt(6 / n_in) / SIREN_FIRST_W0
        shape = layer.weight_shape()
        state[f"{layer.name}.weight"] = (torch.rand(shape, generator=gen) * 2 - 1) * bound
        state[f"{layer.name}.bias"] = (torch.rand(layer.out_size, generator=gen) * 2 - 1) * bound
    return spec, {k: v.to(dtype) for k, v in state.items()}


def _coordinates(dtype: torch.dtype) -> torch.Tensor:
    axis = torch.linspace(-1, 1, 9, dtype=dtype)
    return torch.cartesian_prod(axis, axis)  # (81, 2)


def test_spec_records_w0_and_round_trips() -> None:
    spec = siren_spec([2, 8, 8, 1])
    w0 = [op.attrs["w0"] for op in spec.ops if op.kind == "activation"]
    assert w0 == [SIREN_FIRST_W0, SIREN_HIDDEN_W0]
    assert NetworkSpec.from_json(spec.to_json()) == spec
    assert '"w0"' in spec.to_json()
    # A sine without w0 gets SIREN's default by position; the first layer gets 30.
    ops = [
        Op("x", "input", (), {"shape": (2,)}),
        Op("0", "linear", ("x",), {"in_features": 2, "out_features": 4}),
        Op("1", "activation", ("0",), {"function": "sine"}),
        Op("2", "linear", ("1",), {"in_features": 4, "out_features": 4}),
        Op("3", "activation", ("2",), {"function": "sine"}),
        Op("4", "linear", ("3",), {"in_features": 4, "out_features": 1}),
    ]
    filled = NetworkSpec(tuple(ops))
    assert [op.attrs["w0"] for op in filled.ops if op.kind == "activation"] == [30.0, 1.0]
    assert ACTIVATIONS[-1] == "sine" and ACTIVATION_IDS["tanh"] == 3  # older ids unchanged


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "thirty", True])
def test_bad_w0_is_refused(bad: object) -> None:
    data = siren_spec([2, 4, 1]).to_dict()
    data["ops"][2]["attrs"]["w0"] = bad
    with pytest.raises(SpecError, match="w0"):
        NetworkSpec.from_dict(data)


def test_module_computes_sin_w0(dtype: torch.dtype) -> None:
    spec, state = _siren(dtype=dtype)
    x = _coordinates(dtype)
    w = [state[f"{layer.name}.weight"] for layer in spec.layers]
    b = [state[f"{layer.name}.bias"] for layer in spec.layers]
    h = torch.sin(SIREN_FIRST_W0 * (x @ w[0].T + b[0]))
    h = torch.sin(SIREN_HIDDEN_W0 * (h @ w[1].T + b[1]))
    expected = h @ w[2].T + b[2]
    out = to_module(spec, state)(x)
    assert out.shape == (81, 1)
    assert torch.allclose(out, expected, rtol=tolerance_for(dtype), atol=tolerance_for(dtype))


def test_graph_marks_sine_and_round_trips() -> None:
    spec, state = _siren()
    graph = to_graph(spec, state)
    layout = layout_of(spec)
    hidden = layout.groups[1]
    start = layout.offsets[1]
    ids = graph.node_activation[start : start + hidden.size]
    assert bool((ids == ACTIVATION_IDS["sine"]).all())
    back = to_state_dict(graph)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_sign_flips_and_permutations_preserve_the_function(dtype: torch.dtype) -> None:
    spec, state = _siren(seed=1, dtype=dtype)
    assert layout_of(spec).sign_flippable_groups() == [1, 2]
    assert layout_of(spec).scalable_groups() == []
    x = _coordinates(dtype)
    reference = to_module(spec, state)
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        flipped, signs = random_sign_flip(spec, state, gen)
        assert any(bool((s < 0).any()) for s in signs.values())
        permuted, _ = random_permutation(spec, flipped, gen)
        assert not torch.equal(permuted["0.weight"], state["0.weight"])
        assert_function_preserved(reference, to_module(spec, permuted), x)


def test_broken_sign_flip_changes_the_function() -> None:
    """Negative control: flipping a sine neuron's incoming weights alone is not a symmetry."""
    spec, state = _siren(seed=2)
    broken = dict(state)
    broken["0.weight"] = state["0.weight"].clone()
    broken["0.weight"][0] *= -1
    broken["0.bias"] = state["0.bias"].clone()
    broken["0.bias"][0] *= -1
    x = _coordinates(torch.float64)
    with pytest.raises(AssertionError):
        assert_function_preserved(to_module(spec, state), to_module(spec, broken), x)


def test_canonical_sign_form_is_shared_by_flipped_copies() -> None:
    spec, state = _siren(seed=3)
    canonical = canonicalize_sign(spec, state)
    for seed in range(3):
        flipped, _ = random_sign_flip(spec, state, torch.Generator().manual_seed(seed))
        other = canonicalize_sign(spec, flipped)
        for key in canonical:
            assert torch.allclose(other[key], canonical[key], atol=1e-12)
    # canonicalize (scale then sign) leaves sine layers unscaled: same as the sign form.
    full = canonicalize(spec, state)
    assert all(torch.equal(full[k], canonical[k]) for k in canonical)


def test_rescaling_a_sine_layer_is_refused() -> None:
    spec, state = _siren()
    with pytest.raises(SymmetryError, match="sine"):
        rescale(spec, state, {1: torch.full((12,), 2.0, dtype=torch.float64)})
    # The random transform has nothing to rescale and leaves the weights as they were.
    same, scales = random_rescale(spec, state, torch.Generator().manual_seed(0))
    assert scales == {} and all(torch.equal(same[k], state[k]) for k in state)
    # Flips are checked too: +-1 only.
    with pytest.raises(SymmetryError):
        flip_signs(spec, state, {1: torch.full((12,), 2.0, dtype=torch.float64)})


def test_encoder_embedding_is_invariant() -> None:
    torch.manual_seed(0)
    encoder = Encoder(SMALL).double().eval()
    spec, state = _siren(seed=4)

    def embed(model: tuple) -> np.ndarray:
        return encoder.embed([model])[0]

    assert_invariant(embed, (spec, state), transforms=("sign_flip", "permutation"), rtol=1e-6)
    # Negative control: the broken flip of the previous test moves the embedding.
    broken = dict(state)
    broken["0.weight"] = state["0.weight"].clone()
    broken["0.weight"][0] *= -1
    z, z_broken = embed((spec, state)), embed((spec, broken))
    assert np.abs(z - z_broken).max() > 1e-6 * max(np.abs(z).max(), 1.0)


def test_encoders_saved_before_sine_still_load() -> None:
    """An embedding table with one row per activation known before sine loads, rows kept."""
    features = ScalarFeatures()
    new = NodeEmbedding(8, features)
    old_rows = torch.randn(len(ACTIVATIONS) - 1, 8)
    state = {k: v.clone() for k, v in new.state_dict().items()}
    state["activation.weight"] = old_rows
    new.load_state_dict(state)
    assert torch.equal(new.activation.weight[:-1].detach(), old_rows)
