"""`zoo import`: a user's sweep becomes a zoo; bad rows are reported, never silently dropped."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from weightspace.zoo import Zoo, ZooError, import_zoo


def _mlp(activation: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, 5), activation, nn.Linear(5, 3))


@pytest.fixture()
def sweep(tmp_path: Path) -> tuple[Path, Path]:
    checkpoints = tmp_path / "ckpts"
    (checkpoints / "run1").mkdir(parents=True)
    rows = []
    for epoch in range(3):
        model = _mlp(nn.Tanh())
        save_file(model.state_dict(), str(checkpoints / "run1" / f"e{epoch}.safetensors"))
        rows.append(
            {
                "file": f"run1/e{epoch}.safetensors",
                "acc": 0.3 + 0.1 * epoch,
                "run": "r1",
                "epoch": epoch,
                "activation": "tanh",
                "lr": 0.1,
            }
        )
    torch.save(_mlp(nn.ReLU()).state_dict(), checkpoints / "relu.pt")
    rows.append(
        {"file": "relu.pt", "acc": 0.9, "run": "r2", "epoch": 5, "activation": "relu", "lr": 0.01}
    )
    rows.append(
        {
            "file": "missing.safetensors",
            "acc": 0.5,
            "run": "r3",
            "epoch": 1,
            "activation": "relu",
            "lr": 0.01,
        }
    )
    (checkpoints / "broken.safetensors").write_bytes(b"\x00\x01garbage")
    rows.append(
        {
            "file": "broken.safetensors",
            "acc": 0.5,
            "run": "r4",
            "epoch": 1,
            "activation": "relu",
            "lr": 0.01,
        }
    )
    metrics = tmp_path / "metrics.csv"
    pd.DataFrame(rows).to_csv(metrics, index=False)
    return checkpoints, metrics


def test_import_round_trip_and_failures(sweep: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoints, metrics = sweep
    zoo, failed = import_zoo(
        checkpoints, metrics, tmp_path / "zoo", rename={"test_accuracy": "acc"}, show_progress=False
    )
    assert len(zoo) == 4
    assert sorted(f["file"] for f in failed) == ["broken.safetensors", "missing.safetensors"]
    assert all(f["problem"] for f in failed)
    reopened = Zoo.open(tmp_path / "zoo")
    assert [f["file"] for f in reopened.manifest["failed"]] == [f["file"] for f in failed]
    table = reopened.table
    assert list(table["test_accuracy"]) == pytest.approx([0.3, 0.4, 0.5, 0.9])
    assert list(table["run_id"]) == ["r1", "r1", "r1", "r2"]
    assert list(table["epoch"]) == [0, 1, 2, 5]
    assert "lr" in table.columns  # other columns kept as metadata
    # per-row activations: the tanh and relu checkpoints get different specs
    tanh_id, relu_id = table["checkpoint_id"].iloc[0], table["checkpoint_id"].iloc[3]
    assert "tanh" in zoo.spec(tanh_id).activations and "relu" in zoo.spec(relu_id).activations
    original = torch.load(checkpoints / "relu.pt", weights_only=True)
    state = zoo.state_dict(relu_id)
    for key, value in original.items():
        assert torch.equal(state[key], value)
    assert zoo.graph(tanh_id).num_nodes == 6 + 5 + 3
    x = torch.randn(4, 6)
    reference = _mlp(nn.ReLU())
    reference.load_state_dict(original)
    torch.testing.assert_close(zoo.model(relu_id)(x), reference(x))
    assert zoo.info()["failed"] == 2


def test_import_needs_required_columns(sweep: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoints, metrics = sweep
    with pytest.raises(ZooError, match="missing required columns.*test_accuracy"):
        import_zoo(checkpoints, metrics, tmp_path / "zoo", show_progress=False)
    with pytest.raises(ZooError, match="lacks"):
        import_zoo(
            checkpoints,
            metrics,
            tmp_path / "zoo",
            rename={"test_accuracy": "accuracy"},
            show_progress=False,
        )


def test_import_refuses_existing_zoo_and_all_failed(
    sweep: tuple[Path, Path], tmp_path: Path
) -> None:
    checkpoints, metrics = sweep
    import_zoo(
        checkpoints, metrics, tmp_path / "zoo", rename={"test_accuracy": "acc"}, show_progress=False
    )
    with pytest.raises(ZooError, match="already holds a zoo"):
        import_zoo(
            checkpoints,
            metrics,
            tmp_path / "zoo",
            rename={"test_accuracy": "acc"},
            show_progress=False,
        )
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"file": ["nope.pt"], "test_accuracy": [0.1]}).to_parquet(bad)
    with pytest.raises(ZooError, match="none of the 1 rows.*nope.pt"):
        import_zoo(checkpoints, bad, tmp_path / "zoo2", activation="relu", show_progress=False)
