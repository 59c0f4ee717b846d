"""report.md from typed results: primary columns first, reference rows in every table, the
spread the header names, figures beside their tables; results.json round-trips."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from weightspace import report_plots
from weightspace.evaluate.results import (
    MethodScore,
    Predictions,
    PredictionSection,
    Results,
    ResultsError,
    RetrievalScore,
    ZooSummary,
)
from weightspace.report import format_cell, summarise, write_report
from weightspace.report import main as report_main


def _score(seed: int, within: float, pooled: float, coverage: float = 1.0, **extra) -> MethodScore:
    metrics = {"within_group_tau": within, "final_tau": within / 2, "kendall_tau": pooled}
    return MethodScore(
        seed=seed,
        coverage=coverage,
        common=metrics,
        own=metrics,
        per_task={"wine": {"within_group_tau": within}, "digits": {"within_group_tau": -within}},
        **extra,
    )


def _results(spread: str = "seeds") -> Results:
    section = PredictionSection("held-out runs", test_size=[40, 40], common_size=[30, 30])
    section.add("weightspace", _score(0, 0.30, 0.60, bootstrap_std={"within_group_tau": 0.05}))
    section.add("weightspace", _score(1, 0.50, 0.70, bootstrap_std={"within_group_tau": 0.07}))
    section.add("metadata", _score(0, 0.0, 0.80))
    section.add("metadata", _score(1, 0.0, 0.82))
    section.add("nfn-hnp", _score(0, 0.6, 0.5, coverage=0.75, refused={"cnn@digits": "too few"}))
    results = Results(
        config={"methods": ["weightspace", "metadata", "probing-gauss", "nfn-hnp"], "bootstrap": 9},
        zoo=ZooSummary("z", "z", 40, 10, ["digits", "wine"], 2),
        spread=spread,
        prediction={"held-out runs": section},
        predictions_seed0=Predictions(
            true=[0.1, 0.5, 0.9], predicted={"weightspace": [0.2, 0.4, None]}
        ),
        skipped={"probing-gauss (held-out runs)": "no forward for this spec"},
    )
    results.add_retrieval("S", "weightspace", RetrievalScore(0, {"recall@1": 1.0, "map": 0.9}))
    results.add_retrieval(
        "L",
        "weightspace",
        RetrievalScore(
            0, {"recall@1": 0.5}, by_kind={"prune": {"map": 0.4}, "noise": {"map": 0.8}}
        ),
    )
    return results


def test_summary_statistics_and_cells() -> None:
    assert summarise([1.0, 3.0]) == (2.0, 1.0, 2)
    assert summarise([float("nan"), 2.0])[2] == 1
    assert math.isnan(summarise([])[0])
    assert format_cell([0.5]) == "0.500"
    assert format_cell([0.4, 0.6]) == "0.500 ± 0.100"
    assert format_cell([0.4, 0.6], spread=0.02) == "0.500 ± 0.020"
    assert format_cell([float("nan")]) == "–"


def test_report_leads_with_primary_metrics_and_carries_reference_rows(tmp_path: Path) -> None:
    text = write_report(_results(), tmp_path).read_text()
    header = next(line for line in text.splitlines() if line.startswith("| method | **within"))
    assert header.index("within-group τ") < header.index("final-ckpt τ") < header.index("pooled τ")
    # ours: mean ± std over seeds of the common-subset metrics
    assert (
        "| **weightspace** (ours) | 0.400 ± 0.100 | 0.200 ± 0.050 | 1.000 ± 0.000 | 0.650 ± 0.050"
        in text
    )
    assert "| metadata (reference) | 0.000 ± 0.000 |" in text
    # a reference row that did not run is still in the table, with its reason
    assert "| probing-gauss (reference) | – (no forward for this spec) |" in text
    # partial coverage: own-coverage table names the architectures not covered
    assert "| nfn-hnp | 0.750 | 0.600 |" in text and "cnn@digits" in text
    assert "Within-group τ per task" in text
    assert "`weightspace` 0.400 **trails `nfn-hnp`**" in text  # the headline says where we lose
    assert "| **weightspace** (ours) | 1.000 | 0.900 |" in text  # retrieval S: recall@1, map
    assert "| noise | prune |" in text  # lineage per derivative kind
    for figure in ("predicted_vs_true.png", "recall_at_k.png"):
        assert (tmp_path / figure).is_file()
        lines = text.splitlines()
        line = next(i for i, t in enumerate(lines) if t.startswith("![") and f"]({figure})" in t)
        assert lines[line + 2].startswith("*")  # a caption under each figure


def test_bootstrap_spread_replaces_the_seed_spread(tmp_path: Path) -> None:
    text = write_report(_results(spread="bootstrap"), tmp_path).read_text()
    assert "std over 9 bootstrap resamples of the test runs" in text
    assert "| **weightspace** (ours) | 0.400 ± 0.060 |" in text  # mean bootstrap std 0.06


def test_results_round_trip_and_bad_files_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = _results()
    path = results.save(tmp_path / "results.json")
    again = Results.load(path)
    assert again == results or json.dumps(again.to_dict(), default=str) == json.dumps(
        results.to_dict(), default=str
    )
    assert again.prediction["held-out runs"].methods["nfn-hnp"][0].refused == {
        "cnn@digits": "too few"
    }
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"prediction": {}, "zoo": {}}))
    with pytest.raises(ResultsError, match="old.json: results of format 1"):
        Results.load(old)
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(old)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "rerun `weightspace bench`" in err
    assert len(err.strip().splitlines()) == 1


# --- figures (issue 17): each checks a property of the drawn figure, not its pixels -----------


plt = pytest.importorskip("matplotlib.pyplot")


def _synthesis(tasks: int) -> dict:
    curves = [
        {"method": m, "alpha": a, "accuracy_mean": 0.5 + a / 4, "accuracy_std": 0.1, "kind": k}
        for m, k in (("average", "data-free"), ("endpoints", "reference"))
        for a in (0.0, 0.5, 1.0)
    ]
    return {
        "tasks": {f"task-{i}": {"arch": "mlp", "pairs": 3, "curves": curves} for i in range(tasks)}
    }


def _log(epochs: int) -> pd.DataFrame:
    rows = [
        {
            "epoch": e,
            "step": 10 * e,
            "lr": 1e-3 / e,
            "seconds": 5.0 * e,
            "partial": 0.0,
            "train_loss": 2.0 / e,
            "train_contrastive": 1.5 / e,
            "val_contrastive": 1.8 / e,
            "val_accuracy_tau": 0.5 + e / 10,
        }
        for e in range(1, epochs + 1)
    ]
    return pd.DataFrame(rows)


def test_predicted_vs_true_panels_share_axes_and_name_tau() -> None:
    results = _results()
    results.predictions_seed0 = Predictions(
        true=[0.1, 0.5, 0.9],
        predicted={m: [0.2, 0.4, 0.8] for m in ("weightspace", "metadata", "nfn-hnp", "a", "b")},
    )
    fig = report_plots.predicted_vs_true_figure(results, "held-out runs")
    drawn = [ax for ax in fig.axes if ax.axison]
    assert len(drawn) == 5
    assert len({(ax.get_xlim(), ax.get_ylim()) for ax in drawn}) == 1
    for ax in drawn:
        assert ax.get_xlim() == ax.get_ylim()  # square: the diagonal is the diagonal
    for ax in drawn:
        title = ax.get_title()
        assert "τ within" in title and "pooled" in title, title
    # every column's lowest drawn panel carries the x axis, also where the last row is short
    labelled = [ax for ax in drawn if ax.get_xlabel()]
    assert len(labelled) == 4
    plt.close(fig)


@pytest.mark.parametrize("epochs", [1, 4])
def test_training_curves_one_quantity_per_axis_with_markers(epochs: int) -> None:
    fig = report_plots.training_curves_figure(_log(epochs))
    drawn = [ax for ax in fig.axes if ax.axison]
    titles = [ax.get_title() for ax in drawn]
    # bookkeeping columns get no panel; train_/val_ of one quantity share one
    assert sorted(titles) == ["accuracy_tau", "contrastive", "loss", "lr"]
    for ax in drawn:
        lines = ax.get_lines()
        assert lines and all(line.get_marker() not in (None, "", "None") for line in lines)
        # one quantity: every series on the axis is that quantity's training or validation
        assert {line.get_label() for line in lines} <= {"training", "validation"}
        assert all(len(line.get_xdata()) == epochs for line in lines)  # one epoch still shows
    contrastive = next(ax for ax in drawn if ax.get_title() == "contrastive")
    assert len(contrastive.get_lines()) == 2
    plt.close(fig)


@pytest.mark.parametrize(("tasks", "grid"), [(1, (1, 1)), (3, (1, 3)), (5, (2, 3)), (7, (3, 3))])
def test_merge_curves_are_a_grid(tasks: int, grid: tuple[int, int]) -> None:
    fig = report_plots.merge_curves_figure(_synthesis(tasks))
    rows, cols = fig.axes[0].get_subplotspec().get_gridspec().get_geometry()
    assert (rows, cols) == grid
    width, height = fig.get_size_inches()
    assert width / height < 4  # bench's old one-row strip of five tasks was 6.25 : 1
    assert sum(ax.axison for ax in fig.axes) == tasks
    plt.close(fig)


def _figures_after_tables(text: str) -> list[str]:
    """Figure lines not placed under a table of their section, or without a caption."""
    lines = [*text.splitlines(), "", ""]
    bad = []
    for i, line in enumerate(lines):
        if not line.startswith("!["):
            continue
        if not (lines[i + 1] == "" and lines[i + 2].startswith("*") and lines[i + 2].endswith("*")):
            bad.append(f"{line}: no caption")
        j = i - 1
        while j >= 0 and (not lines[j] or lines[j].startswith(("![", "*"))):
            j -= 1  # blank lines, and the figures (with captions) under the same table
        if j < 0 or not lines[j].startswith("|"):
            bad.append(f"{line}: after {lines[j] if j >= 0 else 'nothing'!r}, not a table")
    return bad


def test_every_figure_sits_under_its_table_with_a_caption(tmp_path: Path) -> None:
    results = _results()
    results.embedding_map = {"x": [0.0, 1.0], "y": [1.0, 0.0], "task": ["a", "b"]}
    results.synthesis = _synthesis(2)
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    _log(1).to_csv(encoder / "log.csv", index=False)
    results.encoder = {"source": ["encoder"]}  # as bench records a given encoder: relative
    out = tmp_path / "bench"
    out.mkdir()
    text = write_report(results, out).read_text()
    figures = [line for line in text.splitlines() if line.startswith("![")]
    for name in (
        "training_curves",
        "predicted_vs_true",
        "embedding_map",
        "recall_at_k",
        "merge_curves",
    ):
        assert any(f"({name}.png)" in f for f in figures), name
        assert (out / f"{name}.png").is_file()
    assert _figures_after_tables(text) == []
    # the control: a figure dumped at the end of the page, after prose, is caught twice
    dumped = _figures_after_tables(text + "\nprose.\n\n![x](x.png)\n\n")
    assert dumped == ["![x](x.png): no caption", "![x](x.png): after 'prose.', not a table"]
