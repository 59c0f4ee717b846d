"""Bench on token-input zoos: the lora preset's task data, token probes, and task retrieval (T)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from weightspace.baselines.reference import Probing, _gaussian_inputs, _task_inputs
from weightspace.bench.data import GraphCache, model_set, zoo_table
from weightspace.evaluate.retrieval import evaluate_retrieval_function, predicted_labels
from weightspace.evaluate.tables import ProtocolError
from weightspace.graph import to_state_dict
from weightspace.module import to_module
from weightspace.zoo.lora_zoo import (
    TASKS,
    generate_lora_zoo,
    register_lora_tasks,
    task_labels,
    token_splits,
)
from weightspace.zoo.store import ZooError
from weightspace.zoo.tasks import get_task

SEED = 3  # a seed no other test's lora zoo uses: task names are registered per process


@pytest.fixture(scope="module")
def lora_zoo(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A lora zoo of 3 runs per task, 1 epoch, one checkpoint per run (a few seconds)."""
    preset = SimpleNamespace(
        name="lora",
        runs=3,
        settings=SimpleNamespace(epochs=1, checkpoint_epochs=(1,), batch_size=256),
    )
    out: Path = tmp_path_factory.mktemp("lora") / "zoo"
    zoo = generate_lora_zoo(out, preset, seed=SEED)
    register_lora_tasks(zoo)
    return zoo


def test_registered_tasks_are_the_zoos_sequences_and_labels(lora_zoo: Any) -> None:
    _, splits = token_splits(SEED)
    for task in TASKS:
        registered = get_task(f"lora-seq-{task}")
        assert registered.num_classes == 4
        for split, tokens in splits.items():
            assert torch.equal(registered.features[split].long(), tokens)
            assert torch.equal(registered.labels[split], task_labels(task, tokens))


def test_registration_reproduces_the_recorded_accuracy(lora_zoo: Any) -> None:
    row = lora_zoo.table.iloc[0]
    graph = lora_zoo.graph(str(row["checkpoint_id"]))
    task = get_task(str(row["task"]))
    accuracy = (
        predicted_labels(graph, task.features["test"]) == task.labels["test"].numpy()
    ).mean()
    assert accuracy == pytest.approx(float(row["test_accuracy"]), abs=1e-6)


def test_other_data_under_the_zoos_seed_is_refused(lora_zoo: Any) -> None:
    class OtherSeed:  # the same zoo, but a manifest claiming another seed
        manifest = {**lora_zoo.manifest, "config": {**lora_zoo.manifest["config"], "seed": 99}}
        root, table = lora_zoo.root, lora_zoo.table
        spec, state_dict = lora_zoo.spec, lora_zoo.state_dict

    with pytest.raises(ZooError, match="cannot be rebuilt"):
        register_lora_tasks(OtherSeed())


def test_other_zoos_register_nothing() -> None:
    assert register_lora_tasks(SimpleNamespace(manifest={"config": {"preset": "small"}})) == []


def test_token_models_get_token_probes(lora_zoo: Any) -> None:
    spec = lora_zoo.graph(str(lora_zoo.table.iloc[0]["checkpoint_id"])).spec
    gauss = _gaussian_inputs(spec, 64, seed=0)
    assert gauss.dtype == torch.int64 and gauss.shape == (64, 8)
    assert int(gauss.min()) >= 0 and int(gauss.max()) < 12
    assert len(torch.unique(gauss)) > 6  # spread over the vocabulary, not a constant
    assert torch.equal(gauss, _gaussian_inputs(spec, 64, seed=0))
    task = _task_inputs("lora-seq-low", spec, 64, seed=0)
    assert task.dtype == torch.int64
    rows = {tuple(r) for r in get_task("lora-seq-low").features["train"].long().tolist()}
    assert all(tuple(r) in rows for r in task.tolist())


@pytest.mark.parametrize("inputs", ["gaussian", "task"])
def test_probing_rows_are_the_models_outputs_on_token_ids(lora_zoo: Any, inputs: str) -> None:
    table = zoo_table(lora_zoo)
    models = model_set(table, GraphCache(lora_zoo), list(table["checkpoint_id"]))
    probing = Probing(inputs, probes=16, tune=False).fit(models, models.column("test_accuracy"))
    z = probing.embed(models)
    assert probing.failed == {} and z.shape == (len(models), 16 * 4) and np.isfinite(z).all()
    graph = models.graphs[0]
    x = (
        _gaussian_inputs(graph.spec, 16, 0)
        if inputs == "gaussian"
        else _task_inputs(str(table["task"].iloc[0]), graph.spec, 16, 0)
    )
    with torch.no_grad():
        expected = to_module(graph.spec, to_state_dict(graph))(x).log_softmax(-1)
    np.testing.assert_allclose(z[0], expected.reshape(-1).numpy(), rtol=1e-5, atol=1e-5)
    assert np.isfinite(probing.predict_accuracy(models)).all()


