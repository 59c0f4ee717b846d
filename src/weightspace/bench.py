"""``weightspace bench``: every method on every protocol, side by side, over several seeds.

For each seed:

1. **Held-out runs.** The encoder is trained on the zoo's by-run split for that seed (or a given
   encoder is loaded with the split it was trained on, from its ``splits.json``); every baseline
   is fitted on the same training runs (train + validation). Accuracy prediction is scored on the
   held-out runs: Kendall τ, R², MAE, and τ over the checkpoints above chance.
2. **Retrieval** on a gallery of held-out checkpoints (whole runs, capped at ``max_gallery``):
   S (symmetry), L (lineage: derivative + symmetry transform) and F (function agreement).
3. **Held-out architectures** (train on narrower/shallower, test on wider/deeper) and **held-out
   tasks** (leave one task out): the encoder and every baseline are refitted on the training
   side only.

4. **Synthesis** (:mod:`weightspace.synthesis.benchmark`): on every task, one architecture each,
   merge curves of held-out pairs for every merge method, reconstructions, and sampled models
   against the zoo + noise baseline; one decoder per task, fitted on the seed-0 encoder's
   training runs under ``decoder_time_limit``.

``only`` (``--only synthesis``) runs some of these sections (:data:`SECTIONS`) and updates a
previous ``results.json`` in the output directory; synthesis alone reuses ``--encoder`` or the
``encoders/seed-0`` of an earlier run.

Methods that need one fixed architecture (NFN) are fitted per architecture; where they refuse an
architecture, their metrics cover the rest, and the report says how much (``coverage``). Every
number lands in ``results.json``; :mod:`weightspace.report` writes ``report.md`` and the plots.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from weightspace.errors import WeightspaceError

__all__ = ["BenchConfig", "run_bench", "DEFAULT_METHODS", "OURS", "SECTIONS"]

#: Parts of the benchmark ``--only`` can select: accuracy prediction and retrieval on held-out
#: runs (per seed), the held-out architecture / task protocols, and synthesis.
SECTIONS: tuple[str, ...] = ("runs", "held-out", "synthesis")

OURS = "weightspace"
#: Our frozen embedding with a gradient-boosted-tree head fitted on the training split.
OURS_GBT = "weightspace-gbt"
DEFAULT_METHODS: tuple[str, ...] = (
    OURS,
    OURS_GBT,
    "flat-mlp",
    "pca-mlp",
    "statnn",
    "weightwatcher",
    "nfn-hnp",
    "nfn-np",
)
#: Methods fitted once per architecture (their embedding spaces differ between architectures).
PER_ARCHITECTURE = frozenset({"nfn-hnp", "nfn-np"})
RECALL_KS = tuple(range(1, 11))


class BenchError(WeightspaceError):
    """The benchmark cannot run on this zoo or with these options."""


@dataclass
class BenchConfig:
    """One benchmark run. Every field is recorded in ``results.json``."""

    zoo: str  # zoo directory
    out: str  # results directory (results.json, report.md, plots, trained encoders)
    encoder: str | None = None  # a trained encoder directory; None: train one per seed
    seeds: int = 3  # repetitions (split, initialisation, queries); figures are mean ± std
    methods: tuple[str, ...] = DEFAULT_METHODS  # methods to compare (ours + baselines)
    train_epochs: int = 40  # encoder training: maximum epochs
    train_time_limit: float = 150.0  # encoder training: seconds per fit (0: no limit)
    held_out_time_limit: float = 60.0  # encoder training for held-out arch/task splits
    held_out: tuple[str, ...] = ("architectures", "tasks")  # extra prediction protocols
    held_out_seeds: int = 1  # seeds for the held-out architecture/task protocols
    max_gallery: int = 300  # retrieval gallery: at most this many held-out checkpoints
    num_queries: int = 150  # retrieval queries per protocol
    weightwatcher_max_models: int = 600  # WeightWatcher is slow: subsample its training set
    nfn_epochs: int = 15  # NFN training epochs per architecture (one NFN per architecture)
    device: str = "cpu"  # encoder device
    synthesis: bool = True  # merging / reconstruction / sampling section
    only: tuple[str, ...] = ()  # run only these sections (SECTIONS); () runs every one
    synthesis_tasks: tuple[str, ...] = ()  # tasks synthesis is measured on; (): every task
    synthesis_archs: tuple[str, ...] = ()  # "task=arch" choices; other tasks: chosen (see doc)
    synthesis_pairs: int = 50  # merge pairs of held-out models per task
    synthesis_min_accuracy: float | None = None  # None: halfway from chance to the group's best
    synthesis_samples: int = 100  # sampled models per task
    decoder_steps: int = 1500  # decoder optimisation steps per task (at most)
    decoder_time_limit: float = 25.0  # seconds of decoder training per task (0: no limit)


# ------------------------------------------------------------------------------- helpers


def _now() -> float:
    return time.perf_counter()


class _GraphCache:
    """Graphs of a zoo, loaded once."""

    def __init__(self, zoo: Any) -> None:
        self.zoo = zoo
        self._graphs: dict[str, Any] = {}

    def __call__(self, checkpoint_id: str) -> Any:
        graph = self._graphs.get(checkpoint_id)
        if graph is None:
            graph = self._graphs[checkpoint_id] = self.zoo.graph(checkpoint_id)
        return graph

    def many(self, ids: Sequence[str]) -> list[Any]:
        return [self(i) for i in ids]


def _ids_of_runs(table: pd.DataFrame, runs: Sequence[str]) -> list[str]:
    keep = table["run_id"].astype(str).isin(set(map(str, runs)))
    return list(table.loc[keep, "checkpoint_id"].astype(str))


def _chance(table: pd.DataFrame, ids: Sequence[str]) -> np.ndarray:
    from weightspace.zoo.tasks import get_task

    rows = table.set_index("checkpoint_id").loc[list(ids)]
    levels: dict[str, float] = {}
    out = []
    for task in rows["task"].astype(str):
        if task not in levels:
            try:
                levels[task] = 1.0 / get_task(task).num_classes
            except Exception:  # imported zoos may name tasks weightspace does not know
                levels[task] = float("nan")
        out.append(levels[task])
    return np.asarray(out, dtype=float)


def _accuracy(table: pd.DataFrame, ids: Sequence[str]) -> np.ndarray:
    return table.set_index("checkpoint_id").loc[list(ids), "test_accuracy"].to_numpy(float)


def _architecture(table: pd.DataFrame, ids: Sequence[str]) -> np.ndarray:
    """One label per exact architecture: an arch name reads different input sizes per task."""
    rows = table.set_index("checkpoint_id").loc[list(ids)]
    column = "arch" if "arch" in rows.columns else "spec_summary"
    labels = rows[column].astype(str)
    if "task" in rows.columns:
        labels = labels + "@" + rows["task"].astype(str)
    return labels.to_numpy()


def _gallery_runs(table: pd.DataFrame, test_ids: Sequence[str], cap: int, seed: int) -> list[str]:
    """Whole held-out runs, drawn in a seeded order until ``cap`` checkpoints."""
    rows = table[table["checkpoint_id"].isin(set(test_ids))]
    runs = sorted(rows["run_id"].astype(str).unique())
    order = np.random.default_rng(seed).permutation(len(runs))
    sizes = rows.groupby(rows["run_id"].astype(str)).size()
    chosen, total = [], 0
    for i in order:
        if total + sizes[runs[i]] > cap and chosen:
            continue
        chosen.append(runs[i])
        total += int(sizes[runs[i]])
    return _ids_of_runs(rows, chosen)


class _EmbeddingGBT:
    """Our encoder's embedding, frozen, with histogram gradient-boosted trees predicting accuracy.

    The same regressor family as the StatNN baseline, so the two rows compare the features.
    """

    def __init__(self, encoder: Any, seed: int) -> None:
        self.encoder = encoder
        self.seed = seed

    def fit(self, graphs: Sequence[Any], y: np.ndarray) -> _EmbeddingGBT:
        from sklearn.ensemble import HistGradientBoostingRegressor

        z = np.asarray(self.encoder.embed(list(graphs)), dtype=np.float64)
        self.regressor_ = HistGradientBoostingRegressor(
            max_iter=300, learning_rate=0.05, random_state=self.seed
        ).fit(z, y)
        return self

    def predict_accuracy(self, graphs: Sequence[Any]) -> np.ndarray:
        z = np.asarray(self.encoder.embed(list(graphs)), dtype=np.float64)
        return self.regressor_.predict(z)


class _PerArchitecture:
    """Fit one copy of a fixed-architecture method per architecture; NaN where it refuses."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make
        self.models: dict[str, Any] = {}
        self.refused: dict[str, str] = {}

    def fit(self, graphs: Sequence[Any], arches: np.ndarray, y: np.ndarray) -> _PerArchitecture:
        for arch in sorted(set(arches)):
            mask = arches == arch
            if mask.sum() < 10:
                self.refused[arch] = f"only {int(mask.sum())} training checkpoints"
                continue
            try:
                model = self.make()
                model.fit(
                    [g for g, m in zip(graphs, mask, strict=True) if m], {"test_accuracy": y[mask]}
                )
                self.models[arch] = model
            except WeightspaceError as exc:
                self.refused[arch] = str(exc).split("\n")[0][:200]
        return self

    def predict(self, graphs: Sequence[Any], arches: np.ndarray) -> np.ndarray:
        out = np.full(len(graphs), np.nan)
        for arch, model in self.models.items():
            idx = np.flatnonzero(arches == arch)
            if len(idx):
                out[idx] = model.predict([graphs[i] for i in idx])
        return out


