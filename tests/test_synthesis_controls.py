"""Synthesis controls: the decoded mean code, the distilled-ensemble baseline, method kinds and
the section's Markdown (data-free and data-using methods apart)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from models import tiny_encoder
from weightspace.finetune import finetune_state_dicts
from weightspace.module import to_module
from weightspace.spec import mlp_spec
from weightspace.synthesis import MERGE_METHODS
from weightspace.synthesis.controls import KINDS, mean_code_control, method_info
from weightspace.synthesis.decoder import DecoderConfig, DecoderExample, fit_decoder
from weightspace.synthesis.distill import DistillConfig, distill_ensembles
from weightspace.synthesis.report import synthesis_lines
from weightspace.zoo.tasks import get_task

SPEC = mlp_spec([13, 8, 3], "relu")  # wine


def _wine() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    task = get_task("wine")
    return (
        task.features["train"].float(),
        task.labels["train"],
        task.features["test"].float(),
        task.labels["test"],
    )


def _accuracy(state: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((to_module(SPEC, state)(x).argmax(-1) == y).float().mean())


def _fresh(seed: int) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return {k: v.detach().float() for k, v in to_module(SPEC).state_dict().items()}


@pytest.fixture(scope="module")
def teachers() -> list[dict[str, torch.Tensor]]:
    """Four wine networks trained briefly from different initialisations."""
    x, y, _, _ = _wine()
    return finetune_state_dicts(
        SPEC,
        [_fresh(s) for s in range(4)],
        x,
        y,
        steps=150,
        learning_rate=0.1,
        generator=torch.Generator().manual_seed(0),
    )


# ---------------------------------------------------------------------------------------------
# distillation
# ---------------------------------------------------------------------------------------------
def test_distillation_beats_a_random_network_on_a_tiny_task(teachers) -> None:
    x, _, x_test, y_test = _wine()
    pairs = [(teachers[0], teachers[1]), (teachers[2], teachers[3])]
    students = distill_ensembles(SPEC, pairs, x, DistillConfig(steps=200, inputs_per_step=64))
    chance = max(float((y_test == c).float().mean()) for c in range(3))
    for p, student in enumerate(students):
        assert set(student) == set(SPEC.param_shapes())
        untrained = _accuracy(_fresh(p), x_test, y_test)  # the student's own starting point
        assert _accuracy(student, x_test, y_test) >= max(untrained, chance) + 0.2
        with torch.no_grad():
            a, b = (to_module(SPEC, s)(x_test) for s in pairs[p])
            ensemble = (0.5 * a + 0.5 * b).argmax(-1)
            agreement = (to_module(SPEC, student)(x_test).argmax(-1) == ensemble).float().mean()
        assert float(agreement) >= 0.8


def test_students_trained_together_equal_students_trained_alone(teachers) -> None:
    """Stacking pairs changes no student: each one's gradient and optimiser state are its own."""
    x, _, _, _ = _wine()
    config = DistillConfig(steps=25, inputs_per_step=32)
    together = distill_ensembles(
        SPEC, [(teachers[0], teachers[1]), (teachers[2], teachers[3])], x, config
    )
    alone = distill_ensembles(SPEC, [(teachers[0], teachers[1])], x, config)
    for key in alone[0]:
        torch.testing.assert_close(together[0][key], alone[0][key], rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(together[0][k], together[1][k]) for k in alone[0])


def test_distillation_refuses_bad_settings(teachers) -> None:
    from weightspace.synthesis import SynthesisError

    x, _, _, _ = _wine()
    with pytest.raises(SynthesisError, match="steps"):
        DistillConfig(steps=-1)
    with pytest.raises(SynthesisError, match="initial"):
        distill_ensembles(SPEC, [(teachers[0], teachers[1])], x, initial=[])
    assert distill_ensembles(SPEC, [], x) == []


# ---------------------------------------------------------------------------------------------
# the decoded mean code
# ---------------------------------------------------------------------------------------------
def _decoder(teachers, codes: torch.Tensor):
    examples = [DecoderExample(SPEC, s, "wine", f"r{i}") for i, s in enumerate(teachers)]
    return fit_decoder(None, examples, DecoderConfig(steps=5, hidden=16), embeddings=codes)


def test_the_mean_code_row_is_finite_and_decodes_the_mean(teachers) -> None:
    codes = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    decoder = _decoder(teachers, codes)
    state, row = mean_code_control(
        decoder,
        SPEC,
        "wine",
        codes,
        held_codes=codes[:2] + 0.1,
        pair_codes=torch.stack([codes[:2], codes[2:]]),
    )
    for key in ("accuracy", "agreement_reconstructions", "agreement_midpoints", "code_spread"):
        assert math.isfinite(row[key]), key
    assert 0.0 <= row["accuracy"] <= 1.0
    (expected,) = decoder.decode(codes.mean(0, keepdim=True), SPEC)
    for key in expected:
        torch.testing.assert_close(state[key], expected[key])


def test_a_decoder_that_only_sees_the_mean_code_agrees_with_it_everywhere(teachers) -> None:
    """Codes at the mean decode to the mean-code network: agreement 1; other codes need not."""
    codes = torch.randn(4, 6, generator=torch.Generator().manual_seed(2))
    decoder = _decoder(teachers, codes)
    mean = codes.mean(0, keepdim=True)
    _, at_mean = mean_code_control(decoder, SPEC, "wine", codes, held_codes=mean.repeat(3, 1))
    assert at_mean["agreement_reconstructions"] == 1.0
    assert at_mean["code_spread"] == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# method kinds and the Markdown
