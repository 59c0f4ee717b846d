"""``weightspace bench``: every method on every protocol, side by side, over several seeds.

A plain loop over methods × protocols (:mod:`weightspace.evaluate.comparison`). Every method
(:mod:`weightspace.evaluate.methods`) follows one contract (:mod:`weightspace.evaluate.api`); its
*capabilities* decide what it takes part in: a method without ``EMBED`` skips retrieval, one
without ``MIXED_ARCHITECTURES`` is fitted once per architecture and skips retrieval (its
embedding spaces differ between architectures), one that ``NEEDS_METADATA`` skips retrieval
(derived queries carry no zoo rows). A zoo that cannot support a protocol or a metric (one
architecture, one task, no epochs) gets it skipped with its reason in the report.

For each seed:

1. **Held-out runs.** A by-run split (or, with a given encoder trained on this zoo, the split in
   its ``splits.json``); our encoder is trained on its training runs for ``train_epochs`` epochs
   (or loaded), every other method is fitted on the same runs (train + validation). Accuracy
   prediction is scored on the held-out runs (:mod:`weightspace.evaluate.prediction`): every
   method on the checkpoints all methods cover, and on its own coverage.
2. **Retrieval** on a gallery of held-out checkpoints (whole runs, capped at ``max_gallery``):
   S (symmetry, an invariance check), L (lineage) and F (function).
3. **Held-out architectures** and **held-out tasks**: every method refitted on the training side;
   a protocol the zoo cannot support (one architecture, one task) is skipped with its reason.
4. **Synthesis** (:mod:`weightspace.synthesis.benchmark`) with the seed-0 encoder.

The spread: with one given encoder the split is fixed, so ± is a bootstrap over the test runs
(``bootstrap`` resamples); otherwise (one encoder per seed, trained or given) ± is the std over
seeds. ``results.json`` (:class:`~weightspace.evaluate.results.Results`) is written after every
section; ``only`` (``--only synthesis``) reruns some :data:`SECTIONS` and keeps the rest.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from weightspace.errors import WeightspaceError
from weightspace.evaluate.api import ModelSet
from weightspace.evaluate.comparison import RETRIEVAL_PROTOCOLS, fit_and_score, run_retrieval
from weightspace.evaluate.methods import (
    OURS,
    OURS_GBT,
    MethodConfig,
    list_methods,
)
from weightspace.evaluate.results import (
    Predictions,
    Results,
    ResultsError,
    ZooSummary,
)

__all__ = ["BenchConfig", "BenchError", "run_bench", "DEFAULT_METHODS", "OURS", "SECTIONS"]

#: Parts of the benchmark ``--only`` can select.
SECTIONS: tuple[str, ...] = ("runs", "held-out", "synthesis")
RUNS = "held-out runs"
DEFAULT_METHODS: tuple[str, ...] = (
    OURS,
    OURS_GBT,
    "metadata",
    "probing-gauss",
    "probing-task",
    "flat-mlp",
    "flat-mlp+canon",
    "pca-mlp",
    "pca-mlp+canon",
    "statnn",
    "statnn+canon",
    "weightwatcher",
    "nfn-hnp",
    "nfn-np",
)
RECALL_KS = tuple(range(1, 11))


class BenchError(WeightspaceError):
    """The benchmark cannot run on this zoo or with these options."""


@dataclass
class BenchConfig:
    """One benchmark run. Every field is recorded in ``results.json``."""

    zoo: str  # zoo directory
    out: str  # results directory (results.json, report.md, plots, trained encoders)
    encoder: str | None = None  # trained encoder directories, comma-separated (one per seed)
    seeds: int = 3  # repetitions (split, initialisation, queries); several encoders: one each
    methods: tuple[str, ...] = DEFAULT_METHODS  # methods to compare
    train_epochs: int = 12  # encoder training: epochs (the bound; early stopping may end sooner)
    held_out_epochs: int = 12  # encoder training for the held-out architecture / task splits
    train_time_limit: float = 0.0  # safety cap in seconds per encoder fit (0: none)
    held_out_time_limit: float = 0.0  # safety cap for held-out encoder fits (0: none)
    held_out: tuple[str, ...] = ("architectures", "tasks")  # extra prediction protocols
    held_out_seeds: int = 1  # seeds for the held-out architecture/task protocols
    bootstrap: int = 200  # resamples of test runs for the ± of a single given encoder
    retrieval: tuple[str, ...] = ("S", "L", "F")  # retrieval protocols to run
    max_gallery: int = 300  # retrieval gallery: at most this many held-out checkpoints
    num_queries: int = 150  # retrieval queries per protocol
    weightwatcher_max_models: int = 600  # WeightWatcher is slow: subsample its training set
    nfn_epochs: int | None = None  # NFN epochs per architecture (None: NFN's reference default)
    tune: bool = True  # tune baseline heads by run-grouped CV on training runs
    device: str = "cpu"  # encoder device
    synthesis: bool = True  # merging / reconstruction / sampling section
    only: tuple[str, ...] = ()  # run only these sections (SECTIONS); () runs every one
    synthesis_tasks: tuple[str, ...] = ()  # tasks synthesis is measured on; (): every task
    synthesis_archs: tuple[str, ...] = ()  # "task=arch" choices; other tasks: chosen (see doc)
    synthesis_pairs: int = 50  # merge pairs of held-out models per task
    synthesis_min_accuracy: float | None = None  # None: halfway from chance to the group's best
    synthesis_samples: int = 100  # sampled models per task
    decoder_steps: int = 1500  # decoder optimisation steps per task (at most)
    decoder_time_limit: float = 0.0  # safety cap in seconds per task's decoder (0: none)

    @property
    def encoders(self) -> list[str]:
        """The given encoder directories (``encoder`` split at commas)."""
        return [e.strip() for e in (self.encoder or "").split(",") if e.strip()]


# ------------------------------------------------------------------------------- helpers


def _now() -> float:
    return time.perf_counter()


def _first_line(exc: BaseException) -> str:
    return str(exc).split("\n")[0][:300]


class _GraphCache:
    """Graphs of a zoo, loaded once."""

    def __init__(self, zoo: Any) -> None:
        self.zoo = zoo
        self._graphs: dict[str, Any] = {}

    def many(self, ids: Sequence[str]) -> list[Any]:
        for i in ids:
            if i not in self._graphs:
                self._graphs[i] = self.zoo.graph(i)
        return [self._graphs[i] for i in ids]


def _ids_of_runs(table: pd.DataFrame, runs: Sequence[str]) -> list[str]:
    keep = table["run_id"].isin(set(map(str, runs)))
    return list(table.loc[keep, "checkpoint_id"])


def _model_set(table: pd.DataFrame, graphs: _GraphCache, ids: Sequence[str]) -> ModelSet:
    rows = table.set_index("checkpoint_id", drop=False).loc[list(ids)]
    return ModelSet(graphs.many(list(ids)), rows.reset_index(drop=True))


def _split_runs(run_ids: Sequence[str], seed: int) -> dict[str, list[str]]:
    """The package's one run splitter (15 % validation, 15 % test runs)."""
    from weightspace.evaluate.splits import split_runs

    return split_runs(list(run_ids), 0.15, 0.15, seed)


