"""Splits, accuracy prediction on a split, chance levels, galleries, and every protocol end to end.

Retrieval S / L / F are tested in ``test_retrieval.py``, derivatives in ``test_derivatives.py``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from weightspace import mlp_spec, to_graph
from weightspace.baselines import get_embedder
from weightspace.evaluate import (
    LINEAGE_DERIVATIVES,
    ProtocolError,
    Split,
    accuracy_prediction_metrics,
    chance_level,
    chance_levels,
    check_split,
    evaluate_accuracy_prediction,
    evaluate_retrieval_function,
    evaluate_retrieval_lineage,
    evaluate_retrieval_symmetry,
    load_gallery,
    split_by_architecture,
    split_by_run,
    split_by_task,
    split_runs,
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


# ------------------------------------------------------------------ splits
def test_split_runs_is_pinned_by_seed():
    """The splitter saved encoders record: a change here changes every recorded split."""
    runs = [f"r{i:02d}" for i in range(12)]
    assert split_runs(runs, 0.2, 0.2, seed=7) == {
        "val": ["r04", "r06"],
        "test": ["r00", "r10"],
        "train": ["r01", "r02", "r03", "r05", "r07", "r08", "r09", "r11"],
    }
    # one entry per checkpoint, in any order, gives the same split as the distinct runs
    shuffled = runs[::-1] * 3
    assert split_runs(shuffled, 0.2, 0.2, seed=7) == split_runs(runs, 0.2, 0.2, seed=7)
    assert split_runs(runs, 0.2, 0.2, seed=8) != split_runs(runs, 0.2, 0.2, seed=7)


@settings(max_examples=40, deadline=None)
@given(
    runs=st.integers(3, 60),
    val=st.floats(0.0, 0.45),
    test=st.floats(0.0, 0.45),
    seed=st.integers(0, 10_000),
)
def test_split_runs_partitions_the_runs(runs, val, test, seed):
    ids = [f"run{i}" for i in range(runs)]
    parts = split_runs(ids, val, test, seed)
    sides = [set(parts[k]) for k in ("train", "val", "test")]
    assert set().union(*sides) == set(ids) and sum(map(len, sides)) == runs
    assert parts["train"] and bool(parts["val"]) == (val > 0)
    assert all(parts[k] == sorted(parts[k]) for k in parts)


def test_split_runs_rejects_too_few_runs_and_bad_fractions():
    with pytest.raises(ProtocolError, match="at least 3"):
        split_runs(["a", "a", "b"], 0.2, 0.2, seed=0)
    assert split_runs(["a", "b"], 0.2, 0.0, seed=0)["val"] in (["a"], ["b"])
    with pytest.raises(ProtocolError, match="sum to less than 1"):
        split_runs(["a", "b", "c"], 0.6, 0.6, seed=0)


def test_split_by_run_uses_the_one_run_splitter():
    table = make_table()
    split = split_by_run(table, (0.6, 0.2, 0.2), seed=5)
    parts = split_runs(list(table["run_id"]), 0.2, 0.2, seed=5)
    for side in ("train", "val", "test"):
        assert run_of(table, getattr(split, side)) == set(parts[side])


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


# ------------------------------------------------------------------ accuracy prediction
def test_accuracy_prediction_metrics_hand_built():
    y = np.array([0.1, 0.2, 0.6, 0.9])
    out = accuracy_prediction_metrics(y, y, chance=0.15)
    assert out["kendall_tau"] == 1.0 and out["r2"] == 1.0 and out["mae"] == 0.0
    assert out["n_above_chance"] == 3 and out["kendall_tau_above_chance"] == 1.0
    reversed_ = accuracy_prediction_metrics(y, y[::-1], chance=None)
    assert reversed_["kendall_tau"] == -1.0 and "n_above_chance" not in reversed_
    assert np.isnan(accuracy_prediction_metrics(np.ones(3), y[:3])["r2"])


def test_chance_level_is_one_over_classes_or_nan():
    assert chance_level("wine") == pytest.approx(1 / 3)
    assert chance_level("digits") == pytest.approx(0.1)
    assert np.isnan(chance_level("someone-elses-task"))
    levels = chance_levels(["wine", "unknown", "digits"], {"digits": 0.5})
    assert levels[0] == pytest.approx(1 / 3) and np.isnan(levels[1]) and levels[2] == 0.5
    assert chance_levels(["wine", "x"], 0.2).tolist() == [0.2, 0.2]


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


# ------------------------------------------------------------------ galleries
def test_load_gallery_from_mapping():
    table = make_table(runs=2)
    generator = torch.Generator().manual_seed(0)
    graphs = {
        cid: to_graph(
            SPEC, {k: torch.randn(*s, generator=generator) for k, s in SPEC.param_shapes().items()}
        )
        for cid in table["checkpoint_id"]
    }
    ids = list(table["checkpoint_id"][:4])
    gallery = load_gallery(graphs, table, ids)
    assert gallery.graphs[0] is graphs[ids[0]] and gallery.runs[0] == table["run_id"][0]
    assert gallery.tasks == ("digits",) * 4
    with pytest.raises(ProtocolError, match="not in the table"):
        load_gallery(graphs, table, ["nope"])


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
        f = evaluate_retrieval_function(
            model, gallery.graphs, gallery.tasks, k=3, runs=gallery.runs
        )
        for out in (s, lineage, f):
            assert 0.0 <= out["recall@1"] <= out["recall@5"] <= out["recall@10"] <= 1.0
            assert 0.0 <= out["map"] <= 1.0
            assert out["gallery_size"] == len(split.test)
        assert all(f"{kind}/map" in lineage for kind in LINEAGE_DERIVATIVES)
