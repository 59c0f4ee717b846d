"""Data-parallel training: the sharding of a global batch, the gathered loss, and two gloo ranks
against one process with the same global batch."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from hypothesis import given
from hypothesis import strategies as st

from models import tiny_train_config
from test_train import make_synthetic_zoo
from weightspace.nn.augment import AugmentConfig, augment
from weightspace.nn.batch import GraphBank
from weightspace.nn.encoder import Encoder, prepare_graph
from weightspace.spec import mlp_spec
from weightspace.train import TrainConfig, train
from weightspace.training.distributed import Distributed, shard_batch, shard_bounds

torch.set_num_threads(1)

# Two ranks sum the same gradients in another order than one process (shard forward, gathered
# loss, all-reduce): float32 round-off after a few AdamW steps (measured: <= 6e-7 on every
# weight), far below any learned change.
RTOL, ATOL = 1e-4, 1e-5


@given(st.integers(0, 200), st.integers(1, 9))
def test_shards_are_disjoint_balanced_and_cover_the_batch(n: int, world: int) -> None:
    bounds = [shard_bounds(n, r, world) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))  # contiguous
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n


def _bank() -> GraphBank:
    generator = torch.Generator().manual_seed(0)
    specs = [mlp_spec([6, 10, 8, 3], "tanh"), mlp_spec([6, 12, 3], "relu")]
    graphs = []
    for i in range(9):
        spec = specs[i % 2]
        state = {k: torch.randn(s, generator=generator) for k, s in spec.param_shapes().items()}
        graphs.append(prepare_graph((spec, state), tiny_train_config(), index=i))
    return GraphBank(graphs)


def test_a_shard_of_a_batch_is_the_batch_of_its_graphs() -> None:
    bank = _bank()
    index = torch.tensor([3, 0, 7, 8, 1, 4, 2])
    whole = bank.select(index)
    for lo, hi in [(0, 3), (3, 7), (2, 5), (0, 7)]:
        part, expected = shard_batch(whole, lo, hi), bank.select(index[lo:hi])
        for name, value in vars(expected).items():
            got = getattr(part, name)
            if isinstance(value, torch.Tensor):
                assert torch.equal(got, value), name
            elif name not in ("spec", "spec_table"):  # a shard keeps the batch's (mixed) path
                assert got == value, name


def test_encoding_shards_of_an_augmented_view_equals_encoding_it_whole() -> None:
    bank = _bank()
    torch.manual_seed(0)
    encoder = Encoder(tiny_train_config()).eval()
    batch = augment(bank.select(torch.arange(9)), AugmentConfig(), torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = encoder(batch)
        parts = torch.cat([encoder(shard_batch(batch, *shard_bounds(9, r, 2))) for r in range(2)])
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-6)


def test_one_process_is_a_no_op_world() -> None:
    single = Distributed()
    assert single.is_main and single.shard(10) == (0, 10) and single.loss_scale(10) == 1.0
    outputs = {"projection": torch.randn(10, 4)}
    assert single.gather(outputs, 10) is outputs
    # a batch smaller than the world is encoded whole by every rank, its loss shared out
    two = Distributed(rank=1, world_size=2)
    assert two.shard(1) == (0, 1) and two.loss_scale(1) == 0.5 and two.shard(5) == (3, 5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, config: TrainConfig, result: Path) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        trained = train(config)
        torch.save(trained.encoder.state_dict(), result.with_suffix(f".rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["both"])
def test_two_gloo_ranks_train_the_same_encoder_as_one_process(tmp_path, objective) -> None:
    zoo = make_synthetic_zoo(tmp_path / "zoo", runs=24, epochs=3)
    common = dict(
        zoo=str(zoo),
        epochs=2,
        batch_size=15,  # odd: shards of 8 and 7, and a last batch of its own size
        objective=objective,
        encoder=tiny_train_config(),
        patience=100,
        threads=1,
    )
    single = train(TrainConfig(out=str(tmp_path / "single"), **common)).encoder.state_dict()
    config = TrainConfig(out=str(tmp_path / "ddp"), **common)
    mp.spawn(_rank, args=(2, _free_port(), config, tmp_path / "weights"), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"weights.rank{r}.pt", weights_only=True) for r in range(2)]
    written = Encoder.load(tmp_path / "ddp").state_dict()
    assert single.keys() == ranks[0].keys()
    moved = False
    torch.manual_seed(0)  # the run's seed: its initialisation
    initial = Encoder(Encoder.load(tmp_path / "ddp").config).state_dict()
    for name, value in single.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name  # ranks stay in lockstep
        assert torch.equal(written[name], ranks[0][name]), name  # rank 0 wrote its weights
        got = ranks[0][name]
        if name.endswith("key_value.bias"):
            # The key half of an attention bias has no gradient in exact arithmetic (a shift
            # shared by all keys leaves the softmax unchanged): AdamW turns round-off into
            # steps of +-lr there, so only the value half, which matters, is compared.
            value, got = value[value.numel() // 2 :], got[got.numel() // 2 :]
        torch.testing.assert_close(got, value, rtol=RTOL, atol=ATOL, msg=name)
        moved |= value.is_floating_point() and not torch.allclose(
            value, initial[name][-value.numel() :], rtol=RTOL, atol=ATOL
        )
    assert moved  # the comparison is between trained encoders, not two initialisations
    # what the encoders compute agrees too (the key biases included)
    bank = _zoo_bank(zoo, Encoder.load(tmp_path / "ddp").config)
    embeddings = []
    for weights in (single, ranks[0]):
        encoder = Encoder.load(tmp_path / "ddp")
        encoder.load_state_dict(weights)
        with torch.no_grad():
            embeddings.append(encoder.eval()(bank.select(torch.arange(len(bank)))))
    torch.testing.assert_close(embeddings[1], embeddings[0], rtol=RTOL, atol=ATOL)


def _zoo_bank(root: Path, config) -> GraphBank:
    from weightspace.zoo import Zoo

    zoo = Zoo.open(root)
    return GraphBank(
        [
            prepare_graph((zoo.spec(i), zoo.state_dict(i)), config, index=n)
            for n, i in enumerate(zoo.ids)
        ]
    )


@pytest.mark.slow
def test_torchrun_cli_trains_on_two_ranks_and_rank_zero_writes(tmp_path) -> None:
    import subprocess
    import sys

    zoo = make_synthetic_zoo(tmp_path / "zoo", runs=12, epochs=2)
    out = tmp_path / "encoder"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command = [*torchrun, "--nproc_per_node", "2", "-m", "weightspace", "train"]
    options = ["--zoo", str(zoo), "--out", str(out), "--epochs", "1", "--batch-size", "8"]
    done = subprocess.run(
        [*command, *options, "--threads", "1", "--objective", "contrastive"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert Encoder.load(out).config.embedding_dim > 0
    assert (out / "log.csv").read_text().count("\n") == 2  # header and one epoch, written once
    assert done.stdout.count("encoder written to") == 1  # only rank 0 reports
