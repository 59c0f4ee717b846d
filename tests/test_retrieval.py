"""Retrieval protocols: the shared ranking, S (invariance check), L (lineage) and F (function)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from weightspace import mlp_spec, to_graph
from weightspace.baselines import get_embedder
from weightspace.errors import WeightspaceError
from weightspace.evaluate import (
    LINEAGE_DERIVATIVES,
    ProtocolError,
    evaluate_retrieval_function,
    evaluate_retrieval_lineage,
    evaluate_retrieval_symmetry,
    lineage_queries,
    predicted_labels,
    rank_by_cosine,
    retrieval_metrics,
)
from weightspace.evaluate import lineage as lineage_module

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

SPEC = mlp_spec([6, 8, 8, 3])
CHEAP = ("noise", "prune", "quantize")


def random_gallery(n: int = 30, spec=SPEC, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [
        to_graph(
            spec, {k: torch.randn(*s, generator=generator) for k, s in spec.param_shapes().items()}
        )
        for _ in range(n)
    ]


def make_lineage_zoo(runs: int = 8, epochs: int = 3, spec=SPEC, seed: int = 0):
    """Runs whose checkpoints are small steps from one random initialisation."""
    generator = torch.Generator().manual_seed(seed)
    graphs, run_ids, tasks = [], [], []
    for r in range(runs):
        state = {k: torch.randn(*s, generator=generator) for k, s in spec.param_shapes().items()}
        for _ in range(epochs):
            state = {
                k: v + 0.05 * torch.randn(v.shape, generator=generator) for k, v in state.items()
            }
            graphs.append(to_graph(spec, state))
            run_ids.append(f"run{r}")
            tasks.append("toy")
    return graphs, run_ids, tasks


def toy_data(task, spec):
    generator = torch.Generator().manual_seed(0)
    return torch.randn(64, 6, generator=generator), torch.randint(0, 3, (64,), generator=generator)


class LookupEmbedder:
    """An oracle that knows where every graph came from: ``key(graph)`` → one-hot embedding."""

    def __init__(self, keys: dict[int, int], size: int, capabilities=None, fail_on=None):
        self.keys, self.size, self.fail_on = keys, size, fail_on
        if capabilities is not None:
            self.capabilities = capabilities

    def embed(self, graphs):
        if self.fail_on is not None and any(g.spec != self.fail_on for g in graphs):
            raise WeightspaceError("this method only knows one architecture")
        return np.eye(self.size)[[self.keys[id(g)] for g in graphs]]


class CoverageEmbedder(LookupEmbedder):
    """NaN rows for the architectures it does not cover, like a per-architecture method."""

    def embed(self, graphs):
        z = super().embed(graphs)
        z[[g.spec != SPEC for g in graphs]] = np.nan
        return z


# ------------------------------------------------------------------ ranking and metrics
def test_rank_by_cosine_hand_built():
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    queries = np.array([[2.0, 0.1], [0.0, 3.0]])
    np.testing.assert_array_equal(rank_by_cosine(queries, gallery)[:, :3], [[0, 2, 1], [1, 2, 0]])
    ranked = rank_by_cosine(gallery[:2], gallery, exclude=[0, 1])
    assert ranked.shape == (2, 3) and 0 not in ranked[0] and 1 not in ranked[1]
    # excluded sets go last, in gallery order, behind even a zero embedding
    last = rank_by_cosine(queries, gallery, exclude_sets=[[0, 2], [1]])
    np.testing.assert_array_equal(last, [[1, 3, 0, 2], [2, 0, 3, 1]])
    metrics = retrieval_metrics(rank_by_cosine(queries, gallery), [[2], [1]], 4, ks=(1, 2))
    assert metrics == {
        "recall@1": 0.5,
        "recall@2": 1.0,
        "mrr": 0.75,
        "map": 0.75,
        "gallery_size": 4.0,
        "num_queries": 2.0,
    }
    assert all(isinstance(v, float) for v in metrics.values())


# ------------------------------------------------------------------ S: an invariance check
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_retrieval_symmetry_invariant_vs_flat(activation):
    spec = mlp_spec([6, 8, 8, 3], activation)
    gallery = random_gallery(spec=spec)
    invariant = get_embedder("statnn", canonicalize=True).fit(gallery)
    out = evaluate_retrieval_symmetry(invariant, gallery, seed=0)
    assert out["recall@1"] == 1.0 and out["mrr"] == 1.0 and out["map"] == 1.0
    assert out["gallery_size"] == 30 and out["num_queries"] == 30
    flat = get_embedder("flat-mlp").fit(gallery)
    low = evaluate_retrieval_symmetry(flat, gallery, seed=0, num_queries=20)
    assert low["recall@1"] < 0.5 and low["num_queries"] == 20
    assert low["map"] == pytest.approx(low["mrr"])  # one relevant item per query


def test_retrieval_symmetry_is_deterministic():
    gallery = random_gallery(12)
    flat = get_embedder("flat-mlp").fit(gallery)
    assert evaluate_retrieval_symmetry(flat, gallery, seed=5) == evaluate_retrieval_symmetry(
        flat, gallery, seed=5
    )


# ------------------------------------------------------------------ L: lineage
def test_lineage_source_leaves_the_gallery():
    graphs, runs, _ = make_lineage_zoo()
    queries = lineage_queries(graphs, runs, derivatives=CHEAP, seed=0)
    assert len(queries.sources) == len(graphs) and queries.dropped_queries == 0
    for source, relevant in zip(queries.sources, queries.relevant, strict=True):
        assert source not in relevant
        assert sorted(relevant) == [
            j for j, r in enumerate(runs) if r == runs[source] and j != source
        ]
    # an oracle pointing each query at its own source checkpoint finds nothing: the source is out
    n = len(graphs)
    to_source = {id(g): i for i, g in enumerate(graphs)}
    to_source |= {id(q): s for q, s in zip(queries.graphs, queries.sources, strict=True)}
    source_only = evaluate_retrieval_lineage(
        LookupEmbedder(to_source, n), graphs, runs, queries=queries
    )
    # ties rank in gallery order: recall@1 only where the first other item is of the same run
    assert source_only["recall@1"] < 0.5
    # an oracle that knows each query's run finds every relevant item first
    to_run = {id(g): int(r[3:]) for g, r in zip(graphs, runs, strict=True)}
    to_run |= {
        id(q): int(runs[s][3:]) for q, s in zip(queries.graphs, queries.sources, strict=True)
    }
    perfect = evaluate_retrieval_lineage(LookupEmbedder(to_run, 8), graphs, runs, queries=queries)
    assert perfect["map"] == 1.0 and perfect["recall@1"] == 1.0
    for kind in CHEAP:
        assert perfect[f"{kind}/map"] == 1.0 and perfect[f"{kind}/recall@1"] == 1.0
    assert sum(perfect[f"{k}/num_queries"] for k in CHEAP) == perfect["num_queries"] == n


def test_lineage_drops_sources_without_another_checkpoint():
    graphs, runs, _ = make_lineage_zoo(runs=4, epochs=2)
    graphs, runs = graphs[:-1], runs[:-1]  # run3 keeps one checkpoint
    flat = get_embedder("flat-mlp").fit(graphs)
    out = evaluate_retrieval_lineage(flat, graphs, runs, derivatives=CHEAP, seed=1)
    assert out["dropped_queries"] == 1 and out["num_queries"] == len(graphs) - 1
    queries = lineage_queries(graphs, runs, derivatives=CHEAP, seed=1)
    assert len(graphs) - 1 not in queries.sources
    with pytest.raises(ProtocolError, match="two checkpoints"):
        lineage_queries(graphs[::2], runs[::2], derivatives=CHEAP)


def test_lineage_needs_the_symmetry_transform():
    graphs, runs, _ = make_lineage_zoo()
    flat = get_embedder("flat-mlp").fit(graphs)
    raw = evaluate_retrieval_lineage(flat, graphs, runs, derivatives=CHEAP, symmetry=False)
    assert raw["recall@1"] >= 0.9 and raw["symmetry"] == 0.0  # raw weights of a run sit together
    out = evaluate_retrieval_lineage(flat, graphs, runs, derivatives=CHEAP, seed=0)
    assert out["recall@1"] < 0.6 and out["symmetry"] == 1.0
    invariant = get_embedder("statnn", canonicalize=True).fit(graphs)
    assert evaluate_retrieval_lineage(invariant, graphs, runs, derivatives=CHEAP)["recall@1"] >= 0.9


def test_lineage_default_derivatives_and_cross_architecture_queries():
    graphs, runs, tasks = make_lineage_zoo(runs=4, epochs=2)
    queries = lineage_queries(graphs, runs, tasks=tasks, finetune_data=toy_data, seed=0)
    assert sorted(set(queries.kinds)) == sorted(LINEAGE_DERIVATIVES)
    for kind, query in zip(queries.kinds, queries.graphs, strict=True):
        assert (query.spec == SPEC) == (kind != "net2net")
    to_run = {id(g): int(r[3:]) for g, r in zip(graphs, runs, strict=True)}
    to_run |= {
        id(q): int(runs[s][3:]) for q, s in zip(queries.graphs, queries.sources, strict=True)
    }
    n = len(queries.kinds)
    wide = sum(k == "net2net" for k in queries.kinds)
    mixed = evaluate_retrieval_lineage(
        LookupEmbedder(to_run, 4, capabilities=frozenset({"embed", "mixed-architectures"})),
        graphs,
        runs,
        queries=queries,
    )
    assert mixed["map"] == 1.0 and mixed["net2net/map"] == 1.0 and not mixed.skipped
    # a method that cannot embed across architectures: widened queries are misses, with a reason
    for embedder in (
        LookupEmbedder(to_run, 4, capabilities=frozenset({"embed"})),
        LookupEmbedder(to_run, 4, fail_on=SPEC),
        CoverageEmbedder(to_run, 4),
    ):
        out = evaluate_retrieval_lineage(embedder, graphs, runs, queries=queries)
        assert out.get("net2net/map", 0.0) == 0.0 and any("L net2net" in k for k in out.skipped)
        assert out["map"] == pytest.approx((n - wide) / n) and out["num_queries"] == n
        assert out["distill/map"] == 1.0


def test_lineage_queries_are_made_once_per_gallery(monkeypatch):
    graphs, runs, _ = make_lineage_zoo(runs=4, epochs=2)
    made = []
    original = lineage_module.lineage_queries
    monkeypatch.setattr(
        lineage_module, "lineage_queries", lambda *a, **k: made.append(1) or original(*a, **k)
    )
    flat = get_embedder("flat-mlp").fit(graphs)
    first = evaluate_retrieval_lineage(flat, graphs, runs, derivatives=CHEAP, seed=3)
    second = evaluate_retrieval_lineage(flat, graphs, runs, derivatives=CHEAP, seed=3)
    assert first == second and len(made) == 1
    evaluate_retrieval_lineage(flat, graphs, runs, derivatives=CHEAP, seed=4)
    evaluate_retrieval_lineage(flat, list(graphs), runs, derivatives=CHEAP, seed=3)  # same objects
    assert len(made) == 2


def test_lineage_training_derivatives_need_tasks_and_unknown_tasks_are_skipped():
    graphs, runs, tasks = make_lineage_zoo(runs=3, epochs=2)
    flat = get_embedder("flat-mlp").fit(graphs)
    with pytest.raises(ProtocolError, match="task"):
        evaluate_retrieval_lineage(flat, graphs, runs, derivatives=("distill",))
    # "toy" is no registered task: its training derivatives are skipped with the reason
    out = evaluate_retrieval_lineage(
        flat, graphs, runs, tasks=tasks, derivatives=("noise", "finetune-long"), seed=0
    )
    assert out["finetune-long/inapplicable"] == 3 and "L finetune-long" in out.skipped
    assert out["num_queries"] == 3 and out["noise/num_queries"] == 3


# ------------------------------------------------------------------ F: function, other runs only
class PredictionEmbedder:
    """Embeds a model by its predicted labels on fixed inputs: an oracle for retrieval F."""

    def __init__(self, inputs):
        self.inputs = inputs

    def embed(self, graphs):
        labels = np.stack([predicted_labels(g, self.inputs) for g in graphs])
        return np.eye(3)[labels].reshape(len(graphs), -1)


def test_retrieval_function_oracle_and_exclusion():
    gallery = random_gallery(16)
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    tasks = ["toy"] * 16
    out = evaluate_retrieval_function(PredictionEmbedder(x), gallery, tasks, k=3, inputs={"toy": x})
    assert out["recall@1"] == 1.0 and out["gallery_size"] == 16 and out["k"] == 3
    assert 0.0 < out["map"] <= 1.0
    # a second task with too few models is skipped, not an error
    mixed = evaluate_retrieval_function(
        PredictionEmbedder(x),
        gallery,
        tasks[:14] + ["other"] * 2,
        k=3,
        inputs={"toy": x, "other": x},
    )
    assert mixed["num_queries"] == 14
    with pytest.raises(ProtocolError, match="more than k"):
        evaluate_retrieval_function(
            PredictionEmbedder(x), gallery[:3], ["toy"] * 3, k=3, inputs={"toy": x}
        )


def test_retrieval_function_counts_only_other_runs():
    """Each run holds two identical checkpoints: finding the twin is lineage, not function."""
    models = random_gallery(8)
    gallery = [g for g in models for _ in range(2)]
    runs = [f"run{i // 2}" for i in range(16)]
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    tasks = ["toy"] * 16
    twin = LookupEmbedder({id(g): i for i, g in enumerate(models)}, 8)
    without_runs = evaluate_retrieval_function(twin, gallery, tasks, k=3, inputs={"toy": x})
    with_runs = evaluate_retrieval_function(twin, gallery, tasks, k=3, runs=runs, inputs={"toy": x})
    assert without_runs["recall@1"] == 1.0  # the twin agrees perfectly and sits first
    assert with_runs["recall@1"] < 0.7  # the twin is out; the lineage oracle knows nothing else
    oracle = evaluate_retrieval_function(
        PredictionEmbedder(x), gallery, tasks, k=3, runs=runs, inputs={"toy": x}
    )
    assert oracle["recall@1"] == 1.0
    with pytest.raises(ProtocolError, match="run ids"):
        evaluate_retrieval_function(twin, gallery, tasks, runs=runs[:3], inputs={"toy": x})


def test_retrieval_function_skips_tasks_without_inputs():
    gallery = random_gallery(16)
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))

    def inputs(task):
        if task == "toy":
            return x
        raise WeightspaceError(f"task {task!r} is not registered")

    tasks = ["toy"] * 8 + ["mystery"] * 8
    out = evaluate_retrieval_function(PredictionEmbedder(x), gallery, tasks, k=3, inputs=inputs)
    assert out["num_queries"] == 8 and "F mystery" in out.skipped
    with pytest.raises(ProtocolError, match="not registered"):
        evaluate_retrieval_function(PredictionEmbedder(x), gallery, ["mystery"] * 16, inputs=inputs)
