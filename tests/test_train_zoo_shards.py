"""One zoo shard per rank under ``torchrun``: each rank reads and canonicalises only its own
contiguous part of the checkpoints (``training.data.read_shards``), and after the exchange every
rank holds the bank one process builds, bit for bit."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from models import tiny_train_config
from test_train import make_synthetic_zoo
from weightspace.training.data import read_shards
from weightspace.zoo import Zoo


class CountingZoo:
    """A zoo that records which checkpoints' weights were read."""

    def __init__(self, root: Path) -> None:
        self.zoo = Zoo.open(root)
        self.read: list[str] = []

    def spec(self, checkpoint_id: str):  # noqa: ANN201
        return self.zoo.spec(checkpoint_id)

    def state_dict(self, checkpoint_id: str):  # noqa: ANN201
        self.read.append(checkpoint_id)
        return self.zoo.state_dict(checkpoint_id)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, root: Path, out: Path) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        zoo = CountingZoo(root)
        ids = [str(i) for i in zoo.zoo.ids]
        graphs, models = read_shards(zoo, ids, tiny_train_config(), True, lambda *a: None)
        torch.save(
            {"edge_attr": [g.edge_attr for g in graphs], "x": [g.x for g in graphs]},
            out / f"rank{rank}.pt",
        )
        (out / f"rank{rank}.json").write_text(json.dumps({"read": zoo.read, "models": len(models)}))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_each_rank_reads_only_its_shard_and_all_hold_the_whole_bank(tmp_path: Path) -> None:
    root = make_synthetic_zoo(tmp_path / "zoo", runs=5, epochs=1)
    zoo = CountingZoo(root)
    ids = [str(i) for i in zoo.zoo.ids]
    single, models = read_shards(zoo, ids, tiny_train_config(), True, lambda *a: None)
    assert zoo.read == ids and len(models) == len(ids)

    out = tmp_path / "ranks"
    out.mkdir()
    mp.spawn(_rank, args=(2, _free_port(), root, out), nprocs=2, join=True)
    reads = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    first, second = reads[0]["read"], reads[1]["read"]
    assert first + second == ids  # disjoint, contiguous, in order, covering the zoo
    assert abs(len(first) - len(second)) <= 1 and first and second
    assert reads[0]["models"] == reads[1]["models"] == len(ids)
    for r in range(2):
        held = torch.load(out / f"rank{r}.pt", weights_only=True)
        assert len(held["x"]) == len(single)
        for graph, x, edge_attr in zip(single, held["x"], held["edge_attr"], strict=True):
            assert torch.equal(graph.x, x) and torch.equal(graph.edge_attr, edge_attr)