# ---------------------------------------------------------------------------------------------
def test_uses_data_flags() -> None:
    expected = {
        "average": ("data-free", False),
        "rebasin": ("data-free", False),
        "embedding": ("data-using", True),
        "distill": ("data-using", True),
        "ensemble": ("reference", False),
        "endpoints": ("reference", False),
        "mean-code": ("control", True),
    }
    for method, (kind, uses_data) in expected.items():
        info = method_info(method)
        assert (info["kind"], info["uses_data"]) == (kind, uses_data), method
        assert info["kind"] in KINDS
    assert MERGE_METHODS["embedding"].uses_data and not MERGE_METHODS["rebasin"].uses_data


def _entry(task: str) -> dict:
    methods = ["average", "rebasin", "embedding", "distill", "ensemble", "endpoints", "mean-code"]
    curves = []
    for i, method in enumerate(methods):
        info = method_info(method)
        alphas = (0.5,) if method == "distill" else (0.0, 0.25, 0.5, 0.75, 1.0)
        for alpha in alphas:
            curves.append(
                {
                    "task": task,
                    "arch": "mlp",
                    "method": method,
                    "alpha": alpha,
                    "accuracy_mean": 0.5 + 0.01 * i,
                    "kind": info["kind"],
                    "uses_data": info["uses_data"],
                }
            )
    return {
        "task": task,
        "arch": "mlp",
        "pairs": 3,
        "pairs_requested": 3,
        "midpoint": {m: 0.5 + 0.01 * i for i, m in enumerate(methods)},
        "methods": {m: method_info(m) for m in methods},
        "curves": curves,
        "mean_code": {"accuracy": 0.56, "agreement_reconstructions": 0.9},
        "reconstruction": {"agreement": 0.7, "models": 2},
        "decoder": {"steps": 10, "steps_requested": 10, "batch_size": 16, "inputs_per_step": 128},
        "distill": {"students": 3, "inputs_per_step": 683, "example_passes": 20490},
        "goals": {"embedding_midpoint_vs_distill": False},
    }


def test_the_section_markdown_separates_data_free_from_data_using_methods() -> None:
    text = "\n".join(synthesis_lines({"tasks": {"wine": _entry("wine")}, "seconds": 1.0}))
    free = text.index("**Data-free merges")
    using = text.index("**Data-using merges")
    reference = text.index("**References")
    control = text.index("**Control**")
    assert free < using < reference < control
    free_table, using_table = text[free:using], text[using:reference]
    assert "naive average" in free_table and "weight matching" in free_table
    assert "embedding (ours)" not in free_table and "distilled ensemble" not in free_table
    assert "embedding (ours)" in using_table and "distilled ensemble" in using_table
    assert "naive average" not in using_table
    assert "decoded mean code (control)" in text[control:]
    # the per-task curve: rows grouped by kind, in the same order
    curve = text[text.index("### wine / mlp") :]
    rows = [line for line in curve.splitlines() if line.startswith("| ")][1:]
    kinds = [row.split(" | ")[0].strip("| ") for row in rows]
    assert kinds == sorted(kinds, key=KINDS.index)
    assert "**missed**" in text  # the goal read from the entry


def test_the_section_runs_the_controls_on_a_zoo_group(tmp_path: Path) -> None:
    from weightspace.synthesis.benchmark import MIDPOINT_METHODS, choose_groups, run_task
    from weightspace.zoo import Zoo, generate_zoo
    from weightspace.zoo.presets import get_preset

    out = tmp_path / "zoo"
    preset = get_preset("tiny").with_overrides(tasks=("wine",), archs=("mlp-w8-d1-relu",))
    generate_zoo(out, preset, show_progress=False)
    zoo = Zoo.open(out)
    runs = sorted(zoo.table["run_id"].astype(str).unique())
    splits = {"train": runs[2:], "val": runs[:1], "test": runs[1:2]}
    (group,), _ = choose_groups(zoo, splits, min_accuracy=0.0)
    entry, frames = run_task(
        group, zoo, tiny_encoder(), pairs=2, samples=2, decoder_steps=4, log=lambda m: None
    )
    assert set(entry["midpoint"]) == set(MIDPOINT_METHODS)
    assert all(math.isfinite(v) for v in entry["midpoint"].values())
    assert math.isfinite(entry["mean_code"]["accuracy"])
    assert {m: i["uses_data"] for m, i in entry["methods"].items()} == {
        m: method_info(m)["uses_data"] for m in MIDPOINT_METHODS
    }
    assert all(
        row["uses_data"] == method_info(row["method"])["uses_data"] for row in entry["curves"]
    )
    distill = entry["distill"]
    assert distill["steps"] == entry["decoder"]["steps"] == 4
    assert distill["students"] == entry["pairs"]
    assert {row["alpha"] for row in entry["curves"] if row["method"] == "distill"} == {0.5}
    assert not entry["decoder"]["stopped_by_time_limit"] and entry["decoder"]["time_limit"] == 0
    assert set(frames["curves"]["method"]) >= {"distill", "mean-code"}
