"""The CUDA paths agree with the CPU ones (skipped where torch sees no CUDA device).

CI has no GPU; these run on a lent GPU machine (see the README's "GPU checks").
"""

from __future__ import annotations

import pytest
import torch

from weightspace.nn import Encoder, EncoderConfig
from weightspace.spec import mlp_spec
from weightspace.symmetry import random_symmetry

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SMALL = EncoderConfig(
    hidden=32, edge_hidden=16, num_layers=2, embedding_dim=32, projection_dim=32, head_hidden=32
)


def _models(n: int) -> list:
    spec = mlp_spec([6, 10, 8, 3], "relu")
    generator = torch.Generator().manual_seed(0)
    return [
        (spec, {k: torch.randn(s, generator=generator) for k, s in spec.param_shapes().items()})
        for _ in range(n)
    ]


def test_cuda_embeddings_equal_cpu_embeddings_and_stay_invariant() -> None:
    torch.manual_seed(0)
    encoder = Encoder(SMALL).double().eval()
    models = _models(16)
    on_cpu = encoder.embed(models, batch_size=8, device="cpu")
    on_cuda = encoder.embed(models, batch_size=8, device="cuda")
    torch.testing.assert_close(torch.as_tensor(on_cuda), torch.as_tensor(on_cpu), atol=1e-8, rtol=0)
    generator = torch.Generator().manual_seed(1)
    moved = [(spec, random_symmetry(spec, state, generator=generator)[0]) for spec, state in models]
    transformed = encoder.embed(moved, batch_size=8, device="cuda")
    torch.testing.assert_close(
        torch.as_tensor(transformed), torch.as_tensor(on_cuda), atol=1e-5, rtol=0
    )


def test_vectorised_zoo_training_on_cuda_matches_cpu() -> None:
    from weightspace.zoo import RunSpec, TrainSettings, get_task, train_group

    task = get_task("digits")
    runs = [RunSpec.make("digits", "cnn2d-c8-d3-relu", i, zoo_seed=0) for i in range(6)]
    settings = TrainSettings(epochs=1, checkpoint_epochs=(1,), batch_size=32)
    cpu = train_group(task, "cnn2d-c8-d3-relu", runs, settings, device="cpu")
    cuda = train_group(task, "cnn2d-c8-d3-relu", runs, settings, device="cuda")
    assert [(r.run_id, r.epoch) for r in cpu] == [(r.run_id, r.epoch) for r in cuda]
    for a, b in zip(cpu, cuda, strict=True):
        for key, value in a.state_dict.items():
            torch.testing.assert_close(b.state_dict[key].cpu(), value, atol=2e-3, rtol=2e-3)
        assert abs(a.metrics["test_accuracy"] - b.metrics["test_accuracy"]) <= 0.02


def test_training_the_encoder_on_cuda(tmp_path) -> None:
    from test_train import make_synthetic_zoo
    from weightspace.train import TrainConfig, train

    zoo = make_synthetic_zoo(tmp_path / "zoo", runs=12)
    config = TrainConfig(
        zoo=str(zoo), out=str(tmp_path / "enc"), epochs=2, batch_size=8, encoder=SMALL,
        device="cuda",
    )  # fmt: skip
    result = train(config)
    assert result.epochs_run == 2
    assert all(torch.isfinite(torch.tensor(row["train_loss"])) for row in result.log)
    reloaded = Encoder.load(tmp_path / "enc", device="cuda")
    z = reloaded.embed(_models(4), device="cuda")
    assert z.shape == (4, SMALL.embedding_dim)
