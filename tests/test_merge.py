"""The merge registry: averaging, re-basin, ensemble networks, refusals."""

from __future__ import annotations

import pytest
import torch

from cli_runner import run_cli
from models import build, make_inputs, make_state_dict
from weightspace.ingest import load_checkpoint, save_checkpoint
from weightspace.module import to_module
from weightspace.spec import mlp_spec
from weightspace.synthesis import (
    SynthesisError,
    ensemble,
    ensemble_spec,
    list_merge_methods,
    merge,
)

CHAINS = ["mlp", "mlp_residual", "cnn1d", "cnn1d_residual", "cnn2d", "cnn2d_residual"]


@pytest.mark.parametrize("arch", CHAINS)
@pytest.mark.parametrize("act", ["relu", "tanh", "gelu"])
def test_ensemble_network_computes_the_weighted_mean_of_outputs(arch: str, act: str) -> None:
    spec = build(arch, act)
    states = [make_state_dict(spec, seed=s) for s in (1, 2, 3)]
    weights = [0.2, 0.5, 0.3]
    result = ensemble(spec, states, weights)
    assert result.spec == ensemble_spec(spec, 3)
    x = make_inputs(spec)
    expected = sum(w * to_module(spec, s)(x) for w, s in zip(weights, states, strict=True))
    torch.testing.assert_close(to_module(result.spec, result.state_dict)(x), expected)


@pytest.mark.parametrize("alpha", [0.0, 0.25, 1.0])
def test_ensemble_merge_interpolates_outputs(alpha: float) -> None:
    spec = build("cnn2d_residual", "relu")
    a, b = make_state_dict(spec, seed=1), make_state_dict(spec, seed=2)
    result = merge("ensemble", spec, a, spec, b, alpha)
    x = make_inputs(spec)
    expected = (1 - alpha) * to_module(spec, a)(x) + alpha * to_module(spec, b)(x)
    torch.testing.assert_close(to_module(result.spec, result.state_dict)(x), expected)


def test_ensemble_refuses_residuals_onto_the_input() -> None:
    spec = build("mlp_skips", "relu")
    with pytest.raises(SynthesisError, match="added to the input"):
        ensemble_spec(spec)


@pytest.mark.parametrize("method", ["average", "rebasin"])
@pytest.mark.parametrize("arch", ["mlp", "cnn1d_residual"])
def test_merging_a_model_with_itself_is_the_identity(method: str, arch: str) -> None:
    spec = build(arch, "relu")
    a = make_state_dict(spec, seed=5)
    result = merge(method, spec, a, spec, a, 0.5)
    assert result.spec == spec
    for key, tensor in a.items():
        torch.testing.assert_close(result.state_dict[key], tensor)


def test_merge_endpoints_are_the_inputs() -> None:
    spec = build("mlp", "relu")
    a, b = make_state_dict(spec, seed=1), make_state_dict(spec, seed=2)
    x = make_inputs(spec)
    for method in ("average", "rebasin", "ensemble"):
        at0 = merge(method, spec, a, spec, b, 0.0)
        at1 = merge(method, spec, a, spec, b, 1.0)
        torch.testing.assert_close(to_module(at0.spec, at0.state_dict)(x), to_module(spec, a)(x))
        torch.testing.assert_close(to_module(at1.spec, at1.state_dict)(x), to_module(spec, b)(x))


def test_unknown_method_lists_the_valid_ones() -> None:
    spec = build("mlp", "relu")
    a = make_state_dict(spec)
    with pytest.raises(SynthesisError) as info:
        merge("soup", spec, a, spec, a)
    for name in ("average", "rebasin", "ensemble", "embedding"):
        assert name in str(info.value)
    assert set(list_merge_methods()) >= {"average", "rebasin", "ensemble", "embedding"}


def test_different_architectures_and_tasks_are_refused() -> None:
    spec_a, spec_b = mlp_spec([5, 7, 3]), mlp_spec([5, 8, 3])
    a, b = make_state_dict(spec_a), make_state_dict(spec_b)
    with pytest.raises(SynthesisError, match="architectures differ"):
        merge("average", spec_a, a, spec_b, b)
    with pytest.raises(SynthesisError, match="different tasks|task"):
        merge("average", spec_a, a, spec_a, a, task_a="wine", task_b="digits")


