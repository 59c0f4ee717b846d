"""``run_bench``: the sections in order, ``results.json`` saved after each, then the report."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from weightspace.bench.config import RUNS, SECTIONS, BenchConfig, BenchError
from weightspace.bench.data import GraphCache, zoo_table
from weightspace.bench.held_out import check_held_out, held_out_section
from weightspace.bench.runs import runs_section
from weightspace.bench.synthesis import synthesis_section
from weightspace.evaluate.comparison import RETRIEVAL_PROTOCOLS
from weightspace.evaluate.methods import CANONICAL_SUFFIX, list_methods
from weightspace.evaluate.results import Results, ResultsError, ZooSummary

__all__ = ["chosen_sections", "run_bench"]


def chosen_sections(config: BenchConfig) -> set[str]:
    """The sections this run computes (``config.only``, less synthesis when it is off)."""
    unknown = [name for name in config.only if name not in SECTIONS]
    if unknown:
        raise BenchError(f"unknown bench sections {unknown}; valid: {', '.join(SECTIONS)}")
    chosen = set(config.only) if config.only else set(SECTIONS)
    if not config.synthesis:
        if config.only and chosen == {"synthesis"}:
            raise BenchError("--only synthesis contradicts --no-synthesis")
        chosen.discard("synthesis")
    return chosen


def _check_options(config: BenchConfig) -> None:
    valid = set(list_methods())
    unknown = [m for m in config.methods if m.removesuffix(CANONICAL_SUFFIX) not in valid]
    if unknown:
        raise BenchError(f"unknown methods {unknown}; valid: {sorted(valid)} (each also +canon)")
    unknown = sorted(set(config.retrieval) - set(RETRIEVAL_PROTOCOLS))
    if unknown:
        raise BenchError(
            f"unknown retrieval protocols {unknown}; valid: {', '.join(RETRIEVAL_PROTOCOLS)}"
        )
    check_held_out(config.held_out)


def _fresh_results(config: BenchConfig, table: pd.DataFrame) -> Results:
    return Results(
        config=asdict(config),
        zoo=ZooSummary(
            path=str(config.zoo),
            name=Path(config.zoo).resolve().name,
            checkpoints=int(len(table)),
            runs=int(table["run_id"].nunique()),
            tasks=sorted(table["task"].astype(str).unique()) if "task" in table else [],
            architectures=int(table["arch"].nunique()) if "arch" in table else None,
            columns=[str(c) for c in table.columns],
        ),
        encoder={"source": config.encoders or "trained per seed by this bench"},
        spread="bootstrap" if len(config.encoders) == 1 else "seeds",
    )


def start_results(config: BenchConfig, table: pd.DataFrame, sections: set[str]) -> Results:
    """Fresh results, or with ``only`` the previous ones less the sections about to be rerun."""
    out = Path(config.out)
    fresh = _fresh_results(config, table)
    if not config.only or not (out / "results.json").exists():
        return fresh
    try:
        results = Results.load(out / "results.json")
    except ResultsError as exc:
        fresh.notes.append(f"The previous results could not be read ({exc}); started afresh.")
        return fresh
    results.updated_sections = sorted(sections)
    results.config = {**results.config, "update": asdict(config)}

    def stale(key: str) -> bool:  # skip reasons of the sections about to be rerun
        runs = key.endswith(f"({RUNS})") or "retrieval" in key
        held_out = "held-out arch" in key or "held-out task" in key or key == "held-out"
        return ("runs" in sections and runs) or ("held-out" in sections and held_out)

    results.skipped = {k: v for k, v in results.skipped.items() if not stale(k)}
    if "runs" in sections:
        results.prediction.pop(RUNS, None)
        results.retrieval, results.predictions_seed0, results.embedding_map = {}, None, {}
        results.encoder, results.spread = fresh.encoder, fresh.spread
    if "held-out" in sections:
        results.prediction = {k: v for k, v in results.prediction.items() if k == RUNS}
    return results


def _general_notes(config: BenchConfig, table: pd.DataFrame, results: Results) -> None:
    if "test_accuracy" not in table.columns:
        results.notes.append(
            "The zoo has no test accuracies: accuracy prediction was skipped; only retrieval ran."
        )
    else:
        results.notes.append(
            "Every method's predicted accuracies are clipped to the range of its training "
            "models' accuracies (one rule for all; trees and lookups never leave it)."
        )
    if results.spread == "bootstrap":
        results.notes.append(
            f"One given encoder, so one fixed split: ± is the std over {config.bootstrap} "
            "bootstrap resamples of the test runs (seeded), for every row; seeds vary only the "
            "baselines' initialisation and the retrieval queries."
        )


def _held_out_sections(
    config: BenchConfig,
    table: pd.DataFrame,
    graphs: GraphCache,
    results: Results,
    path: Path,
    log: Callable[[str], None],
) -> None:
    if "test_accuracy" not in table.columns:
        results.skipped["held-out"] = "the zoo has no test accuracies to predict"
        return
    for protocol in config.held_out:
        for seed in range(min(config.held_out_seeds, config.seeds)):
            held_out_section(config, protocol, seed, table, graphs, results, log)
            results.save(path)


def run_bench(config: BenchConfig, *, log: Callable[[str], None] = print) -> Results:
    """Run the benchmark; write ``results.json`` (after every section), ``report.md`` and plots
    to ``config.out``.

    Returns:
        The results, as saved in ``results.json``.
    """
    from weightspace.zoo import Zoo

    sections = chosen_sections(config)
    _check_options(config)
    if len(config.encoders) > 1 and config.seeds != len(config.encoders):
        log(f"{len(config.encoders)} encoders given: one seed each")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    zoo: Any = Zoo.open(config.zoo)
    from weightspace.zoo.lora_zoo import register_lora_tasks

    register_lora_tasks(zoo)  # a lora zoo's six tasks: F and probing-task read their sequences
    table = zoo_table(zoo)
    graphs = GraphCache(zoo)
    results = start_results(config, table, sections)
    _general_notes(config, table, results)
    path = out / "results.json"
    from weightspace.evaluate.published import published_section

    tasks = sorted(table["task"].astype(str).unique()) if "task" in table else []
    results.published = published_section(zoo.manifest, tasks)
    results.save(path)
    if zoo.manifest.get("target") == "class":  # labels are classes (INRs), not accuracies
        from weightspace.evaluate.classification import classification_section

        log("classification protocol (class-target zoo): top-1 of each method's embedding")
        results.classification = classification_section(
            zoo,
            config.methods,
            seed=0,
            bootstrap=config.bootstrap,
            encoder=config.encoders[0] if config.encoders else None,
        )
        results.save(path)
    classes = zoo.manifest.get("target") == "class"
    if "runs" in sections and classes:
        results.skipped["held-out runs"] = (
            "the zoo's labels are classes, not accuracies: see the classification section"
        )
    elif "runs" in sections:
        runs_section(config, zoo, table, graphs, results, log)
    if "held-out" in sections:
        _held_out_sections(config, table, graphs, results, path, log)
    if "synthesis" in sections:
        synthesis_section(config, zoo, out, results, log)
    results.notes = list(dict.fromkeys(results.notes))
    results.save(path)
    from weightspace.report import write_report

    write_report(results, out)
    return results