def _gallery_runs(table: pd.DataFrame, test_ids: Sequence[str], cap: int, seed: int) -> list[str]:
    """Whole held-out runs, drawn in a seeded order until ``cap`` checkpoints."""
    rows = table[table["checkpoint_id"].isin(set(test_ids))]
    runs = sorted(rows["run_id"].unique())
    order = np.random.default_rng(seed).permutation(len(runs))
    sizes = rows.groupby("run_id").size()
    chosen, total = [], 0
    for i in order:
        if total + sizes[runs[i]] > cap and chosen:
            continue
        chosen.append(runs[i])
        total += int(sizes[runs[i]])
    return _ids_of_runs(rows, chosen)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


class _Encoder:
    """Our encoder for one split, trained (or loaded) on first use, so a method list without
    our methods trains nothing."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self.value: Any = None

    def __call__(self) -> Any:
        if self.value is None:
            self.value = self._make()
        return self.value


def _train_encoder(
    config: BenchConfig,
    out: Path,
    seed: int,
    splits: Mapping[str, Sequence[str]],
    *,
    epochs: int,
    time_limit: float,
    results: Results,
    log: Callable[[str], None],
) -> Any:
    from weightspace.train import TrainConfig, train

    cfg = TrainConfig(
        zoo=config.zoo,
        out=str(out),
        seed=seed,
        epochs=epochs,
        time_limit=time_limit,
        device=config.device,
    )
    cfg.splits = {k: list(map(str, v)) for k, v in splits.items()}
    start = _now()
    trained = train(cfg, progress=False)
    seconds = _now() - start
    results.time("encoder_training_s", seconds)
    results.time("encoder_epochs", trained.epochs_run)
    log(f"  encoder trained in {seconds:.0f}s ({trained.epochs_run} epochs)")
    return trained.encoder


def _load_encoder(directory: Path) -> Any:
    from weightspace.nn import Encoder

    return Encoder.load(directory)


def _embedding_map(encoder: Any, models: ModelSet, results: Results) -> None:
    from sklearn.decomposition import PCA

    models = models.subset(np.arange(min(len(models), 2000)))
    z = np.asarray(encoder.embed(list(models.graphs)), dtype=float)
    if len(z) < 3:
        return
    xy = PCA(n_components=2, random_state=0).fit_transform(z)
    tasks = models.column("task")
    accuracy = models.column("test_accuracy")
    results.embedding_map = {
        "x": xy[:, 0].tolist(),
        "y": xy[:, 1].tolist(),
        "task": [] if tasks is None else [str(t) for t in tasks],
        "test_accuracy": [] if accuracy is None else [float(a) for a in accuracy],
    }


# ------------------------------------------------------------------------------- sections


def _runs_section(
    config: BenchConfig,
    zoo: Any,
    table: pd.DataFrame,
    graphs: _GraphCache,
    results: Results,
    log: Callable[[str], None],
) -> None:
    """Accuracy prediction and retrieval on held-out runs, one seed at a time."""
    from weightspace.train import zoo_fingerprint

    out = Path(config.out)
    given = config.encoders
    seeds = len(given) if len(given) > 1 else config.seeds
    fingerprint = zoo_fingerprint(zoo) if given else ""
    for seed in range(seeds):
        log(f"seed {seed}: held-out runs")
        t0 = _now()
        splits = None
        if given:
            directory = Path(given[seed % len(given)])
            trained_on = _read_json(directory / "zoo_fingerprint.json")
            if trained_on is not None and fingerprint in json.dumps(trained_on):
                splits = _read_json(directory / "splits.json")
                splits = splits.get("runs", splits) if isinstance(splits, dict) else None
            if splits is None:
                results.notes.append(
                    f"The encoder {directory} was not trained on this zoo (or has no "
                    "splits.json): its rows measure transfer, on a freshly drawn split."
                )
        if splits is None:
            splits = _split_runs(sorted(table["run_id"].unique()), seed)
        if given:
            make = functools.partial(_load_encoder, directory)
        else:
            make = functools.partial(
                _train_encoder,
                config,
                out / "encoders" / f"seed-{seed}",
                seed,
                splits,
                epochs=config.train_epochs,
                time_limit=config.train_time_limit,
                results=results,
                log=log,
            )
        train_ids = _ids_of_runs(table, [*splits["train"], *splits["val"]])
        test_ids = _ids_of_runs(table, splits["test"])
        if not test_ids or not train_ids:
            raise BenchError("the held-out-runs split is empty: the zoo needs more runs")
        encoder = _Encoder(make)
        train, test = _model_set(table, graphs, train_ids), _model_set(table, graphs, test_ids)
        retrievable, predictions = fit_and_score(
            config.methods,
            RUNS,
            seed,
            train,
            test,
            _method_config(config, encoder),
            results,
            bootstrap=config.bootstrap if results.spread == "bootstrap" else 0,
            log=log,
        )
        y_test = test.column("test_accuracy")
        if seed == 0 and y_test is not None and predictions:
            results.predictions_seed0 = Predictions(
                true=[float(y) for y in y_test],
                predicted={
                    n: [float(v) if np.isfinite(v) else None for v in p]
                    for n, p in predictions.items()
                },
            )
        results.section(RUNS).split = {
            "description": f"by run (15 % validation, 15 % test runs), seed {seed}",
            "train": len(train_ids),
            "test": len(test_ids),
        }
        if retrievable and config.retrieval:
            gallery = _gallery_runs(table, test_ids, config.max_gallery, seed)
            run_retrieval(
                retrievable,
                _model_set(table, graphs, gallery),
                seed,
                results,
                protocols=config.retrieval,
                num_queries=config.num_queries,
                ks=RECALL_KS,
                log=log,
            )
        if seed == 0 and encoder.value is not None:
            _embedding_map(encoder.value, test, results)
        log(f"  seed {seed} done in {_now() - t0:.0f}s")
        results.save(out / "results.json")


def _method_config(config: BenchConfig, encoder: Callable[[], Any]) -> MethodConfig:
    return MethodConfig(
        encoder=encoder,
        nfn_epochs=config.nfn_epochs,
        weightwatcher_max_models=config.weightwatcher_max_models,
        tune=config.tune,
    )


def _held_out(
    config: BenchConfig,
    protocol: str,
    seed: int,
    table: pd.DataFrame,
    graphs: _GraphCache,
    results: Results,
    log: Callable[[str], None],
) -> None:
    """One held-out architecture / task split: every method refitted on its training side."""
    from weightspace.evaluate import split_by_architecture, split_by_task

    if protocol == "architectures":
        name = "held-out architectures"
        try:
            split = split_by_architecture(table, by="size", seed=seed)
        except WeightspaceError as exc:
            results.skipped[name] = _first_line(exc)
            return
    elif protocol == "tasks":
        tasks = sorted(table["task"].astype(str).unique()) if "task" in table.columns else []
        if len(tasks) < 2:
            why = "the zoo has no task column" if not tasks else "the zoo has a single task"
            results.skipped["held-out task"] = f"{why}: nothing to hold out"
            return
        task = tasks[seed % len(tasks)]
        name = f"held-out task ({task})"
        try:
            split = split_by_task(table, task, seed=seed)
        except WeightspaceError as exc:
            results.skipped[name] = _first_line(exc)
            return
    else:
        raise BenchError(f"unknown held-out protocol {protocol!r}; valid: architectures, tasks")
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
        return _train_encoder(
            config,
            Path(config.out) / "encoders" / f"{protocol}-seed-{seed}",
            seed,
            runs,
            epochs=config.held_out_epochs,
            time_limit=config.held_out_time_limit,
            results=results,
            log=log,
        )

    train = _model_set(table, graphs, [*split.train, *split.val])
    test = _model_set(table, graphs, list(split.test))
    method_config = _method_config(config, _Encoder(make))
    fit_and_score(config.methods, name, seed, train, test, method_config, results, log=log)
    results.section(name).split = split.to_dict()


def _synthesis(
    config: BenchConfig, zoo: Any, out: Path, results: Results, log: Callable[[str], None]
) -> None:
    """Merging curves, reconstructions and sampling on every task (one architecture each), with
    the seed-0 encoder (see :mod:`weightspace.synthesis.benchmark`)."""
    from weightspace.nn import Encoder
    from weightspace.synthesis.benchmark import run_section

    results.synthesis = None
    results.skipped = {k: v for k, v in results.skipped.items() if not k.startswith("synthesis")}
    encoder_dir = Path(config.encoders[0]) if config.encoders else out / "encoders" / "seed-0"
    splits = _read_json(encoder_dir / "splits.json")
    if not splits:
        why = (
            f"{encoder_dir} has no encoder with a splits.json (run the whole bench first, or "
            "pass --encoder)"
        )
        if config.only:
            raise BenchError(f"cannot run the synthesis section: {why}")
        results.skipped["synthesis"] = why
        return
    archs = {}
    for item in config.synthesis_archs:
        task, sep, arch = item.partition("=")
        if not sep or not task or not arch:
            raise BenchError(f"--synthesis-archs takes task=arch items, got {item!r}")
        archs[task.strip()] = arch.strip()
    log(f"synthesis: every task, encoder {encoder_dir}")
    t = _now()
    try:
        section = run_section(
            zoo,
            Encoder.load(encoder_dir),
            splits.get("runs", splits),
            out,
            tasks=config.synthesis_tasks,
            archs=archs,
            min_accuracy=config.synthesis_min_accuracy,
            pairs=config.synthesis_pairs,
            samples=config.synthesis_samples,
            decoder_steps=config.decoder_steps,
            decoder_time_limit=config.decoder_time_limit,
            device=config.device,
            log=log,
        )
    except WeightspaceError as exc:
        results.skipped["synthesis"] = _first_line(exc)
        return
    for task, why in section["skipped"].items():
        results.skipped[f"synthesis {task}"] = why
    results.timings["synthesis (s)"] = [_now() - t]
    results.synthesis = section


# ------------------------------------------------------------------------------- main


def _sections(config: BenchConfig) -> set[str]:
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


def _check_methods(methods: Sequence[str]) -> None:
    from weightspace.evaluate.methods import CANONICAL_SUFFIX

    valid = set(list_methods())
    unknown = [m for m in methods if m.removesuffix(CANONICAL_SUFFIX) not in valid]
    if unknown:
        raise BenchError(f"unknown methods {unknown}; valid: {sorted(valid)} (each also +canon)")


def _zoo_table(zoo: Any) -> pd.DataFrame:
    """The zoo's rows, ids as strings, columns that hold nothing (an imported zoo without
    epochs or tasks) dropped so every consumer sees them as missing."""
    table = zoo.table.copy()
    table["checkpoint_id"] = table["checkpoint_id"].astype(str)
    if "run_id" not in table.columns or table["run_id"].isna().all():
        table["run_id"] = table["checkpoint_id"]
    table["run_id"] = table["run_id"].astype(str)
    empty = [c for c in table.columns if table[c].isna().all()]
    return table.drop(columns=empty)


def _start(config: BenchConfig, zoo: Any, table: pd.DataFrame, sections: set[str]) -> Results:
    """Fresh results, or with ``only`` the previous ones less the sections about to be rerun."""
    out = Path(config.out)
    fresh = Results(
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


def run_bench(config: BenchConfig, *, log: Callable[[str], None] = print) -> Results:
    """Run the benchmark; write ``results.json`` (after every section), ``report.md`` and plots
    to ``config.out``.

    Returns:
        The results, as saved in ``results.json``.
    """
    from weightspace.zoo import Zoo

    sections = _sections(config)
    _check_methods(config.methods)
    unknown = sorted(set(config.retrieval) - set(RETRIEVAL_PROTOCOLS))
    if unknown:
        raise BenchError(f"unknown retrieval protocols {unknown}; valid: S, L, F")
    if len(config.encoders) > 1 and config.seeds != len(config.encoders):
        log(f"{len(config.encoders)} encoders given: one seed each")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    zoo = Zoo.open(config.zoo)
    table = _zoo_table(zoo)
    graphs = _GraphCache(zoo)
    results = _start(config, zoo, table, sections)
    if "test_accuracy" not in table.columns:
        results.notes.append(
            "The zoo has no test accuracies: accuracy prediction was skipped; only retrieval ran."
        )
    if results.spread == "bootstrap":
        results.notes.append(
            f"One given encoder, so one fixed split: ± is the std over {config.bootstrap} "
            "bootstrap resamples of the test runs (seeded), for every row; seeds vary only the "
            "baselines' initialisation and the retrieval queries."
        )
    path = out / "results.json"
    results.save(path)
    if "runs" in sections:
        _runs_section(config, zoo, table, graphs, results, log)
    if "held-out" in sections and "test_accuracy" not in table.columns:
        results.skipped["held-out"] = "the zoo has no test accuracies to predict"
    elif "held-out" in sections:
        for protocol in config.held_out:
            for seed in range(min(config.held_out_seeds, config.seeds)):
                _held_out(config, protocol, seed, table, graphs, results, log)
                results.save(path)
    if "synthesis" in sections:
        _synthesis(config, zoo, out, results, log)
    results.notes = list(dict.fromkeys(results.notes))
    results.save(path)
    from weightspace.report import write_report

    write_report(results, out)
    return results
