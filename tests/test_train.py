"""Training the encoder on a small synthetic zoo, resuming, and the train / embed commands."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from models import tiny_train_config
from weightspace.nn import Encoder
from weightspace.spec import mlp_spec
from weightspace.train import MissingLabelError, TrainConfig, TrainError, split_runs, train
from weightspace.zoo.store import write_manifest, write_shard, write_table

torch.set_num_threads(1)

TINY = tiny_train_config()


def make_synthetic_zoo(root: Path, runs: int = 40, epochs: int = 4, seed: int = 0, **labels):
    """Runs of two small MLP architectures whose "test accuracy" grows with the scale of the
    output layer (a property that survives canonicalisation), four checkpoints per run."""
    generator = torch.Generator().manual_seed(seed)
    specs = {"mlp-tanh": mlp_spec([6, 10, 8, 3], "tanh"), "mlp-relu": mlp_spec([6, 12, 3], "relu")}
    rows, tensors = [], {}
    for r in range(runs):
        arch = list(specs)[r % 2]
        spec = specs[arch]
        quality = float(torch.rand((), generator=generator))
        base = {k: torch.randn(s, generator=generator) for k, s in spec.param_shapes().items()}
        for e in range(epochs):
            level = quality * (e + 1) / epochs
            checkpoint_id = f"r{r:03d}-e{e}"
            for key, value in base.items():
                scale = 0.3 + 2.0 * level if key.startswith(spec.layers[-1].name) else 0.5
                noise = 0.02 * torch.randn(value.shape, generator=generator)
                tensors[f"{checkpoint_id}/{key}"] = (value * scale + noise).float()
            accuracy = 0.3 + 0.6 * level
            rows.append(
                {
                    "checkpoint_id": checkpoint_id,
                    "run_id": f"run{r:03d}",
                    "epoch": e,
                    "task": ["a", "b"][r % 2],
                    "arch": arch,
                    "spec": spec.to_json(),
                    "shard": "weights/shard-0.safetensors",
                    "weights_form": "spec",
                    "test_accuracy": accuracy if labels.get("accuracy", True) else float("nan"),
                    "train_accuracy": min(1.0, accuracy + 0.1 * level),
                }
            )
    write_shard(root / "weights" / "shard-0.safetensors", tensors, {})
    write_table(root / "checkpoints.parquet", pd.DataFrame(rows))
    write_manifest(root, {"kind": "synthetic", "complete": True, "seed": seed})
    return root


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    return make_synthetic_zoo(tmp_path_factory.mktemp("zoo"))


def _config(zoo: Path, out: Path, **kwargs) -> TrainConfig:
    defaults = dict(zoo=str(zoo), out=str(out), epochs=6, batch_size=16, encoder=TINY, patience=100)
    return TrainConfig(**{**defaults, **kwargs})


def test_split_is_by_run_and_deterministic(tmp_path) -> None:
    import weightspace.evaluate.splits

    assert split_runs is weightspace.evaluate.splits.split_runs  # the package's one splitter
    runs = [f"run{i}" for i in range(20) for _ in range(3)]
    a = split_runs(runs, 0.2, 0.2, seed=1)
    assert a == split_runs(runs, 0.2, 0.2, seed=1)
    assert sorted(a["train"] + a["val"] + a["test"]) == sorted(set(runs))
    assert len(a["val"]) == 4 and len(a["test"]) == 4
    two_runs = make_synthetic_zoo(tmp_path / "zoo", runs=2, epochs=2)
    with pytest.raises(TrainError, match="at least 3"):
        train(_config(two_runs, tmp_path / "enc"))


def test_training_lowers_the_loss_and_beats_an_untrained_encoder(zoo, tmp_path) -> None:
    config = _config(
        zoo, tmp_path / "enc", epochs=15, objective="both", learning_rate=5e-3, accuracy_weight=3
    )
    result = train(config)
    first, last = result.log[0], result.log[-1]
    assert last["train_loss"] < first["train_loss"]
    assert last["train_accuracy_mse"] < first["train_accuracy_mse"]

    # An untrained encoder with the same label statistics, scored on the same val runs.
    from weightspace.zoo import Zoo

    splits = json.loads((tmp_path / "enc" / "splits.json").read_text())
    opened = Zoo.open(zoo)
    table = opened.table[opened.table["run_id"].isin(splits["val"])]
    models = [(opened.spec(i), opened.state_dict(i)) for i in table["checkpoint_id"]]
    actual = table["test_accuracy"].to_numpy()
    torch.manual_seed(123)
    untrained = Encoder(result.encoder.config)
    from weightspace.evaluate.metrics import kendall_tau

    tau_trained = kendall_tau(actual, result.encoder.predict_accuracy(models))
    tau_untrained = kendall_tau(actual, untrained.predict_accuracy(models))
    assert tau_trained > 0.4
    assert tau_trained > tau_untrained + 0.2

    out = tmp_path / "enc"
    for name in ("encoder.safetensors", "config.json", "train_config.json", "log.csv"):
        assert (out / name).is_file()
    fingerprint = json.loads((out / "zoo_fingerprint.json").read_text())
    assert len(fingerprint["fingerprint"]) == 64
    log = pd.read_csv(out / "log.csv")
    assert len(log) == result.epochs_run and "val_accuracy_tau" in log.columns
    assert Encoder.load(out).fingerprint == result.encoder.fingerprint


def test_training_is_deterministic_and_resumable(zoo, tmp_path, monkeypatch) -> None:
    config = _config(zoo, tmp_path / "a", epochs=3, objective="contrastive", max_checkpoints=60)
    full = train(config)

    import weightspace.train as train_module

    calls = {"n": 0}
    original = train_module.write_log

    def interrupt_after_second_epoch(path, rows):
        original(path, rows)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "write_log", interrupt_after_second_epoch)
    resumed_config = _config(
        zoo, tmp_path / "b", epochs=3, objective="contrastive", max_checkpoints=60
    )
    with pytest.raises(KeyboardInterrupt):
        train(resumed_config)
    monkeypatch.setattr(train_module, "write_log", original)
    resumed = train(resumed_config)
    assert [r["epoch"] for r in resumed.log] == [1, 2, 3]
    assert resumed.encoder.fingerprint == full.encoder.fingerprint

    other = _config(zoo, tmp_path / "b", epochs=3, objective="contrastive", seed=1)
    with pytest.raises(TrainError, match="another configuration"):
        train(other)


def test_same_config_and_seed_give_identical_weights_without_a_time_limit(zoo, tmp_path) -> None:
    """Epochs bound a run: no time limit is needed for it to end, and its weights depend only on
    the config and seed (one thread), so the same command gives the same figures on any load."""
    assert TrainConfig().time_limit == 0  # the safety cap is off by default

    def run(out: str, seed: int = 0):
        config = _config(zoo, tmp_path / out, epochs=3, objective="both", max_checkpoints=60)
        return train(replace(config, seed=seed))

    first, second, other_seed = run("a"), run("b"), run("c", seed=1)
    assert first.epochs_run == second.epochs_run == 3 and first.stopped_by == "epochs"
    weights, again = first.encoder.state_dict(), second.encoder.state_dict()
    assert weights.keys() == again.keys()
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    drop = ("seconds",)  # the only wall-clock column of the log
    assert [{k: v for k, v in r.items() if k not in drop} for r in first.log] == [
        {k: v for k, v in r.items() if k not in drop} for r in second.log
    ]
    changed = other_seed.encoder.state_dict()
    assert not all(torch.equal(weights[k], changed[k]) for k in weights)


def test_missing_labels_are_reported(tmp_path) -> None:
    unlabelled = make_synthetic_zoo(tmp_path / "zoo", runs=6, epochs=2, accuracy=False)
    with pytest.raises(MissingLabelError, match="test_accuracy"):
        train(_config(unlabelled, tmp_path / "enc", objective="supervised"))
    result = train(_config(unlabelled, tmp_path / "enc2", objective="contrastive", epochs=1))
    assert result.encoder.config.targets == ()


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def _cli(args: list[str]) -> int:
    from weightspace.cli import main

    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli_train_and_embed(zoo, tmp_path, capsys) -> None:
    out = tmp_path / "enc"
    code = _cli(
        ["train", "--zoo", str(zoo), "--out", str(out), "--epochs", "1", "--batch-size", "32"]
        + ["--batch-by-architecture", "--finetune-steps", "3", "--function-weight", "0"]
    )
    assert code == 0, capsys.readouterr().err
    assert (out / "encoder.safetensors").is_file()
    written = json.loads((out / "train_config.json").read_text())
    assert written["batch_by_architecture"] is True and written["finetune_steps"] == 3
    assert written["function_weight"] == 0

    from safetensors.torch import save_file

    from weightspace.zoo import Zoo

    opened = Zoo.open(zoo)
    first = opened.ids[0]
    spec, state = opened.spec(first), opened.state_dict(first)
    checkpoint = tmp_path / "model.safetensors"
    save_file(state, str(checkpoint), metadata={"weightspace.spec": spec.to_json()})

    npy = tmp_path / "z.npy"
    code = _cli(
        [
            "embed",
            str(checkpoint),
            str(zoo),
            "--encoder",
            str(out),
            "--out",
            str(npy),
            "--spec",
            str(_write_spec(tmp_path, spec)),
        ]
    )
    assert code == 0, capsys.readouterr().err
    z = np.load(npy)
    assert z.shape == (1 + len(opened), Encoder.load(out).dim)
    np.testing.assert_allclose(z[0], z[1], rtol=1e-5, atol=1e-6)  # the file is the zoo's first

    parquet = tmp_path / "z.parquet"
    assert _cli(["embed", str(zoo), "--encoder", str(out), "--out", str(parquet)]) == 0
    table = pd.read_parquet(parquet)
    assert list(table["id"]) == opened.ids
    np.testing.assert_allclose(np.stack(table["z"].to_numpy()), z[1:], rtol=1e-6)


def _write_spec(tmp_path: Path, spec) -> Path:
    path = tmp_path / "spec.json"
    path.write_text(spec.to_json())
    return path


def test_cli_errors_exit_nonzero(zoo, tmp_path, capsys) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{")
    code = _cli(["embed", str(zoo), "--encoder", str(bad), "--out", str(tmp_path / "z.npy")])
    assert code == 1
    assert "config.json" in capsys.readouterr().err

    unlabelled = make_synthetic_zoo(tmp_path / "zoo", runs=6, epochs=2, accuracy=False)
    code = _cli(
        [
            "train",
            "--zoo",
            str(unlabelled),
            "--out",
            str(tmp_path / "e"),
            "--objective",
            "supervised",
        ]
    )
    assert code == 1
    assert "test_accuracy" in capsys.readouterr().err

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    code = _cli(["embed", str(garbage), "--encoder", str(bad), "--out", str(tmp_path / "z.npy")])
    assert code == 1


@pytest.mark.slow
def test_train_and_embed_a_generated_tiny_zoo(tmp_path) -> None:
    """End to end on a real zoo: `zoo generate --preset tiny`, `train`, `embed`."""
    from weightspace.zoo import Zoo, generate_zoo, get_preset

    generate_zoo(tmp_path / "zoo", get_preset("tiny"))
    out = tmp_path / "enc"
    assert _cli(["train", "--zoo", str(tmp_path / "zoo"), "--out", str(out), "--epochs", "2"]) == 0
    assert (
        _cli(
            [
                "embed",
                str(tmp_path / "zoo"),
                "--encoder",
                str(out),
                "--out",
                str(tmp_path / "z.npy"),
            ]
        )
        == 0
    )
    z = np.load(tmp_path / "z.npy")
    assert z.shape[0] == len(Zoo.open(tmp_path / "zoo")) and np.isfinite(z).all()


def test_time_limit_ends_the_epoch_in_progress(zoo, tmp_path) -> None:
    result = train(_config(zoo, tmp_path / "enc", epochs=5, batch_size=4, time_limit=1e-9))
    assert result.epochs_run == 1
    row = result.log[0]
    assert row["partial"] == 1.0
    # The limit is checked before each step: the first epoch stops before its first step.
    assert row["step"] == 0 < len(_train_checkpoints(tmp_path / "enc", zoo))
    assert pd.read_csv(tmp_path / "enc" / "log.csv")["partial"].tolist() == [1.0]
    assert result.stopped_by == "time-limit"
    with pytest.raises(TrainError, match="time_limit"):
        _config(zoo, tmp_path / "x", time_limit=-1.0)


def _train_checkpoints(encoder_dir: Path, zoo: Path) -> list[str]:
    """The training checkpoints of an encoder directory's split (one step would take 4)."""
    from weightspace.zoo import Zoo

    splits = json.loads((encoder_dir / "splits.json").read_text())
    table = Zoo.open(zoo).table
    return list(table[table["run_id"].isin(splits["train"])]["checkpoint_id"])


