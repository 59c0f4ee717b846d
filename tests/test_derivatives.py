"""Derivatives: the cheap per-model transforms, the training ones, and Net2Net widening."""

from __future__ import annotations

import functools

import pytest
import torch

from models import ARCHITECTURES, build, make_inputs, make_state_dict
from weightspace import mlp_spec
from weightspace.evaluate.derivatives import (
    ALL_DERIVATIVES,
    LINEAGE_DERIVATIVES,
    DerivativeError,
    DerivativeSettings,
    add_noise,
    finetune,
    magnitude_prune,
    make_derivative,
    make_derivatives,
    quantize,
)
from weightspace.evaluate.net2net import WideningError, net2net_widen, widenable_groups
from weightspace.evaluate.retraining import RetrainingError, fresh_initialisation, train_stacked
from weightspace.layout import layout_of
from weightspace.module import to_module
from weightspace.testing import assert_function_preserved

SPEC = mlp_spec([6, 8, 8, 3])


def toy_task(n: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and the labels a fixed random linear map gives them: learnable, 3 classes."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=generator)
    return x, (x @ torch.randn(6, 3, generator=generator)).argmax(-1)


@functools.lru_cache(maxsize=1)
def _trained() -> tuple[dict[str, torch.Tensor], ...]:
    x, y = toy_task()
    generator = torch.Generator().manual_seed(1)
    start = [fresh_initialisation(SPEC, generator) for _ in range(3)]
    return tuple(train_stacked(SPEC, start, x, y, steps=150, learning_rates=[1e-2] * 3))


def trained_models(count: int = 3) -> list[dict[str, torch.Tensor]]:
    """``count`` small MLPs trained on :func:`toy_task` (fresh copies each call)."""
    return [{k: v.clone() for k, v in sd.items()} for sd in _trained()[:count]]


def agreement(a: dict, b: dict, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(
            (to_module(SPEC, a)(x).argmax(-1) == to_module(SPEC, b)(x).argmax(-1)).float().mean()
        )


def relative_distance(a: dict, b: dict) -> float:
    flat_a = torch.cat([a[k].reshape(-1) for k in SPEC.param_shapes()])
    flat_b = torch.cat([b[k].reshape(-1) for k in SPEC.param_shapes()])
    return float((flat_a - flat_b).norm() / flat_b.norm())


# ------------------------------------------------------------------ cheap derivatives
def test_cheap_derivatives():
    generator = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(*s, generator=generator) for k, s in SPEC.param_shapes().items()}
    original = {k: v.clone() for k, v in sd.items()}
    pruned = magnitude_prune(SPEC, sd, 0.5)
    assert (pruned["0.weight"] == 0).sum() == sd["0.weight"].numel() // 2
    assert torch.equal(pruned["0.bias"], sd["0.bias"])
    quantised = quantize(SPEC, sd, bits=4)
    assert quantised["2.weight"].unique().numel() <= 15
    assert (quantised["2.weight"] - sd["2.weight"]).abs().max() <= sd["2.weight"].abs().max() / 14
    noisy = add_noise(SPEC, sd, 0.1, torch.Generator().manual_seed(0))
    relative = (noisy["0.weight"] - sd["0.weight"]).norm() / sd["0.weight"].norm()
    assert 0.05 < relative < 0.2
    x, y = torch.randn(64, 6, generator=generator), torch.randint(0, 3, (64,), generator=generator)
    tuned = finetune(SPEC, sd, x, y, steps=3, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(tuned["0.weight"], sd["0.weight"]) and set(tuned) == set(sd)
    for key in sd:  # inputs are never modified
        assert torch.equal(sd[key], original[key])
    with pytest.raises(DerivativeError, match="finetune_data"):
        make_derivative("finetune", SPEC, sd)
    with pytest.raises(DerivativeError, match="unknown derivative"):
        make_derivative("blur", SPEC, sd)


# ------------------------------------------------------------------ Net2Net
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu"])
def test_net2net_preserves_the_function_exactly(arch, activation):
    spec = build(arch, activation)
    state = make_state_dict(spec)
    original = {k: v.clone() for k, v in state.items()}
    wider, widened = net2net_widen(spec, state, 0.5, torch.Generator().manual_seed(0))
    assert wider.num_parameters > spec.num_parameters
    for group in widenable_groups(spec):  # every free hidden layer got wider
        producer = layout_of(spec).groups[group].producer
        assert wider[producer].out_size > spec[producer].out_size
    assert wider.input_shape == spec.input_shape and wider.num_outputs == spec.num_outputs
    assert_function_preserved(to_module(spec, state), to_module(wider, widened), make_inputs(spec))
    for key in state:
        assert torch.equal(state[key], original[key])


def test_net2net_without_the_split_changes_the_function():
    """Negative control: copying neurons without dividing their outgoing weights is caught."""
    state = make_state_dict(SPEC)
    wider, widened = net2net_widen(SPEC, state, 1.0, torch.Generator().manual_seed(0))
    n = SPEC["2"].out_size  # the copies of layer "2"'s neurons are columns n: of layer "4"
    broken = dict(widened)
    broken["4.weight"] = widened["4.weight"].clone()
    broken["4.weight"][:, n:] *= 2  # a copy keeps its source's whole outgoing weight
    with pytest.raises(AssertionError, match="different functions"):
        assert_function_preserved(
            to_module(SPEC, state), to_module(wider, broken), make_inputs(SPEC)
        )


def test_net2net_needs_a_free_hidden_layer():
    spec = mlp_spec([4, 3])
    with pytest.raises(WideningError, match="no hidden layer"):
        net2net_widen(spec, make_state_dict(spec))
    with pytest.raises(DerivativeError, match="no hidden layer"):
        make_derivatives("net2net", spec, [make_state_dict(spec)])
    with pytest.raises(WideningError, match="> 0"):
        net2net_widen(SPEC, make_state_dict(SPEC), 0.0)


# ------------------------------------------------------------------ every lineage derivative
@pytest.mark.parametrize("kind", ALL_DERIVATIVES)
def test_each_derivative_changes_weights_and_keeps_the_architecture(kind):
    teachers = trained_models()
    originals = [{k: v.clone() for k, v in t.items()} for t in teachers]
    spec, derived = make_derivatives(
        kind, SPEC, teachers, data=toy_task(), generator=torch.Generator().manual_seed(3)
    )
    assert len(derived) == len(teachers)
    if kind == "net2net":
        assert spec != SPEC and spec.num_parameters > SPEC.num_parameters
    else:
        assert spec == SPEC
    for teacher, new, original in zip(teachers, derived, originals, strict=True):
        assert set(new) == set(spec.param_shapes())
        assert all(tuple(new[k].shape) == s for k, s in spec.param_shapes().items())
        assert all(new[k].dtype == teacher["0.weight"].dtype for k in new)
        assert any(
            new[k].shape != teacher[k].shape or not torch.equal(new[k], teacher[k]) for k in new
        )
        assert all(torch.equal(teacher[k], original[k]) for k in teacher)  # inputs untouched


def test_training_derivatives_do_what_they_say():
    x, y = toy_task()
    x_test, _ = toy_task(200, seed=5)
    teachers = trained_models()
    generator = torch.Generator().manual_seed(0)
    # distillation: a fresh start (far away in weights) that computes nearly the same function
    _, students = make_derivatives("distill", SPEC, teachers, data=(x, y), generator=generator)
    for teacher, student in zip(teachers, students, strict=True):
        assert relative_distance(student, teacher) > 0.5
        assert agreement(student, teacher, x_test) > 0.75
    # pruning then fine-tuning: the pruned weights stay 0, the rest moved
    settings = DerivativeSettings(pruned_fraction=0.5)
    _, pruned = make_derivatives(
        "prune-finetune", SPEC, teachers, data=(x, y), generator=generator, settings=settings
    )
    for teacher, model in zip(teachers, pruned, strict=True):
        for op in SPEC.layers:
            w = model[f"{op.name}.weight"]
            assert (w == 0).sum() >= w.numel() // 2
        kept = magnitude_prune(SPEC, teacher, 0.5)
        assert not torch.equal(model["0.weight"], kept["0.weight"])
    # a long fine-tune moves the weights, each model at its own learning rate, by seed
    _, a = make_derivatives(
        "finetune-long", SPEC, teachers, data=(x, y), generator=torch.Generator().manual_seed(1)
    )
    _, b = make_derivatives(
        "finetune-long", SPEC, teachers, data=(x, y), generator=torch.Generator().manual_seed(1)
    )
    _, c = make_derivatives(
        "finetune-long", SPEC, teachers, data=(x, y), generator=torch.Generator().manual_seed(2)
    )
    assert all(torch.equal(p[k], q[k]) for p, q in zip(a, b, strict=True) for k in p)
    assert not torch.equal(a[0]["0.weight"], c[0]["0.weight"])
    moves = [relative_distance(m, t) for m, t in zip(a, teachers, strict=True)]
    assert min(moves) > 1e-3 and len({round(m, 6) for m in moves}) == len(moves)


def test_derivative_settings_and_data_are_checked():
    with pytest.raises(DerivativeError, match="at least 1 epoch"):
        DerivativeSettings(long_finetune_epochs=0.5)
    with pytest.raises(DerivativeError, match="training data"):
        make_derivatives("distill", SPEC, trained_models(1))
    with pytest.raises(DerivativeError, match="unknown derivative"):
        make_derivatives("blur", SPEC, trained_models(1))
    with pytest.raises(RetrainingError, match="learning rate"):
        train_stacked(SPEC, trained_models(2), *toy_task(), steps=1, learning_rates=[0.1])
    assert set(LINEAGE_DERIVATIVES) <= set(ALL_DERIVATIVES)
