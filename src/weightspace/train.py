"""Train the weight-space encoder on a zoo: one loop, top to bottom.

    weightspace train --zoo ZOO --out ENCODER_DIR [--epochs N] [--objective both] [--seed S]

1. Open the zoo, split its *runs* into train / val / test (every checkpoint of a run on one side).
2. Canonicalise every checkpoint once and concatenate the graphs into a
   :class:`~weightspace.nn.batch.GraphBank`.
3. Each step: two augmented views of a batch (:mod:`weightspace.nn.augment`), NT-Xent between
   their projections, plus weighted supervised losses (standardised test accuracy and
   generalisation gap by MSE, task by cross-entropy) on both views, and the function loss: the
   KL divergence from each checkpoint's own output distribution on fixed probe inputs of its
   task (:func:`function_targets`, computed once) to the function head's prediction.
   With the probe branch (``branches``, :func:`resolve_branches`) the learned probes train
   through the same losses: every head reads the fused embedding.
4. AdamW with linear warm-up and cosine decay over ``epochs``; after each epoch, validation
   metrics (Kendall tau of predicted test accuracy, view retrieval top-1, ...) decide early
   stopping.
5. ``ENCODER_DIR`` gets the best weights (``encoder.safetensors``), their config
   (``config.json``), this run's :class:`TrainConfig` (``train_config.json``), the log
   (``log.csv``), the run split (``splits.json``) and the zoo's fingerprint
   (``zoo_fingerprint.json``). ``checkpoint.pt`` is written every epoch; running the same
   command again resumes from it, and gives the same result as an uninterrupted run.

Training is bounded by epochs (and early stopping), never by the clock: a run's figures depend
only on its config and seed, not on the machine's load. Everything is deterministic given
``seed``: the encoder's initialisation, the split, the batch order and the augmentations (each
epoch draws from its own generator seeded by ``(seed, epoch)``); on one CPU thread two runs give
identical weights. ``time_limit`` is only a safety cap (off by default): a run that hits it is
cut short with its schedule unfinished, logged ``partial``, and says so in
:attr:`TrainResult.stopped_by`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from weightspace.errors import WeightspaceError
from weightspace.evaluate.splits import split_runs
from weightspace.nn.augment import AugmentConfig, augment
from weightspace.nn.batch import GraphBank
from weightspace.nn.encoder import BRANCHES, Encoder, EncoderConfig, prepare_graph
from weightspace.nn.probes import domain_key, is_runnable

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainError",
    "MissingLabelError",
    "train",
    "split_runs",  # re-exported: the package's one run splitter (weightspace.evaluate.splits)
    "zoo_fingerprint",
    "nt_xent",
    "FunctionTargets",
    "function_targets",
    "FUNCTION_WEIGHT",
]

OBJECTIVES = ("contrastive", "supervised", "both")
CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "log.csv"
LOG_COLUMNS = (
    "epoch",
    "step",
    "lr",
    "seconds",
    "partial",
    "train_loss",
    "train_contrastive",
    "train_accuracy_mse",
    "train_gap_mse",
    "train_task_ce",
    "train_function_kl",
    "val_contrastive",
    "val_view_top1",
    "val_accuracy_tau",
    "val_accuracy_r2",
    "val_accuracy_mae",
    "val_gap_tau",
    "val_task_accuracy",
    "val_function_kl",
    "val_function_agreement",
    "val_score",
)

#: Default weight of the function loss (``TrainConfig.function_weight=None`` on a zoo whose tasks
#: are all built-in); chosen by measurement on the ``small`` demo zoo.
FUNCTION_WEIGHT = 1.0


class TrainError(WeightspaceError):
    """Training cannot start: bad configuration, too few runs to split, unreadable state."""


class MissingLabelError(TrainError):
    """The zoo lacks a label that a requested head needs."""


@dataclass
class TrainConfig:
    """Everything that determines a training run (saved as ``train_config.json``)."""

    zoo: str = ""  # zoo directory (`weightspace zoo generate --out ...`)
    out: str = ""  # encoder directory to write
    objective: str = "both"  # contrastive | supervised | both
    epochs: int = 12  # maximum passes over the training checkpoints (small zoo: ~8 min on 2 cores)
    batch_size: int = 128  # checkpoints per step (each gives two views when contrastive)
    learning_rate: float = 2e-3  # peak AdamW learning rate
    weight_decay: float = 0.05  # AdamW weight decay on matrices (not on biases, norms, tables)
    warmup_fraction: float = 0.05  # share of all steps spent warming the learning rate up
    min_lr_ratio: float = 0.05  # the cosine schedule ends at this fraction of the peak
    grad_clip: float = 1.0  # gradient norm clip (0: off)
    temperature: float = 0.1  # NT-Xent temperature
    contrastive_weight: float = 1.0  # weight of NT-Xent
    accuracy_weight: float = 1.0  # weight of the MSE on standardised test accuracy
    gap_weight: float = 0.5  # weight of the MSE on the standardised generalisation gap
    task_weight: float = 0.2  # weight of the task cross-entropy (zoos with several tasks)
    val_fraction: float = 0.15  # share of runs held out for validation / early stopping
    test_fraction: float = 0.15  # share of runs held out for benchmarks (never seen here)
    patience: int = 8  # epochs without validation improvement before stopping
    max_checkpoints: int = 0  # use at most this many checkpoints, whole runs (0: all)
    batch_by_architecture: bool = False  # True: one architecture per batch (the encoder's dense
    #   fast path). Off by default: an architecture fixes its task, so one-architecture steps
    #   leave the heads chasing each step's task (on the small zoo, val task accuracy 0.26 and
    #   accuracy tau 0.30 after 3 epochs, against 0.99 and 0.61 with mixed batches)
    seed: int = 0  # seeds initialisation, split, batch order and augmentations
    device: str = "cpu"  # cpu | cuda | cuda:N
    threads: int = 0  # torch CPU threads (0: leave torch's default)
    time_limit: float = 0.0  # safety cap only (0: none): stop after this many seconds of
    #   training; the epoch in progress ends early, is validated and logged with partial = 1. A
    #   capped run's figures depend on the machine's speed; bound runs by epochs instead
    splits: dict[str, list[str]] | None = None  # explicit run ids per train/val/test (overrides
    #   the seeded split; `bench` uses it for held-out architectures and tasks)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # view augmentations
    finetune_probability: float = 0.0  # chance a view starts from its checkpoint after a few SGD
    #   steps on the checkpoint's own task (built-in tasks only; 0: off)
    finetune_steps: int = 4  # SGD steps of those views (computed once, before the first epoch)
    finetune_learning_rate: float = 0.02  # their step size
    function_weight: float | None = None  # weight of the function-head KL (0: off; None:
    #   FUNCTION_WEIGHT when every task of the zoo is built-in, else 0)
    function_probes: int = 32  # probe inputs per task of the function head
    branches: str | tuple[str, ...] = "auto"  # encoder branches: "graph", "probe" or both;
    #   "auto": both when every checkpoint's architecture can be run, else graph only
    probes: int = 32  # learned probe inputs per input domain of the probe branch
    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # architecture

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig(**self.augment)
        if isinstance(self.encoder, dict):
            self.encoder = EncoderConfig.from_dict(self.encoder)
        if self.objective not in OBJECTIVES:
            raise TrainError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.epochs < 1 or self.batch_size < 2:
            raise TrainError("epochs must be >= 1 and batch_size >= 2")
        if self.time_limit < 0 or self.patience < 1:
            raise TrainError("time_limit must be >= 0 seconds (0: none) and patience >= 1")
        if not 0 < self.val_fraction < 1 or not 0 <= self.test_fraction < 1:
            raise TrainError("val_fraction must be in (0, 1) and test_fraction in [0, 1)")
        if not 0 <= self.finetune_probability <= 1 or self.finetune_steps < 1:
            raise TrainError("finetune_probability must be in [0, 1] and finetune_steps >= 1")
        if self.function_weight is not None and not self.function_weight >= 0:
            raise TrainError(f"function_weight must be >= 0, got {self.function_weight}")
        if self.function_probes < 1:
            raise TrainError(f"function_probes must be >= 1, got {self.function_probes}")
        if self.probes < 1:
            raise TrainError(f"probes must be >= 1, got {self.probes}")
        if isinstance(self.branches, str) and self.branches != "auto":
            self.branches = tuple(b.strip() for b in self.branches.split(",") if b.strip())
        elif isinstance(self.branches, list):
            self.branches = tuple(self.branches)
        if self.branches != "auto" and (not self.branches or set(self.branches) - set(BRANCHES)):
            raise TrainError(
                f"branches must be 'auto' or a comma-separated subset of {list(BRANCHES)}, got "
                f"{self.branches!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        if isinstance(self.branches, tuple):
            data["branches"] = list(self.branches)
        data["augment"] = self.augment.to_dict()
        data["encoder"] = self.encoder.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return cls(**data)


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    encoder: Encoder  # the best encoder (by validation score), in eval mode
    best_epoch: int  # epoch whose weights were kept
    best_metrics: dict[str, float]  # its validation metrics
    epochs_run: int  # epochs actually run (early stopping / time limit)
    seconds: float  # wall time of the training loop (this invocation)
    log: list[dict[str, float]]  # one row per epoch (also in log.csv)
    out: Path  # the encoder directory
    stopped_by: str = "epochs"  # epochs | early-stopping | time-limit (the safety cap: the
    #   figures of such a run depend on the machine's speed)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def nt_xent(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    r"""NT-Xent (SimCLR): each of the ``2B`` views must pick its partner among ``2B - 1``.

    .. math::
        \ell = -\frac{1}{2B} \sum_{i} \log
        \frac{\exp(\cos(u_i, u_{p(i)}) / \tau)}{\sum_{k \ne i} \exp(\cos(u_i, u_k) / \tau)}

    Shapes: ``a, b (B, D)`` → scalar.
    """
    u = F.normalize(torch.cat([a, b]), dim=-1)  # (2B, D)
    similarity = u @ u.t() / temperature
    n = a.shape[0]
    similarity = similarity.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=u.device), -1e9)
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(u.device)
    return F.cross_entropy(similarity, partner)


SPLITS = ("train", "val", "test")


def zoo_fingerprint(zoo: Any) -> str:
    """SHA-256 of a zoo's checkpoint ids and manifest: which data an encoder was fitted to."""
    digest = hashlib.sha256()
    digest.update(json.dumps(sorted(map(str, zoo.ids))).encode())
    digest.update(json.dumps(zoo.manifest, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _resumable_part(config: dict[str, Any]) -> dict[str, Any]:
    """The config fields that must match to resume (not where or how long it runs)."""
    return {k: v for k, v in config.items() if k not in ("device", "threads", "time_limit")}


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _write_log(path: Path, rows: list[dict[str, float]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in LOG_COLUMNS})
    os.replace(tmp, path)


def _kendall_tau(predicted: np.ndarray, actual: np.ndarray) -> float:
    from weightspace.evaluate.metrics import kendall_tau

    keep = np.isfinite(actual)
    if keep.sum() < 2:
        return float("nan")
    return float(kendall_tau(actual[keep], predicted[keep]))


def _masked_mse(predicted: Tensor, target: Tensor) -> Tensor:
    known = torch.isfinite(target)
    if not bool(known.any()):
        return predicted.sum() * 0.0
    return F.mse_loss(predicted[known], target[known])


def _batches(
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


def _parameter_groups(encoder: Encoder, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, parameter in encoder.named_parameters():
        is_table = ".weight" in name and any(
            t in name for t in ("depth", "role", "activation", "position", "kind", "seeds", "norm")
        )
        (decay if parameter.dim() >= 2 and not is_table else no_decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


# ---------------------------------------------------------------------------------------------
# function targets
# ---------------------------------------------------------------------------------------------
@dataclass
class FunctionTargets:
    """What each checkpoint computes on its task's probe inputs (the function head's targets)."""

    probabilities: Tensor  # (n, P, C) softmax outputs, zero on padded classes
    mask: Tensor  # (n, C) bool: the classes of the checkpoint's task
    known: Tensor  # (n,) bool: finite outputs (diverged checkpoints are left out of the loss)


def unknown_tasks(tasks: Any) -> list[str]:
    """The names among ``tasks`` that are not built-in tasks (:mod:`weightspace.zoo.tasks`)."""
    from weightspace.zoo.tasks import get_task

    missing = []
    for name in sorted({str(t) for t in tasks}):
        try:
            get_task(name)
        except WeightspaceError:
            missing.append(name)
    return missing


def _by_task_and_architecture(
    specs: list[Any], tasks: list[str], positions: list[int]
) -> list[tuple[str, list[int]]]:
    """``positions`` grouped by (task, architecture), in a fixed order: the unit of the
    vectorised work on checkpoints (one stacked forward or SGD step per group)."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i in positions:
        groups.setdefault((str(tasks[i]), specs[i].to_json()), []).append(i)
    return [(task, members) for (task, _), members in sorted(groups.items())]


def probe_inputs(task: str, spec: Any, probes: int, seed: int = 0) -> Tensor:
    """``probes`` fixed inputs ``(P, *input_shape)`` of the built-in task's training split, shaped
    for ``spec``: the first ``P`` of a permutation seeded by ``seed`` (the same rows for every
    architecture of the task)."""
    from weightspace.finetune import FinetuneError, task_training_data

    try:
        inputs, _ = task_training_data(task, spec)
    except FinetuneError as exc:
        raise TrainError(
            f"the function head needs the inputs of task {task!r}: {exc}; train with "
            "function_weight 0 (--function-weight 0)"
        ) from None
    if inputs.shape[0] < probes:
        raise TrainError(
            f"task {task!r} has {inputs.shape[0]} training examples, fewer than the "
            f"{probes} function probes; lower function_probes"
        )
    order = torch.randperm(inputs.shape[0], generator=torch.Generator().manual_seed(seed))
    return inputs[order[:probes]]


def function_targets(
    models: list[tuple[Any, Any]],
    tasks: list[str],
    probes: int,
    *,
    num_classes: int | None = None,
    seed: int = 0,
    chunk: int = 1024,
) -> FunctionTargets:
    """Softmax outputs of every model on ``probes`` fixed inputs of its task's training split.

    Models of one (task, architecture) run together: their parameters are stacked and one
    ``torch.func.vmap`` of ``functional_call`` evaluates them all (thousands of small models
    take seconds).

    Args:
        models: ``(spec, state_dict)`` pairs.
        tasks: each model's built-in task name.
        probes: ``P``, inputs per task (:func:`probe_inputs`).
        num_classes: ``C``, classes to pad to (default: the widest output among the models).
        seed: the probe choice.

    Raises:
        TrainError: a task is not built-in, or its inputs do not fit a model.
    """
    from torch.func import functional_call, vmap

    from weightspace.module import to_module

    missing = unknown_tasks(tasks)
    if missing:
        raise TrainError(
            f"the function head needs each checkpoint's task data, but task(s) {missing} are "
            "not built-in tasks (weightspace.zoo.tasks); train with function_weight 0 "
            "(--function-weight 0)"
        )
    specs = [spec for (spec, _), _ in zip(models, tasks, strict=True)]
    outputs: dict[int, Tensor] = {}
    for task, members in _by_task_and_architecture(specs, tasks, list(range(len(models)))):
        spec = models[members[0]][0]
        x = probe_inputs(task, spec, probes, seed)
        template = to_module(spec).float()
        names = list(models[members[0]][1])

        def run(params: dict[str, Tensor], x: Tensor = x, template: Any = template) -> Tensor:
            return functional_call(template, params, (x,))

        with torch.no_grad():
            for start in range(0, len(members), chunk):
                part = members[start : start + chunk]
                params = {k: torch.stack([models[i][1][k].float() for i in part]) for k in names}
                logits = vmap(run)(params)  # (M, P, C_task)
                for i, row in zip(part, logits, strict=True):
                    outputs[i] = row
    width = max(int(o.shape[-1]) for o in outputs.values())
    num_classes = num_classes or width
    if width > num_classes:
        raise TrainError(f"a model has {width} outputs, more than num_classes={num_classes}")
    n = len(models)
    probabilities = torch.zeros(n, probes, num_classes)
    mask = torch.zeros(n, num_classes, dtype=torch.bool)
    known = torch.zeros(n, dtype=torch.bool)
    for i, logits in outputs.items():
        c = int(logits.shape[-1])
        mask[i, :c] = True
        if bool(torch.isfinite(logits).all()):
            probabilities[i, :, :c] = logits.softmax(-1)
            known[i] = True
    return FunctionTargets(probabilities, mask, known)


def function_kl(logits: Tensor, targets: Tensor, mask: Tensor, known: Tensor) -> Tensor:
    """Mean KL divergence from the target distributions to the head's, over probes and known
    models; padded classes (``~mask``) are excluded. Shapes: ``(B, P, C)``, ``(B, P, C)``,
    ``(B, C)``, ``(B,)`` → scalar."""
    if not bool(known.any()):
        return logits.sum() * 0.0
    logits, targets, mask = logits[known], targets[known], mask[known]
    log_q = logits.masked_fill(~mask.unsqueeze(1), -1e4).log_softmax(-1)
    kl = torch.xlogy(targets, targets) - targets * log_q.masked_fill(~mask.unsqueeze(1), 0.0)
    return kl.sum(-1).mean()


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
@dataclass
class _Data:
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


def _load_data(
    config: TrainConfig, encoder_config: EncoderConfig, report: Callable[[str, int, int], None]
) -> _Data:
    from weightspace.zoo import Zoo

    zoo = Zoo.open(config.zoo)
    table = zoo.table.reset_index(drop=True)
    if config.splits is not None:
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
    if config.objective != "contrastive":
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
    graphs, models = [], []
    for position, checkpoint_id in enumerate(ids):
        spec, state = zoo.spec(checkpoint_id), zoo.state_dict(checkpoint_id)
        graphs.append(prepare_graph((spec, state), encoder_config, index=position))
        if keep_models:
            models.append((spec, state))
        report("canonicalising checkpoints", position + 1, len(ids))
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
        finetuned = _finetuned_bank(
            config, encoder_config, models, [str(t) for t in used["task"]], graphs, index["train"]
        )
        report("fine-tuning views", 1, 1)
    return _Data(
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
    )


def _finetuned_bank(
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
    for task_name, positions in _by_task_and_architecture(specs, tasks, train_index.tolist()):
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


def _view(batch: Any, tuned: Any, config: TrainConfig, generator: torch.Generator) -> Any:
    """One augmented view of ``batch``; each graph first swapped for its fine-tuned view
    (``tuned``, if any) with probability ``config.finetune_probability``."""
    if tuned is not None:
        chosen = torch.rand(batch.num_graphs, generator=generator) < config.finetune_probability
        batch = _mix_views(batch, tuned, chosen)
    return augment(batch, config.augment, generator)


def _mix_views(batch: Any, finetuned: Any, chosen: Tensor) -> Any:
    """``batch`` with the weights of the ``chosen`` graphs (``(B,)`` bool) taken from
    ``finetuned`` (the same graphs' fine-tuned views: identical structure)."""
    nodes = chosen[batch.batch].unsqueeze(-1)
    edges = chosen[batch.edge_batch].unsqueeze(-1)
    return replace(
        batch,
        x=torch.where(nodes, finetuned.x, batch.x),
        edge_attr=torch.where(edges, finetuned.edge_attr, batch.edge_attr),
    )


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def validate(
    encoder: Encoder,
    data: _Data,
    index: Tensor,
    config: TrainConfig,
    device: torch.device,
) -> dict[str, float]:
    """Validation metrics of ``encoder`` on the checkpoints at ``index`` (fixed views)."""
    encoder.eval()
    generator = torch.Generator().manual_seed(config.seed * 7919 + 17)
    metrics: dict[str, float] = {}
    projections: list[list[Tensor]] = [[], []]
    properties, logits, function_logits = [], [], []
    batches = _batches(
        index, data.bank.spec_index, config.batch_size, config.batch_by_architecture, None
    )
    index = torch.cat(batches)  # metrics below follow the batch order
    for part in batches:
        batch = data.bank.select(part)
        z = encoder(batch.to(device))
        heads = encoder.heads(z)
        properties.append(heads["properties"].cpu())
        if "task_logits" in heads:
            logits.append(heads["task_logits"].cpu())
        if "function_logits" in heads:
            function_logits.append(heads["function_logits"].cpu())
        for view in range(2):
            augmented = augment(batch, config.augment, generator).to(device)
            projections[view].append(encoder.heads(encoder(augmented))["projection"].cpu())
    a, b = torch.cat(projections[0]), torch.cat(projections[1])
    metrics["val_contrastive"] = float(nt_xent(a, b, config.temperature))
    similarity = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).t()
    metrics["val_view_top1"] = float(
        (similarity.argmax(1) == torch.arange(a.shape[0])).float().mean()
    )

    predicted = torch.cat(properties).double()
    mean = torch.tensor(encoder.config.target_mean, dtype=torch.float64)
    std = torch.tensor(encoder.config.target_std, dtype=torch.float64)
    predicted = (predicted * std + mean).numpy()
    actual = data.targets[index].double().numpy()
    for i, name in enumerate(encoder.config.targets):
        key = "accuracy" if name == "test_accuracy" else "gap"
        tau = _kendall_tau(predicted[:, i], actual[:, i])
        metrics[f"val_{key}_tau"] = tau
        if key == "accuracy":
            keep = np.isfinite(actual[:, i])
            err = predicted[keep, i] - actual[keep, i]
            variance = float(np.var(actual[keep, i])) or 1.0
            metrics["val_accuracy_mae"] = float(np.abs(err).mean())
            metrics["val_accuracy_r2"] = 1.0 - float(np.mean(err**2)) / variance
    if logits:
        labels = data.task_labels[index]
        metrics["val_task_accuracy"] = float((torch.cat(logits).argmax(1) == labels).float().mean())
    if function_logits and data.function is not None:
        f = data.function
        predicted_f = torch.cat(function_logits)
        mask, known = f.mask[index], f.known[index]
        metrics["val_function_kl"] = float(
            function_kl(predicted_f, f.probabilities[index], mask, known)
        )
        masked = predicted_f.masked_fill(~mask.unsqueeze(1), -1e4)
        same = masked.argmax(-1) == f.probabilities[index].argmax(-1)  # (n, P)
        metrics["val_function_agreement"] = (
            float(same[known].float().mean()) if bool(known.any()) else float("nan")
        )
    supervised = config.objective != "contrastive" and "val_accuracy_tau" in metrics
    metrics["val_score"] = metrics["val_accuracy_tau"] if supervised else metrics["val_view_top1"]
    if not math.isfinite(metrics["val_score"]):
        metrics["val_score"] = -1.0
    return metrics


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------
def _resolve_function_weight(config: TrainConfig) -> TrainConfig:
    """``config`` with ``function_weight`` decided: ``None`` becomes :data:`FUNCTION_WEIGHT`
    when every task of the zoo is built-in (else 0); a positive weight on a zoo with other
    tasks is an error."""
    if config.function_weight == 0:
        return config
    from weightspace.zoo import Zoo

    missing = unknown_tasks(Zoo.open(config.zoo).table["task"].unique())
    if config.function_weight is None:
        return replace(config, function_weight=0.0 if missing else FUNCTION_WEIGHT)
    if missing:
        raise TrainError(
            f"function_weight={config.function_weight} needs each checkpoint's task data, but "
            f"the zoo's task(s) {missing} are not built-in tasks (weightspace.zoo.tasks); train "
            "with function_weight 0 (--function-weight 0)"
        )
    return config


def train(config: TrainConfig, *, progress: bool = False) -> TrainResult:
    """Fit an encoder on ``config.zoo`` and write it to ``config.out`` (see the module docstring).

    Args:
        config: the run.
        progress: show a rich progress bar with losses and validation metrics.

    Raises:
        TrainError / MissingLabelError / ZooError: unusable configuration or zoo.
    """
    if not config.zoo or not config.out:
        raise TrainError("TrainConfig needs both zoo and out")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda was requested but torch sees no CUDA device")
    bar = _Progress(progress)
    config = _resolve_function_weight(config)

    with bar:
        data = _load_data(config, config.encoder, bar.report)
        # Heads and label statistics come from the training split only.
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
            tasks=data.tasks if len(data.tasks) > 1 and config.objective != "contrastive" else (),
            function_probes=config.function_probes if data.function is not None else 0,
            function_classes=(
                int(data.function.probabilities.shape[-1]) if data.function is not None else 0
            ),
        )
        branches, domains, classes = resolve_branches(config, data.zoo_specs)
        encoder_config = replace(
            encoder_config,
            branches=branches,
            probes=config.probes,
            probe_domains=domains,
            probe_classes=classes,
        )
        standardised = (data.targets - torch.tensor(means)) / torch.tensor(
            encoder_config.target_std
        )

        torch.manual_seed(config.seed)
        encoder = Encoder(encoder_config).to(device)
        optimizer = torch.optim.AdamW(
            _parameter_groups(encoder, config.weight_decay), lr=config.learning_rate
        )
        train_index = data.index["train"]
        steps_per_epoch = len(
            _batches(
                train_index,
                data.bank.spec_index,
                config.batch_size,
                config.batch_by_architecture,
                None,
            )
        )
        total_steps = steps_per_epoch * config.epochs
        warmup = max(1, int(config.warmup_fraction * total_steps))

        def lr_factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress_ = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            cosine = 0.5 * (1 + math.cos(math.pi * progress_))
            return config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)

        # Resume.
        state = {"epoch": 0, "step": 0, "best_score": -math.inf, "best_epoch": 0, "bad": 0}
        log: list[dict[str, float]] = []
        best_weights = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
        checkpoint_path = out / CHECKPOINT_FILE
        config_dict = config.to_dict()
        if checkpoint_path.exists():
            try:
                saved = torch.load(checkpoint_path, map_location=device, weights_only=True)
            except Exception as exc:
                raise TrainError(
                    f"{checkpoint_path}: cannot resume from it ({exc}); delete it to start over"
                ) from None
            if (
                _resumable_part(saved.get("config", {}))
                != _resumable_part(json.loads(json.dumps(config_dict)))
                or saved.get("zoo_fingerprint") != data.fingerprint
            ):
                raise TrainError(
                    f"{checkpoint_path}: left by a run with another configuration or zoo; use "
                    "another --out, or delete it to start over"
                )
            encoder.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            best_weights = saved["best_weights"]
            state = saved["state"]
            log = saved["log"]

        started = time.perf_counter()
        capped = False  # the safety cap (time_limit) ended the run
        bar.start_epochs(config.epochs, state["epoch"])
        while state["epoch"] < config.epochs and state["bad"] < config.patience:
            epoch = state["epoch"]
            encoder.train()
            generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
            batches = _batches(
                train_index,
                data.bank.spec_index,
                config.batch_size,
                config.batch_by_architecture,
                generator,
            )
            sums: dict[str, float] = {}
            bar.start_batches(steps_per_epoch)
            out_of_time = False
            for index in batches:
                if config.time_limit and time.perf_counter() - started > config.time_limit:
                    out_of_time = True
                    break
                if index.numel() < 2:
                    continue
                batch = data.bank.select(index)
                tuned = data.finetuned.select(index) if data.finetuned is not None else None

                views = [_view(batch, tuned, config, generator).to(device)]
                if config.objective != "supervised":
                    views.append(_view(batch, tuned, config, generator).to(device))
                outputs = [encoder.heads(encoder(view)) for view in views]
                losses: dict[str, Tensor] = {}
                if config.objective != "supervised":
                    losses["contrastive"] = nt_xent(
                        outputs[0]["projection"], outputs[1]["projection"], config.temperature
                    )
                if config.objective != "contrastive":
                    target = standardised[index].to(device)
                    for i, name in enumerate(encoder_config.targets):
                        key = "accuracy_mse" if name == "test_accuracy" else "gap_mse"
                        losses[key] = sum(
                            _masked_mse(o["properties"][:, i], target[:, i]) for o in outputs
                        ) / len(outputs)
                    if encoder.task_head is not None:
                        labels = data.task_labels[index].to(device)
                        losses["task_ce"] = sum(
                            F.cross_entropy(o["task_logits"], labels) for o in outputs
                        ) / len(outputs)
                if data.function is not None:
                    f = data.function
                    probabilities, mask = f.probabilities[index], f.mask[index]
                    known = f.known[index]
                    losses["function_kl"] = sum(
                        function_kl(
                            o["function_logits"],
                            probabilities.to(device),
                            mask.to(device),
                            known.to(device),
                        )
                        for o in outputs
                    ) / len(outputs)
                weights = {
                    "contrastive": config.contrastive_weight,
                    "accuracy_mse": config.accuracy_weight,
                    "gap_mse": config.gap_weight,
                    "task_ce": config.task_weight,
                    "function_kl": config.function_weight or 0.0,
                }
                loss = sum(weights[k] * v for k, v in losses.items())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(encoder.parameters(), config.grad_clip)
                optimizer.step()
                scheduler.step()
                state["step"] += 1
                for k, v in {"loss": loss, **losses}.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                sums["batches"] = sums.get("batches", 0.0) + 1
                bar.advance_batch(float(loss.detach()))

            metrics = validate(encoder, data, data.index["val"], config, device)
            row: dict[str, float] = {
                "epoch": epoch + 1,
                "step": state["step"],
                "lr": scheduler.get_last_lr()[0],
                "seconds": round(time.perf_counter() - started, 3),
                "partial": float(out_of_time),
            }
            batches = max(sums.pop("batches", 1.0), 1.0)
            row.update({f"train_{k}": v / batches for k, v in sums.items()})
            row.update(metrics)
            log.append(row)
            state["epoch"] = epoch + 1
            if metrics["val_score"] > state["best_score"]:
                state.update(best_score=metrics["val_score"], best_epoch=epoch + 1, bad=0)
                best_weights = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
            else:
                state["bad"] += 1
            torch.save(
                {
                    "config": config_dict,
                    "zoo_fingerprint": data.fingerprint,
                    "model": encoder.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "best_weights": best_weights,
                    "state": state,
                    "log": log,
                },
                checkpoint_path,
            )
            _write_log(out / LOG_FILE, log)
            bar.end_epoch(row)
            if out_of_time or (
                config.time_limit and time.perf_counter() - started > config.time_limit
            ):
                capped = out_of_time or (
                    state["epoch"] < config.epochs and state["bad"] < config.patience
                )
                break
        seconds = time.perf_counter() - started

    if capped:
        stopped_by = "time-limit"
    elif state["bad"] >= config.patience and state["epoch"] < config.epochs:
        stopped_by = "early-stopping"
    else:
        stopped_by = "epochs"
    encoder.load_state_dict(best_weights)
    encoder.eval()
    encoder.save(out)
    _write_json(out / "train_config.json", config_dict)
    _write_json(out / "splits.json", data.splits)
    _write_json(
        out / "zoo_fingerprint.json",
        {
            "zoo": str(Path(config.zoo).resolve()),
            "fingerprint": data.fingerprint,
            "checkpoints_used": len(data.ids),
            "runs": {k: len(v) for k, v in data.splits.items()},
        },
    )
    _write_log(out / LOG_FILE, log)
    best_row = next((r for r in log if r["epoch"] == state["best_epoch"]), {})
    return TrainResult(
        encoder=encoder,
        best_epoch=int(state["best_epoch"]),
        best_metrics={k: float(v) for k, v in best_row.items() if k.startswith("val_")},
        epochs_run=int(state["epoch"]),
        seconds=seconds,
        log=log,
        out=out,
        stopped_by=stopped_by,
    )


class _Progress:
    """A rich progress bar (or nothing): epochs, batches, the running loss and val metrics."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.progress = None
        self.tasks: dict[str, Any] = {}
        self.last = ""

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"),
            )
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def _task(self, name: str, total: int, completed: int = 0) -> Any:
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=total, info="")
        self.progress.update(self.tasks[name], total=total, completed=completed)
        return self.tasks[name]

    def report(self, what: str, done: int, total: int) -> None:
        if self.progress is not None and (done == total or done % 50 == 0):
            self.progress.update(self._task(what, total), completed=done)

    def start_epochs(self, total: int, done: int) -> None:
        if self.progress is not None:
            self._task("epochs", total, done)

    def start_batches(self, total: int) -> None:
        if self.progress is not None:
            self._task("batches", total, 0)

    def advance_batch(self, loss: float) -> None:
        if self.progress is not None:
            self.progress.update(self.tasks["batches"], advance=1, info=f"loss {loss:.4f}")

    def end_epoch(self, row: dict[str, float]) -> None:
        if self.progress is None:
            return
        shown = []
        for key in ("train_loss", "val_accuracy_tau", "val_accuracy_mae", "val_view_top1"):
            if key in row and isinstance(row[key], float) and math.isfinite(row[key]):
                shown.append(f"{key.replace('val_', 'val ').replace('train_', '')} {row[key]:.3f}")
        self.progress.update(self.tasks["epochs"], advance=1, info=" · ".join(shown))
