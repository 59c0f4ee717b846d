"""Weight matching (Git Re-Basin) and weight interpolation."""

from __future__ import annotations

import pytest
import torch

from models import ARCHITECTURES, build, make_inputs, make_state_dict
from weightspace.layout import layout_of
from weightspace.module import to_module
from weightspace.symmetry import canonicalize, permute, random_permutation, random_symmetry
from weightspace.synthesis import (
    SynthesisError,
    align,
    interpolate,
    match_weights,
    rebasin_interpolate,
    weight_inner_product,
)
from weightspace.synthesis.rebasin import canonical_factors, from_canonical

# mlp_skips has no permutable group besides one: still a valid (trivial) matching problem.
ARCHS = sorted(ARCHITECTURES)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matching_recovers_a_random_permutation(arch: str, seed: int) -> None:
    spec = build(arch, "relu")
    state = make_state_dict(spec, seed=seed + 10)
    permuted, perms = random_permutation(spec, state, torch.Generator().manual_seed(seed))
    found = match_weights(spec, state, permuted, seed=seed)
    aligned = permute(spec, permuted, found)
    for key, tensor in state.items():
        assert torch.equal(aligned[key], tensor), key
    # found undoes perms: permuted[i] = state[perm[i]], so aligned[j] = permuted[found[j]]
    for group, perm in perms.items():
        assert torch.equal(perm[found[group]], torch.arange(len(perm)))


@pytest.mark.parametrize("arch", ["mlp", "cnn1d_residual", "cnn2d_residual"])
def test_alignment_preserves_function_and_raises_similarity(arch: str) -> None:
    spec = build(arch, "tanh")
    a, b = make_state_dict(spec, seed=1), make_state_dict(spec, seed=2)
    x = make_inputs(spec)
    aligned = align(spec, a, b)
    torch.testing.assert_close(to_module(spec, aligned)(x), to_module(spec, b)(x))
    plain = align(spec, a, b, canonical=False)
    assert weight_inner_product(spec, a, plain) >= weight_inner_product(spec, a, b) - 1e-9
    assert _distance(spec, a, aligned) <= _distance(spec, a, plain) <= _distance(spec, a, b)


def _distance(spec, a, b) -> float:
    return float(sum((a[k] - b[k]).pow(2).sum() for k in spec.param_shapes()))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_matching_a_model_against_its_own_symmetry_transform_gives_it_back(
    arch: str, act: str
) -> None:
    """Sign flips, positive rescalings and permutations together: the canonical matching undoes
    all three (weights back within float tolerance); plain matching cannot undo the first two."""
    spec = build(arch, act)
    a = make_state_dict(spec, seed=5)
    b, _ = random_symmetry(spec, a, torch.Generator().manual_seed(3))
    aligned = align(spec, a, b)
    for key in a:
        torch.testing.assert_close(aligned[key], a[key], rtol=1e-9, atol=1e-9)
    before = _distance(spec, a, align(spec, a, b, canonical=False))
    assert _distance(spec, a, aligned) <= before
    layout = layout_of(spec)
    if layout.sign_flippable_groups() or layout.scalable_groups():
        # the negative control: permutations alone leave flipped or rescaled neurons unmatched
        assert before > 1e-3


@pytest.mark.parametrize("arch", ["mlp", "cnn1d", "cnn1d_residual", "mlp_skips"])
@pytest.mark.parametrize("act", ["tanh", "relu", "gelu"])
def test_canonical_matching_is_never_worse_than_plain_matching(arch: str, act: str) -> None:
    spec = build(arch, act)
    for seed in range(3):
        a, b = make_state_dict(spec, seed=seed), make_state_dict(spec, seed=seed + 50)
        plain = align(spec, a, b, canonical=False)
        assert _distance(spec, a, align(spec, a, b)) <= _distance(spec, a, plain) + 1e-12


@pytest.mark.parametrize("act", ["tanh", "relu", "identity"])
@pytest.mark.parametrize("arch", ["mlp", "cnn2d", "cnn1d_residual"])
def test_canonical_factors_undo_the_canonical_form(arch: str, act: str) -> None:
    spec = build(arch, act)
    a = make_state_dict(spec, seed=7)
    canonical = canonicalize(spec, a)
    factors = canonical_factors(spec, a, canonical)
    back = from_canonical(spec, canonical, factors)
    for key in a:
        torch.testing.assert_close(back[key], a[key], rtol=1e-9, atol=1e-9)


def test_matching_is_invariant_to_how_b_was_permuted() -> None:
    spec = build("mlp", "relu")
    a, b = make_state_dict(spec, seed=3), make_state_dict(spec, seed=4)
    b2, _ = random_permutation(spec, b, torch.Generator().manual_seed(9))
    merged1 = rebasin_interpolate(spec, a, b, 0.5)
    merged2 = rebasin_interpolate(spec, a, b2, 0.5)
    for key in merged1:
        torch.testing.assert_close(merged1[key], merged2[key])