def test_function_retrieval_runs_on_token_models(lora_zoo: Any) -> None:
    table = zoo_table(lora_zoo)
    models = model_set(table, GraphCache(lora_zoo), list(table["checkpoint_id"]))
    flat = SimpleNamespace(
        embed=lambda gs: np.stack(
            [np.concatenate([v.flatten() for v in to_state_dict(g).values()]) for g in gs]
        )
    )
    out = evaluate_retrieval_function(flat, models.graphs, [str(t) for t in table["task"]], k=1)
    assert not out.skipped and 0.0 < out["map"] <= 1.0


class _Lookup:
    """An embedder of plain labels: item ``i`` embeds as ``vectors[i]``."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors

    def embed(self, items: list[int]) -> np.ndarray:
        return self.vectors[items]


def test_task_relevance_is_every_model_of_the_task_from_other_runs() -> None:
    tasks = ["a"] * 6 + ["b"] * 6
    runs = [f"{t}{i // 2}" for t, i in zip(tasks, list(range(6)) * 2, strict=True)]
    gallery = list(range(12))
    rng = np.random.default_rng(0)
    by_task = np.repeat(np.eye(2), 6, axis=0) + 0.01 * rng.normal(size=(12, 2))
    perfect = evaluate_retrieval_function(
        _Lookup(by_task), gallery, tasks, runs=runs, relevance="task"
    )
    assert perfect["map"] == pytest.approx(1.0) and perfect["num_queries"] == 12
    # Embeddings that find only a model's own run (excluded) and otherwise mix the tasks.
    by_run = np.zeros((12, 6))
    for i, run in enumerate(sorted(set(runs))):
        by_run[[j for j in range(12) if runs[j] == run], i] = 1.0
    by_run += 0.01 * rng.normal(size=by_run.shape)
    lineage = evaluate_retrieval_function(
        _Lookup(by_run), gallery, tasks, runs=runs, relevance="task"
    )
    assert lineage["map"] < 0.8


def test_task_relevance_needs_another_run_and_a_valid_name() -> None:
    with pytest.raises(ProtocolError, match="other runs"):
        evaluate_retrieval_function(
            _Lookup(np.eye(2)), [0, 1], ["a", "b"], runs=["r0", "r1"], relevance="task"
        )
    with pytest.raises(ProtocolError, match="relevance"):
        evaluate_retrieval_function(_Lookup(np.eye(2)), [0, 1], ["a", "a"], relevance="label")


def test_bench_trains_token_zoos_with_the_graph_branch(lora_zoo: Any) -> None:
    from weightspace.bench.encoders import _reads_token_ids

    assert _reads_token_ids(str(lora_zoo.root))


def test_the_rebuilt_base_is_the_zoos_and_is_registered(lora_zoo: Any) -> None:
    from weightspace.nn.adapter_features import find_base, merged_delta
    from weightspace.zoo.lora_zoo import TARGETS, lora_base

    base = lora_base(lora_zoo)
    first = str(lora_zoo.table.iloc[0]["checkpoint_id"])
    assert find_base(lora_zoo.spec(first)).modules == TARGETS  # register_lora_tasks did it
    deltas = merged_delta(lora_zoo.spec(first), lora_zoo.state_dict(first), base)
    rank = int(lora_zoo.table.iloc[0]["rank"])
    for module in TARGETS:  # the update of a rank-r adapter has rank <= r, and is not zero
        singular = torch.linalg.svdvals(deltas[module])
        assert singular[0] > 0
        tail = torch.cat([singular[rank:], singular.new_zeros(1)])  # float32 rounding only
        assert float(tail.max()) < 1e-3 * float(singular[0])


def test_adapter_rows_embed_and_predict(lora_zoo: Any) -> None:
    from weightspace.evaluate.methods import build_method

    table = zoo_table(lora_zoo)
    graphs = GraphCache(lora_zoo)
    models = model_set(table, graphs, list(table["checkpoint_id"]))
    y = models.column("test_accuracy")
    ours = build_method("weightspace-adapter", config=None).fit(models, y)
    z = ours.embed(models)
    assert z.shape == (len(models), 16 * 16 + 32 * 32 + 16 * 16) and np.isfinite(z).all()
    assert np.allclose(np.linalg.norm(z, axis=1), np.sqrt(3))  # one unit vector per module
    assert np.isfinite(ours.predict_accuracy(models)).all()
    statnn = build_method("statnn-delta").fit(models, y)
    assert statnn.name == "statnn-delta"
    raw = build_method("statnn").fit(models, y)
    assert not np.allclose(statnn.embed(models), raw.embed(models))  # it reads ΔW, not W + ΔW


def test_a_base_that_cannot_be_rebuilt_is_refused(lora_zoo: Any) -> None:
    from weightspace.zoo.lora_zoo import lora_base

    other = SimpleNamespace(  # the zoo, but claiming another batch size: another base
        manifest={**lora_zoo.manifest, "batch_size": 64},
        table=lora_zoo.table,
        root=lora_zoo.root,
        spec=lora_zoo.spec,
        state_dict=lora_zoo.state_dict,
    )
    with pytest.raises(ZooError, match="base cannot be rebuilt"):
        lora_base(other)
