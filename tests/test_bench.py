"""bench and report: an end-to-end run on the tiny zoo, report cells computed from results."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from models import tiny_encoder
from weightspace.bench import BenchConfig, BenchError, run_bench
from weightspace.predict import conformal_halfwidth
from weightspace.report import format_cell, summarise, write_report


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from weightspace.zoo import generate_zoo
    from weightspace.zoo.presets import get_preset

    out = tmp_path_factory.mktemp("zoo") / "tiny"
    generate_zoo(out, get_preset("tiny"), show_progress=False)
    return out


def test_summary_statistics_and_cells() -> None:
    assert summarise([1.0, 3.0]) == (2.0, 1.0, 2)
    assert summarise([float("nan"), 2.0])[2] == 1
    assert math.isnan(summarise([])[0])
    assert format_cell([0.5]) == "0.500"
    assert format_cell([0.4, 0.6]) == "0.500 ± 0.100"
    assert format_cell([float("nan")]) == "–"


def test_conformal_halfwidth_hand_computed() -> None:
    residuals = np.array([0.05, 0.01, 0.03, 0.02, 0.04, 0.10, 0.07, 0.06, 0.08, 0.09])
    # n = 10, coverage 0.8: rank ceil(11 * 0.8) = 9 -> 9th smallest = 0.09
    assert conformal_halfwidth(residuals, 0.8) == pytest.approx(0.09)
    assert conformal_halfwidth(residuals, 0.95) == math.inf  # rank 11 > n
    assert conformal_halfwidth(np.array([]), 0.5) == math.inf


def test_report_is_computed_from_results(tmp_path: Path) -> None:
    results = {
        "zoo": {
            "name": "z",
            "path": "z",
            "checkpoints": 10,
            "runs": 5,
            "architectures": 1,
            "tasks": ["wine"],
        },
        "config": {"seeds": 2},
        "encoder": {"source": "test"},
        "prediction": {
            "held-out runs": {
                "weightspace": [{"kendall_tau": 0.5}, {"kendall_tau": 0.7}],
                "statnn": [{"kendall_tau": 0.65}, {"kendall_tau": 0.75}],
            }
        },
        "retrieval": {"S": {"weightspace": [{"recall@1": 1.0}], "flat-mlp": [{"recall@1": 0.2}]}},
        "skipped": {"nfn-np": "one fixed architecture only"},
        "notes": [],
    }
    text = write_report(results, tmp_path).read_text()
    assert "| **weightspace** (ours) | 0.600 ± 0.100 |" in text
    assert "the baseline `statnn` beats `weightspace` on Kendall τ (0.700 vs 0.600)" in text
    assert "`nfn-np`: one fixed architecture only" in text
    assert (tmp_path / "recall_at_k.png").exists()


def test_bench_end_to_end_on_the_tiny_zoo(tiny_zoo: Path, tmp_path: Path) -> None:
    config = BenchConfig(
        zoo=str(tiny_zoo),
        out=str(tmp_path / "bench"),
        seeds=1,
        methods=("flat-mlp", "statnn"),
        held_out=("tasks",),
        num_queries=10,
        synthesis=False,
    )
    results = run_bench(config, log=lambda message: None)
    saved = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert saved["zoo"]["checkpoints"] == results["zoo"]["checkpoints"] > 0
    for method in ("flat-mlp", "statnn"):
        assert len(saved["prediction"]["held-out runs"][method]) == 1
        assert 0 <= saved["retrieval"]["S"][method][0]["recall@1"] <= 1
    assert any(name.startswith("held-out task") for name in saved["prediction"])
    assert (tmp_path / "bench" / "report.md").read_text().startswith("# weightspace benchmark")


def test_bench_refuses_unknown_methods(tiny_zoo: Path, tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="unknown methods.*statnn"):
        run_bench(BenchConfig(zoo=str(tiny_zoo), out=str(tmp_path), methods=("magic",)))


# ---------------------------------------------------------------------------------------------
# the synthesis section
# ---------------------------------------------------------------------------------------------
def _tiny_splits(tiny_zoo: Path) -> dict[str, list[str]]:
    """Two held-out runs in every (task, arch) group of the tiny zoo, the rest for training."""
    from weightspace.zoo import Zoo

    table = Zoo.open(tiny_zoo).table
    runs = table.drop_duplicates("run_id").sort_values("run_id")
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for _, group in runs.groupby(["task", "arch"]):
        ids = list(group["run_id"].astype(str))
        splits["val"].append(ids[0])
        splits["test"].append(ids[1])
        splits["train"] += ids[2:]
    return splits


def test_synthesis_section_covers_every_task(tiny_zoo: Path, tmp_path: Path) -> None:
    from weightspace.synthesis.benchmark import MIDPOINT_METHODS, run_section
    from weightspace.zoo import Zoo

    zoo = Zoo.open(tiny_zoo)
    section = run_section(
        zoo,
        tiny_encoder(),
        _tiny_splits(tiny_zoo),
        tmp_path,
        min_accuracy=0.0,
        pairs=3,
        samples=4,
        decoder_steps=6,
        decoder_time_limit=0.0,
        log=lambda message: None,
    )
    tasks = sorted(zoo.table["task"].astype(str).unique())
    assert sorted(section["tasks"]) == tasks and not section["skipped"]
    archs = dict(zip(zoo.table["task"].astype(str), zoo.table["arch"].astype(str), strict=True))
    for task, entry in section["tasks"].items():
        assert (entry["task"], entry["arch"] in set(zoo.table["arch"])) == (task, True)
        assert archs  # every task picked one of its own architectures:
        assert entry["arch"] in set(zoo.table.loc[zoo.table["task"] == task, "arch"])
        # two held-out models per group: one pair only, reported as fewer than asked for
        assert entry["pairs"] == 1 and entry["pairs_requested"] == 3
        assert set(entry["midpoint"]) == set(MIDPOINT_METHODS)
        assert all(0.0 <= v <= 1.0 for v in entry["midpoint"].values())
        alphas = {row["alpha"] for row in entry["curves"]}
        assert alphas == {0.0, 0.25, 0.5, 0.75, 1.0}
        assert entry["decoder"]["steps"] == 6 and entry["decoder"]["seconds"] > 0
        assert entry["reconstruction"]["models"] == 2
        assert 0.0 <= entry["reconstruction"]["agreement"] <= 1.0
        assert entry["sampling"]["samples"] == 4
        assert set(entry["goals"]) >= {"reconstruction_faithful", "samples_beat_noise"}
        assert entry["seconds"]["total"] > 0
    assert [row["task"] for row in section["summary"]] == list(section["tasks"])
    for name in section["plots"]:
        assert (tmp_path / name).is_file()
    assert "merge_curves.png" in section["plots"]
    json.dumps(section)  # JSON-able as it stands
    from weightspace.report import synthesis_lines

    text = "\n".join(synthesis_lines(section))
    assert "fewer than the 3 pairs" in text
    for task in tasks:
        assert f"### {task} / " in text


def test_synthesis_architecture_choice_and_refusals(tiny_zoo: Path) -> None:
    from weightspace.synthesis import SynthesisError
    from weightspace.synthesis.benchmark import choose_groups
    from weightspace.zoo import Zoo

    zoo = Zoo.open(tiny_zoo)
    splits = _tiny_splits(tiny_zoo)
    groups, skipped = choose_groups(
        zoo, splits, tasks=("wine",), archs={"wine": "mlp-w8-d1-relu"}, min_accuracy=0.0
    )
    assert [(g.task, g.arch, g.how) for g in groups] == [("wine", "mlp-w8-d1-relu", "given")]
    assert len(groups[0].held_out) == 2 and not skipped
    _, skipped = choose_groups(zoo, splits, archs={"wine": "cnn2d-c4-d2-relu"})
    assert "no cnn2d-c4-d2-relu models on wine" in skipped["wine"]
    with pytest.raises(SynthesisError, match="no task"):
        choose_groups(zoo, splits, tasks=("imagenet",))


def test_bench_sections_are_checked(tiny_zoo: Path, tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="valid: runs, held-out, synthesis"):
        run_bench(BenchConfig(zoo=str(tiny_zoo), out=str(tmp_path), only=("magic",)))
    with pytest.raises(BenchError, match="cannot run the synthesis section"):
        run_bench(BenchConfig(zoo=str(tiny_zoo), out=str(tmp_path), only=("synthesis",)))


def test_merge_curves_match_the_merge_registry(tiny_zoo: Path) -> None:
    """Caching (one weight matching per pair, one batched decode) changes no model."""
    import torch

    from weightspace.synthesis import merge
    from weightspace.synthesis.decoder import DecoderConfig, Synthesizer, fit_decoder, zoo_examples
    from weightspace.synthesis.evaluate import merge_curves, merge_pairs, predict, task_split
    from weightspace.zoo import Zoo

    zoo = Zoo.open(tiny_zoo)
    encoder = tiny_encoder()
    pairs = merge_pairs(zoo, pairs_per_group=1, tasks=["wine"]).head(1)
    examples = zoo_examples(zoo, tasks=["wine"])
    synth = Synthesizer(encoder, fit_decoder(encoder, examples, DecoderConfig(steps=3, hidden=8)))
    table = {pairs["id_a"][0]: torch.as_tensor(encoder.embed([zoo.graph(pairs["id_a"][0])]))[0]}
    curves = merge_curves(
        zoo, pairs, methods=["rebasin", "embedding"], synthesizer=synth, embeddings=table
    )
    a, b = pairs["id_a"][0], pairs["id_b"][0]
    spec = zoo.spec(a)
    x, y = task_split("wine", spec)
    for row in curves[curves["method"] != "endpoints"].itertuples(index=False):
        merged = merge(
            row.method, spec, zoo.state_dict(a), spec, zoo.state_dict(b), row.alpha,
            synthesizer=synth,
        )  # fmt: skip
        accuracy = float((predict(spec, merged.state_dict, x) == y).float().mean())
        assert row.accuracy == pytest.approx(accuracy, abs=1e-6), (row.method, row.alpha)


@pytest.mark.slow
def test_bench_with_synthesis_then_only_synthesis(tiny_zoo: Path, tmp_path: Path) -> None:
    """The whole path: bench trains the seed-0 encoder, synthesis reuses it; `only` updates."""
    common = {"synthesis_min_accuracy": 0.0, "decoder_time_limit": 2.0, "synthesis_samples": 4}
    config = BenchConfig(
        zoo=str(tiny_zoo),
        out=str(tmp_path),
        seeds=1,
        methods=("weightspace",),
        held_out=(),
        train_epochs=1,
        train_time_limit=10,
        num_queries=5,
        synthesis_pairs=3,
        **common,
    )
    first = run_bench(config, log=lambda message: None)
    assert "held-out runs" in first["prediction"]
    assert first["synthesis"]["tasks"] or first["skipped"]
    run_bench(
        BenchConfig(
            zoo=str(tiny_zoo), out=str(tmp_path), only=("synthesis",), synthesis_pairs=2, **common
        ),
        log=lambda message: None,
    )
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["updated_sections"] == ["synthesis"]
    assert saved["prediction"]["held-out runs"] == first["prediction"]["held-out runs"]
    assert all(e["pairs_requested"] == 2 for e in saved["synthesis"]["tasks"].values())
    assert "## Synthesis" in (tmp_path / "report.md").read_text()


def test_reconstruction_metrics_of_a_bare_decoder_read_the_code_table(tiny_zoo: Path) -> None:
    """A decoder without its encoder gives the same rows as the encoder + decoder pair when the
    table holds the encoder's embeddings; a checkpoint missing from the table is refused."""
    import torch

    from weightspace.synthesis import SynthesisError
    from weightspace.synthesis.decoder import DecoderConfig, Synthesizer, fit_decoder, zoo_examples
    from weightspace.synthesis.evaluate import reconstruction_metrics
    from weightspace.zoo import Zoo

    zoo = Zoo.open(tiny_zoo)
    encoder = tiny_encoder()
    examples = zoo_examples(zoo, tasks=["wine"])
    decoder = fit_decoder(encoder, examples, DecoderConfig(steps=3, hidden=8))
    ids = [str(c) for c in zoo.table[zoo.table["task"] == "wine"]["checkpoint_id"][:3]]
    z = torch.as_tensor(encoder.embed([zoo.graph(c) for c in ids]))
    table = dict(zip(ids, z, strict=True))
    paired = reconstruction_metrics(Synthesizer(encoder, decoder), zoo, ids, embeddings=table)
    bare = reconstruction_metrics(decoder, zoo, ids, embeddings=table)
    assert len(bare) == 3
    assert bare.drop(columns="id").equals(paired.drop(columns="id"))
    with pytest.raises(SynthesisError, match="missing"):
        reconstruction_metrics(decoder, zoo, ids, embeddings={ids[0]: z[0]})
