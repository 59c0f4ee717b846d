"""Symmetry transforms keep the function; canonical forms collapse orbits; broken ones do not."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models import (
    ACTIVATIONS,
    ARCHITECTURES,
    build,
    make_inputs,
    make_model,
    make_state_dict,
    torch_inputs,
    torch_mlp,
    torch_residual_cnn,
)
from weightspace.errors import ShapeMismatchError, WeightspaceError
from weightspace.graph import to_graph, to_state_dict
from weightspace.layout import ROLE_HIDDEN, layout_of
from weightspace.module import SpecModule, to_module
from weightspace.spec import mlp_spec
from weightspace.symmetry import (
    SymmetryError,
    _transform_group,
    canonicalize,
    canonicalize_graph,
    canonicalize_scale,
    canonicalize_sign,
    flip_signs,
    permute,
    permute_graph,
    permute_group,
    random_broken_permutation,
    random_permutation,
    random_rescale,
    random_sign_flip,
    random_symmetry,
    random_symmetry_graph,
    rescale,
    transform_graph,
    transform_module,
)
from weightspace.testing import assert_function_preserved, max_relative_error

DTYPES = [torch.float64, torch.float32]
CASES = [(arch, act) for arch in ARCHITECTURES for act in ACTIVATIONS]
RANDOM_TRANSFORMS = [random_permutation, random_rescale, random_sign_flip, random_symmetry]
SEEDS = st.integers(min_value=0, max_value=2**31 - 1)
FEW = settings(max_examples=3, deadline=None)
# Canonical forms of one orbit agree to rounding: well below 1e-6 in float64, a few ulps of
# float32 accumulated over the layers in float32.
CANONICAL_RTOL = {torch.float64: 1e-10, torch.float32: 1e-6}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _outputs(spec, state, x):
    with torch.no_grad():
        return to_module(spec, state)(x)


def _assert_states_close(a, b, rtol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        error = max_relative_error(a[key], b[key])
        assert error <= rtol, f"{key}: relative error {error:.3g} > {rtol:.1g}"


# ------------------------------------------------------------------------ function preservation
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("arch", "act"), CASES)
@FEW
@given(seed=SEEDS)
def test_random_transforms_preserve_the_function(arch, act, dtype, seed):
    spec, state = make_model(arch, act, seed=seed % 1000, dtype=dtype)
    x = make_inputs(spec, dtype=dtype)
    original = to_module(spec, state)
    for transform in RANDOM_TRANSFORMS:
        new_state, _ = transform(spec, state, _gen(seed))
        assert all(new_state[k].dtype == dtype for k in new_state)
        assert_function_preserved(original, to_module(spec, new_state), x)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_random_symmetry_changes_the_weights(arch):
    spec, state = make_model(arch, "identity")
    new_state, draws = random_symmetry(spec, state, _gen(0))
    assert draws["permutation"], "every test architecture has a permutable hidden group"
    assert any(not torch.equal(state[k], new_state[k]) for k in state)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("arch", "act"), CASES)
def test_canonicalize_preserves_the_function(arch, act, dtype):
    spec, state = make_model(arch, act, dtype=dtype)
    x = make_inputs(spec, dtype=dtype)
    canonical = canonicalize(spec, state)
    assert_function_preserved(to_module(spec, state), to_module(spec, canonical), x)


# ------------------------------------------------------------------------ canonical forms
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("arch", "act"), CASES)
@FEW
@given(seed=SEEDS)
def test_canonical_form_is_constant_on_scale_and_sign_orbits(arch, act, dtype, seed):
    spec, state = make_model(arch, act, seed=seed % 1000, dtype=dtype)
    reference = canonicalize(spec, state)
    for transforms in (("rescale",), ("sign_flip",), ("sign_flip", "rescale")):
        moved, _ = random_symmetry(spec, state, _gen(seed), transforms=transforms, log_range=2.0)
        _assert_states_close(canonicalize(spec, moved), reference, CANONICAL_RTOL[dtype])


@pytest.mark.parametrize(("arch", "act"), CASES)
def test_canonical_form_is_normalised_and_idempotent(arch, act):
    spec, state = make_model(arch, act)
    layout = layout_of(spec)
    canonical = canonicalize(spec, state)
    for g in layout.scalable_groups():
        producer = layout.groups[g].producer
        w = canonical[f"{producer}.weight"].reshape(layout.groups[g].size, -1)
        squared = w.pow(2).sum(1) + canonical.get(f"{producer}.bias", torch.zeros(1)).pow(2)
        torch.testing.assert_close(squared, torch.ones_like(squared), rtol=1e-12, atol=1e-12)
    for g in layout.sign_flippable_groups():
        producer = layout.groups[g].producer
        if f"{producer}.bias" in canonical:
            assert bool((canonical[f"{producer}.bias"] > 0).all())
    _assert_states_close(canonicalize(spec, canonical), canonical, 1e-12)


@pytest.mark.parametrize("bias", [True, False])
def test_sign_canonical_form_falls_back_to_the_incoming_weights(bias):
    spec = mlp_spec([4, 5, 3], "tanh", bias=bias)
    state = make_state_dict(spec)
    if bias:
        state["0.bias"] = torch.zeros(5, dtype=torch.float64)
    state["0.weight"][1] = torch.tensor([2.0, -1.0, -1.0, 0.0], dtype=torch.float64)  # sum 0
    state["0.weight"][2] = 0.0  # neuron 2 has nothing to decide by: left as it is
    signs = {1: torch.tensor([-1.0, -1.0, 1.0, -1.0, 1.0])}
    flipped = flip_signs(spec, state, signs)
    canonical = canonicalize_sign(spec, state)
    for key, value in canonicalize_sign(spec, flipped).items():
        assert torch.equal(value, canonical[key]), key
    assert bool((canonical["0.weight"][[0, 3, 4]].sum(1) > 0).all())
    assert float(canonical["0.weight"][1].pow(3).sum()) > 0  # row sum 0: decided by cubes


def test_sign_canonical_form_of_bias_free_neurons_ignores_input_order():
    """Permuting the neurons a bias-free tanh group reads must not change its signs."""
    spec = mlp_spec([4, 6, 5, 3], "tanh", bias=False)
    state = make_state_dict(spec)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    permuted = permute(spec, state, {1: perm})
    a, b = canonicalize_sign(spec, state), canonicalize_sign(spec, permuted)
    assert torch.allclose(b["2.weight"], a["2.weight"][:, perm])
    assert torch.allclose(b["4.weight"], a["4.weight"])


def test_scale_canonical_form_skips_dead_neurons():
    spec = mlp_spec([4, 5, 3], "relu")
    state = make_state_dict(spec)
    state["0.weight"][2] = 0.0
    state["0.bias"][2] = 0.0
    canonical = canonicalize_scale(spec, state)
    assert bool(torch.isfinite(canonical["2.weight"]).all())
    assert torch.equal(canonical["2.weight"][:, 2], state["2.weight"][:, 2])


# ------------------------------------------------------------------------ permutations
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_input_and_output_neurons_are_never_permuted(arch):
    spec, state = make_model(arch, "relu")
    layout = layout_of(spec)
    _, perms = random_permutation(spec, state, _gen(0))
    ties = layout.tie_sets()
    for group, perm in perms.items():
        assert layout.groups[group].role == ROLE_HIDDEN
        assert all(layout.groups[m].role == ROLE_HIDDEN for m in ties[layout.groups[group].tie])
        assert torch.equal(torch.sort(perm).values, torch.arange(layout.groups[group].size))
        for member in ties[layout.groups[group].tie]:
            assert perms[member] is perm  # one permutation per tie set
    assert set(perms) == {g for members in layout.permutable_tie_sets() for g in members}


def test_groups_tied_to_inputs_or_outputs_are_not_permutable():
    spec, _ = make_model("mlp_skips", "relu")
    layout = layout_of(spec)
    assert layout.permutable_tie_sets() == [[2]]  # fc0 is tied to the input, head0 to the output


def test_a_permutation_given_for_one_tied_group_moves_the_whole_tie_set():
    spec, state = make_model("mlp_residual", "relu")
    perm = torch.tensor([2, 0, 1, 5, 3, 4])
    by_one = permute(spec, state, {2: perm})
    by_all = permute(spec, state, {1: perm, 2: perm, 3: perm})
    for key in state:
        assert torch.equal(by_one[key], by_all[key]), key
    x = make_inputs(spec)
    assert_function_preserved(to_module(spec, state), to_module(spec, by_one), x)


def test_permute_moves_rows_and_spatial_columns():
    spec, state = make_model("cnn1d", "relu")  # fc reads 5 channels x 5 positions
    perm = torch.tensor([4, 0, 3, 1, 2])
    new = permute(spec, state, {2: perm})
    assert torch.equal(new["c1.weight"], state["c1.weight"][perm])
    assert torch.equal(new["c1.bias"], state["c1.bias"][perm])
    assert torch.equal(new["fc.weight"].view(3, 5, 5), state["fc.weight"].view(3, 5, 5)[:, perm])


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_graph_round_trip_is_exact_after_permutation(arch):
    spec, state = make_model(arch, "tanh")
    permuted, perms = random_permutation(spec, state, _gen(1))
    graph = to_graph(spec, permuted)
    back = to_state_dict(graph)
    assert back.keys() == permuted.keys()
    for key in permuted:
        assert torch.equal(back[key], permuted[key]), key
    again = to_graph(spec, back)
    for attr in ("x", "edge_index", "edge_attr", "edge_layer", "edge_kind", "node_group"):
        assert torch.equal(again[attr], graph[attr]), attr
    via_graph = permute_graph(to_graph(spec, state), perms)
    for attr in ("x", "edge_index", "edge_attr"):
        assert torch.equal(via_graph[attr], graph[attr]), attr


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_permuting_weights_relabels_the_graph_nodes(arch):
    """The graph of a permuted model is the original graph with its hidden nodes renamed."""
    spec, state = make_model(arch, "relu")
    layout = layout_of(spec)
    permuted, perms = random_permutation(spec, state, _gen(2))
    before, after = to_graph(spec, state), to_graph(spec, permuted)
    rename = torch.arange(layout.num_nodes)  # old node -> new node
    for group, perm in perms.items():
        offset = layout.offsets[group]
        rename[offset + perm] = offset + torch.arange(perm.numel())
    x = torch.empty_like(before.x)
    x[rename] = before.x
    assert torch.equal(x, after.x)

    def edges(edge_index, graph):
        key = (graph.edge_kind * layout.num_nodes + edge_index[1]) * layout.num_nodes
        order = torch.argsort(key + edge_index[0])
        return edge_index[:, order], graph.edge_attr[order]

    index_a, attr_a = edges(rename[before.edge_index], before)
    index_b, attr_b = edges(after.edge_index, after)
    assert torch.equal(index_a, index_b)
    assert torch.equal(attr_a, attr_b)


# ------------------------------------------------------------------------ negative controls
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("arch", "act"), CASES)
@pytest.mark.parametrize("kind", ["unmatched", "input"])
def test_broken_permutations_change_the_function(arch, act, dtype, kind):
    spec, state = make_model(arch, act, dtype=dtype)
    x = make_inputs(spec, dtype=dtype)
    broken, perms = random_broken_permutation(spec, state, _gen(0), kind=kind)
    (perm,) = perms.values()
    assert not torch.equal(perm, torch.arange(perm.numel()))
    error = max_relative_error(_outputs(spec, broken, x), _outputs(spec, state, x))
    assert error > 1e-3, f"a broken permutation kept the function (error {error:.2g})"
    with pytest.raises(AssertionError, match="different functions"):
        assert_function_preserved(to_module(spec, state), to_module(spec, broken), x)


@pytest.mark.parametrize("act", ["gelu", "silu", "sigmoid", "tanh"])
def test_rescaling_is_only_a_symmetry_of_homogeneous_activations(act):
    spec, state = make_model("mlp", act)
    assert layout_of(spec).scalable_groups() == []
    changed = dict(state)
    _transform_group(changed, layout_of(spec), 1, factor=torch.full((7,), 3.0))
    x = make_inputs(spec)
    assert max_relative_error(_outputs(spec, changed, x), _outputs(spec, state, x)) > 1e-3


@pytest.mark.parametrize("act", ["relu", "leaky_relu", "gelu", "silu", "sigmoid"])
def test_sign_flips_are_only_a_symmetry_of_odd_activations(act):
    spec, state = make_model("mlp", act)
    assert layout_of(spec).sign_flippable_groups() == []
    changed = dict(state)
    _transform_group(changed, layout_of(spec), 1, factor=-torch.ones(7))
    x = make_inputs(spec)
    assert max_relative_error(_outputs(spec, changed, x), _outputs(spec, state, x)) > 1e-3


def test_sign_flips_are_not_a_symmetry_through_max_pooling():
    spec, state = make_model("cnn2d", "tanh")  # c0 -> tanh -> max pool
    layout = layout_of(spec)
    assert 1 not in layout.sign_flippable_groups()
    changed = dict(state)
    _transform_group(changed, layout, 1, factor=-torch.ones(3))
    x = make_inputs(spec)
    assert max_relative_error(_outputs(spec, changed, x), _outputs(spec, state, x)) > 1e-3


# ------------------------------------------------------------------------ errors
def test_invalid_transforms_raise_symmetry_errors():
    spec, state = make_model("mlp_residual", "relu")  # groups: 0 in, 1-3 tied, 4 free, 5 out
    with pytest.raises(SymmetryError, match="input or output"):
        permute(spec, state, {0: torch.arange(5)})
    with pytest.raises(SymmetryError, match="input or output"):
        permute(spec, state, {5: torch.arange(3)})
    with pytest.raises(SymmetryError, match="does not exist"):
        permute(spec, state, {9: torch.arange(3)})
    with pytest.raises(SymmetryError, match="one shared permutation"):
        permute(spec, state, {1: torch.arange(6), 2: torch.arange(6).flip(0)})
    with pytest.raises(SymmetryError, match="not a permutation"):
        permute(spec, state, {4: torch.tensor([0, 0, 1, 2])})
    with pytest.raises(SymmetryError, match="shape"):
        permute(spec, state, {4: torch.arange(5)})
    with pytest.raises(SymmetryError, match="positive rescaling"):
        rescale(spec, state, {1: torch.ones(6)})
    with pytest.raises(SymmetryError, match="positive"):
        rescale(spec, state, {4: torch.tensor([1.0, -1.0, 1.0, 1.0])})
    with pytest.raises(SymmetryError, match="sign flips"):
        flip_signs(spec, state, {4: torch.ones(4)})
    with pytest.raises(SymmetryError, match="unknown symmetry"):
        random_symmetry(spec, state, transforms=("shear",))
    with pytest.raises(SymmetryError, match="kind"):
        random_broken_permutation(spec, state, kind="everything")
    tanh_spec, tanh_state = make_model("mlp", "tanh")
    with pytest.raises(SymmetryError, match="-1 or \\+1"):
        flip_signs(tanh_spec, tanh_state, {1: torch.full((7,), 0.5)})
    one_channel = mlp_spec([1, 3, 2], "relu")
    with pytest.raises(SymmetryError, match="nothing to permute"):
        random_broken_permutation(one_channel, make_state_dict(one_channel), kind="input")
    assert issubclass(SymmetryError, WeightspaceError)


def test_state_dicts_that_do_not_fit_the_spec_are_rejected():
    spec, state = make_model("mlp", "relu")
    del state["2.bias"]
    with pytest.raises(ShapeMismatchError, match="missing"):
        random_permutation(spec, state)


# ------------------------------------------------------------------------ hygiene
def test_transforms_do_not_modify_their_input_and_are_reproducible():
    spec, state = make_model("cnn2d_residual", "identity")
    snapshot = {k: v.clone() for k, v in state.items()}
    first, _ = random_symmetry(spec, state, _gen(7))
    second, _ = random_symmetry(spec, state, _gen(7))
    canonicalize(spec, state)
    permute_group(spec, state, 1, torch.tensor([1, 0, 2, 3]))
    for key in state:
        assert torch.equal(state[key], snapshot[key]), key
        assert torch.equal(first[key], second[key]), key


# ------------------------------------------------------------------------ wrappers
def test_transform_module_returns_spec_modules_computing_the_same_function():
    spec, state = make_model("cnn1d_residual", "leaky_relu")
    module = to_module(spec, state)
    x = make_inputs(spec)
    moved, draws = transform_module(module, random_symmetry, _gen(3))
    assert isinstance(moved, SpecModule) and set(draws) == {"sign_flip", "rescale", "permutation"}
    assert_function_preserved(module, moved, x)
    canonical = transform_module(module, canonicalize)
    assert isinstance(canonical, SpecModule)
    assert_function_preserved(module, canonical, x)


def test_transform_module_needs_an_example_input_to_trace_plain_modules():
    with pytest.raises(SymmetryError, match="example_input"):
        transform_module(torch.nn.Linear(3, 2), random_permutation)


def test_graph_wrappers():
    spec, state = make_model("cnn2d_residual", "relu")
    graph = to_graph(spec, state, edge_features=12)
    moved, draws = random_symmetry_graph(graph, _gen(4))
    assert moved.edge_features == 12 and moved.x.dtype == graph.x.dtype
    x = make_inputs(spec)
    assert_function_preserved(to_module(spec, state), to_module(spec, to_state_dict(moved)), x)
    rescaled, _ = random_symmetry_graph(graph, _gen(5), transforms=("rescale", "sign_flip"))
    a, b = canonicalize_graph(rescaled), canonicalize_graph(graph)
    assert max_relative_error(a.edge_attr, b.edge_attr) < 1e-10
    assert max_relative_error(a.x, b.x) < 1e-10
    plain = transform_graph(graph, canonicalize_scale)
    assert plain.num_nodes == graph.num_nodes


def test_test_models_cover_every_kind_of_group():
    """Guard against the suite silently losing coverage when the models change."""
    scalable = flippable = tied = spatial = 0
    for arch in ARCHITECTURES:
        for act in ("relu", "tanh"):
            layout = layout_of(build(arch, act))
            scalable += len(layout.scalable_groups())
            flippable += len(layout.sign_flippable_groups())
            tied += sum(len(members) > 1 for members in layout.permutable_tie_sets())
            spatial += sum(link.spatial > 1 for link in layout.links)
    assert scalable and flippable and tied and spatial


# ------------------------------------------------------------------------ real nn.Modules
TORCH_MODULES = {
    "sequential_mlp_batchnorm": torch_mlp,
    "residual_cnn1d_batchnorm": lambda act: torch_residual_cnn(act, dims=1),
    "residual_cnn2d_batchnorm": lambda act: torch_residual_cnn(act, dims=2),
}


# torch.nn has no sine module, so traced sine networks are not built here (SpecModule SIRENs are
# covered by CASES above and by tests/test_sine.py).
TRACEABLE_ACTIVATIONS = [act for act in ACTIVATIONS if act != "sine"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", TRACEABLE_ACTIVATIONS)
@pytest.mark.parametrize("name", list(TORCH_MODULES))
def test_transforms_of_traced_modules_preserve_their_function(name, act, dtype):
    """nn.Sequential and custom forward() with residuals and BatchNorm, through from_module."""
    module = TORCH_MODULES[name](act).to(dtype)
    x = torch_inputs(module).to(dtype)
    for seed in range(2):
        moved, _ = transform_module(module, random_symmetry, _gen(seed), example_input=x)
        assert_function_preserved(module, moved, x)
    canonical = transform_module(module, canonicalize, example_input=x)
    assert_function_preserved(module, canonical, x)


# ------------------------------------------------------------------------ devices
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("generator_device", ["cpu", "cuda"])
def test_transforms_on_cuda(generator_device):
    spec, state = make_model("cnn2d_residual", "identity")
    state = {k: v.cuda() for k, v in state.items()}
    x = make_inputs(spec).cuda()
    generator = torch.Generator(device=generator_device).manual_seed(0)
    moved, _ = random_symmetry(spec, state, generator)
    assert all(v.is_cuda for v in moved.values())
    assert_function_preserved(to_module(spec, state), to_module(spec, moved), x)
    scaled, _ = random_symmetry(spec, state, generator, transforms=("rescale", "sign_flip"))
    _assert_states_close(canonicalize(spec, scaled), canonicalize(spec, state), 1e-10)
    graph, _ = random_symmetry_graph(to_graph(spec, state), generator)
    assert graph.edge_attr.is_cuda
    assert_function_preserved(to_module(spec, state), to_module(spec, to_state_dict(graph)), x)
