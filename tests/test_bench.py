"""bench: the loop over methods × protocols on tiny zoos, robust to what a zoo lacks; the CLI."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from models import tiny_encoder
from weightspace.baselines import BaselineError
from weightspace.bench import BenchConfig, BenchError, run_bench
from weightspace.evaluate.api import EMBED, MIXED_ARCHITECTURES, PREDICT, ModelSet
from weightspace.evaluate.results import Results
from weightspace.graph import to_graph
from weightspace.predict import conformal_halfwidth


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from weightspace.zoo import generate_zoo
    from weightspace.zoo.presets import get_preset

    out = tmp_path_factory.mktemp("zoo") / "tiny"
    generate_zoo(out, get_preset("tiny"), show_progress=False)
    return out


def test_conformal_halfwidth_hand_computed() -> None:
    residuals = np.array([0.05, 0.01, 0.03, 0.02, 0.04, 0.10, 0.07, 0.06, 0.08, 0.09])
    # n = 10, coverage 0.8: rank ceil(11 * 0.8) = 9 -> 9th smallest = 0.09
    assert conformal_halfwidth(residuals, 0.8) == pytest.approx(0.09)
    assert conformal_halfwidth(residuals, 0.95) == math.inf  # rank 11 > n
    assert conformal_halfwidth(np.array([]), 0.5) == math.inf


FAST = {"seeds": 1, "num_queries": 3, "synthesis": False, "tune": False}


def test_bench_end_to_end_on_the_tiny_zoo(tiny_zoo: Path, tmp_path: Path) -> None:
    config = BenchConfig(
        zoo=str(tiny_zoo),
        out=str(tmp_path / "bench"),
        methods=("metadata", "statnn", "statnn+canon"),
        held_out=("tasks", "architectures"),
        retrieval=("S",),
        **FAST,
    )
    results = run_bench(config, log=lambda message: None)
    saved = Results.load(tmp_path / "bench" / "results.json")
    assert saved.zoo.checkpoints == results.zoo.checkpoints > 0
    runs = saved.prediction["held-out runs"]
    assert set(runs.methods) == {"metadata", "statnn", "statnn+canon"}
    for scores in runs.methods.values():
        (score,) = scores
        assert score.coverage == 1.0 and score.common["n"] == runs.common_size[0] > 0
        assert -1 <= score.common["within_group_tau"] <= 1
    # capabilities decide retrieval: metadata predicts only; the canonical baseline is invariant
    assert "metadata" not in saved.retrieval["S"]
    assert "no embedding" in saved.skipped["metadata retrieval"]
    assert saved.retrieval["S"]["statnn+canon"][0].metrics["recall@1"] == pytest.approx(1.0)
    assert any(name.startswith("held-out task") for name in saved.prediction)
    assert "held-out architectures" in saved.prediction
    text = (tmp_path / "bench" / "report.md").read_text()
    assert text.startswith("# weightspace benchmark") and "within-group τ" in text


class _FixedArchitecture:
    """A stand-in for NFN: one architecture per fit; refuses CNNs; predicts the epoch."""

    name = "fixed"
    capabilities = frozenset({EMBED, PREDICT})

    def fit(self, models: ModelSet, targets: np.ndarray | None) -> _FixedArchitecture:
        if any(a.startswith("cnn") for a in models.architectures()):
            raise BaselineError("convolutions are not supported")
        return self

    def embed(self, models: ModelSet) -> np.ndarray:
        return np.zeros((len(models), 2))

    def predict_accuracy(self, models: ModelSet) -> np.ndarray:
        return models.column("epoch").astype(float)


class _Broken(_FixedArchitecture):
    name = "broken"
    capabilities = frozenset({EMBED, PREDICT, MIXED_ARCHITECTURES})

    def fit(self, models: ModelSet, targets: np.ndarray | None) -> _Broken:
        raise ValueError("a bug inside a method")


def _synthetic_models(runs: int) -> ModelSet:
    from models import build, make_state_dict

    rows, graphs = [], []
    for r in range(runs):
        kind = "mlp" if r % 2 else "cnn1d"
        spec = build(kind, "relu")
        for epoch in (0, 1, 2, 3, 4, 5):
            graphs.append(to_graph(spec, make_state_dict(spec, seed=r * 10 + epoch)))
            rows.append(
                {
                    "checkpoint_id": f"r{r}e{epoch}",
                    "run_id": f"r{r}",
                    "task": "wine",
                    "arch": kind,
                    "epoch": epoch,
                    "test_accuracy": 0.3 + 0.1 * epoch + 0.01 * r,
                }
            )
    return ModelSet(graphs, pd.DataFrame(rows))


def test_methods_are_wrapped_and_reported_by_capability(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No per-method code: a fixed-architecture method is fitted per architecture and its
    refused architecture shows as coverage; a method that crashes is reported, not lost."""
    import weightspace.evaluate.methods as methods
    from weightspace.bench import RUNS
    from weightspace.evaluate.comparison import fit_and_score
    from weightspace.evaluate.results import ZooSummary

    monkeypatch.setitem(methods._FACTORIES, "fixed", lambda seed, config: _FixedArchitecture())
    monkeypatch.setitem(methods._FACTORIES, "broken", lambda seed, config: _Broken())
    train, test = _synthetic_models(8), _synthetic_models(4)
    results = Results(config={}, zoo=ZooSummary("z", "z", 0, 0, [], None))
    retrievable, _ = fit_and_score(
        ("fixed", "broken", "metadata"),
        RUNS,
        0,
        train,
        test,
        methods.MethodConfig(),
        results,
        log=lambda message: None,
    )
    (fixed,) = results.prediction[RUNS].methods["fixed"]
    assert fixed.coverage == pytest.approx(0.5)
    assert "convolutions are not supported" in fixed.refused["cnn1d@wine"]
    assert fixed.own["n"] == len(test) / 2
    assert "ValueError: a bug inside a method" in results.skipped[f"broken ({RUNS})"]
    assert "not comparable across architectures" in results.skipped["fixed retrieval"]
    assert retrievable == {}  # metadata predicts only; fixed is per architecture
    assert results.prediction[RUNS].common_size == [len(test) // 2]


@pytest.fixture(scope="module")
def one_arch_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The most common user zoo: one architecture, one task, swept."""
    from dataclasses import replace

    from weightspace.zoo import generate_zoo
    from weightspace.zoo.presets import get_preset

    out = tmp_path_factory.mktemp("zoo") / "one-arch"
    preset = replace(get_preset("tiny"), tasks=("wine",), archs=("mlp-w8-d1-relu",), runs=8)
    generate_zoo(out, preset, show_progress=False)
    return out


def test_a_one_architecture_zoo_runs_with_the_defaults(one_arch_zoo: Path, tmp_path: Path) -> None:
    config = BenchConfig(
        zoo=str(one_arch_zoo),
        out=str(tmp_path),
        methods=("metadata", "statnn"),
        retrieval=("S",),
        **FAST,
    )
    run_bench(config, log=lambda message: None)
    saved = Results.load(tmp_path / "results.json")
    assert set(saved.prediction) == {"held-out runs"}
    assert "at least 2" in saved.skipped["held-out architectures"]
    assert "single task" in saved.skipped["held-out task"]
    text = (tmp_path / "report.md").read_text()
    assert "held-out architectures" in text and "single task" in text


def test_a_zoo_without_epochs_or_tasks_skips_what_needs_them(
    one_arch_zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import weightspace.bench.runner as runner

    original = runner.zoo_table
    monkeypatch.setattr(
        runner, "zoo_table", lambda zoo: original(zoo).drop(columns=["epoch", "task"])
    )
    config = BenchConfig(
        zoo=str(one_arch_zoo), out=str(tmp_path), methods=("statnn",), retrieval=("S", "F"), **FAST
    )
    run_bench(config, log=lambda message: None)
    saved = Results.load(tmp_path / "results.json")
    runs = saved.prediction["held-out runs"]
    assert "no epoch column" in runs.skipped_metrics["within_group_tau"]
    assert "no task column" in runs.skipped_metrics["per_task"]
    (statnn,) = runs.methods["statnn"]
    assert statnn.common["n"] > 0 and math.isfinite(statnn.common["mae"])  # the rest still runs
    assert "no task column" in saved.skipped["retrieval F"]
    assert "no task column" in saved.skipped["held-out task"]
    assert (
        "`within_group_tau` not computed: the zoo has no epoch column"
        in (tmp_path / "report.md").read_text()
    )


def _saved_encoder(directory: Path) -> str:
    tiny_encoder().save(directory)
    return str(directory)


def test_one_given_encoder_gets_a_bootstrap_spread_several_get_seeds(
    tiny_zoo: Path, tmp_path: Path
) -> None:
    a, b = _saved_encoder(tmp_path / "a"), _saved_encoder(tmp_path / "b")
    common = {**FAST, "methods": ("weightspace", "metadata"), "retrieval": (), "held_out": ()}
    one = run_bench(
        BenchConfig(
            zoo=str(tiny_zoo), out=str(tmp_path / "one"), encoder=a, bootstrap=10, **common
        ),
        log=lambda message: None,
    )
    assert one.spread == "bootstrap"
    ours = one.prediction["held-out runs"].methods["weightspace"][0]
    assert set(ours.bootstrap_std) >= {"within_group_tau", "final_tau", "kendall_tau"}
    assert any("bootstrap" in note for note in one.notes)
    assert any("transfer" in note for note in one.notes)  # not trained on this zoo
    several = run_bench(
        BenchConfig(zoo=str(tiny_zoo), out=str(tmp_path / "two"), encoder=f"{a},{b}", **common),
        log=lambda message: None,
    )
    assert several.spread == "seeds"
    scores = several.prediction["held-out runs"].methods["weightspace"]
    assert [s.seed for s in scores] == [0, 1] and scores[0].bootstrap_std == {}


def test_only_reruns_some_sections_and_keeps_the_rest(tiny_zoo: Path, tmp_path: Path) -> None:
    common = {**FAST, "zoo": str(tiny_zoo), "out": str(tmp_path), "retrieval": ()}
    first = run_bench(
        BenchConfig(methods=("metadata",), held_out=("tasks",), **common), log=lambda m: None
    )
    run_bench(
        BenchConfig(methods=("statnn",), held_out=("tasks",), only=("held-out",), **common),
        log=lambda m: None,
    )
    saved = Results.load(tmp_path / "results.json")
    assert saved.updated_sections == ["held-out"]
    runs = saved.prediction["held-out runs"]
    kept = json.dumps(asdict(runs))  # NaN-safe comparison: NaN is written "NaN"
    assert kept == json.dumps(asdict(first.prediction["held-out runs"]))  # kept as it was
    task = next(name for name in saved.prediction if name.startswith("held-out task"))
    assert set(saved.prediction[task].methods) == {"statnn"}  # rerun with the new methods


def test_a_late_failure_keeps_the_sections_before_it(
    tiny_zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import weightspace.bench.runner as runner

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed late in the run")

    monkeypatch.setattr(runner, "held_out_section", crash)
    config = BenchConfig(
        zoo=str(tiny_zoo), out=str(tmp_path), methods=("metadata",), retrieval=(), **FAST
    )
    with pytest.raises(RuntimeError, match="killed late"):
        run_bench(config, log=lambda message: None)
    saved = Results.load(tmp_path / "results.json")
    assert saved.prediction["held-out runs"].methods["metadata"][0].common["n"] > 0


def test_bench_refuses_unknown_methods_and_sections(tiny_zoo: Path, tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="unknown methods.*statnn"):
        run_bench(BenchConfig(zoo=str(tiny_zoo), out=str(tmp_path), methods=("magic",)))
    with pytest.raises(BenchError, match="unknown methods"):
        run_bench(BenchConfig(zoo=str(tiny_zoo), out=str(tmp_path), methods=("magic+canon",)))
    with pytest.raises(BenchError, match="valid: S, L, F"):
        run_bench(BenchConfig(zoo=str(tiny_zoo), out=str(tmp_path), retrieval=("X",)))


def test_cli_takes_several_encoders_and_reports_errors_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import weightspace.bench as bench
    from weightspace.cli import main

    seen = []
    monkeypatch.setattr(bench, "run_bench", lambda config, log: seen.append(config))
    args = ["bench", "--zoo", str(tmp_path), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--encoder", "e1,e2", "--encoder", "e3", "--epochs", "3"])
    assert exit_info.value.code == 0
    assert seen[0].encoders == ["e1", "e2", "e3"] and seen[0].train_epochs == 3
    assert seen[0].train_time_limit == 0.0  # time is only a safety cap, off by default
    monkeypatch.undo()
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--only", "magic"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "valid: runs, held-out, synthesis" in err and "Traceback" not in err


def test_predict_command_predicts_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from models import build, make_state_dict
    from weightspace.cli import main
    from weightspace.ingest import save_checkpoint

    spec = build("mlp", "relu")
    save_checkpoint(
        tmp_path / "model.safetensors", spec, make_state_dict(spec, dtype=torch.float32)
    )
    encoder = _saved_encoder(tmp_path / "encoder")
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(tmp_path / "model.safetensors"), "--encoder", encoder, "--json"])
    assert exit_info.value.code == 0
    result = json.loads(capsys.readouterr().out)
    assert math.isfinite(result["predicted_test_accuracy"])
    assert result["interval"] is None  # this encoder has no zoo to calibrate on
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(tmp_path / "bad.safetensors"), "--encoder", encoder])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "bad.safetensors" in err and "Traceback" not in err


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
    assert "held-out runs" in first.prediction
    assert (first.synthesis and first.synthesis["tasks"]) or first.skipped
    run_bench(
        BenchConfig(
            zoo=str(tiny_zoo), out=str(tmp_path), only=("synthesis",), synthesis_pairs=2, **common
        ),
        log=lambda message: None,
    )
    saved = Results.load(tmp_path / "results.json")
    assert saved.updated_sections == ["synthesis"]
    assert json.dumps(asdict(saved.prediction["held-out runs"])) == json.dumps(
        asdict(first.prediction["held-out runs"])
    )
    assert all(e["pairs_requested"] == 2 for e in saved.synthesis["tasks"].values())
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