def test_embedding_merge_needs_a_decoder() -> None:
    spec = build("mlp", "relu")
    a = make_state_dict(spec)
    with pytest.raises(SynthesisError, match="decoder"):
        merge("embedding", spec, a, spec, a)


def test_merged_checkpoint_round_trips(tmp_path) -> None:
    spec = build("cnn1d", "relu")
    a, b = make_state_dict(spec, seed=1), make_state_dict(spec, seed=2)
    result = merge("ensemble", spec, a, spec, b)
    path = save_checkpoint(tmp_path / "c.safetensors", result.spec, result.state_dict)
    spec2, state2 = load_checkpoint(path)
    assert spec2 == result.spec
    x = make_inputs(spec)
    torch.testing.assert_close(
        to_module(spec2, state2)(x), to_module(result.spec, result.state_dict)(x)
    )


# ---------------------------------------------------------------------------------------------
# the `weightspace merge` command, in process
# ---------------------------------------------------------------------------------------------


def test_cli_merge_writes_a_loadable_checkpoint(tmp_path, capsys) -> None:
    spec = build("cnn2d_residual", "relu")
    a, b = make_state_dict(spec, seed=1), make_state_dict(spec, seed=2)
    save_checkpoint(tmp_path / "a.safetensors", spec, a, {"task": "digits"})
    save_checkpoint(tmp_path / "b.safetensors", spec, b, {"task": "digits"})
    for method in ("rebasin", "ensemble"):
        out = tmp_path / f"{method}.safetensors"
        code, stdout, err = run_cli(
            capsys, "merge", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"),
            "--method", method, "--alpha", "0.25", "--out", str(out),
        )  # fmt: skip
        assert code == 0, err
        assert "wrote" in stdout
        merged_spec, merged = load_checkpoint(out)
        x = make_inputs(spec)
        if method == "ensemble":
            expected = 0.75 * to_module(spec, a)(x) + 0.25 * to_module(spec, b)(x)
            torch.testing.assert_close(to_module(merged_spec, merged)(x), expected)
        else:
            assert merged_spec == spec


def test_cli_merge_refusals_are_one_line_errors(tmp_path, capsys) -> None:
    spec, other = build("mlp", "relu"), mlp_spec([5, 9, 3])
    save_checkpoint(tmp_path / "a.safetensors", spec, make_state_dict(spec), {"task": "wine"})
    save_checkpoint(tmp_path / "b.safetensors", other, make_state_dict(other), {"task": "wine"})
    save_checkpoint(tmp_path / "c.safetensors", spec, make_state_dict(spec), {"task": "digits"})
    cases = {
        ("b", "average"): "architectures differ",
        ("c", "average"): "task",
        ("c", "soup"): "valid: average, rebasin, ensemble, embedding",
        ("c", "embedding"): "--encoder",
    }
    for (second, method), message in cases.items():
        code, _, err = run_cli(
            capsys, "merge", str(tmp_path / "a.safetensors"), str(tmp_path / f"{second}.safetensors"),
            "--method", method, "--out", str(tmp_path / "m.safetensors"),
        )  # fmt: skip
        assert code == 1, (second, method, err)
        assert message in " ".join(err.split()), err
        assert "Traceback" not in err
    assert not (tmp_path / "m.safetensors").exists()


def test_the_registry_records_which_methods_use_data() -> None:
    from weightspace.synthesis import MERGE_METHODS

    uses = {name: method.uses_data for name, method in MERGE_METHODS.items()}
    assert uses == {"average": False, "rebasin": False, "ensemble": False, "embedding": True}


# ---------------------------------------------------------------------------------------------
# more than two models, weights, and the default method's fallback
# ---------------------------------------------------------------------------------------------
def test_average_of_k_models_is_the_weighted_mean() -> None:
    from weightspace.synthesis import merge_models

    spec = build("mlp", "relu")
    states = [make_state_dict(spec, seed=s) for s in (1, 2, 3)]
    result = merge_models("average", [(spec, s) for s in states], [2.0, 1.0, 1.0])
    for key in states[0]:
        expected = 0.5 * states[0][key] + 0.25 * states[1][key] + 0.25 * states[2][key]
        torch.testing.assert_close(result.state_dict[key], expected)
    assert result.info["weights"] == [0.5, 0.25, 0.25]


