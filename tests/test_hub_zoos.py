"""The ``vit-digits`` and ``lora`` zoo presets, generated small: their checkpoints compute what
the table says, LoRA checkpoints differ from their base only by low-rank updates of the adapted
layers, and a finished zoo is reopened, not retrained."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from weightspace.module import to_module
from weightspace.zoo.generate import generate_zoo
from weightspace.zoo.presets import get_preset

torch.set_num_threads(1)


@pytest.mark.slow  # ~25 s on one busy core: base pre-training and fine-tuning of two ViTs
@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="needs the 'hub' extra")
def test_vit_digits_zoo_checkpoints_score_what_the_table_says(tmp_path: Path) -> None:
    from weightspace.zoo.task_data import read_task_data

    preset = get_preset("vit-digits").with_overrides(
        archs=("vit-e16-d1-h2", "vit-e16-d2-h2"), runs=1, epochs=1
    )
    zoo = generate_zoo(tmp_path / "vit", preset)
    archs = len(preset.archs)
    assert len(zoo) == archs * len(preset.settings.checkpoint_epochs) == 2 * 2  # epochs 0, 1
    assert zoo.table["run_id"].nunique() == archs and zoo.table["test_accuracy"].between(0, 1).all()
    data = read_task_data(next((tmp_path / "vit" / "task_data").glob("*.npz")))
    assert data.input_shape == (17, 4)  # 16 patches of 2x2 and the class slot
    x, y = torch.as_tensor(data.x["test"]), torch.as_tensor(data.y["test"])
    for checkpoint_id in zoo.ids:
        spec, state = zoo.spec(checkpoint_id), zoo.state_dict(checkpoint_id)
        with torch.no_grad():
            accuracy = float((to_module(spec, state)(x).argmax(1) == y).float().mean())
        assert accuracy == pytest.approx(zoo.row(checkpoint_id)["test_accuracy"], abs=1e-6)
    again = generate_zoo(tmp_path / "vit", preset)  # finished: reopened as is
    assert again.ids == zoo.ids


@pytest.mark.slow  # ~30 s on one busy core: the base's pre-training and 12 adapters
def test_lora_zoo_holds_low_rank_updates_of_one_base(tmp_path: Path) -> None:
    from weightspace.zoo.lora_zoo import TARGETS, TASKS, task_labels

    preset = get_preset("lora").with_overrides(runs=2, epochs=2)
    zoo = generate_zoo(tmp_path / "lora", preset)
    table = zoo.table
    assert len(zoo) == len(TASKS) * 2 * 1  # checkpoint epoch 2 only
    assert sorted(table["adapter_task"].unique()) == sorted(TASKS)
    states = {cid: zoo.state_dict(cid) for cid in zoo.ids}
    first = states[zoo.ids[0]]
    spec = zoo.spec(zoo.ids[0])
    for cid, state in states.items():
        for key, value in state.items():
            layer = key.removesuffix(".weight")
            if key.endswith(".weight") and layer in TARGETS:
                continue
            assert torch.equal(value, first[key]), (cid, key)  # the frozen base
    # two adapters of rank 1 (run 0 of two tasks) differ by at most rank 2 in each target,
    # where a full fine-tune would differ in full rank
    ones = [cid for cid in zoo.ids if int(zoo.row(cid)["rank"]) == 1][:2]
    assert len(ones) == 2
    for layer in TARGETS:
        diff = states[ones[0]][f"{layer}.weight"] - states[ones[1]][f"{layer}.weight"]
        assert 1 <= int(torch.linalg.matrix_rank(diff.double(), rtol=1e-5)) <= 2
    tokens = torch.randint(0, 12, (200, 8), generator=torch.Generator().manual_seed(0))
    cid = zoo.ids[0]
    labels = task_labels(zoo.row(cid)["adapter_task"], tokens)
    with torch.no_grad():
        out = to_module(spec, states[cid])(tokens)
    assert out.shape == (200, 4) and labels.max() < 4 and np.isfinite(out.numpy()).all()