# ------------------------------------------------------------------------------- methods


def _train_encoder(
    config: BenchConfig,
    out: Path,
    seed: int,
    *,
    splits: Mapping[str, Sequence[str]] | None,
    time_limit: float,
    log: Callable[[str], None],
) -> tuple[Any, dict[str, list[str]], float]:
    from weightspace.train import TrainConfig, train

    cfg = TrainConfig(
        zoo=config.zoo,
        out=str(out),
        seed=seed,
        epochs=config.train_epochs,
        time_limit=time_limit,
        device=config.device,
    )
    if splits is not None:
        cfg.splits = {k: list(map(str, v)) for k, v in splits.items()}
    start = _now()
    result = train(cfg, progress=False)
    seconds = _now() - start
    used = json.loads((out / "splits.json").read_text())
    log(
        f"  encoder trained in {seconds:.0f}s ({result.epochs_run} epochs, best epoch "
        f"{result.best_epoch})"
    )
    return result.encoder, used, seconds


def _fit_baseline(
    name: str,
    graphs: Sequence[Any],
    y: np.ndarray | None,
    arches: np.ndarray,
    seed: int,
    config: BenchConfig,
) -> Any:
    from weightspace.baselines import get_embedder

    targets = None if y is None else {"test_accuracy": y}
    if name in PER_ARCHITECTURE:
        if y is None:
            raise BenchError(f"{name} is fitted per architecture on accuracies; none available")
        return _PerArchitecture(
            lambda: get_embedder(name, random_state=seed, epochs=config.nfn_epochs)
        ).fit(graphs, arches, y)
    model = get_embedder(name, random_state=seed)
    if name == "weightwatcher" and len(graphs) > config.weightwatcher_max_models:
        idx = np.random.default_rng(seed).choice(
            len(graphs), config.weightwatcher_max_models, replace=False
        )
        graphs = [graphs[i] for i in sorted(idx)]
        if targets is not None:
            targets = {"test_accuracy": y[np.sort(idx)]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(list(graphs), targets)


def _predict(method: str, model: Any, graphs: Sequence[Any], arches: np.ndarray) -> np.ndarray:
    if isinstance(model, _PerArchitecture):
        return model.predict(graphs, arches)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(model.predict_accuracy(list(graphs)), dtype=float)


def _prediction_metrics(y: np.ndarray, pred: np.ndarray, chance: np.ndarray) -> dict[str, float]:
    from weightspace.evaluate import accuracy_prediction_metrics

    covered = np.isfinite(pred)
    metrics = accuracy_prediction_metrics(y[covered], pred[covered], chance[covered])
    metrics["coverage"] = float(covered.mean()) if len(covered) else float("nan")
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float | np.floating)}


