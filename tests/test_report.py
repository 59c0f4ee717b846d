"""report.md from typed results: primary columns first, reference rows in every table, the
spread the header names, figures beside their tables; results.json round-trips."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

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
