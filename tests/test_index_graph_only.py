"""The probe-branch fallback flag (``Encoder.last_fallback``) in the index: models embedded by
the graph branch alone are recorded as ``graph_only``; indexes written before the flag existed
open unchanged and read ``False``."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from test_index import StandInEmbedder, save_mlp
from weightspace.index import ModelIndex, iter_inputs


class FlaggingEmbedder(StandInEmbedder):
    """Flags, as an encoder with a probe branch does, the models whose mean weight is negative
    (a property of the model itself, so the expected flags can be computed apart)."""

    fingerprint = "stand-in-flagging-v1"

    def embed(self, graphs: list) -> np.ndarray:
        self.last_fallback = np.asarray([flagged(g) for g in graphs], dtype=bool)
        return super().embed(graphs)


def flagged(graph) -> bool:  # noqa: ANN001
    return bool(graph.edge_attr[:, 0].double().mean() < 0)


@pytest.fixture
def checkpoints(tmp_path: Path) -> list[Path]:
    return [save_mlp(tmp_path / "ckpts" / f"m{i}.safetensors", seed=i) for i in range(10)]


def expected_flags(paths: list[Path]) -> list[bool]:
    return [flagged(model.graph) for model in iter_inputs(paths)]


def test_index_records_which_models_the_graph_branch_alone_embedded(
    tmp_path: Path, checkpoints: list[Path]
) -> None:
    expected = expected_flags(checkpoints)
    assert any(expected) and not all(expected)  # the test sees both kinds
    index, report = ModelIndex.build(
        tmp_path / "idx", iter_inputs(checkpoints), FlaggingEmbedder(), batch_size=3
    )
    reopened = ModelIndex.open(tmp_path / "idx")
    assert [reopened.get(i).graph_only for i in report.added] == expected
    record = reopened.get(report.added[0])
    assert reopened.find_hash(record.content_hash).graph_only == expected[0]
    assert record.to_dict()["graph_only"] == expected[0]
    vectors = reopened.store.reconstruct_all()
    for hit in reopened.search(vectors, k=3)[0]:
        assert hit.record.graph_only == expected[hit.record.id]
    # later adds flag their own models too
    more = [save_mlp(tmp_path / "more" / f"n{i}.safetensors", seed=100 + i) for i in range(4)]
    added = reopened.add(iter_inputs(more), FlaggingEmbedder()).added
    assert [ModelIndex.open(tmp_path / "idx").get(i).graph_only for i in added] == (
        expected_flags(more)
    )


def test_an_index_without_the_flag_opens_and_reads_false(
    tmp_path: Path, checkpoints: list[Path]
) -> None:
    # an embedder without a probe branch flags nothing: the index is what older versions wrote
    index, report = ModelIndex.build(tmp_path / "idx", iter_inputs(checkpoints), StandInEmbedder())
    tables = {
        row[0]
        for row in sqlite3.connect(tmp_path / "idx" / "meta.sqlite").execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
        )
    }
    assert "graph_only" not in tables
    reopened = ModelIndex.open(tmp_path / "idx")
    assert not any(reopened.get(i).graph_only for i in report.added)
    assert not any(
        h.record.graph_only for h in reopened.search(reopened.store.reconstruct_all())[0]
    )


def test_ray_shards_carry_the_flag_to_the_index_records(tmp_path: Path) -> None:
    import json

    from weightspace.distributed.ray_embed import read_embeddings, write_shard
    from weightspace.distributed.ray_index import catalog_path, collect_shards

    shard = tmp_path / "part-000000-0123456789abcdef.parquet"
    vectors = np.ones((2, 4), np.float32)
    embedded = [("/a", "ha"), ("/c", "hc")]
    write_shard(shard, ["/a", "/b", "/c"], embedded, vectors, {"/b": "bad"}, "fp", [False, True])
    entries = {s: {"spec_json": "", "spec_summary": "", "metrics": {}} for s in ("/a", "/c")}
    catalog_path(shard).write_text(json.dumps(entries))
    records, _, failures, _ = collect_shards([shard])
    assert [(r["path"], r["graph_only"]) for r in records] == [("/a", False), ("/c", True)]
    table = read_embeddings(tmp_path, with_failures=True)
    assert table["graph_only"].tolist() == [False, None, True]
    # a shard written before the flag existed: no column, every record False
    old = tmp_path / "old" / "part-000000-0123456789abcdef.parquet"
    write_shard(old, ["/a"], [("/a", "ha")], vectors[:1], {}, "fp")
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(old).drop_columns(["graph_only"]), old)
    catalog_path(old).write_text(json.dumps({"/a": entries["/a"]}))
    assert [r["graph_only"] for r in collect_shards([old])[0]] == [False]


def test_a_real_encoder_flags_a_model_its_probes_cannot_run(tmp_path: Path) -> None:
    """End to end with the trained-encoder class: a model whose forward overflows on the
    probes is flagged in the index (and the others are not)."""
    import warnings

    from weightspace.nn.encoder import Encoder, EncoderConfig
    from weightspace.nn.probes import domain_key
    from weightspace.spec import mlp_spec

    spec = mlp_spec([6, 8, 3], "relu")
    config = EncoderConfig(
        hidden=16, edge_hidden=8, num_layers=1, embedding_dim=8, branches=("graph", "probe"),
        canonicalize=False, probes=4, probe_domains=(domain_key(spec),), probe_classes=3,
        probe_latent=4, probe_hidden=8, probe_dim=6,
    )  # fmt: skip
    torch.manual_seed(0)
    encoder = Encoder(config).double().eval()
    generator = torch.Generator().manual_seed(0)
    state = {n: torch.randn(s, generator=generator, dtype=torch.float64)
             for n, s in spec.param_shapes().items()}  # fmt: skip
    huge = {k: v * 1e200 for k, v in state.items()}  # finite in float64, overflows on probes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        index, report = ModelIndex.build(tmp_path / "idx", [(spec, state), (spec, huge)], encoder)
    assert [index.get(i).graph_only for i in report.added] == [False, True]
