"""Zoo generation and the on-disk store: round trip, determinism, resume, refusal of new formats."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from weightspace.zoo import Zoo, ZooError, generate_zoo, get_preset
from weightspace.zoo.generate import plan_shards
from weightspace.zoo.store import FORMAT_VERSION, MANIFEST
from weightspace.zoo.sweep import TrainSettings

# library code (zoo generation) sets its own thread count; each test starts from one
pytestmark = pytest.mark.usefixtures("one_thread")


def _mini():
    """The tiny preset cut down further: 3 shards of 2 runs, 2 epochs."""
    return dataclasses.replace(
        get_preset("tiny"),
        runs=2,
        runs_per_shard=2,
        settings=TrainSettings(epochs=2, checkpoint_epochs=(0, 2), batch_size=32),
        archs=("mlp-w8-d1-relu", "cnn2d-c4-d3-bn-res-relu"),
    )


@pytest.fixture(scope="module")
def mini_zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return generate_zoo(tmp_path_factory.mktemp("zoo") / "mini", _mini(), show_progress=False)
    finally:
        torch.set_num_threads(previous)


def test_layout_and_table(mini_zoo: Zoo) -> None:
    root = mini_zoo.root
    manifest = json.loads((root / MANIFEST).read_text())
    assert manifest["format_version"] == FORMAT_VERSION and manifest["complete"]
    assert manifest["versions"]["torch"] == torch.__version__
    assert set(manifest["tasks"]) == {"digits", "wine"}
    assert len(list((root / "weights").glob("*.safetensors"))) == 3
    table = mini_zoo.table
    assert len(table) == 3 * 2 * 2  # shards × runs × checkpoint epochs
    for column in (
        "checkpoint_id",
        "run_id",
        "epoch",
        "task",
        "arch",
        "spec",
        "optimizer",
        "learning_rate",
        "label_noise",
        "train_loss",
        "val_accuracy",
        "test_accuracy",
    ):
        assert column in table.columns
    assert table["checkpoint_id"].is_unique
    assert table["test_accuracy"].between(0, 1).all()
    assert not list(root.rglob("*.tmp-*"))


def test_state_dict_spec_graph_and_model_agree(mini_zoo: Zoo) -> None:
    from weightspace.module import to_module

    task_inputs = {"digits": torch.randn(5, 1, 8, 8), "wine": torch.randn(5, 13)}
    for checkpoint_id in mini_zoo.table.groupby("arch")["checkpoint_id"].last():
        row = mini_zoo.row(checkpoint_id)
        spec, state = mini_zoo.spec(checkpoint_id), mini_zoo.state_dict(checkpoint_id)
        graph = mini_zoo.graph(checkpoint_id)
        assert graph.num_nodes > 0
        model = mini_zoo.model(checkpoint_id)
        x = task_inputs[row["task"]]
        if row["family"] == "mlp":
            x = x.flatten(1)
        torch.testing.assert_close(to_module(spec, state)(x), model(x), atol=1e-5, rtol=1e-5)


def test_dataset(mini_zoo: Zoo) -> None:
    dataset = mini_zoo.dataset(targets=("test_accuracy", "train_accuracy"))
    graph = dataset[0]
    assert graph.y.shape == (1, 2)
    assert graph.checkpoint_id == mini_zoo.ids[0]
    item = mini_zoo.dataset("state_dict")[1]
    assert set(item) == {"checkpoint_id", "spec", "state_dict", "y"}
    with pytest.raises(ZooError, match="no columns"):
        mini_zoo.dataset(targets=("nope",))


def test_info(mini_zoo: Zoo) -> None:
    info = mini_zoo.info()
    assert info["runs"] == 6 and info["checkpoints"] == 12
    assert info["tasks"] == {"digits": 8, "wine": 4}
    assert info["size_bytes"] > 0
    assert info["test_accuracy_quantiles"]["q00"] <= info["test_accuracy_quantiles"]["q100"]


def test_same_seed_same_zoo_and_resume(mini_zoo: Zoo, tmp_path: Path) -> None:
    preset = _mini()
    shards = plan_shards(preset, 0)

    class Stop(Exception):
        pass

    def stop_after_first(name: str) -> None:
        raise Stop(name)

    out = tmp_path / "resumed"
    with pytest.raises(Stop):
        generate_zoo(out, preset, show_progress=False, on_shard_done=stop_after_first)
    with pytest.raises(ZooError, match="unfinished"):
        Zoo.open(out)
    first = out / "weights" / f"{shards[0].name}.safetensors"
    stamp = first.stat().st_mtime_ns
    (out / "weights" / ".leftover.safetensors.tmp-x").write_bytes(b"half")  # a killed writer's
    zoo = generate_zoo(out, preset, show_progress=False)
    assert first.stat().st_mtime_ns == stamp, "a finished shard was trained again"
    assert not list(out.rglob("*.tmp-*"))

    # identical to the uninterrupted zoo: same rows, metrics and tensors
    columns = [c for c in mini_zoo.table.columns if c != "shard"]
    pd.testing.assert_frame_equal(zoo.table[columns], mini_zoo.table[columns])
    for checkpoint_id in zoo.ids:
        a, b = zoo.module_state_dict(checkpoint_id), mini_zoo.module_state_dict(checkpoint_id)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_other_config_in_same_directory_is_refused(mini_zoo: Zoo) -> None:
    with pytest.raises(ZooError, match="different zoo"):
        generate_zoo(mini_zoo.root, _mini(), seed=1, show_progress=False)


def test_zoo_of_other_random_streams_is_not_resumed(mini_zoo: Zoo, tmp_path: Path) -> None:
    manifest = json.loads((mini_zoo.root / MANIFEST).read_text())
    del manifest["config"]["streams_version"]  # as written before counter-based streams
    manifest["complete"] = False
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ZooError, match="random streams version 1"):
        generate_zoo(tmp_path, _mini(), show_progress=False)


def test_newer_format_is_refused(mini_zoo: Zoo, tmp_path: Path) -> None:
    manifest = json.loads((mini_zoo.root / MANIFEST).read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ZooError, match="newer than this weightspace supports"):
        Zoo.open(tmp_path)


def test_not_a_zoo(tmp_path: Path) -> None:
    with pytest.raises(ZooError, match="not a weightspace zoo"):
        Zoo.open(tmp_path)
    with pytest.raises(ZooError, match="no such zoo directory"):
        Zoo.open(tmp_path / "missing")


def test_unknown_names_list_valid_ones() -> None:
    from weightspace.zoo import UnknownNameError

    with pytest.raises(UnknownNameError, match="tiny.*small.*medium.*large"):
        get_preset("huge")
    with pytest.raises(UnknownNameError, match="digits"):
        plan_shards(get_preset("tiny").with_overrides(tasks=("imagenet",)), 0)
    with pytest.raises(ZooError, match="no architecture fits"):
        plan_shards(
            get_preset("tiny").with_overrides(tasks=("wine",), archs=("cnn2d-c4-d1-relu",)), 0
        )


def test_preset_sizes() -> None:
    from weightspace.zoo.generate import describe_preset

    small = describe_preset(get_preset("small"))
    assert 2000 <= small["checkpoints"] <= 8000
    assert {s.task for s in plan_shards(get_preset("small"), 0)} >= {"digits", "mnist1d", "wine"}
    assert 15_000 <= describe_preset(get_preset("medium"))["checkpoints"] <= 30_000
    assert describe_preset(get_preset("large"))["checkpoints"] >= 100_000


@pytest.mark.slow
def test_workers_give_the_same_zoo(mini_zoo: Zoo, tmp_path: Path) -> None:
    zoo = generate_zoo(tmp_path / "parallel", _mini(), workers=2, show_progress=False)
    columns = [c for c in mini_zoo.table.columns if c != "shard"]
    pd.testing.assert_frame_equal(zoo.table[columns], mini_zoo.table[columns])
