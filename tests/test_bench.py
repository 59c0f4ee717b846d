"""bench and report: an end-to-end run on the tiny zoo, report cells computed from results."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from weightspace.bench import BenchConfig, BenchError, run_bench
from weightspace.predict import conformal_halfwidth
from weightspace.report import format_cell, summarise, write_report


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from weightspace.zoo import generate_zoo
    from weightspace.zoo.presets import get_preset

    out = tmp_path_factory.mktemp("zoo") / "tiny"
    generate_zoo(out, get_preset("tiny"), show_progress=False)
    return out


def test_summary_statistics_and_cells() -> None:
    assert summarise([1.0, 3.0]) == (2.0, 1.0, 2)
    assert summarise([float("nan"), 2.0])[2] == 1
    assert math.isnan(summarise([])[0])
    assert format_cell([0.5]) == "0.500"
    assert format_cell([0.4, 0.6]) == "0.500 ± 0.100"
    assert format_cell([float("nan")]) == "–"


def test_conformal_halfwidth_hand_computed() -> None:
    residuals = np.array([0.05, 0.01, 0.03, 0.02, 0.04, 0.10, 0.07, 0.06, 0.08, 0.09])
    # n = 10, coverage 0.8: rank ceil(11 * 0.8) = 9 -> 9th smallest = 0.09
    assert conformal_halfwidth(residuals, 0.8) == pytest.approx(0.09)
    assert conformal_halfwidth(residuals, 0.95) == math.inf  # rank 11 > n
    assert conformal_halfwidth(np.array([]), 0.5) == math.inf


def test_report_is_computed_from_results(tmp_path: Path) -> None:
    results = {
        "zoo": {
            "name": "z",
            "path": "z",
            "checkpoints": 10,
            "runs": 5,
            "architectures": 1,
            "tasks": ["wine"],
        },
        "config": {"seeds": 2},
        "encoder": {"source": "test"},
        "prediction": {
            "held-out runs": {
                "weightspace": [{"kendall_tau": 0.5}, {"kendall_tau": 0.7}],
                "statnn": [{"kendall_tau": 0.65}, {"kendall_tau": 0.75}],
            }
        },
        "retrieval": {"S": {"weightspace": [{"recall@1": 1.0}], "flat-mlp": [{"recall@1": 0.2}]}},
        "skipped": {"nfn-np": "one fixed architecture only"},
        "notes": [],
    }
    text = write_report(results, tmp_path).read_text()
    assert "| **weightspace** (ours) | 0.600 ± 0.100 |" in text
    assert "the baseline `statnn` beats `weightspace` on Kendall τ (0.700 vs 0.600)" in text
    assert "`nfn-np`: one fixed architecture only" in text
    assert (tmp_path / "recall_at_k.png").exists()


def test_bench_end_to_end_on_the_tiny_zoo(tiny_zoo: Path, tmp_path: Path) -> None:
    config = BenchConfig(
        zoo=str(tiny_zoo),
        out=str(tmp_path / "bench"),
        seeds=1,
        methods=("flat-mlp", "statnn"),
        held_out=("tasks",),
        num_queries=10,
        synthesis=False,
    )
    results = run_bench(config, log=lambda message: None)
    saved = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert saved["zoo"]["checkpoints"] == results["zoo"]["checkpoints"] > 0
    for method in ("flat-mlp", "statnn"):
        assert len(saved["prediction"]["held-out runs"][method]) == 1
        assert 0 <= saved["retrieval"]["S"][method][0]["recall@1"] <= 1
    assert any(name.startswith("held-out task") for name in saved["prediction"])
    assert (tmp_path / "bench" / "report.md").read_text().startswith("# weightspace benchmark")


def test_bench_refuses_unknown_methods(tiny_zoo: Path, tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="unknown methods.*statnn"):
        run_bench(BenchConfig(zoo=str(tiny_zoo), out=str(tmp_path), methods=("magic",)))
