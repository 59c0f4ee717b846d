"""Held-out architectures and held-out tasks: every method refitted on the training side.

Each protocol is a function ``(table, seed) -> (name, split)`` in :data:`HELD_OUT_PROTOCOLS`; a
zoo that cannot support one (one architecture, one task) raises :class:`Unsupported`, and the
protocol is skipped with its reason in the report.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from weightspace.bench.config import BenchConfig, BenchError
from weightspace.bench.data import GraphCache, first_line, model_set
from weightspace.bench.encoders import LazyEncoder, method_config, train_encoder
from weightspace.errors import WeightspaceError
from weightspace.evaluate.comparison import fit_and_score
from weightspace.evaluate.results import Results
from weightspace.evaluate.splits import Split

__all__ = ["HELD_OUT_PROTOCOLS", "Unsupported", "check_held_out", "held_out_section"]


class Unsupported(Exception):
    """The zoo cannot support a held-out protocol: ``key`` is skipped with ``reason``."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(reason)
        self.key = key
        self.reason = reason


def _by_architecture(table: pd.DataFrame, seed: int) -> tuple[str, Split]:
    """Train on the smaller architectures, test on the larger."""
    from weightspace.evaluate import split_by_architecture

    name = "held-out architectures"
    try:
        return name, split_by_architecture(table, by="size", seed=seed)
    except WeightspaceError as exc:
        raise Unsupported(name, first_line(exc)) from exc


def _by_task(table: pd.DataFrame, seed: int) -> tuple[str, Split]:
    """Test on one task (the ``seed``-th, cyclically), train on the others."""
    from weightspace.evaluate import split_by_task

    tasks = sorted(table["task"].astype(str).unique()) if "task" in table.columns else []
    if len(tasks) < 2:
        why = "the zoo has no task column" if not tasks else "the zoo has a single task"
        raise Unsupported("held-out task", f"{why}: nothing to hold out")
    task = tasks[seed % len(tasks)]
    name = f"held-out task ({task})"
    try:
        return name, split_by_task(table, task, seed=seed)
    except WeightspaceError as exc:
        raise Unsupported(name, first_line(exc)) from exc


#: The extra prediction protocols of ``--held-out``, by name.
HELD_OUT_PROTOCOLS: dict[str, Callable[[pd.DataFrame, int], tuple[str, Split]]] = {
    "architectures": _by_architecture,
    "tasks": _by_task,
}


def check_held_out(protocols: tuple[str, ...]) -> None:
    """Raise :class:`BenchError` for a protocol not in :data:`HELD_OUT_PROTOCOLS`."""
    for protocol in protocols:
        if protocol not in HELD_OUT_PROTOCOLS:
            valid = ", ".join(HELD_OUT_PROTOCOLS)
            raise BenchError(f"unknown held-out protocol {protocol!r}; valid: {valid}")


def held_out_section(
    config: BenchConfig,
    protocol: str,
    seed: int,
    table: pd.DataFrame,
    graphs: GraphCache,
    results: Results,
    log: Callable[[str], None],
) -> None:
    """One held-out architecture / task split: every method refitted on its training side."""
    check_held_out((protocol,))
    try:
        name, split = HELD_OUT_PROTOCOLS[protocol](table, seed)
    except Unsupported as skip:
        results.skipped[skip.key] = skip.reason
        return
    log(f"seed {seed}: {name}")
    rows = table.set_index("checkpoint_id")
    runs = {
        part: sorted(rows.loc[list(ids), "run_id"].unique())
        for part, ids in (("train", split.train), ("val", split.val), ("test", split.test))
    }

    def make() -> Any:
        if config.encoders:
            raise BenchError(
                "a given encoder was trained on its own split; run bench without --encoder to "
                "train one on the held-out split"
            )
        if not runs["val"]:
            raise BenchError("the held-out split has no validation runs to train an encoder")
        return train_encoder(
            config,
            Path(config.out) / "encoders" / f"{protocol}-seed-{seed}",
            seed,
            runs,
            epochs=config.held_out_epochs,
            time_limit=config.held_out_time_limit,
            results=results,
            log=log,
        )

    train = model_set(table, graphs, [*split.train, *split.val])
    test = model_set(table, graphs, list(split.test))
    methods = method_config(config, LazyEncoder(make))
    fit_and_score(config.methods, name, seed, train, test, methods, results, log=log)
    results.section(name).split = split.to_dict()
