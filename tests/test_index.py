"""Tests of weightspace.index: the persistent FAISS + SQLite model index and its CLI."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_runner import run_cli
from weightspace.errors import WeightspaceError
from weightspace.index import (
    INDEX_FORMAT_VERSION,
    EncoderMismatchError,
    IndexBusyError,
    IndexFormatError,
    ModelIndex,
    VectorStore,
    content_hash,
    iter_inputs,
    parse_filters,
)

DIM = 24


class StandInEmbedder:
    """A tiny deterministic encoder: quantiles of the weights and biases of a NeuralGraph.

    Sorted statistics are invariant to permutations of hidden neurons, which is all these tests
    need until the trained encoder is used.
    """

    fingerprint = "stand-in-quantiles-v1"
    dim = DIM

    def embed(self, graphs: list) -> np.ndarray:
        out = []
        levels = torch.linspace(0, 1, DIM // 2, dtype=torch.float64)
        for graph in graphs:
            weights = graph.edge_attr[:, 0].double()
            biases = graph.x[:, 0].double()
            out.append(torch.cat([torch.quantile(weights, levels), torch.quantile(biases, levels)]))
        return torch.stack(out).float().numpy()

    def predict_accuracy(self, graphs: list) -> np.ndarray:
        return np.array([float(torch.sigmoid(g.edge_attr[:, 0].mean())) for g in graphs])


class OtherEmbedder(StandInEmbedder):
    fingerprint = "some-other-encoder"


class FailingEmbedder(StandInEmbedder):
    """Fails on its second batch: a build interrupted after half of its vectors."""

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, graphs: list) -> np.ndarray:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("injected failure after half the vectors")
        return super().embed(graphs)


def save_mlp(path: Path, seed: int, sizes: tuple[int, ...] = (6, 8, 3)) -> Path:
    from weightspace.ingest import save_checkpoint
    from weightspace.spec import mlp_spec

    spec = mlp_spec(list(sizes), "relu")
    generator = torch.Generator().manual_seed(seed)
    state = {
        name: torch.randn(shape, generator=generator) for name, shape in spec.param_shapes().items()
    }
    return save_checkpoint(path, spec, state)


@pytest.fixture
def checkpoints(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "ckpts"
    return [save_mlp(folder / f"m{i}.safetensors", seed=i) for i in range(6)]


def unit(rows: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def records(n: int, start: int = 0, **metrics: object) -> list[dict]:
    return [
        {"path": f"m{i}", "content_hash": f"h{i}", "metrics": {"i": i, **metrics}}
        for i in range(start, start + n)
    ]


def empty_index(path: Path, embedder: object = None) -> ModelIndex:
    index, _ = ModelIndex.build(path, [], embedder or StandInEmbedder())
    return index


# ------------------------------------------------------------------------------ build & search
def test_build_and_search_finds_each_stored_file_first(tmp_path: Path, checkpoints) -> None:
    embedder = StandInEmbedder()
    index, report = ModelIndex.build(tmp_path / "idx", iter_inputs(checkpoints), embedder)
    assert len(index) == len(checkpoints) == len(report.added)
    assert index.dim == DIM and index.fingerprint == embedder.fingerprint
    queries = list(iter_inputs(checkpoints))
    for query, hits in zip(queries, index.search_models(queries, embedder, k=3), strict=True):
        assert hits[0].record.path == query.path
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert [h.rank for h in hits] == [1, 2, 3]
        assert hits[0].score >= hits[1].score >= hits[2].score
        assert "linear6x8" in hits[0].record.spec_summary
    # reopening gives the same answers
    reopened = ModelIndex.open(tmp_path / "idx")
    assert len(reopened) == len(index)
    assert reopened.get(0) == index.get(0)
    assert reopened.get(10_000) is None


def test_permuted_hidden_neurons_find_their_source(tmp_path: Path, checkpoints) -> None:
    from weightspace.ingest import load_checkpoint, save_checkpoint

    embedder = StandInEmbedder()
    index, _ = ModelIndex.build(tmp_path / "idx", iter_inputs(checkpoints), embedder)
    spec, state = load_checkpoint(checkpoints[2])
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    permuted = {
        "0.weight": state["0.weight"][perm],
        "0.bias": state["0.bias"][perm],
        "2.weight": state["2.weight"][:, perm],
        "2.bias": state["2.bias"],
    }
    query = save_checkpoint(tmp_path / "permuted.safetensors", spec, permuted)
    [hits] = index.search_models(list(iter_inputs([query])), embedder, k=1)
    assert hits[0].record.path == str(checkpoints[2])


def test_same_content_is_stored_once(tmp_path: Path, checkpoints) -> None:
    embedder = StandInEmbedder()
    index, _ = ModelIndex.build(tmp_path / "idx", iter_inputs(checkpoints[:3]), embedder)
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(checkpoints[0].read_bytes())
    report = index.add(
        iter_inputs([checkpoints[0], copy, checkpoints[3], checkpoints[3]]), embedder
    )
    assert report.added == [3]
    assert sorted(report.duplicates) == sorted(
        [(str(checkpoints[0]), 0), (str(copy), 0), (str(checkpoints[3]), 3)]
    )
    assert len(ModelIndex.open(tmp_path / "idx")) == 4


def test_content_hash_ignores_order_and_format_but_not_spec() -> None:
    a = {"0.weight": torch.ones(2, 2), "0.bias": torch.zeros(2)}
    b = {"0.bias": torch.zeros(2), "0.weight": torch.ones(2, 2)}
    as_numpy = {k: v.numpy() for k, v in a.items()}
    assert content_hash('{"a":1,"b":2}', a) == content_hash('{"b": 2, "a": 1}', b)
    assert content_hash("{}", a) == content_hash("{}", as_numpy)
    assert content_hash('{"a":1}', a) != content_hash('{"a":2}', a)
    assert content_hash("{}", a) != content_hash("{}", {**a, "0.bias": torch.ones(2)})


# ------------------------------------------------------------------------------ one trip
def test_encoder_path_builds_each_graph_once_after_canonicalising(
    tmp_path: Path, checkpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trained encoder is handed (spec, state_dict) pairs: one to_graph per model, no
    graph taken apart again, and the same vectors as embedding the files directly."""
    import weightspace.graph
    import weightspace.nn.encoder as encoder_module
    from weightspace.nn import Encoder, EncoderConfig

    torch.manual_seed(0)
    encoder = Encoder(EncoderConfig(hidden=8, edge_hidden=8, num_layers=1, embedding_dim=8))
    calls = {"to_graph": 0, "to_state_dict": 0}

    def counting(name: str, function):  # noqa: ANN001, ANN202
        def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            calls[name] += 1
            return function(*args, **kwargs)

        return wrapper

    for module in (weightspace.graph, encoder_module):
        monkeypatch.setattr(module, "to_graph", counting("to_graph", module.to_graph))
        monkeypatch.setattr(
            module, "to_state_dict", counting("to_state_dict", module.to_state_dict)
        )
    index, _ = ModelIndex.build(tmp_path / "idx", iter_inputs(checkpoints), encoder)
    assert calls == {"to_graph": len(checkpoints), "to_state_dict": 0}
    monkeypatch.undo()
    direct = encoder.embed([str(c) for c in checkpoints])
    direct /= np.linalg.norm(direct, axis=1, keepdims=True)
    np.testing.assert_allclose(index.store.reconstruct_all(), direct, rtol=0, atol=1e-6)