# ---------------------------------------------------------------------------------------------
# branches (the learned-probe branch)
# ---------------------------------------------------------------------------------------------
def test_branches_auto_probe_and_graph(zoo, tmp_path, capsys) -> None:
    result = train(_config(zoo, tmp_path / "auto", epochs=1, probes=4, max_checkpoints=60))
    config = result.encoder.config
    assert config.branches == ("graph", "probe")  # every synthetic architecture runs
    assert config.probes == 4 and config.probe_domains == ("6",) and config.probe_classes == 3
    assert np.isfinite(result.log[0]["train_loss"])
    # The probes are trained: the generator moved away from its initialisation.
    torch.manual_seed(0)
    initial = Encoder(config)
    moved = [
        float((a - b).detach().abs().max())
        for a, b in zip(
            result.encoder.probe_generator.parameters(),
            initial.probe_generator.parameters(),
            strict=True,
        )
    ]
    assert max(moved) > 0

    graph_only = train(_config(zoo, tmp_path / "graph", epochs=1, branches="graph"))
    assert graph_only.encoder.config.branches == ("graph",)
    assert graph_only.encoder.fingerprint != result.encoder.fingerprint
    with pytest.raises(TrainError, match="branches"):
        TrainConfig(branches="graph,weights")

    out = tmp_path / "cli"
    code = _cli(
        ["train", "--zoo", str(zoo), "--out", str(out), "--epochs", "1", "--max-checkpoints"]
        + ["40", "--branches", "probe", "--probes", "3"]
    )
    assert code == 0, capsys.readouterr().err
    loaded = Encoder.load(out)
    assert loaded.config.branches == ("probe",) and loaded.config.probes == 3
    assert _cli(["train", "--zoo", str(zoo), "--out", str(out), "--branches", "nope"]) == 1
    assert "branches" in capsys.readouterr().err


def test_auto_branches_fall_back_to_graph_when_an_architecture_cannot_run(monkeypatch) -> None:
    import weightspace.train as train_module

    specs = [mlp_spec([6, 10, 3], "tanh"), mlp_spec([4, 5, 2], "relu")]
    branches, domains, classes = train_module.resolve_branches(TrainConfig(), specs)
    assert branches == ("graph", "probe") and domains == ("4", "6") and classes == 3
    import weightspace.training.data

    monkeypatch.setattr(weightspace.training.data, "is_runnable", lambda spec: spec is not specs[1])
    assert train_module.resolve_branches(TrainConfig(), specs)[0] == ("graph",)
    # Asked for explicitly, the probe branch stays (unrunnable models fall back one by one).
    explicit = TrainConfig(branches="graph,probe")
    assert train_module.resolve_branches(explicit, specs)[0] == ("graph", "probe")
