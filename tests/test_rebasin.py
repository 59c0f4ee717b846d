"""Weight matching (Git Re-Basin) and weight interpolation."""

from __future__ import annotations

import pytest
import torch

from models import ARCHITECTURES, build, make_inputs, make_state_dict
from weightspace.module import to_module
from weightspace.symmetry import permute, random_permutation
from weightspace.synthesis import (
    SynthesisError,
    align,
    interpolate,
    match_weights,
    rebasin_interpolate,
    weight_inner_product,
)

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
    assert weight_inner_product(spec, a, aligned) >= weight_inner_product(spec, a, b) - 1e-9


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