def test_graph_embedders_get_graphs_built_lazily(checkpoints) -> None:
    from weightspace.graph import NeuralGraph
    from weightspace.index import embedder_inputs

    [model] = list(iter_inputs(checkpoints[:1]))
    assert model.prebuilt_graph is None  # loading builds no graph
    [graph] = embedder_inputs(StandInEmbedder(), [model])
    assert isinstance(graph, NeuralGraph) and model.graph is graph  # built once, kept


# ------------------------------------------------------------------------------ refusals
def test_index_cannot_be_used_with_another_encoder(tmp_path: Path, checkpoints) -> None:
    index, _ = ModelIndex.build(tmp_path / "idx", iter_inputs(checkpoints), StandInEmbedder())
    with pytest.raises(EncoderMismatchError, match="another encoder|given encoder"):
        index.search_models(list(iter_inputs(checkpoints[:1])), OtherEmbedder())
    with pytest.raises(EncoderMismatchError):
        index.add(iter_inputs(checkpoints[:1]), OtherEmbedder())
    assert len(ModelIndex.open(tmp_path / "idx")) == len(checkpoints)


def test_other_format_version_is_refused_clearly(tmp_path: Path) -> None:
    empty_index(tmp_path / "idx")
    with sqlite3.connect(tmp_path / "idx" / "meta.sqlite") as connection:
        connection.execute("UPDATE manifest SET value = '99' WHERE key = 'format_version'")
    with pytest.raises(IndexFormatError, match=f"version 99.*reads version {INDEX_FORMAT_VERSION}"):
        ModelIndex.open(tmp_path / "idx")
    # and it is replaced only on request
    with pytest.raises(WeightspaceError, match="already exists"):
        empty_index(tmp_path / "idx")
    index, _ = ModelIndex.build(tmp_path / "idx", [], StandInEmbedder(), overwrite=True)
    assert index.manifest["format_version"] == INDEX_FORMAT_VERSION


