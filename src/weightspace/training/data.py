"""Training data: the zoo opened, split by run, canonicalised once into a
:class:`~weightspace.nn.batch.GraphBank`, with its labels, function targets and fine-tuned
views; the batch order; and the encoder configuration these data decide (heads, label
statistics, branches)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from weightspace.errors import WeightspaceError
from weightspace.evaluate.splits import split_runs
from weightspace.nn.batch import GraphBank
from weightspace.nn.encoder import EncoderConfig, prepare_graph
from weightspace.nn.probes import domain_key, is_runnable
from weightspace.training.classes import class_names, class_splits
from weightspace.training.config import MissingLabelError, TrainConfig, TrainError
from weightspace.training.function_targets import (
    FunctionTargets,
    by_task_and_architecture,
    function_targets,
)

__all__ = [
    "SPLITS",
    "TrainingData",
    "batches",
    "encoder_config_for",
    "load_data",
    "resolve_branches",
    "zoo_fingerprint",
]

SPLITS = ("train", "val", "test")


def zoo_fingerprint(zoo: Any) -> str:
    """SHA-256 of a zoo's checkpoint ids and manifest: which data an encoder was fitted to."""
    digest = hashlib.sha256()
    digest.update(json.dumps(sorted(map(str, zoo.ids))).encode())
    digest.update(json.dumps(zoo.manifest, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def batches(
    index: Tensor,
    spec_index: Tensor,
    batch_size: int,
    by_architecture: bool,
    generator: torch.Generator | None,
) -> list[Tensor]:
    """Split ``index`` into batches, shuffled if a generator is given. With
    ``by_architecture`` every batch holds one architecture (the encoder then runs dense blocks
    instead of gathers and scatters), and the batches of all architectures are interleaved."""

    def shuffle(t: Tensor) -> Tensor:
        return t if generator is None else t[torch.randperm(t.numel(), generator=generator)]

    if not by_architecture:
        return list(shuffle(index).split(batch_size))
    batches: list[Tensor] = []
    for spec_id in spec_index[index].unique().tolist():
        batches += list(shuffle(index[spec_index[index] == spec_id]).split(batch_size))
    if generator is not None:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
    return batches


@dataclass
class TrainingData:
    """Everything the loop reads, built once by :func:`load_data`."""

    bank: GraphBank  # every used checkpoint, canonicalised
    ids: list[str]  # checkpoint ids, bank order
    splits: dict[str, list[str]]  # run ids per split
    index: dict[str, Tensor]  # bank indices per split
    targets: Tensor  # (n, T) raw targets, NaN where unknown
    target_names: tuple[str, ...]
    task_labels: Tensor  # (n,) task index
    tasks: tuple[str, ...]
    fingerprint: str
    finetuned: GraphBank | None = None  # bank-aligned fine-tuned views (train rows; else copies)
    function: FunctionTargets | None = None  # the function head's targets (function_weight > 0)
    zoo_specs: list[Any] = field(default_factory=list)  # every architecture, test runs included
    class_labels: Tensor | None = None  # (n,) class index per checkpoint (objective "class")
    classes: tuple[str, ...] = ()  # the class head's class names (objective "class")


def load_data(
    config: TrainConfig, encoder_config: EncoderConfig, report: Callable[[str, int, int], None]
) -> TrainingData:
    from weightspace.zoo import Zoo

    zoo = Zoo.open(config.zoo)
    table = zoo.table.reset_index(drop=True)
    if config.objective == "class":
        if config.splits is not None:
            raise TrainError("--objective class uses the zoo's own split; drop explicit splits")
        splits = class_splits(zoo, table, config)
    elif config.splits is not None:
        splits = {part: sorted(map(str, config.splits.get(part, []))) for part in SPLITS}
        if not splits["train"] or not splits["val"]:
            raise TrainError("explicit splits need at least one train and one val run")
        table = table[table["run_id"].astype(str).isin(set().union(*splits.values()))]
        table = table.reset_index(drop=True)
    else:
        try:
            splits = split_runs(
                [str(r) for r in table["run_id"]],
                config.val_fraction,
                config.test_fraction,
                config.seed,
            )
        except WeightspaceError as exc:
            raise TrainError(f"{config.zoo}: {exc}") from None
    if config.max_checkpoints and len(table) > config.max_checkpoints:
        # Keep whole runs, in a seeded order, until the budget is reached (split proportions stay).
        rng = np.random.default_rng(config.seed + 1)
        sizes = table.groupby(table["run_id"].astype(str)).size()
        keep, total = set(), 0
        for run in rng.permutation(sorted(sizes.index)):
            if total >= config.max_checkpoints:
                break
            keep.add(run)
            total += int(sizes[run])
        table = table[table["run_id"].astype(str).isin(keep)].reset_index(drop=True)
        splits = {k: [r for r in v if r in keep] for k, v in splits.items()}
        if not splits["train"] or not splits["val"]:
            raise TrainError(
                f"max_checkpoints={config.max_checkpoints} leaves no train or val runs; raise it"
            )
    used = table[~table["run_id"].astype(str).isin(splits["test"])].reset_index(drop=True)
    # The probe branch must accept every input domain of the zoo, held-out ones included (bench
    # embeds the test runs; their probes then stay at their initialisation).
    zoo_specs = [zoo.spec(str(i)) for i in table.drop_duplicates("spec")["checkpoint_id"]]

    names: list[str] = []
    columns: list[np.ndarray] = []
    if config.objective not in ("contrastive", "class"):
        accuracy = used["test_accuracy"].to_numpy(dtype=float)
        if not np.isfinite(accuracy).any():
            raise MissingLabelError(
                f"{config.zoo}: no checkpoint has a test_accuracy, which the accuracy head of "
                f"--objective {config.objective} needs; fill the column (zoo import --metrics) "
                "or train with --objective contrastive"
            )
        names.append("test_accuracy")
        columns.append(accuracy)
        if "train_accuracy" in used.columns:
            gap = used["train_accuracy"].to_numpy(dtype=float) - accuracy
            if np.isfinite(gap).any():
                names.append("generalization_gap")
                columns.append(gap)
    targets = (
        torch.tensor(np.stack(columns, axis=1), dtype=torch.float32)
        if columns
        else torch.zeros(len(used), 0)
    )
    tasks = tuple(sorted(str(t) for t in used["task"].unique()))
    task_index = {t: i for i, t in enumerate(tasks)}
    task_labels = torch.tensor([task_index[str(t)] for t in used["task"]], dtype=torch.long)

    ids = [str(i) for i in used["checkpoint_id"]]
    use_function = bool(config.function_weight)
    keep_models = use_function or config.finetune_probability > 0
    graphs, models = read_shards(zoo, ids, encoder_config, keep_models, report)
    bank = GraphBank(graphs)
    function = None
    if use_function:
        function = function_targets(
            models,
            [str(t) for t in used["task"]],
            config.function_probes,
            seed=encoder_config.function_seed,
        )
        report("function targets", 1, 1)

    run_of = used["run_id"].astype(str).to_numpy()
    index = {
        split: torch.from_numpy(np.flatnonzero(np.isin(run_of, splits[split])))
        for split in ("train", "val")
    }
    finetuned = None
    if config.finetune_probability > 0:
        finetuned = finetuned_bank(
            config, encoder_config, models, [str(t) for t in used["task"]], graphs, index["train"]
        )
        report("fine-tuning views", 1, 1)
    class_labels, classes = None, ()
    if config.objective == "class":
        classes = class_names(zoo, table)
        class_labels = torch.tensor(used["label"].to_numpy().astype(np.int64))
    return TrainingData(
        bank,
        ids,
        splits,
        index,
        targets,
        tuple(names),
        task_labels,
        tasks,
        zoo_fingerprint(zoo),
        finetuned,
        function,
        zoo_specs,
        class_labels,
        classes,
    )


def read_shards(
    zoo: Any,
    ids: list[str],
    encoder_config: EncoderConfig,
    keep_models: bool,
    report: Callable[[str, int, int], None],
) -> tuple[list[Any], list[tuple[Any, Any]]]:
    """Read and canonicalise the checkpoints ``ids``: the prepared graphs, in order, and (with
    ``keep_models``) the ``(spec, state_dict)`` pairs.

    Under ``torchrun`` each rank reads only its shard of the zoo, the contiguous positions
    :func:`~weightspace.training.distributed.shard_bounds` gives it, and the ranks then
    exchange what they prepared (``all_gather_object``), so every rank holds the same bank as
    one process would, bit for bit, for a ``world_size``-th of the reading and canonicalising.
    """
    from weightspace.training.distributed import Distributed, shard_bounds

    ddp = Distributed.current()
    lo, hi = shard_bounds(len(ids), ddp.rank, ddp.world_size)
    graphs, models = [], []
    for position in range(lo, hi):
        spec, state = zoo.spec(ids[position]), zoo.state_dict(ids[position])
        graphs.append(prepare_graph((spec, state), encoder_config, index=position))
        if keep_models:
            models.append((spec, state))
        report("canonicalising checkpoints", position - lo + 1, hi - lo)
    if ddp.world_size == 1:
        return graphs, models
    import torch.distributed as dist

    shards: list[Any] = [None] * ddp.world_size
    dist.all_gather_object(shards, (graphs, models))  # in rank order: positions in order
    return [g for shard in shards for g in shard[0]], [m for shard in shards for m in shard[1]]


def finetuned_bank(
    config: TrainConfig,
    encoder_config: EncoderConfig,
    models: list[tuple[Any, Any]],
    tasks: list[str],
    graphs: list[Any],
    train_index: Tensor,
) -> GraphBank:
    """Every training checkpoint after ``finetune_steps`` SGD steps on its own task
    (:mod:`weightspace.finetune`), as a bank aligned with the main one; other rows keep their
    graph. One vectorised fine-tuning per (task, architecture)."""
    from weightspace.finetune import finetune_state_dicts, task_training_data

    views = list(graphs)
    specs = [spec for spec, _ in models]
    generator = torch.Generator().manual_seed(config.seed * 7_919 + 17)
    for task_name, positions in by_task_and_architecture(specs, tasks, train_index.tolist()):
        spec = specs[positions[0]]
        inputs, labels = task_training_data(task_name, spec)
        tuned = finetune_state_dicts(
            spec,
            [models[p][1] for p in positions],
            inputs,
            labels,
            steps=config.finetune_steps,
            learning_rate=config.finetune_learning_rate,
            generator=generator,
        )
        for p, state in zip(positions, tuned, strict=True):
            views[p] = prepare_graph((spec, state), encoder_config, index=p)
    return GraphBank(views)


def resolve_branches(
    config: TrainConfig, specs: list[Any]
) -> tuple[tuple[str, ...], tuple[str, ...], int]:
    """The encoder's branches, probe domains and probe classes for a zoo's architectures.

    ``"auto"`` chooses ``("graph", "probe")`` when every architecture can be run on probes
    (:func:`~weightspace.nn.probes.is_runnable`), else ``("graph",)``. The domains are every
    input shape of the zoo and the
    classes its largest output count. ``specs``: every architecture of the zoo, test runs
    included, so that held-out tasks and architectures can still be embedded.
    """
    runnable = all(is_runnable(spec) for spec in specs)
    if config.branches == "auto":
        branches: tuple[str, ...] = ("graph", "probe") if runnable else ("graph",)
    else:
        branches = tuple(config.branches)
    if "probe" not in branches:
        return branches, (), 0
    domains = tuple(sorted({domain_key(spec) for spec in specs}))
    return branches, domains, max(int(spec.num_outputs) for spec in specs)


def probe_start(probe_init: str, zoo: Any, domains: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """The encoder's ``(probe_init, probe_sources)`` for ``TrainConfig.probe_init`` on ``zoo``.

    ``task``: each domain's source (:func:`weightspace.nn.probe_init.probe_sources_for_zoo`),
    Gaussian where no inputs are known, said once. ``auto``: the same without a word, and a plain
    Gaussian start (``("gauss", ())``, the fingerprint of an encoder trained before starts
    existed) when no domain's inputs are known. ``gauss``: ``("gauss", ())``.
    """
    from weightspace.nn.probe_init import probe_sources_for_zoo

    if probe_init == "gauss" or not domains:
        return "gauss", ()
    sources = probe_sources_for_zoo(zoo, domains, warn=probe_init == "task")
    if probe_init == "auto" and all(source == "gauss" for source in sources):
        return "gauss", ()
    return "task", sources


def encoder_config_for(config: TrainConfig, data: TrainingData) -> EncoderConfig:
    """``config.encoder`` completed by the data: the heads' targets and tasks, the label
    statistics of the training split (mean and standard deviation of each target, which the
    property head predicts standardised), the function head's size and the branches."""
    train_targets = data.targets[data.index["train"]]
    means, stds = [], []
    for column in train_targets.t():
        known = column[torch.isfinite(column)]
        means.append(float(known.mean()) if known.numel() else 0.0)
        stds.append(float(known.std()) if known.numel() > 1 else 1.0)
    encoder_config = replace(
        config.encoder,
        targets=data.target_names,
        target_mean=tuple(means),
        target_std=tuple(max(s, 1e-6) for s in stds),
        tasks=(
            data.tasks
            if len(data.tasks) > 1 and config.objective not in ("contrastive", "class")
            else ()
        ),
        classes=data.classes,
        function_probes=config.function_probes if data.function is not None else 0,
        function_classes=(
            int(data.function.probabilities.shape[-1]) if data.function is not None else 0
        ),
    )
    branches, domains, classes = resolve_branches(config, data.zoo_specs)
    probe_init, sources = "gauss", ()
    if domains and getattr(config, "probe_init", "gauss") != "gauss":
        from weightspace.zoo import Zoo

        probe_init, sources = probe_start(config.probe_init, Zoo.open(config.zoo), domains)
    return replace(
        encoder_config,
        branches=branches,
        probes=config.probes,
        probe_domains=domains,
        probe_classes=classes,
        probe_init=probe_init,
        probe_sources=sources,
    )


def standardised_targets(data: TrainingData, encoder_config: EncoderConfig) -> Tensor:
    """``(n, T)`` targets as the property head predicts them: ``(y - mean) / std``."""
    mean = torch.tensor(encoder_config.target_mean, dtype=torch.float32)
    return (data.targets - mean) / torch.tensor(encoder_config.target_std)
