"""The held-out-runs section: accuracy prediction and retrieval on held-out runs, per seed.

For each seed: a by-run split (or, with a given encoder trained on this zoo, the split in its
``splits.json``); our encoder is trained on its training runs (or loaded), every other method
is fitted on the same runs (train + validation) and scored on the held-out runs; then S, L and
F retrieval on a gallery of whole held-out runs (at most ``max_gallery`` checkpoints).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from weightspace.bench.config import RECALL_KS, RUNS, BenchConfig, BenchError
from weightspace.bench.data import (
    GraphCache,
    gallery_runs,
    ids_of_runs,
    model_set,
    read_json,
    split_runs,
)
from weightspace.bench.encoders import (
    LazyEncoder,
    embedding_map,
    load_encoder,
    method_config,
    train_encoder,
)
from weightspace.evaluate.comparison import fit_and_score, run_retrieval
from weightspace.evaluate.results import Predictions, Results

__all__ = ["runs_section"]


def _given_split(
    config: BenchConfig, seed: int, fingerprint: str, results: Results
) -> tuple[Path, Mapping[str, Sequence[str]] | None]:
    """The given encoder of this seed and its split (``None`` when it was trained on another
    zoo or has no ``splits.json``: a note says its rows measure transfer)."""
    given = config.encoders
    directory = Path(given[seed % len(given)])
    splits = None
    trained_on = read_json(directory / "zoo_fingerprint.json")
    if trained_on is not None and fingerprint in json.dumps(trained_on):
        splits = read_json(directory / "splits.json")
        splits = splits.get("runs", splits) if isinstance(splits, dict) else None
    if splits is None:
        results.notes.append(
            f"The encoder {directory} was not trained on this zoo (or has no "
            "splits.json): its rows measure transfer, on a freshly drawn split."
        )
    return directory, splits


def _record_predictions(test_accuracy: Any, predictions: dict[str, Any], results: Results) -> None:
    results.predictions_seed0 = Predictions(
        true=[float(y) for y in test_accuracy],
        predicted={
            n: [float(v) if np.isfinite(v) else None for v in p] for n, p in predictions.items()
        },
    )


def runs_section(
    config: BenchConfig,
    zoo: Any,
    table: pd.DataFrame,
    graphs: GraphCache,
    results: Results,
    log: Callable[[str], None],
) -> None:
    """Accuracy prediction and retrieval on held-out runs, one seed at a time; ``results.json``
    is saved after each seed."""
    from weightspace.train import zoo_fingerprint

    out = Path(config.out)
    given = config.encoders
    seeds = len(given) if len(given) > 1 else config.seeds
    fingerprint = zoo_fingerprint(zoo) if given else ""
    for seed in range(seeds):
        log(f"seed {seed}: held-out runs")
        t0 = time.perf_counter()
        splits = None
        if given:
            directory, splits = _given_split(config, seed, fingerprint, results)
        if splits is None:
            splits = split_runs(sorted(table["run_id"].unique()), seed)
        if given:
            make = functools.partial(load_encoder, directory)
        else:
            make = functools.partial(
                train_encoder,
                config,
                out / "encoders" / f"seed-{seed}",
                seed,
                splits,
                epochs=config.train_epochs,
                time_limit=config.train_time_limit,
                results=results,
                log=log,
            )
        train_ids = ids_of_runs(table, [*splits["train"], *splits["val"]])
        test_ids = ids_of_runs(table, splits["test"])
        if not test_ids or not train_ids:
            raise BenchError("the held-out-runs split is empty: the zoo needs more runs")
        encoder = LazyEncoder(make)
        train, test = model_set(table, graphs, train_ids), model_set(table, graphs, test_ids)
        retrievable, predictions = fit_and_score(
            config.methods,
            RUNS,
            seed,
            train,
            test,
            method_config(config, encoder),
            results,
            bootstrap=config.bootstrap if results.spread == "bootstrap" else 0,
            log=log,
        )
        y_test = test.column("test_accuracy")
        if seed == 0 and y_test is not None and predictions:
            _record_predictions(y_test, predictions, results)
        results.section(RUNS).split = {
            "description": f"by run (15 % validation, 15 % test runs), seed {seed}",
            "train": len(train_ids),
            "test": len(test_ids),
        }
        if retrievable and config.retrieval:
            gallery = gallery_runs(table, test_ids, config.max_gallery, seed)
            run_retrieval(
                retrievable,
                model_set(table, graphs, gallery),
                seed,
                results,
                protocols=config.retrieval,
                num_queries=config.num_queries,
                ks=RECALL_KS,
                log=log,
            )
        if seed == 0 and encoder.value is not None:
            embedding_map(encoder.value, test, results)
        log(f"  seed {seed} done in {time.perf_counter() - t0:.0f}s")
        results.save(out / "results.json")