@pytest.mark.parametrize("make", ["missing", "empty_dir", "garbage_db", "file"])
def test_non_index_paths_are_refused(tmp_path: Path, make: str) -> None:
    target = tmp_path / "x"
    if make == "empty_dir":
        target.mkdir()
    elif make == "garbage_db":
        target.mkdir()
        (target / "meta.sqlite").write_bytes(b"not a database at all" * 100)
    elif make == "file":
        target.write_text("hello")
    with pytest.raises(IndexFormatError, match=str(target)):
        ModelIndex.open(target)


def test_second_writer_waits_then_gives_up(tmp_path: Path) -> None:
    from filelock import FileLock

    index = empty_index(tmp_path / "idx")
    with FileLock(str(tmp_path / "idx" / "write.lock")), pytest.raises(IndexBusyError):
        index.add_vectors(unit(2), records(2), lock_timeout=0.1)
    assert index.add_vectors(unit(2), records(2)).added == [0, 1]


def test_bad_vectors_and_queries_are_refused(tmp_path: Path) -> None:
    index = empty_index(tmp_path / "idx")
    index.add_vectors(unit(3), records(3))
    with pytest.raises(WeightspaceError, match="NaN"):
        index.add_vectors(np.full((1, DIM), np.nan, dtype=np.float32), records(1, 10))
    with pytest.raises(WeightspaceError, match="zero vector"):
        index.search(np.zeros(DIM))
    with pytest.raises(WeightspaceError, match="dim"):
        index.search(np.ones(DIM + 1))
    with pytest.raises(WeightspaceError, match="k must"):
        index.search(np.ones(DIM), k=0)
    assert len(ModelIndex.open(tmp_path / "idx")) == 3