# ------------------------------------------------------------------------------- main


def run_bench(config: BenchConfig, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the benchmark and write ``results.json``, ``report.md`` and plots to ``config.out``.

    Returns:
        The results (the content of ``results.json``).
    """
    from weightspace.baselines import list_embedders
    from weightspace.train import split_runs
    from weightspace.zoo import Zoo

    sections = _sections(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    zoo = Zoo.open(config.zoo)
    table = zoo.table.copy()
    table["checkpoint_id"] = table["checkpoint_id"].astype(str)
    table["run_id"] = table["run_id"].astype(str)
    graphs = _GraphCache(zoo)
    ours = (OURS, OURS_GBT)
    unknown = [m for m in config.methods if m not in ours and m not in list_embedders()]
    if unknown:
        raise BenchError(
            f"unknown methods {unknown}; valid: {[*ours, *list_embedders(include_slow=True)]}"
        )
    has_accuracy = "test_accuracy" in table.columns and table["test_accuracy"].notna().any()
    notes: list[str] = []
    if not has_accuracy:
        notes.append(
            "The zoo has no test accuracies: the accuracy-prediction protocols were skipped; "
            "only retrieval ran."
        )
    info = zoo.info()
    results: dict[str, Any] = {
        "config": asdict(config),
        "zoo": {
            "path": str(config.zoo),
            "name": Path(config.zoo).resolve().name,
            "checkpoints": int(len(table)),
            "runs": int(table["run_id"].nunique()),
            "tasks": sorted(table["task"].astype(str).unique()) if "task" in table else [],
            "architectures": int(table["arch"].nunique()) if "arch" in table else None,
            "info": {k: v for k, v in info.items() if isinstance(v, int | float | str | list)},
        },
        "prediction": {},
        "retrieval": {"S": {}, "L": {}, "F": {}},
        "skipped": {},
        "notes": notes,
        "encoder": {},
        "timings": {},
        "predictions_seed0": {},
        "embedding_map": {},
    }
    given_encoder = None
    if config.encoder:
        from weightspace.nn import Encoder
        from weightspace.train import zoo_fingerprint

        given_encoder = Encoder.load(config.encoder)
        trained_on = _read_json(Path(config.encoder) / "zoo_fingerprint.json")
        fingerprint = zoo_fingerprint(zoo)
        same = trained_on is not None and fingerprint in json.dumps(trained_on)
        results["encoder"] = {
            "source": str(config.encoder),
            "fingerprint": given_encoder.fingerprint,
            "trained_on_this_zoo": bool(same),
        }
        if same:
            notes.append(
                f"The encoder {config.encoder} was trained on this zoo: every seed uses the "
                "held-out runs of its own split (splits.json), so seeds vary the baselines' "
                "initialisation and the retrieval queries, not the split."
            )
        else:
            notes.append(
                f"The encoder {config.encoder} was trained on another zoo (its zoo fingerprint "
                "differs): its figures measure transfer, and the held-out split is drawn fresh."
            )
    else:
        results["encoder"] = {"source": "trained per seed by this bench"}

    def record(section: dict, method: str, metrics: Mapping[str, Any]) -> None:
        section.setdefault(method, []).append(dict(metrics))

    for seed in range(config.seeds if "runs" in sections else 0):
        log(f"seed {seed}: held-out runs")
        t0 = _now()
        encoder = None
        if given_encoder is not None:
            encoder = given_encoder
            splits = _read_json(Path(config.encoder) / "splits.json")
            if not splits or not results["encoder"].get("trained_on_this_zoo"):
                splits = split_runs(list(table["run_id"]), 0.15, 0.15, seed)
        elif OURS not in config.methods:
            splits = split_runs(list(table["run_id"]), 0.15, 0.15, seed)
        else:
            encoder, splits, seconds = _train_encoder(
                config,
                out / "encoders" / f"seed-{seed}",
                seed,
                splits=None,
                time_limit=config.train_time_limit,
                log=log,
            )
            results["timings"].setdefault("encoder_training_s", []).append(seconds)
            epochs = len(_read_csv_rows(out / "encoders" / f"seed-{seed}" / "log.csv"))
            results["timings"].setdefault("encoder_epochs", []).append(epochs)
        train_ids = _ids_of_runs(table, [*splits["train"], *splits["val"]])
        test_ids = _ids_of_runs(table, splits["test"])
        if not test_ids:
            raise BenchError("the held-out split is empty: the zoo needs more runs")
        train_graphs, test_graphs = graphs.many(train_ids), graphs.many(test_ids)
        train_arch, test_arch = _architecture(table, train_ids), _architecture(table, test_ids)
        y_train = _accuracy(table, train_ids) if has_accuracy else None
        y_test = _accuracy(table, test_ids) if has_accuracy else None
        chance = _chance(table, test_ids)

        fitted: dict[str, Any] = {}
        for method in config.methods:
            t = _now()
            try:
                if method == OURS:
                    fitted[method] = encoder
                elif method == OURS_GBT:
                    if encoder is None or y_train is None:
                        raise BenchError(f"{OURS_GBT} needs our encoder and test accuracies")
                    fitted[method] = _EmbeddingGBT(encoder, seed).fit(train_graphs, y_train)
                else:
                    fitted[method] = _fit_baseline(
                        method, train_graphs, y_train, train_arch, seed, config
                    )
                if has_accuracy:
                    pred = _predict(method, fitted[method], test_graphs, test_arch)
                    metrics = _prediction_metrics(y_test, pred, chance)
                    record(results["prediction"].setdefault("held-out runs", {}), method, metrics)
                    if seed == 0:
                        results["predictions_seed0"][method] = {
                            "true": y_test.tolist(),
                            "predicted": [None if not np.isfinite(p) else float(p) for p in pred],
                        }
                    if isinstance(fitted[method], _PerArchitecture) and fitted[method].refused:
                        results["skipped"][f"{method} (some architectures)"] = fitted[
                            method
                        ].refused
            except WeightspaceError as exc:
                results["skipped"][method] = str(exc).split("\n")[0][:300]
                fitted.pop(method, None)
                log(f"  {method}: skipped ({results['skipped'][method][:120]})")
            results["timings"].setdefault(f"fit+predict {method} (s)", []).append(_now() - t)

        _retrieval(config, seed, table, graphs, test_ids, fitted, results, log)
        if seed == 0 and OURS in fitted:
            _embedding_map(fitted[OURS], table, test_ids, graphs, results)
        log(f"  seed {seed} done in {_now() - t0:.0f}s")

    if has_accuracy and "held-out" in sections:
        for protocol in config.held_out:
            for seed in range(min(config.held_out_seeds, config.seeds)):
                _held_out(config, protocol, seed, table, graphs, results, log)

    if "synthesis" in sections:
        _synthesis(config, zoo, table, out, results, log)

    results["notes"] = notes
    if sections != set(SECTIONS):
        results = _merge_previous(out / "results.json", results, sections)
    _write_json(out / "results.json", results)
    from weightspace.report import write_report

    write_report(results, out)
    return results


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


def _merge_previous(path: Path, results: dict[str, Any], sections: set[str]) -> dict[str, Any]:
    """A partial run (``--only``) updates a previous ``results.json``: the sections it ran
    replace theirs, everything else is kept (and the config notes which sections are new)."""
    previous = _read_json(path)
    if not isinstance(previous, dict):
        return results
    merged = dict(previous)
    if "runs" in sections:
        prediction = dict(merged.get("prediction", {}))
        if "held-out runs" in results["prediction"]:
            prediction["held-out runs"] = results["prediction"]["held-out runs"]
        merged["prediction"] = prediction
        for key in ("retrieval", "predictions_seed0", "embedding_map", "encoder"):
            merged[key] = results[key]
    if "held-out" in sections:
        prediction = {k: v for k, v in merged.get("prediction", {}).items() if k == "held-out runs"}
        prediction.update({k: v for k, v in results["prediction"].items() if k != "held-out runs"})
        merged["prediction"] = prediction
        merged["splits"] = results.get("splits", {})
    if "synthesis" in sections:
        merged.pop("synthesis", None)
        if "synthesis" in results:
            merged["synthesis"] = results["synthesis"]
    merged["timings"] = {**previous.get("timings", {}), **results.get("timings", {})}
    skipped = {
        k: v
        for k, v in previous.get("skipped", {}).items()
        if not (k.startswith("synthesis") and "synthesis" in sections)
    }
    merged["skipped"] = {**skipped, **results.get("skipped", {})}
    merged["notes"] = list(dict.fromkeys([*previous.get("notes", []), *results.get("notes", [])]))
    merged["updated_sections"] = sorted(sections)
    merged.setdefault("config", results["config"])
    merged["config_update"] = results["config"]
    return merged


def _retrieval(
    config: BenchConfig,
    seed: int,
    table: pd.DataFrame,
    graphs: _GraphCache,
    test_ids: Sequence[str],
    fitted: Mapping[str, Any],
    results: dict[str, Any],
    log: Callable[[str], None],
) -> None:
    from weightspace.evaluate import (
        evaluate_retrieval_function,
        evaluate_retrieval_lineage,
        evaluate_retrieval_symmetry,
    )

    gallery_ids = _gallery_runs(table, test_ids, config.max_gallery, seed)
    rows = table.set_index("checkpoint_id").loc[gallery_ids]
    gallery = graphs.many(gallery_ids)
    runs = rows["run_id"].astype(str).tolist()
    tasks = rows["task"].astype(str).tolist()
    log(f"  retrieval on a gallery of {len(gallery)} held-out checkpoints")
    for method, model in fitted.items():
        if isinstance(model, _EmbeddingGBT):
            continue  # the same embedding as ours: retrieval would repeat our rows
        if isinstance(model, _PerArchitecture):
            results["skipped"].setdefault(
                f"{method} retrieval",
                "fitted per architecture: its embedding spaces are not comparable across "
                "architectures",
            )
            continue
        t = _now()
        for name, fn in (
            (
                "S",
                lambda m=model: evaluate_retrieval_symmetry(
                    m, gallery, num_queries=config.num_queries, seed=seed, ks=RECALL_KS
                ),
            ),
            (
                "L",
                lambda m=model: evaluate_retrieval_lineage(
                    m,
                    gallery,
                    runs,
                    tasks=tasks,
                    num_queries=config.num_queries,
                    seed=seed,
                    ks=RECALL_KS,
                ),
            ),
            (
                "F",
                lambda m=model: evaluate_retrieval_function(
                    m, gallery, tasks, num_queries=config.num_queries, seed=seed, ks=RECALL_KS
                ),
            ),
        ):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    metrics = fn()
            except WeightspaceError as exc:
                results["skipped"][f"{method} retrieval {name}"] = str(exc)[:300]
                continue
            flat = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
            results["retrieval"][name].setdefault(method, []).append(flat)
        results["timings"].setdefault(f"retrieval {method} (s)", []).append(_now() - t)


def _embedding_map(
    encoder: Any, table: pd.DataFrame, ids: Sequence[str], graphs: _GraphCache, results: dict
) -> None:
    from sklearn.decomposition import PCA

    ids = list(ids)[:2000]
    z = np.asarray(encoder.embed(graphs.many(ids)), dtype=float)
    if len(z) < 3:
        return
    xy = PCA(n_components=2, random_state=0).fit_transform(z)
    rows = table.set_index("checkpoint_id").loc[ids]
    results["embedding_map"] = {
        "x": xy[:, 0].tolist(),
        "y": xy[:, 1].tolist(),
        "task": rows["task"].astype(str).tolist(),
        "test_accuracy": rows["test_accuracy"].astype(float).tolist()
        if "test_accuracy" in rows
        else [],
    }


def _held_out(
    config: BenchConfig,
    protocol: str,
    seed: int,
    table: pd.DataFrame,
    graphs: _GraphCache,
    results: dict[str, Any],
    log: Callable[[str], None],
) -> None:
    from weightspace.evaluate import split_by_architecture, split_by_task

    if protocol == "architectures":
        split = split_by_architecture(table, by="size", seed=seed)
        name = "held-out architectures"
    elif protocol == "tasks":
        tasks = sorted(table["task"].astype(str).unique())
        if len(tasks) < 2:
            results["skipped"]["held-out tasks"] = "the zoo has a single task"
            return
        task = tasks[seed % len(tasks)]
        split = split_by_task(table, task, seed=seed)
        name = f"held-out task ({task})"
    else:
        raise BenchError(f"unknown held-out protocol {protocol!r}; valid: architectures, tasks")
    log(f"seed {seed}: {name}")
    runs = {
        part: sorted(table.set_index("checkpoint_id").loc[list(ids), "run_id"].astype(str).unique())
        for part, ids in (("train", split.train), ("val", split.val), ("test", split.test))
    }
    train_ids = [*split.train, *split.val]
    test_ids = list(split.test)
    train_graphs, test_graphs = graphs.many(train_ids), graphs.many(test_ids)
    train_arch, test_arch = _architecture(table, train_ids), _architecture(table, test_ids)
    y_train, y_test = _accuracy(table, train_ids), _accuracy(table, test_ids)
    chance = _chance(table, test_ids)
    results.setdefault("splits", {})[name] = split.to_dict()
    encoder = None
    for method in config.methods:
        try:
            if method == OURS_GBT:
                if encoder is None:
                    raise BenchError(f"{OURS_GBT} needs our encoder, which was not fitted here")
                model = _EmbeddingGBT(encoder, seed).fit(train_graphs, y_train)
            elif method == OURS:
                if config.encoder:
                    results["skipped"][f"{OURS} {name}"] = (
                        "a given encoder was trained on its own split; pass --train to refit it "
                        "on the held-out split"
                    )
                    continue
                model = encoder = _train_encoder(
                    config,
                    Path(config.out) / "encoders" / f"{protocol}-seed-{seed}",
                    seed,
                    splits=runs,
                    time_limit=config.held_out_time_limit,
                    log=log,
                )[0]
            else:
                model = _fit_baseline(method, train_graphs, y_train, train_arch, seed, config)
            pred = _predict(method, model, test_graphs, test_arch)
            record = _prediction_metrics(y_test, pred, chance)
            results["prediction"].setdefault(name, {}).setdefault(method, []).append(record)
        except WeightspaceError as exc:
            results["skipped"][f"{method} {name}"] = str(exc).split("\n")[0][:300]


def _synthesis(
    config: BenchConfig,
    zoo: Any,
    table: pd.DataFrame,
    out: Path,
    results: dict[str, Any],
    log: Callable[[str], None],
) -> None:
    """Merging curves, reconstructions and sampling on every task (one architecture each).

    Decoders are fitted on the seed-0 encoder's training runs; pairs and reconstructions come
    from its validation and test runs, which neither the encoder nor the decoders were fitted
    on. See :mod:`weightspace.synthesis.benchmark`.
    """
    from weightspace.nn import Encoder
    from weightspace.synthesis.benchmark import run_section

    encoder_dir = Path(config.encoder) if config.encoder else out / "encoders" / "seed-0"
    splits = _read_json(encoder_dir / "splits.json")
    if not splits:
        why = (
            f"{encoder_dir} has no encoder with a splits.json (run the whole bench first, or "
            "pass --encoder)"
        )
        if config.only:
            raise BenchError(f"cannot run the synthesis section: {why}")
        results["skipped"]["synthesis"] = why
        return
    splits = splits.get("runs", splits)
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
            splits,
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
        results["skipped"]["synthesis"] = str(exc).split("\n")[0][:300]
        return
    for task, why in section["skipped"].items():
        results["skipped"][f"synthesis {task}"] = why
    results["timings"]["synthesis (s)"] = [_now() - t]
    results["synthesis"] = section


def _read_csv_rows(path: Path) -> list[str]:
    try:
        return path.read_text().strip().splitlines()[1:]
    except OSError:
        return []


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_json(path: Path, data: Any) -> None:
    from weightspace.atomic import atomic_write

    text = json.dumps(data, indent=2, default=_json_default)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)
