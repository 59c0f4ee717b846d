"""Fine-tuning views: vectorised SGD equals a per-model loop, lowers the loss, and trains."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from weightspace.finetune import FinetuneError, finetune_state_dicts, task_training_data
from weightspace.module import to_module
from weightspace.nn import EncoderConfig
from weightspace.spec import mlp_spec
from weightspace.train import TrainConfig, TrainError, train
from weightspace.zoo.store import write_manifest, write_shard, write_table

SPEC = mlp_spec([13, 10, 3], "relu")  # wine: 13 features, 3 classes


def _models(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        {k: 0.5 * torch.randn(s, generator=generator) for k, s in SPEC.param_shapes().items()}
        for _ in range(n)
    ]


def test_vectorised_sgd_equals_a_per_model_loop() -> None:
    inputs, labels = task_training_data("wine", SPEC)
    models = _models(5)
    tuned = finetune_state_dicts(
        SPEC, models, inputs, labels, steps=3, learning_rate=0.1, batch_size=8,
        generator=torch.Generator().manual_seed(1), chunk=2,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(1)
    draws = []
    for start in range(0, 5, 2):  # the same draws, chunk by chunk
        size = min(2, 5 - start)
        draws.append([torch.randint(len(labels), (size, 8), generator=generator) for _ in range(3)])
    for m, state in enumerate(models):
        module = to_module(SPEC, {k: v.clone() for k, v in state.items()})
        module.train()
        optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
        for step in range(3):
            rows = draws[m // 2][step][m % 2]
            optimizer.zero_grad()
            F.cross_entropy(module(inputs[rows]), labels[rows]).backward()
            optimizer.step()
        for key, value in module.state_dict().items():
            torch.testing.assert_close(tuned[m][key], value, rtol=1e-5, atol=1e-6)


def test_sgd_steps_lower_the_training_loss_and_zero_steps_copy() -> None:
    inputs, labels = task_training_data("wine", SPEC)
    models = _models(8, seed=3)

    @torch.no_grad()
    def mean_loss(states: list[dict[str, torch.Tensor]]) -> float:
        return sum(
            float(F.cross_entropy(to_module(SPEC, s)(inputs), labels)) for s in states
        ) / len(states)

    tuned = finetune_state_dicts(SPEC, models, inputs, labels, steps=20, learning_rate=0.05)
    assert mean_loss(tuned) < mean_loss(models)
    copies = finetune_state_dicts(SPEC, models, inputs, labels, steps=0)
    for a, b in zip(models, copies, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    again = finetune_state_dicts(SPEC, models, inputs, labels, steps=20, learning_rate=0.05)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(tuned, again, strict=True) for k in a)


def test_bad_input_is_refused() -> None:
    with pytest.raises(FinetuneError, match="not a built-in task"):
        task_training_data("my-own-task", SPEC)
    with pytest.raises(FinetuneError, match="input features"):
        task_training_data("digits", SPEC)
    inputs, labels = task_training_data("wine", SPEC)
    with pytest.raises(FinetuneError, match="batch_size"):
        finetune_state_dicts(SPEC, _models(1), inputs, labels, batch_size=0)
    with pytest.raises(FinetuneError, match="equally many"):
        finetune_state_dicts(SPEC, _models(1), inputs, labels[:-1])
    with pytest.raises(TrainError, match="finetune_probability"):
        TrainConfig(zoo="z", out="o", finetune_probability=1.5)


def _wine_zoo(root: Path, runs: int = 12) -> Path:
    generator = torch.Generator().manual_seed(0)
    rows, tensors = [], {}
    for r in range(runs):
        for e in range(2):
            checkpoint_id = f"r{r:02d}-e{e}"
            for key, shape in SPEC.param_shapes().items():
                tensors[f"{checkpoint_id}/{key}"] = 0.5 * torch.randn(shape, generator=generator)
            rows.append(
                {
                    "checkpoint_id": checkpoint_id,
                    "run_id": f"run{r:02d}",
                    "epoch": e,
                    "task": "wine",
                    "arch": "mlp",
                    "spec": SPEC.to_json(),
                    "shard": "weights/shard-0.safetensors",
                    "weights_form": "spec",
                    "test_accuracy": float(torch.rand((), generator=generator)),
                    "train_accuracy": 0.9,
                }
            )
    write_shard(root / "weights" / "shard-0.safetensors", tensors, {})
    write_table(root / "checkpoints.parquet", pd.DataFrame(rows))
    write_manifest(root, {"kind": "synthetic", "complete": True, "seed": 0})
    return root


def test_training_with_finetuned_views_runs_and_is_deterministic(tmp_path) -> None:
    zoo = _wine_zoo(tmp_path / "zoo")
    encoder = EncoderConfig(
        hidden=16, edge_hidden=8, num_layers=1, embedding_dim=16, projection_dim=16, head_hidden=16
    )
    results = []
    for name, probability in (("a", 0.5), ("b", 0.5), ("off", 0.0)):
        config = TrainConfig(
            zoo=str(zoo), out=str(tmp_path / name), epochs=2, batch_size=8, encoder=encoder,
            finetune_probability=probability, finetune_steps=2,
        )  # fmt: skip
        results.append(train(config))
    # The views matter (the same seed without them trains differently) ...
    assert results[0].log[-1]["train_loss"] != results[2].log[-1]["train_loss"]
    # ... and are deterministic.
    assert results[0].log[-1]["train_loss"] == results[1].log[-1]["train_loss"]
    first = results[0].encoder.state_dict()
    for key, value in results[1].encoder.state_dict().items():
        assert torch.equal(first[key], value)
