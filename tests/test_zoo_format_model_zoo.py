"""``zoo import --format model-zoo``: small synthetic releases in the Model Zoos layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from weightspace.cli import main
from weightspace.module import to_module
from weightspace.zoo.formats import ReleaseError, import_release
from weightspace.zoo.formats.examples import write_model_zoo_release
from weightspace.zoo.formats.model_zoo import run_split
from weightspace.zoo.store import Zoo

torch.set_num_threads(1)


def _no_leftovers(tmp_path: Path, out: Path) -> None:
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize(
    ("model_type", "nlin", "dropout", "side"),
    [("CNN", "tanh", 0.0, 28), ("CNN", "leakyrelu", 0.2, 28), ("CNN3", "gelu", 0.1, 32)],
)
def test_imported_models_compute_the_published_network(
    tmp_path: Path, model_type: str, nlin: str, dropout: float, side: int
) -> None:
    written = write_model_zoo_release(
        tmp_path / "mnist_zoo",
        runs=3,
        epochs=(0, 1),
        model_type=model_type,
        nlin=nlin,
        dropout=dropout,
    )
    zoo = import_release("model-zoo", tmp_path / "mnist_zoo", tmp_path / "zoo")
    assert len(zoo) == 6 and zoo.table["run_id"].nunique() == 3
    assert set(zoo.table["task"]) == {"mnist_zoo"}
    channels = 1 if model_type == "CNN" else 3
    images = torch.randn(4, channels, side, side, dtype=torch.float64)
    for checkpoint_id in zoo.ids:
        row = zoo.row(checkpoint_id)
        reference = written["models"][row["run_id"]][int(row["epoch"])].double()
        assert row["test_accuracy"] == pytest.approx(
            written["accuracy"][row["run_id"]][int(row["epoch"])]
        )
        assert row["config.model::nlin"] == nlin
        spec = zoo.spec(checkpoint_id)
        model = to_module(spec, {k: v.double() for k, v in zoo.state_dict(checkpoint_id).items()})
        torch.testing.assert_close(model(images), reference(images), rtol=1e-10, atol=1e-10)
    # Splits are by model: every checkpoint of one run shares its split.
    assert (zoo.table.groupby("run_id")["split"].nunique() == 1).all()


def test_run_split_is_deterministic_and_complete() -> None:
    names = [f"trial_{i:03d}" for i in range(40)]
    split = run_split(names)
    assert split == run_split(list(reversed(names)))  # listing order does not matter
    counts = {s: sum(v == s for v in split.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 28, "val": 6, "test": 6}


def test_epochs_without_results_are_left_out_and_counted(tmp_path: Path) -> None:
    write_model_zoo_release(tmp_path / "rel", runs=2, epochs=(0, 1, 2), result_offset=1)
    zoo = import_release("model-zoo", tmp_path / "rel", tmp_path / "zoo")
    assert set(zoo.table["epoch"]) == {1, 2}
    assert zoo.manifest["no_result"] == 2


def test_malformed_releases_are_refused_in_one_line(tmp_path: Path) -> None:
    root = tmp_path / "rel"
    write_model_zoo_release(root, runs=2, epochs=(0, 1))
    folder = sorted(p for p in root.iterdir())[0]
    out = tmp_path / "zoo"
    (folder / "checkpoint_000001" / "checkpoints").unlink()
    with pytest.raises(ReleaseError, match=r"checkpoint_000001/checkpoints: missing") as info:
        import_release("model-zoo", root, out)
    assert "\n" not in str(info.value)
    _no_leftovers(tmp_path, out)

    root = tmp_path / "rel2"
    written = write_model_zoo_release(root, runs=2, epochs=(0, 1))
    folder = sorted(p for p in root.iterdir())[0]
    net = written["models"][folder.name][1]
    state = net.state_dict()
    state["module_list.0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, folder / "checkpoint_000001" / "checkpoints")
    with pytest.raises(ReleaseError, match=r"1 checkpoints hold NaN/Inf"):
        import_release("model-zoo", root, out)
    zoo = import_release("model-zoo", root, out, drop_nonfinite=True)
    assert len(zoo) == 3 and zoo.manifest["dropped_nonfinite"] == 1

    root = tmp_path / "rel3"
    write_model_zoo_release(root, runs=1, epochs=(0,))
    folder = next(root.iterdir())
    config = json.loads((folder / "params.json").read_text())
    (folder / "params.json").write_text(json.dumps({**config, "model::nlin": "elu"}))
    with pytest.raises(ReleaseError, match=r"params\.json: field model::nlin"):
        import_release("model-zoo", root, tmp_path / "zoo3")
    (folder / "params.json").write_text(json.dumps(config))
    # A wrong input size shows as a shape mismatch at the first linear layer.
    with pytest.raises(ReleaseError, match=r"field module_list\.\d+\.weight: shape mismatch"):
        import_release("model-zoo", root, tmp_path / "zoo3", image_size=32)
    (folder / "result.json").write_text('{"training_iteration": 0, "test_acc": 7.5}\n')
    with pytest.raises(ReleaseError, match=r"result\.json: field test_acc: 7\.5"):
        import_release("model-zoo", root, tmp_path / "zoo3")
    (folder / "result.json").write_text("not json\n")
    with pytest.raises(ReleaseError, match=r"result\.json: line 1: not a JSON record"):
        import_release("model-zoo", root, tmp_path / "zoo3")
    _no_leftovers(tmp_path, tmp_path / "zoo3")


def test_checkpoints_with_code_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "rel"
    write_model_zoo_release(root, runs=1, epochs=(0,))
    folder = next(root.iterdir())
    torch.save(
        {"module_list.0.weight": torch.zeros(1), "obj": Path("x")},
        folder / "checkpoint_000000" / "checkpoints",
    )
    with pytest.raises(ReleaseError, match=r"checkpoints: unreadable checkpoint"):
        import_release("model-zoo", root, tmp_path / "zoo")


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_model_zoo_release(tmp_path / "rel", runs=2, epochs=(0, 1))
    out = tmp_path / "zoo"
    with pytest.raises(SystemExit) as info:
        main(
            [
                "zoo",
                "import",
                "--format",
                "model-zoo",
                str(tmp_path / "rel"),
                "--out",
                str(out),
                "--task-name",
                "mnist",
            ]
        )
    assert not info.value.code
    zoo = Zoo.open(out)
    assert len(zoo) == 4 and set(zoo.table["task"]) == {"mnist"}
    (tmp_path / "bad").mkdir()
    with pytest.raises(SystemExit) as info:
        main(
            [
                "zoo",
                "import",
                "--format",
                "model-zoo",
                str(tmp_path / "bad"),
                "--out",
                str(tmp_path / "zoo2"),
            ]
        )
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "no model folders" in err and "Traceback" not in err
