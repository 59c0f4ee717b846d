"""``weightspace train --objective class`` on a tiny class-target (inr-digits) zoo: the zoo's own
split (test rows never read), the class cross-entropy, and bench's class-head row."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from weightspace.nn.encoder import EncoderConfig
from weightspace.train import TrainConfig, train
from weightspace.training.classes import class_names, class_splits
from weightspace.training.config import MissingLabelError, TrainError
from weightspace.training.data import batches, load_data
from weightspace.zoo import Zoo
from weightspace.zoo.generate import generate_zoo
from weightspace.zoo.presets import get_preset
from weightspace.zoo.sweep import TrainSettings


@pytest.fixture(scope="module")
def class_zoo(tmp_path_factory: pytest.TempPathFactory):
    """60 digit INRs, 30 fitting steps, checkpoints at steps 15 and 30."""
    fit = TrainSettings(epochs=30, checkpoint_epochs=(15, 30), batch_size=64)
    preset = replace(get_preset("inr-digits"), runs=60, settings=fit)
    return generate_zoo(tmp_path_factory.mktemp("cls") / "zoo", preset, seed=0, show_progress=False)


def _config(zoo, out, **overrides) -> TrainConfig:
    base = dict(
        zoo=str(zoo.root),
        out=str(out),
        objective="class",
        branches="probe",
        probes=16,
        probe_lr_scale=0.01,
        batch_size=16,
        learning_rate=5e-3,
        epochs=12,
        patience=12,
        threads=1,
    )
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def trained(class_zoo, tmp_path_factory: pytest.TempPathFactory):
    return train(_config(class_zoo, tmp_path_factory.mktemp("enc")))


@pytest.fixture(scope="module")
def data(class_zoo, tmp_path_factory: pytest.TempPathFactory):
    config = _config(class_zoo, tmp_path_factory.mktemp("data"))
    return load_data(config, config.encoder, lambda what, done, total: None)


def _split_of(zoo: Zoo) -> dict[str, str]:
    table = zoo.table
    return dict(zip(table["checkpoint_id"].astype(str), table["split"].astype(str), strict=True))


def test_no_test_checkpoint_is_read_and_splits_follow_the_zoo(class_zoo, data) -> None:
    split = _split_of(class_zoo)
    assert "test" in set(split.values())  # the fixture has test rows to leak
    assert all(split[i] != "test" for i in data.ids)
    for part in ("train", "val"):
        assert {split[data.ids[i]] for i in data.index[part].tolist()} == {part}
    assert data.class_labels is not None and len(data.class_labels) == len(data.ids)
    table = class_zoo.table
    labels = dict(zip(table["checkpoint_id"].astype(str), table["label"], strict=True))
    assert [labels[i] for i in data.ids] == data.class_labels.tolist()


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    batch_size=st.integers(2, 64),
    by_architecture=st.booleans(),
)
def test_loader_yields_only_training_rows(
    class_zoo, data, seed, batch_size, by_architecture
) -> None:
    split = _split_of(class_zoo)
    generator = torch.Generator().manual_seed(seed)
    yielded = batches(
        data.index["train"], data.bank.spec_index, batch_size, by_architecture, generator
    )
    seen = torch.cat(yielded).tolist()
    assert sorted(seen) == sorted(data.index["train"].tolist())  # each training row once
    assert {split[data.ids[i]] for i in seen} == {"train"}


def test_class_loss_decreases_and_head_is_saved(trained) -> None:
    losses = [row["train_class_ce"] for row in trained.log]
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0] - 0.1
    assert trained.encoder.config.classes == tuple(str(i) for i in range(10))
    assert "val_class_top1" in trained.best_metrics
    assert "test_accuracy" not in trained.encoder.config.targets


def test_bench_scores_the_class_head_on_test_rows(class_zoo, trained) -> None:
    from weightspace.evaluate.classification import CLASS_HEAD, classification_section

    section = classification_section(
        class_zoo, ["weightspace"], seed=0, bootstrap=20, encoder=trained.out
    )
    rows = {row["method"]: row for row in section["results"]["rows"]}
    assert {"weightspace", CLASS_HEAD, "probing-coords"} <= set(rows)
    table = class_zoo.table
    last = table.groupby("run_id")["epoch"].transform("max") == table["epoch"]
    test = table[last & (table["split"] == "test")]
    predicted = trained.encoder.predict([class_zoo.graph(i) for i in test["checkpoint_id"]])
    expected = np.mean([int(c) for c in predicted["class"]] == test["label"].to_numpy())
    assert rows[CLASS_HEAD]["accuracy"] == pytest.approx(expected)
    assert rows[CLASS_HEAD]["head"] == {"kind": "own"}


def _fake_zoo(target: str = "class") -> SimpleNamespace:
    return SimpleNamespace(manifest={"target": target, "num_classes": 3}, root="zoo")


def _table(splits: list[str], runs: list[str] | None = None) -> pd.DataFrame:
    runs = runs or [f"r{i}" for i in range(len(splits))]
    return pd.DataFrame(
        {"run_id": runs, "split": splits, "label": [i % 3 for i in range(len(runs))]}
    )


def test_class_splits_refuse_bad_zoos() -> None:
    config = TrainConfig(zoo="zoo", out="out", objective="class")
    with pytest.raises(MissingLabelError, match="class-target"):
        class_splits(_fake_zoo("test_accuracy"), _table(["train", "test"]), config)
    with pytest.raises(MissingLabelError, match="'label'"):
        class_splits(_fake_zoo(), _table(["train", "test"]).drop(columns="label"), config)
    with pytest.raises(TrainError, match="several splits"):
        class_splits(_fake_zoo(), _table(["train", "test"], ["a", "a"]), config)
    with pytest.raises(TrainError, match="outside the 3 declared"):
        class_names(_fake_zoo(), pd.DataFrame({"label": [0, 3]}))


@settings(max_examples=25, deadline=None)
@given(
    splits=st.lists(st.sampled_from(["train", "test"]), min_size=3, max_size=40),
    seed=st.integers(0, 1000),
)
def test_validation_is_carved_from_train_without_val_rows(splits, seed) -> None:
    table = _table(splits)
    config = TrainConfig(zoo="zoo", out="out", objective="class", seed=seed)
    if splits.count("train") < 2:
        with pytest.raises(TrainError):
            class_splits(_fake_zoo(), table, config)
        return
    parts = class_splits(_fake_zoo(), table, config)
    zoo_split = dict(zip(table["run_id"], table["split"], strict=True))
    assert parts["val"] and parts["train"]
    assert all(zoo_split[r] == "train" for r in parts["train"] + parts["val"])
    assert not set(parts["train"]) & set(parts["val"])
    assert set(parts["test"]) == {r for r, s in zoo_split.items() if s == "test"}


def test_encoders_without_class_head_keep_their_identity() -> None:
    assert "classes" not in EncoderConfig().identity()
    assert EncoderConfig(classes=("0", "1")).identity()["classes"] == ["0", "1"]


def test_probe_learning_rate_scale_makes_its_own_group() -> None:
    from weightspace.nn.encoder import Encoder
    from weightspace.training.optim import make_optimizer

    encoder = Encoder(EncoderConfig(branches=("probe",), probe_domains=("2",), probe_classes=1))
    probe = {id(p) for p in encoder.probe_generator.parameters()}
    default = TrainConfig(zoo="z", out="o")
    optimizer, _ = make_optimizer(encoder, default, 10)
    assert len(optimizer.param_groups) == 2  # unchanged without a scale
    scaled = replace(default, probe_lr_scale=0.01)
    optimizer, _ = make_optimizer(encoder, scaled, 10)
    group = optimizer.param_groups[-1]
    assert {id(p) for p in group["params"]} == probe
    assert group["initial_lr"] == pytest.approx(0.01 * scaled.learning_rate)
    others = [p for g in optimizer.param_groups[:-1] for p in g["params"]]
    assert not probe & {id(p) for p in others}