def test_interpolation_endpoints_and_identity() -> None:
    spec = build("cnn2d", "relu")
    a, b = make_state_dict(spec, seed=1), make_state_dict(spec, seed=2)
    for key in a:
        assert torch.equal(interpolate(spec, a, b, 0.0)[key], a[key])
        assert torch.equal(interpolate(spec, a, b, 1.0)[key], b[key])
        torch.testing.assert_close(interpolate(spec, a, a, 0.3)[key], a[key])
        torch.testing.assert_close(
            interpolate(spec, a, b, 0.25)[key], 0.75 * a[key] + 0.25 * b[key]
        )


def test_rebasin_refuses_bad_alpha_and_mismatched_tensors() -> None:
    spec = build("mlp", "relu")
    a = make_state_dict(spec, seed=1)
    with pytest.raises(SynthesisError, match="alpha"):
        rebasin_interpolate(spec, a, a, 1.5)
    other = make_state_dict(build("cnn1d", "relu"))
    with pytest.raises(Exception, match="tensors do not match"):
        rebasin_interpolate(spec, a, other, 0.5)


# ----------------------------------------------------------------------------- LayerNorm, RMSNorm
class _PreNormBlock(torch.nn.Module):
    """``x + W2 act(W1 norm(x))``: a transformer's residual MLP block."""

    def __init__(self, width: int, norm: torch.nn.Module) -> None:
        super().__init__()
        self.norm, self.fc1 = norm, torch.nn.Linear(width, 2 * width)
        self.act, self.fc2 = torch.nn.GELU(), torch.nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


def _norm_models() -> dict[str, tuple]:
    """Norm MLPs: a LayerNorm chain (ReLU: its normalised groups are rescalable), an RMSNorm
    chain (tanh: flippable) and a pre-norm residual stream (one tie set through two norms)."""
    from weightspace.ingest import from_module
    from weightspace.spec import mlp_spec

    torch.manual_seed(0)
    residual = torch.nn.Sequential(
        torch.nn.Linear(5, 6),
        _PreNormBlock(6, torch.nn.LayerNorm(6)),
        _PreNormBlock(6, torch.nn.RMSNorm(6)),
        torch.nn.LayerNorm(6),
        torch.nn.Linear(6, 3),
    ).double()
    traced = from_module(residual, torch.randn(4, 5, dtype=torch.float64))[0]
    return {
        "layer_relu": mlp_spec([5, 7, 6, 3], "relu", norm="layer"),
        "rms_tanh": mlp_spec([5, 7, 6, 3], "tanh", norm="rms"),
        "residual_prenorm": traced,
    }


NORM_MODELS = _norm_models()


@pytest.mark.parametrize("name", sorted(NORM_MODELS))
@pytest.mark.parametrize("seed", [0, 1])
def test_norm_models_matching_recovers_a_permuted_copy_exactly(name: str, seed: int) -> None:
    spec = NORM_MODELS[name]
    layout = layout_of(spec)
    assert layout.norms and layout.permutable_tie_sets()
    state = make_state_dict(spec, seed=seed + 20)
    permuted, _ = random_permutation(spec, state, torch.Generator().manual_seed(seed))
    assert any(not torch.equal(permuted[k], state[k]) for k in state)  # the control moved
    aligned = permute(spec, permuted, match_weights(spec, state, permuted, seed=seed))
    for key, tensor in state.items():
        assert torch.equal(aligned[key], tensor), key
    # every symmetry the layout allows (norm outputs rescaled / flipped through gamma, beta)
    transformed, _ = random_symmetry(spec, state, torch.Generator().manual_seed(seed + 7))
    x = make_inputs(spec)
    back = align(spec, state, transformed)
    for key, tensor in state.items():
        torch.testing.assert_close(back[key], tensor, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(to_module(spec, back)(x), to_module(spec, state)(x))


@pytest.mark.parametrize("name", sorted(NORM_MODELS))
def test_norm_models_matched_then_averaged_give_a_valid_model(name: str) -> None:
    from weightspace.graph import check_state_dict

    spec = NORM_MODELS[name]
    a, b = make_state_dict(spec, seed=1), make_state_dict(spec, seed=2)
    x = make_inputs(spec)
    aligned = align(spec, a, b)
    torch.testing.assert_close(to_module(spec, aligned)(x), to_module(spec, b)(x))
    assert _distance(spec, a, aligned) <= _distance(spec, a, b)
    merged = rebasin_interpolate(spec, a, b, 0.5)
    check_state_dict(spec, merged)  # every key, shape, finite
    out = to_module(spec, merged)(x)
    assert out.shape == (len(x), spec.num_outputs) and torch.isfinite(out).all()
    torch.testing.assert_close(
        rebasin_interpolate(spec, a, b, 0.0)[spec.layers[0].name + ".weight"],
        a[spec.layers[0].name + ".weight"],
    )
    # the `merge` entry point (what `weightspace merge --method rebasin` runs) gives the same
    from weightspace.synthesis.merge import merge

    result = merge("rebasin", spec, a, spec, b, 0.5)
    assert result.spec == spec
    for key, tensor in merged.items():
        torch.testing.assert_close(result.state_dict[key], tensor)
    # norm parameters are the average of A's and the matched B's, neuron by neuron
    for op in spec.norms:
        key = f"{op.name}.weight"
        torch.testing.assert_close(merged[key], 0.5 * (a[key] + aligned[key]))