def test_two_model_weights_match_alpha_exactly() -> None:
    from weightspace.synthesis import merge_models

    spec = build("mlp", "tanh")
    a, b = make_state_dict(spec, seed=1), make_state_dict(spec, seed=2)
    for method in ("average", "rebasin"):
        by_alpha = merge(method, spec, a, spec, b, 0.25)
        by_weights = merge_models(method, [(spec, a), (spec, b)], [0.75, 0.25])
        for key in a:
            torch.testing.assert_close(by_weights.state_dict[key], by_alpha.state_dict[key])


@pytest.mark.parametrize("arch", ["mlp", "cnn1d_residual"])
def test_rebasin_of_k_permuted_copies_recovers_the_model(arch: str) -> None:
    """Every model is aligned onto the first, so K hidden-neuron permutations of one model
    merge back to it; naive averaging of the same copies does not."""
    from weightspace.symmetry import random_permutation
    from weightspace.synthesis import merge_models

    spec = build(arch, "relu")
    a = make_state_dict(spec, seed=4)
    copies = [
        a,
        *(random_permutation(spec, a, torch.Generator().manual_seed(s))[0] for s in (1, 2)),
    ]
    x = make_inputs(spec)
    expected = to_module(spec, a)(x)
    merged = merge_models("rebasin", [(spec, s) for s in copies])
    torch.testing.assert_close(to_module(spec, merged.state_dict)(x), expected)
    naive = merge_models("average", [(spec, s) for s in copies])
    assert not torch.allclose(to_module(spec, naive.state_dict)(x), expected, atol=1e-3)


def test_k_model_ensemble_and_refusals() -> None:
    from weightspace.synthesis import merge_models

    spec = build("mlp", "relu")
    states = [make_state_dict(spec, seed=s) for s in (1, 2, 3)]
    result = merge_models("ensemble", [(spec, s) for s in states])
    assert result.spec == ensemble_spec(spec, 3)
    x = make_inputs(spec)
    expected = sum(to_module(spec, s)(x) for s in states) / 3
    torch.testing.assert_close(to_module(result.spec, result.state_dict)(x), expected)
    with pytest.raises(SynthesisError, match="at least two"):
        merge_models("average", [(spec, states[0])])
    with pytest.raises(SynthesisError, match="3 models but 2 weights"):
        merge_models("average", [(spec, s) for s in states], [0.5, 0.5])
    for bad in ([1.0, -1.0, 1.0], [1.0, float("nan"), 1.0]):
        with pytest.raises(SynthesisError, match="weight 2 must be a finite number >= 0"):
            merge_models("average", [(spec, s) for s in states], bad)
    with pytest.raises(SynthesisError, match="all zero"):
        merge_models("average", [(spec, s) for s in states], [0, 0, 0])
    with pytest.raises(SynthesisError, match="model 3 .task 'digits'."):
        merge_models("average", [(spec, s) for s in states], tasks=["wine", None, "digits"])
    other = mlp_spec([5, 9, 3])
    with pytest.raises(SynthesisError, match="architectures differ"):
        merge_models(
            "average", [(spec, states[0]), (spec, states[1]), (other, make_state_dict(other))]
        )


def test_default_method_falls_back_without_a_decoder() -> None:
    from weightspace.synthesis.merge import DEFAULT_METHOD, FALLBACK_METHOD, choose_merge_method

    assert choose_merge_method(None, has_decoder=True) == (DEFAULT_METHOD, None)
    method, note = choose_merge_method(None, has_decoder=False)
    assert method == FALLBACK_METHOD == "rebasin" and "weight matching" in note
    assert choose_merge_method("average", has_decoder=False) == ("average", None)
    with pytest.raises(SynthesisError, match="needs an encoder directory with a trained decoder"):
        choose_merge_method("embedding", has_decoder=False)  # named explicitly: an error
    with pytest.raises(SynthesisError, match="valid: average"):
        choose_merge_method("soup", has_decoder=True)
