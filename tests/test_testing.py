"""The assertions of weightspace.testing pass on symmetric things and fail on the rest."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import make_inputs, make_model, make_state_dict, torch_inputs, torch_residual_cnn
from weightspace.graph import to_graph, to_state_dict
from weightspace.module import to_module
from weightspace.spec import mlp_spec
from weightspace.symmetry import SymmetryError, canonicalize, random_symmetry
from weightspace.testing import (
    DEFAULT_TOLERANCE,
    assert_function_preserved,
    assert_invariant,
    assert_sensitive,
    max_relative_error,
    tolerance_for,
)

DTYPES = [torch.float64, torch.float32]


def test_max_relative_error():
    assert max_relative_error(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 4.0])) == 0.5
    assert max_relative_error(np.array([0.0, 3.0]), np.zeros(2)) == 3.0  # absolute at zero
    assert max_relative_error(torch.zeros(0), torch.zeros(0)) == 0.0
    assert max_relative_error(1.5, 1.5) == 0.0
    with pytest.raises(AssertionError, match="shapes differ"):
        max_relative_error(torch.zeros(2), torch.zeros(3))


def test_tolerances_by_dtype():
    assert tolerance_for(torch.float64) == 1e-10
    assert tolerance_for(torch.float32) == 1e-4
    assert tolerance_for(torch.int64) == DEFAULT_TOLERANCE[torch.float32]


# ------------------------------------------------------------------------ function preserved
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_assert_function_preserved_accepts_a_symmetric_copy(dtype):
    spec, state = make_model("cnn2d_residual", "relu", dtype=dtype)
    moved, _ = random_symmetry(spec, state, torch.Generator().manual_seed(0))
    x = make_inputs(spec, dtype=dtype)
    error = assert_function_preserved(to_module(spec, state), to_module(spec, moved), [x, 2 * x])
    assert 0.0 <= error <= tolerance_for(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_assert_function_preserved_rejects_different_models(dtype):
    spec, state = make_model("mlp", "tanh", seed=1, dtype=dtype)
    _, other = make_model("mlp", "tanh", seed=2, dtype=dtype)
    x = make_inputs(spec, dtype=dtype)
    with pytest.raises(AssertionError, match=r"max relative error \d"):
        assert_function_preserved(to_module(spec, state), to_module(spec, other), x)


def test_assert_function_preserved_respects_rtol():
    spec, state = make_model("mlp", "relu")
    nudged = {k: v * (1 + 1e-7) for k, v in state.items()}
    a, b = to_module(spec, state), to_module(spec, nudged)
    x = make_inputs(spec)
    with pytest.raises(AssertionError):
        assert_function_preserved(a, b, x)  # float64 default: 1e-10
    assert assert_function_preserved(a, b, x, rtol=1e-5) < 1e-5


def test_assert_function_preserved_rejects_nan():
    spec, state = make_model("mlp", "relu")
    broken = dict(state, **{"2.bias": torch.full((6,), float("nan"), dtype=torch.float64)})
    x = make_inputs(spec)
    with pytest.raises(AssertionError):
        assert_function_preserved(to_module(spec, state), to_module(spec, broken), x)


# ------------------------------------------------------------------------ invariance
def _outputs_on(x):
    def fn(model):
        with torch.no_grad():
            return model(x)

    return fn


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_assert_invariant_accepts_invariant_functions_of_every_model_kind(dtype):
    spec, state = make_model("cnn1d_residual", "identity", dtype=dtype)
    x = make_inputs(spec, dtype=dtype)

    # modules: the outputs on fixed inputs are invariant by definition
    assert_invariant(_outputs_on(x), to_module(spec, state))

    # graphs: the function the graph encodes
    def graph_outputs(graph):
        return _outputs_on(x)(to_module(graph.spec, to_state_dict(graph)))

    assert_invariant(graph_outputs, to_graph(spec, state), n_trials=2)

    # (spec, state dict) pairs: sorted canonical biases are invariant to every symmetry
    def sorted_canonical_biases(model):
        canonical = canonicalize(*model)
        return torch.cat([torch.sort(v).values for k, v in canonical.items() if "bias" in k])

    assert_invariant(sorted_canonical_biases, (spec, state), n_trials=2)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_assert_invariant_rejects_a_non_invariant_function(dtype):
    spec, state = make_model("mlp", "relu", dtype=dtype)

    def first_weight(model):
        return model[1]["0.weight"][0, 0]

    with pytest.raises(AssertionError, match="not invariant"):
        assert_invariant(first_weight, (spec, state))
    for transforms in (["permutation"], ["rescale"]):
        with pytest.raises(AssertionError, match="not invariant"):
            assert_invariant(first_weight, (spec, state), transforms=transforms)
    # the first weight is unchanged by what does not touch it
    assert assert_invariant(first_weight, (spec, state), transforms=[]) == 0.0


def test_assert_invariant_rejects_a_non_invariant_graph_function():
    spec, state = make_model("cnn2d", "relu")
    with pytest.raises(AssertionError, match="not invariant"):
        assert_invariant(lambda graph: graph.edge_attr, to_graph(spec, state))


def test_assert_invariant_uses_the_tolerances():
    spec, state = make_model("mlp", "relu")
    noisy = iter(np.linspace(1.0, 1.0 + 1e-6, 4))

    def almost_constant(model):
        return torch.tensor([next(noisy)], dtype=torch.float64)

    with pytest.raises(AssertionError):
        assert_invariant(almost_constant, (spec, state))
    noisy = iter(np.linspace(1.0, 1.0 + 1e-6, 4))
    assert assert_invariant(almost_constant, (spec, state), atol=1e-5) < 1e-5


def test_assert_invariant_rejects_unknown_model_kinds():
    with pytest.raises(TypeError, match="model must be"):
        assert_invariant(lambda m: 0.0, {"0.weight": torch.zeros(2, 2)})


# ------------------------------------------------------------------------ sensitivity
def test_assert_sensitive_accepts_the_flat_weights_and_the_outputs():
    spec, state = make_model("mlp_residual", "tanh")
    x = make_inputs(spec)

    def flat(model):
        return torch.cat([v.flatten() for v in model[1].values()])

    assert assert_sensitive(flat, (spec, state)) > 0
    assert assert_sensitive(_outputs_on(x), to_module(spec, state)) > 0


def test_assert_sensitive_rejects_functions_that_ignore_the_weights():
    spec, state = make_model("cnn2d", "relu")
    with pytest.raises(AssertionError, match="did not notice"):
        assert_sensitive(lambda model: torch.zeros(3), (spec, state))
    # the number of nodes is invariant, and blind to broken permutations too
    with pytest.raises(AssertionError, match="did not notice"):
        assert_sensitive(lambda graph: float(graph.num_nodes), to_graph(spec, state))


def test_assert_sensitive_needs_input_channels_to_permute():
    narrow = mlp_spec([1, 4, 2], "relu")
    with pytest.raises(SymmetryError, match="nothing to permute"):
        assert_sensitive(lambda m: m[1]["0.weight"], (narrow, make_state_dict(narrow)))
    assert assert_sensitive(
        lambda m: m[1]["0.weight"], (narrow, make_state_dict(narrow)), kinds=["unmatched"]
    )


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_assertions_on_traced_modules(act):
    """A user's own module (residuals, BatchNorm) goes through from_module with example_input."""
    module = torch_residual_cnn(act, dims=2).double()
    x = torch_inputs(module).double()
    assert_invariant(_outputs_on(x), module, example_input=x, n_trials=2)
    assert assert_sensitive(_outputs_on(x), module, example_input=x) > 0
    with pytest.raises(AssertionError, match="not invariant"):
        assert_invariant(lambda m: next(m.parameters()).flatten()[:4], module, example_input=x)
