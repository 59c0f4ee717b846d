"""The encoder's function head: its targets, its loss, invariance, config round trip, errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from models import tiny_train_config
from weightspace.nn import Encoder, EncoderConfig
from weightspace.nn.encoder import EncoderError
from weightspace.spec import mlp_spec
from weightspace.train import (
    TrainConfig,
    TrainError,
    function_kl,
    function_targets,
    probe_inputs,
    train,
)
from weightspace.zoo.store import write_manifest, write_shard, write_table

torch.set_num_threads(1)

TINY = tiny_train_config()


def _builtin_zoo(root: Path, runs: int = 24, epochs: int = 2, tasks=("wine", "breast-cancer")):
    """Random MLPs on two built-in tasks (3 and 2 classes; inputs 13 and 30)."""
    generator = torch.Generator().manual_seed(0)
    sizes = {"wine": [13, 8, 3], "breast-cancer": [30, 8, 2]}
    rows, tensors = [], {}
    for r in range(runs):
        task = tasks[r % len(tasks)]
        spec = mlp_spec(sizes.get(task, [6, 8, 3]), "tanh")
        for e in range(epochs):
            checkpoint_id = f"r{r:03d}-e{e}"
            for key, shape in spec.param_shapes().items():
                tensors[f"{checkpoint_id}/{key}"] = torch.randn(shape, generator=generator)
            accuracy = float(torch.rand((), generator=generator))
            rows.append(
                {
                    "checkpoint_id": checkpoint_id,
                    "run_id": f"run{r:03d}",
                    "epoch": e,
                    "task": task,
                    "arch": f"mlp-{task}",
                    "spec": spec.to_json(),
                    "shard": "weights/shard-0.safetensors",
                    "weights_form": "spec",
                    "test_accuracy": accuracy,
                    "train_accuracy": accuracy,
                }
            )
    write_shard(root / "weights" / "shard-0.safetensors", tensors, {})
    write_table(root / "checkpoints.parquet", pd.DataFrame(rows))
    write_manifest(root, {"kind": "synthetic", "complete": True, "seed": 0})
    return root


def test_targets_on_a_hand_checked_case() -> None:
    # zero weights: every probe's output is the bias, so the softmax is known in closed form
    wine = mlp_spec([13, 3], "identity")
    cancer = mlp_spec([30, 2], "identity")
    state_wine = {"layers.0.weight": torch.zeros(3, 13), "layers.0.bias": torch.tensor([0.0, 0, 0])}
    keys = list(wine.param_shapes())
    state_wine = dict(zip(keys, state_wine.values(), strict=True))
    bias = torch.tensor([0.0, math.log(3.0)])
    state_cancer = dict(zip(list(cancer.param_shapes()), [torch.zeros(2, 30), bias], strict=True))
    broken = {k: torch.full_like(v, float("nan")) for k, v in state_wine.items()}
    out = function_targets(
        [(wine, state_wine), (cancer, state_cancer), (wine, broken)],
        ["wine", "breast-cancer", "wine"],
        probes=4,
    )
    assert out.probabilities.shape == (3, 4, 3)
    assert torch.allclose(out.probabilities[0], torch.full((4, 3), 1 / 3))
    assert torch.allclose(out.probabilities[1], torch.tensor([0.25, 0.75, 0.0]).expand(4, 3))
    assert out.mask.tolist() == [[True] * 3, [True, True, False], [True] * 3]
    assert out.known.tolist() == [True, True, False]
    assert torch.equal(out.probabilities[2], torch.zeros(4, 3))

    # a real model: the targets are its own softmax on the seeded probe rows
    torch.manual_seed(3)
    state = {k: torch.randn(s) for k, s in wine.param_shapes().items()}
    x = probe_inputs("wine", wine, 4, seed=0)
    assert torch.equal(x, probe_inputs("wine", wine, 4, seed=0))
    expected = (x @ state[keys[0]].t() + state[keys[1]]).softmax(-1)
    got = function_targets([(wine, state)], ["wine"], probes=4, num_classes=5)
    assert torch.allclose(got.probabilities[0, :, :3], expected, atol=1e-6)
    assert torch.equal(got.probabilities[0, :, 3:], torch.zeros(4, 2))

    # the loss ignores padded classes and is zero at the targets
    logits = torch.log(got.probabilities.clamp_min(1e-30))
    loss = function_kl(logits, got.probabilities, got.mask, got.known)
    assert float(loss) == pytest.approx(0.0, abs=1e-5)


def test_function_head_trains_and_round_trips(tmp_path) -> None:
    zoo = _builtin_zoo(tmp_path / "zoo")
    config = TrainConfig(
        zoo=str(zoo),
        out=str(tmp_path / "enc"),
        epochs=6,
        batch_size=16,
        encoder=TINY,
        patience=100,
        function_probes=8,
        learning_rate=5e-3,
    )
    result = train(config)
    assert result.encoder.config.function_probes == 8
    assert result.encoder.config.function_classes == 3
    losses = [row["train_function_kl"] for row in result.log]
    assert losses[-1] < losses[0]
    assert all(np.isfinite(row["val_function_kl"]) for row in result.log)

    # save / load round trip, heads included
    loaded = Encoder.load(tmp_path / "enc")
    assert loaded.config == result.encoder.config
    assert loaded.fingerprint == result.encoder.fingerprint
    z = torch.randn(5, loaded.dim)
    assert loaded.heads(z)["function_logits"].shape == (5, 8, 3)


def test_function_head_keeps_exact_invariance() -> None:
    from weightspace.symmetry import random_symmetry

    config = EncoderConfig(**{**TINY.to_dict(), "function_probes": 4, "function_classes": 3})
    encoder = Encoder(config).eval().double()
    spec = mlp_spec([13, 8, 6, 3], "relu")
    torch.manual_seed(0)
    state = {k: torch.randn(s, dtype=torch.float64) for k, s in spec.param_shapes().items()}
    moved, _ = random_symmetry(spec, state, torch.Generator().manual_seed(1))
    z = torch.as_tensor(encoder.embed([(spec, state), (spec, moved)]))
    heads = encoder.heads(z)["function_logits"]
    assert heads.shape == (2, 4, 3)
    assert torch.allclose(heads[0], heads[1], atol=1e-6)


def test_old_encoder_directories_load_and_bad_configs_fail(tmp_path) -> None:
    # an encoder saved without the function fields (an older directory) loads, without the head
    import json

    encoder = Encoder(TINY)
    encoder.save(tmp_path / "old")
    path = tmp_path / "old" / "config.json"
    data = json.loads(path.read_text())
    for key in ("function_probes", "function_classes", "function_seed"):
        data["encoder"].pop(key)
    path.write_text(json.dumps(data))
    loaded = Encoder.load(tmp_path / "old")
    assert loaded.function_head is None and "function_logits" not in loaded.heads(
        torch.zeros(1, loaded.dim)
    )
    with pytest.raises(EncoderError, match="both"):
        EncoderConfig(function_probes=4, function_classes=0)


def test_function_weight_needs_builtin_tasks(tmp_path) -> None:
    zoo = _builtin_zoo(tmp_path / "zoo", runs=6, epochs=1, tasks=("not-a-task", "wine"))
    common = dict(zoo=str(zoo), epochs=1, batch_size=4, encoder=TINY, function_probes=4)
    with pytest.raises(TrainError, match=r"not-a-task.*--function-weight 0"):
        train(TrainConfig(out=str(tmp_path / "a"), function_weight=1.0, **common))
    # the default turns the head off on such zoos; weight 0 always trains
    for out, weight in (("b", None), ("c", 0.0)):
        result = train(TrainConfig(out=str(tmp_path / out), function_weight=weight, **common))
        assert result.encoder.function_head is None
    with pytest.raises(TrainError, match="unknown-task"):
        function_targets([(mlp_spec([6, 3], "relu"), {})], ["unknown-task"], probes=2)
