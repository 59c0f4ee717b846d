"""Evaluation protocols: splits, accuracy prediction, retrieval S / L / F, derivatives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from weightspace import mlp_spec, to_graph
from weightspace.baselines import get_embedder
from weightspace.evaluate.derivatives import (
    DerivativeError,
    add_noise,
    finetune,
    magnitude_prune,
    make_derivative,
    quantize,
)
from weightspace.evaluate.protocols import (
    ProtocolError,
    Split,
    accuracy_prediction_metrics,
    check_split,
    evaluate_accuracy_prediction,
    evaluate_retrieval_function,
    evaluate_retrieval_lineage,
    evaluate_retrieval_symmetry,
    load_gallery,
    rank_by_cosine,
    retrieval_metrics,
    split_by_architecture,
    split_by_run,
    split_by_task,
)

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

SPEC = mlp_spec([6, 8, 8, 3])


def make_table(runs: int = 10, epochs: tuple[int, ...] = (0, 1, 2), archs=("mlp-w8-d1-relu",)):
    rows = []
    for arch in archs:
        for task in ("digits", "wine"):
            for r in range(runs):
                for e in epochs:
                    run = f"{task}.{arch}.r{r:05d}"
                    rows.append(
                        {
                            "checkpoint_id": f"{run}.e{e:03d}",
                            "run_id": run,
                            "epoch": e,
                            "task": task,
                            "arch": arch,
                            "test_accuracy": 0.1 * e + 0.01 * r,
                        }
                    )
    return pd.DataFrame(rows)


def run_of(table: pd.DataFrame, ids) -> set[str]:
    return set(table.set_index("checkpoint_id").loc[list(ids), "run_id"])


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


# ------------------------------------------------------------------ splits
@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    fractions=st.tuples(st.floats(0.1, 1), st.floats(0, 1), st.floats(0.1, 1)),
)
def test_split_by_run_never_shares_a_run(seed, fractions):
    table = make_table()
    split = split_by_run(table, fractions, seed)
    sides = [run_of(table, ids) if ids else set() for ids in (split.train, split.val, split.test)]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert sorted(split.train + split.val + split.test) == sorted(table["checkpoint_id"])
    assert split.train and split.test
    check_split(table, split)


def test_split_by_run_is_deterministic_and_seeded():
    table = make_table()
    assert split_by_run(table, seed=3) == split_by_run(table, seed=3)
    assert split_by_run(table, seed=3).test != split_by_run(table, seed=4).test


def test_check_split_catches_a_checkpoint_split():
    table = make_table(runs=2)
    ids = list(table["checkpoint_id"])
    with pytest.raises(ProtocolError, match="both train and test"):
        check_split(table, Split(tuple(ids[:1]), (), tuple(ids[1:])))


def test_split_by_architecture_holds_out_the_largest():
    table = make_table(runs=4, archs=("mlp-w8-d1-relu", "mlp-w16-d2-relu", "mlp-w32-d3-relu"))
    split = split_by_architecture(table, by="size", test_fraction=0.3)
    test_archs = set(table.set_index("checkpoint_id").loc[list(split.test), "arch"])
    train_archs = set(table.set_index("checkpoint_id").loc[list(split.train), "arch"])
    assert test_archs == {"mlp-w32-d3-relu"} and "mlp-w8-d1-relu" in train_archs
    check_split(table, split)
    wide = split_by_architecture(table, by="width", test_fraction=0.5)
    assert set(wide.info["held_out"]) == {"mlp-w32-d3-relu", "mlp-w16-d2-relu"}


def test_split_by_task():
    table = make_table(runs=4)
    split = split_by_task(table, "wine")
    tasks = table.set_index("checkpoint_id")["task"]
    assert set(tasks.loc[list(split.test)]) == {"wine"}
    assert set(tasks.loc[list(split.train + split.val)]) == {"digits"}
    with pytest.raises(ProtocolError, match="not in the table"):
        split_by_task(table, "mnist1d")


# ------------------------------------------------------------------ ranking and metrics
def test_rank_by_cosine_hand_built():
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    queries = np.array([[2.0, 0.1], [0.0, 3.0]])
    np.testing.assert_array_equal(rank_by_cosine(queries, gallery)[:, :3], [[0, 2, 1], [1, 2, 0]])
    ranked = rank_by_cosine(gallery[:2], gallery, exclude=[0, 1])
    assert ranked.shape == (2, 3) and 0 not in ranked[0] and 1 not in ranked[1]
    metrics = retrieval_metrics(rank_by_cosine(queries, gallery), [[2], [1]], 4, ks=(1, 2))
    assert metrics == {
        "recall@1": 0.5,
        "recall@2": 1.0,
        "mrr": 0.75,
        "gallery_size": 4,
        "num_queries": 2,
    }


def test_accuracy_prediction_metrics_hand_built():
    y = np.array([0.1, 0.2, 0.6, 0.9])
    out = accuracy_prediction_metrics(y, y, chance=0.15)
    assert out["kendall_tau"] == 1.0 and out["r2"] == 1.0 and out["mae"] == 0.0
    assert out["n_above_chance"] == 3 and out["kendall_tau_above_chance"] == 1.0
    reversed_ = accuracy_prediction_metrics(y, y[::-1], chance=None)
    assert reversed_["kendall_tau"] == -1.0 and "n_above_chance" not in reversed_
    assert np.isnan(accuracy_prediction_metrics(np.ones(3), y[:3])["r2"])


class WeightOracle:
    """Predicts exactly the quantity the test table records as accuracy."""

    def fit(self, graphs, targets=None):
        self.fitted = len(graphs)
        return self

    def predict(self, graphs):
        return np.array([float(torch.sigmoid(g.x.sum())) for g in graphs])


def test_evaluate_accuracy_prediction_with_an_oracle():
    table = make_table(runs=6)
    generator = torch.Generator().manual_seed(0)
    graphs = {}
    for cid in table["checkpoint_id"]:
        sd = {k: torch.randn(*s, generator=generator) for k, s in SPEC.param_shapes().items()}
        graphs[cid] = to_graph(SPEC, sd)
    table["test_accuracy"] = [
        float(torch.sigmoid(graphs[c].x.sum())) for c in table["checkpoint_id"]
    ]
    split = split_by_run(table, (0.5, 0.0, 0.5), seed=1)
    oracle = WeightOracle()
    out = evaluate_accuracy_prediction(
        oracle, table, split, graphs, chance={"digits": 0.1, "wine": 1 / 3}
    )
    assert oracle.fitted == len(split.train) == out["n_train"]
    assert out["kendall_tau"] == pytest.approx(1.0) and out["mae"] == pytest.approx(0.0)
    assert out["kendall_tau_above_chance"] == pytest.approx(1.0)
    assert out["n_test"] == len(split.test)
    # the registered tasks give chance = 1 / num_classes by default
    assert (
        evaluate_accuracy_prediction(oracle, table, split, graphs.__getitem__)["n_above_chance"] > 0
    )


def test_evaluate_accuracy_prediction_with_a_baseline():
    table = make_table(runs=6)
    generator = torch.Generator().manual_seed(0)
    graphs = {}
    for cid, acc in zip(table["checkpoint_id"], table["test_accuracy"], strict=True):
        sd = {
            k: torch.randn(*s, generator=generator) * (0.1 + acc)
            for k, s in SPEC.param_shapes().items()
        }
        graphs[cid] = to_graph(SPEC, sd)
    split = split_by_run(table, (0.6, 0.0, 0.4), seed=0)
    out = evaluate_accuracy_prediction(
        get_embedder("statnn", n_estimators=50, min_samples_leaf=2),
        table,
        split,
        graphs,
        chance=0.1,
    )
    assert out["kendall_tau"] > 0.5  # the weight scale gives the accuracy away


# ------------------------------------------------------------------ retrieval S
def random_gallery(n: int = 30, spec=SPEC, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [
        to_graph(
            spec, {k: torch.randn(*s, generator=generator) for k, s in spec.param_shapes().items()}
        )
        for _ in range(n)
    ]


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_retrieval_symmetry_invariant_vs_flat(activation):
    spec = mlp_spec([6, 8, 8, 3], activation)
    gallery = random_gallery(spec=spec)
    invariant = get_embedder("statnn", canonicalize=True).fit(gallery)
    out = evaluate_retrieval_symmetry(invariant, gallery, seed=0)
    assert out["recall@1"] == 1.0 and out["mrr"] == 1.0
    assert out["gallery_size"] == 30 and out["num_queries"] == 30
    flat = get_embedder("flat-mlp").fit(gallery)
    low = evaluate_retrieval_symmetry(flat, gallery, seed=0, num_queries=20)
    assert low["recall@1"] < 0.5 and low["num_queries"] == 20


def test_retrieval_symmetry_is_deterministic():
    gallery = random_gallery(12)
    flat = get_embedder("flat-mlp").fit(gallery)
    assert evaluate_retrieval_symmetry(flat, gallery, seed=5) == evaluate_retrieval_symmetry(
        flat, gallery, seed=5
    )


# ------------------------------------------------------------------ retrieval L
def test_retrieval_lineage_needs_the_symmetry_transform():
    graphs, runs, _ = make_lineage_zoo()
    flat = get_embedder("flat-mlp").fit(graphs)
    kinds = ("noise", "prune", "quantize")
    raw = evaluate_retrieval_lineage(flat, graphs, runs, derivatives=kinds, symmetry=False)
    assert raw["recall@1"] == 1.0  # raw checkpoints of a run sit together: too easy
    out = evaluate_retrieval_lineage(flat, graphs, runs, derivatives=kinds, seed=0)
    assert out["recall@1"] < 0.6 and out["symmetry"] is True
    assert set(out["by_derivative"]) == set(kinds)
    assert sum(v["num_queries"] for v in out["by_derivative"].values()) == out["num_queries"]
    invariant = get_embedder("statnn", canonicalize=True).fit(graphs)
    assert evaluate_retrieval_lineage(invariant, graphs, runs, derivatives=kinds)["recall@1"] >= 0.9


def test_retrieval_lineage_finetune_needs_data():
    graphs, runs, tasks = make_lineage_zoo(runs=3, epochs=2)
    flat = get_embedder("flat-mlp").fit(graphs)
    with pytest.raises(ProtocolError, match="task"):
        evaluate_retrieval_lineage(flat, graphs, runs, derivatives=("finetune",))
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 6, generator=generator), torch.randint(0, 3, (32,), generator=generator)
    out = evaluate_retrieval_lineage(
        flat,
        graphs,
        runs,
        tasks=tasks,
        derivatives=("finetune",),
        finetune_data=lambda t, s: (x, y),
    )
    assert out["num_queries"] == 6


# ------------------------------------------------------------------ retrieval F
class PredictionEmbedder:
    """Embeds a model by its predicted labels on fixed inputs: an oracle for retrieval F."""

    def __init__(self, inputs):
        self.inputs = inputs

    def embed(self, graphs):
        from weightspace.evaluate.protocols import predicted_labels

        labels = np.stack([predicted_labels(g, self.inputs) for g in graphs])
        return np.eye(3)[labels].reshape(len(graphs), -1)


def test_retrieval_function_oracle_and_exclusion():
    gallery = random_gallery(16)
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    tasks = ["toy"] * 16
    out = evaluate_retrieval_function(PredictionEmbedder(x), gallery, tasks, k=3, inputs={"toy": x})
    assert out["recall@1"] == 1.0 and out["gallery_size"] == 16 and out["k"] == 3
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


def test_load_gallery_from_mapping():
    table = make_table(runs=2)
    graphs = dict(zip(table["checkpoint_id"], random_gallery(len(table)), strict=True))
    ids = list(table["checkpoint_id"][:4])
    gallery = load_gallery(graphs, table, ids)
    assert gallery.graphs[0] is graphs[ids[0]] and gallery.runs[0] == table["run_id"][0]
    assert gallery.tasks == ("digits",) * 4


# ------------------------------------------------------------------ derivatives
def test_derivatives():
    generator = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(*s, generator=generator) for k, s in SPEC.param_shapes().items()}
    original = {k: v.clone() for k, v in sd.items()}
    pruned = magnitude_prune(SPEC, sd, 0.5)
    assert (pruned["0.weight"] == 0).sum() == sd["0.weight"].numel() // 2
    assert torch.equal(pruned["0.bias"], sd["0.bias"])
    quantised = quantize(SPEC, sd, bits=4)
    assert quantised["2.weight"].unique().numel() <= 15
    assert (quantised["2.weight"] - sd["2.weight"]).abs().max() <= sd["2.weight"].abs().max() / 14
    noisy = add_noise(SPEC, sd, 0.1, torch.Generator().manual_seed(0))
    relative = (noisy["0.weight"] - sd["0.weight"]).norm() / sd["0.weight"].norm()
    assert 0.05 < relative < 0.2
    x, y = torch.randn(64, 6, generator=generator), torch.randint(0, 3, (64,), generator=generator)
    tuned = finetune(SPEC, sd, x, y, steps=3, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(tuned["0.weight"], sd["0.weight"]) and set(tuned) == set(sd)
    for key in sd:  # inputs are never modified
        assert torch.equal(sd[key], original[key])
    with pytest.raises(DerivativeError, match="finetune_data"):
        make_derivative("finetune", SPEC, sd)
    with pytest.raises(DerivativeError, match="unknown derivative"):
        make_derivative("blur", SPEC, sd)


# ------------------------------------------------------------------ end to end on a real zoo
@pytest.mark.slow
def test_every_protocol_on_the_tiny_zoo(tmp_path):
    """Generate the ``tiny`` preset and run every available baseline through every protocol."""
    from weightspace.baselines import UnsupportedArchitectureError, list_embedders
    from weightspace.zoo import generate_zoo, get_preset

    zoo = generate_zoo(tmp_path / "zoo", get_preset("tiny"), show_progress=False)
    table = zoo.table
    split = split_by_run(table, (0.5, 0.0, 0.5), seed=0)
    gallery = load_gallery(zoo, table, split.test)
    for name in list_embedders(available_only=True):
        model = get_embedder(name, random_state=0)
        try:
            accuracy = evaluate_accuracy_prediction(model, table, split, zoo)
        except UnsupportedArchitectureError:
            assert name.startswith("nfn")  # the tiny zoo mixes architectures
            continue
        assert np.isfinite(accuracy["mae"])
        s = evaluate_retrieval_symmetry(model, gallery.graphs, seed=0)
        lineage = evaluate_retrieval_lineage(
            model, gallery.graphs, gallery.runs, tasks=gallery.tasks, seed=0
        )
        f = evaluate_retrieval_function(model, gallery.graphs, gallery.tasks, k=3)
        for out in (s, lineage, f):
            assert 0.0 <= out["recall@1"] <= out["recall@5"] <= out["recall@10"] <= 1.0
            assert out["gallery_size"] == len(split.test)
