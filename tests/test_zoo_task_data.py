"""``zoo import --task-data DATA.npz``: an imported zoo's task resolves like a built-in one."""

from __future__ import annotations

import secrets
from pathlib import Path

import numpy as np
import pytest
import torch

from weightspace.cli import main
from weightspace.errors import WeightspaceError
from weightspace.evaluate.tasks import chance_level, task_test_inputs, task_training_data
from weightspace.zoo.formats import import_release
from weightspace.zoo.formats.examples import write_model_zoo_release
from weightspace.zoo.store import Zoo
from weightspace.zoo.task_data import TaskDataError, read_task_data
from weightspace.zoo.tasks import get_task

torch.set_num_threads(1)


def _data(path: Path, *, classes: int = 10, n: int = 60, **changes: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.normal(size=(n, 1, 28, 28)).astype(np.float32),
        "y_train": np.arange(n) % classes,
        "x_test": rng.normal(size=(n // 2, 1, 28, 28)).astype(np.float32),
        "y_test": np.arange(n // 2) % classes,
    }
    arrays.update(changes)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def _name() -> str:
    return f"mnist-{secrets.token_hex(3)}"  # one process, one dataset per name


def test_imported_zoo_task_resolves_with_its_data(tmp_path: Path) -> None:
    write_model_zoo_release(tmp_path / "rel", runs=2, epochs=(0,))
    data = read_task_data(_data(tmp_path / "data.npz"))
    name = _name()
    with pytest.raises(WeightspaceError):
        get_task(name)
    zoo = import_release("model-zoo", tmp_path / "rel", tmp_path / "zoo", task=name, task_data=data)
    assert (tmp_path / "zoo" / zoo.manifest["task_data"]["file"]).is_file()
    task = get_task(name)
    assert task.num_classes == 10 and chance_level(name) == pytest.approx(0.1)
    assert sum(len(task.labels[s]) for s in ("train", "val", "test")) == 90
    assert len(task.labels["test"]) == 30 and len(task.labels["val"]) == 12  # 20 % carved
    # Inputs exactly as stored (not standardised), shaped for the zoo's own architecture.
    spec = zoo.spec(zoo.ids[0])
    x, y = task_training_data(name, spec.input_shape)
    assert x.shape[1:] == (1, 28, 28) and len(x) == len(y) == 48
    stored = np.load(tmp_path / "data.npz")
    np.testing.assert_array_equal(task_test_inputs(name).numpy(), stored["x_test"].reshape(30, -1))
    logits = zoo.model(zoo.ids[0])(x.float())
    assert logits.shape == (48, 10)


def test_task_data_is_registered_when_the_zoo_is_opened(tmp_path: Path) -> None:
    write_model_zoo_release(tmp_path / "rel", runs=1, epochs=(0,))
    name = _name()
    with pytest.raises(SystemExit) as info:
        main(
            [
                "zoo",
                "import",
                "--format",
                "model-zoo",
                str(tmp_path / "rel"),
                "--out",
                str(tmp_path / "zoo"),
                "--task-name",
                name,
                "--task-data",
                str(_data(tmp_path / "d.npz", classes=4)),
            ]
        )
    assert not info.value.code
    from weightspace.zoo import tasks

    tasks._DATA_TASKS.pop(name)  # as in a fresh process
    tasks.get_task.cache_clear()
    Zoo.open(tmp_path / "zoo")
    assert get_task(name).num_classes == 4
    # A modified task file is detected.
    path = tmp_path / "zoo" / "task_data" / f"{name}.npz"
    tasks._DATA_TASKS.pop(name)
    stored = dict(np.load(path))
    stored["y_test"] = (stored["y_test"] + 1) % 4
    np.savez(path, **stored)
    with pytest.raises(WeightspaceError, match="does not match the SHA-256"):
        Zoo.open(tmp_path / "zoo")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"y_test": None}, r"missing arrays \['y_test'\]"),
        ({"y_train": np.arange(59) % 10}, r"array y_train: 59 labels for 60 inputs"),
        ({"x_test": np.zeros((30, 1, 27, 28), np.float32)}, r"array x_test: examples of shape"),
        ({"y_test": np.full(30, 0.5)}, r"array y_test: 30 labels are not whole numbers"),
        (
            {"y_test": np.where(np.arange(30) == 4, -1, np.arange(30) % 10)},
            r"array y_test: 1 labels lie outside \[0, 10\)",
        ),
        ({"num_classes": np.int64(5)}, r"array y_train: 30 labels lie outside \[0, 5\)"),
    ],
)
def test_malformed_task_data(tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(TaskDataError, match=message) as info:
        read_task_data(_data(tmp_path / "d.npz", **changes))
    assert "d.npz" in str(info.value) and "\n" not in str(info.value)


def test_nonfinite_rows_are_counted(tmp_path: Path) -> None:
    x = np.zeros((60, 1, 28, 28), np.float32)
    x[[3, 7, 9], 0, 0, 0] = np.nan
    with pytest.raises(TaskDataError, match=r"array x_train: 3 rows hold NaN/Inf"):
        read_task_data(_data(tmp_path / "d.npz", x_train=x))
    (tmp_path / "p.npz").write_bytes(b"not a zip")
    with pytest.raises(TaskDataError, match=r"p\.npz: unreadable \.npz"):
        read_task_data(tmp_path / "p.npz")


def test_task_name_must_be_its_own(tmp_path: Path) -> None:
    write_model_zoo_release(tmp_path / "rel", runs=1, epochs=(0,))
    data = read_task_data(_data(tmp_path / "d.npz"))
    with pytest.raises(TaskDataError, match="is a built-in task"):
        import_release(
            "model-zoo", tmp_path / "rel", tmp_path / "zoo", task="digits", task_data=data
        )
    assert not (tmp_path / "zoo").exists()
    name = _name()
    import_release("model-zoo", tmp_path / "rel", tmp_path / "zoo", task=name, task_data=data)
    # The same arrays written again are the same data (the digest is of contents, not bytes).
    again = read_task_data(_data(tmp_path / "d2.npz"))
    import_release("model-zoo", tmp_path / "rel", tmp_path / "zoo1", task=name, task_data=again)
    other = read_task_data(_data(tmp_path / "e.npz", classes=3))
    with pytest.raises(TaskDataError, match="already registered in this process with other data"):
        import_release("model-zoo", tmp_path / "rel", tmp_path / "zoo2", task=name, task_data=other)
    assert not (tmp_path / "zoo2").exists()


def test_own_sweep_with_task_name_and_data(tmp_path: Path) -> None:
    from safetensors.torch import save_file
    from torch import nn

    from weightspace.zoo.importer import import_zoo

    (tmp_path / "ckpts").mkdir()
    rows = []
    for i in range(3):
        model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
        save_file(model.state_dict(), str(tmp_path / "ckpts" / f"m{i}.safetensors"))
        rows.append({"file": f"m{i}.safetensors", "test_accuracy": 0.5, "run": f"r{i}"})
    import pandas as pd

    pd.DataFrame(rows).to_csv(tmp_path / "metrics.csv", index=False)
    rng = np.random.default_rng(1)
    data_path = tmp_path / "d.npz"
    np.savez(
        data_path,
        x_train=rng.normal(size=(40, 6)),
        y_train=np.arange(40) % 3,
        x_val=rng.normal(size=(9, 6)),
        y_val=np.arange(9) % 3,
        x_test=rng.normal(size=(12, 6)),
        y_test=np.arange(12) % 3,
    )
    data = read_task_data(data_path)
    with pytest.raises(TaskDataError, match="names no task"):  # 'unknown' is no name
        import_zoo(
            tmp_path / "ckpts",
            tmp_path / "metrics.csv",
            tmp_path / "zoo",
            activation="tanh",
            task_data=data,
            show_progress=False,
        )
    name = _name()
    zoo, _ = import_zoo(
        tmp_path / "ckpts",
        tmp_path / "metrics.csv",
        tmp_path / "zoo",
        activation="tanh",
        task=name,
        task_data=data,
        show_progress=False,
    )
    assert set(zoo.table["task"]) == {name}
    task = get_task(name)
    assert [len(task.labels[s]) for s in ("train", "val", "test")] == [40, 9, 12]
    assert chance_level(name) == pytest.approx(1 / 3)