# ------------------------------------------------------------------------------ integrity
def test_exception_midway_leaves_previous_index(tmp_path: Path, checkpoints) -> None:
    path = tmp_path / "idx"
    index, _ = ModelIndex.build(path, iter_inputs(checkpoints[:2]), StandInEmbedder())
    before = index.search(unit(1), k=2)
    # rebuild over it with an encoder that dies after the first of two batches
    with pytest.raises(RuntimeError, match="injected"):
        ModelIndex.build(
            path, iter_inputs(checkpoints), FailingEmbedder(), overwrite=True, batch_size=3
        )
    with pytest.raises(RuntimeError, match="injected"):
        index.add(iter_inputs(checkpoints), FailingEmbedder(), batch_size=2)
    after = ModelIndex.open(path)
    assert len(after) == 2
    assert after.search(unit(1), k=2) == before


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from weightspace.index import ModelIndex

    path, stage = sys.argv[1], sys.argv[2]
    index = ModelIndex.open(path)
    vectors = np.random.default_rng(1).normal(size=(25_000, 24)).astype(np.float32)
    records = [{"path": f"new{i}", "content_hash": f"new{i}"} for i in range(len(vectors))]

    def on_progress(step, done, total):
        if step == stage and done >= 10_000:
            os.kill(os.getpid(), signal.SIGKILL)

    index.add_vectors(vectors, records, on_progress=on_progress)
    print("not killed")
    """
)


def test_sigkill_midway_leaves_previous_index_loadable(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    index = empty_index(path)
    index.add_vectors(unit(5), records(5))
    before = index.search(unit(2, seed=9), k=3)
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(path), "write"], capture_output=True, timeout=120
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    assert any(p.name.startswith("vectors-") for p in path.iterdir())
    after = ModelIndex.open(path)
    assert len(after) == 5
    assert after.search(unit(2, seed=9), k=3) == before
    # the interrupted write left nothing that blocks the next one
    assert after.add_vectors(unit(2, seed=4), records(2, 100)).added == [5, 6]
    assert len(ModelIndex.open(path)) == 7
    assert len([p for p in path.iterdir() if p.suffix == ".faiss"]) == 1


# ------------------------------------------------------------------------------ filters
def test_filters_restrict_results(tmp_path: Path) -> None:
    index = empty_index(tmp_path / "idx")
    index.add_vectors(unit(6), records(3, task="digits") + records(3, 3, task="wine"))
    [hits] = index.search(unit(1, seed=5), k=10, filters=["task=wine"])
    assert {h.record.metrics["task"] for h in hits} == {"wine"} and len(hits) == 3
    [hits] = index.search(unit(1, seed=5), k=10, filters={"task": "wine", "i": 4})
    assert [h.record.id for h in hits] == [4]
    [hits] = index.search(unit(1, seed=5), k=10, filters=["task=none"])
    assert hits == []
    with pytest.raises(WeightspaceError, match="key=value"):
        parse_filters(["task"])
    with pytest.raises(WeightspaceError, match="filter key"):
        parse_filters(["ta'sk=1"])


def test_parse_filters_types() -> None:
    assert parse_filters(["epoch=10", "lr=0.5", "task=digits", "ok=true"]) == {
        "epoch": 10,
        "lr": 0.5,
        "task": "digits",
        "ok": True,
    }


# ------------------------------------------------------------------------------ vector store
@pytest.mark.parametrize("kind", ["auto", "hnsw"])
def test_approximate_store_measures_its_recall(kind: str) -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(40, 32))
    x = centers[rng.integers(0, 40, 3000)] + 0.6 * rng.normal(size=(3000, 32))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    store = VectorStore(32, kind=kind, approximate_threshold=1000)
    store.add(x[:500])
    assert store.active_kind == ("flat" if kind == "auto" else "hnsw")
    store.add(x[500:])
    assert store.active_kind == ("ivf" if kind == "auto" else "hnsw")
    assert store.recall_at_10 is not None and store.recall_at_10 >= store.target_recall
    np.testing.assert_allclose(store.reconstruct_all(), x, atol=1e-6)
    _, rows = store.search(x[:50], 1)
    assert np.mean(rows[:, 0] == np.arange(50)) >= 0.9
    store.add(x[:10])  # a small add keeps the measured recall; 10% growth re-measures it
    assert store.tuned_at == 3000 and len(store) == 3010
    allowed = np.arange(0, 3000, 7)
    _, rows = store.search(x[:5], 5, allowed_rows=allowed)
    assert set(rows.ravel()) <= set(allowed)


def test_approximate_index_persists_its_recall(tmp_path: Path) -> None:
    index, _ = ModelIndex.build(tmp_path / "idx", [], StandInEmbedder(), approximate_threshold=1000)
    index.add_vectors(unit(1500), records(1500))
    reopened = ModelIndex.open(tmp_path / "idx")
    state = reopened.manifest["store"]
    assert state["active_kind"] == "ivf" and state["recall_at_10"] >= 0.95
    assert reopened.store.search_parameter == state["search_parameter"]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 40), st.integers(0, 1000), st.integers(1, 12))
def test_exact_store_returns_the_stored_vector_first(n: int, seed: int, k: int) -> None:
    x = unit(n, seed=seed)
    store = VectorStore(DIM)
    store.add(x)
    scores, rows = store.search(x, k)
    assert rows.shape == (n, min(k, n))
    np.testing.assert_array_equal(rows[:, 0], np.arange(n))
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    assert np.all(scores <= 1 + 1e-5)


# ------------------------------------------------------------------------------ CLI


def test_cli_build_add_search(tmp_path: Path, checkpoints, capsys) -> None:
    index_dir = str(tmp_path / "idx")
    encoder = "test_index:StandInEmbedder"
    code, out, err = run_cli(
        capsys,
        "index",
        "build",
        "--encoder",
        encoder,
        "--out",
        index_dir,
        *map(str, checkpoints[:4]),
    )
    assert code == 0, err
    # an importable encoder is never recorded: later commands must name it again
    code, out, err = run_cli(capsys, "index", "add", index_dir, *map(str, checkpoints[2:]))
    assert code == 1 and "pass --encoder" in err and "Traceback" not in err
    with_encoder = ("--encoder", encoder)
    code, out, err = run_cli(
        capsys, "index", "add", index_dir, *map(str, checkpoints[2:]), *with_encoder
    )
    assert code == 0, err
    assert "2 added" in out and "2 already stored" in out
    code, out, err = run_cli(
        capsys, "search", index_dir, str(checkpoints[1]), "-k", "3", "--json", *with_encoder
    )
    assert code == 0, err
    hits = json.loads(out)
    code, out, err = run_cli(capsys, "index", "info", index_dir)
    info = json.loads(out)
    assert code == 0 and info["count"] == 6 and info["fingerprint"] == "stand-in-quantiles-v1"
    assert info["encoder"] is None and info["integrity"]["status"] == "ok"
    assert len(hits) == 3 and hits[0]["path"] == str(checkpoints[1])
    code, out, err = run_cli(
        capsys, "search", index_dir, str(checkpoints[1]), "-k", "2", *with_encoder
    )
    assert code == 0 and "m1.safetensors" in out
    # errors are one line, no traceback
    code, out, err = run_cli(capsys, "search", str(tmp_path / "nope"), str(checkpoints[1]))
    assert code == 1 and "not a weightspace index" in err
    assert "Traceback" not in err
    code, out, err = run_cli(
        capsys, "search", index_dir, str(checkpoints[1]), "--encoder", "test_index:OtherEmbedder"
    )
    assert code == 1 and "encoder" in err
