"""What determines a training run (:class:`TrainConfig`), what it returns
(:class:`TrainResult`), and its errors."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from weightspace.errors import WeightspaceError
from weightspace.nn.augment import AugmentConfig
from weightspace.nn.encoder import BRANCHES, Encoder, EncoderConfig
from weightspace.nn.probe_init import ProbeInitError, check_train_probe_init

__all__ = [
    "FUNCTION_WEIGHT",
    "OBJECTIVES",
    "MissingLabelError",
    "StepReport",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "resolve_function_weight",
]

#: ``class``: cross-entropy of a class head on the zoo's ``label`` (class-target zoos, e.g.
#: INRs), trained on the zoo's own ``split`` column (its test rows never read).
OBJECTIVES = ("contrastive", "supervised", "both", "class")

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
    objective: str = "both"  # contrastive | supervised | both | class (class-target zoos)
    epochs: int = 12  # maximum passes over the training checkpoints (small zoo: ~8 min on 2 cores)
    batch_size: int = 128  # checkpoints per step (each gives two views when contrastive)
    learning_rate: float = 2e-3  # peak AdamW learning rate
    probe_lr_scale: float = 1.0  # the probe generator's learning rate, as a fraction of the peak
    #   (a SIREN's outputs off its grid change completely when a probe moves a little: on
    #   inr-digits the class objective learns nothing at 1.0 and does at 0.01)
    weight_decay: float = 0.05  # AdamW weight decay on matrices (not on biases, norms, tables)
    warmup_fraction: float = 0.05  # share of all steps spent warming the learning rate up
    min_lr_ratio: float = 0.05  # the cosine schedule ends at this fraction of the peak
    grad_clip: float = 1.0  # gradient norm clip (0: off)
    temperature: float = 0.1  # NT-Xent temperature
    contrastive_weight: float = 1.0  # weight of NT-Xent
    accuracy_weight: float = 1.0  # weight of the MSE on standardised test accuracy
    gap_weight: float = 0.5  # weight of the MSE on the standardised generalisation gap
    task_weight: float = 0.2  # weight of the task cross-entropy (zoos with several tasks)
    class_weight: float = 1.0  # weight of the class cross-entropy (objective "class")
    class_contrastive_weight: float = 0.0  # objective "class": NT-Xent beside the cross-entropy
    #   (0: one view per step, cross-entropy alone)
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
    coord_shift: float = 0.0  # objective "class", coordinate models (INRs): each view reads its
    #   coordinates shifted by U[-D, D] per axis, exactly (b' = b + W delta; 0: off;
    #   weightspace.training.coord_views)
    coord_zoom: float = 0.0  # the same, zoomed by s ~ U[1 - S, 1 + S] (W' = s W; 0: off)
    coord_shift_step: float = 0.0  # > 0: shifts are multiples of this (an INR's grid spacing:
    #   whole-pixel shifts, which stay on the grid the INR was fitted on); 0: continuous
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
    probe_init: str = "auto"  # where the probes start: gauss (random) | task (the zoo's task
    #   training inputs; an INR zoo's coordinate grid; Gaussian where neither is known, said
    #   once) | auto (task where some domain's inputs are known, else gauss, silently)
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
        if not self.class_weight > 0 or not self.class_contrastive_weight >= 0:
            raise TrainError(
                "class_weight must be > 0 and class_contrastive_weight >= 0, got "
                f"{self.class_weight} and {self.class_contrastive_weight}"
            )
        if not (math.isfinite(self.coord_shift) and self.coord_shift >= 0) or not (
            math.isfinite(self.coord_zoom) and 0 <= self.coord_zoom < 1
        ):
            raise TrainError(
                f"coord_shift must be >= 0 and coord_zoom in [0, 1), got {self.coord_shift} "
                f"and {self.coord_zoom}"
            )
        step = self.coord_shift_step
        if not (math.isfinite(step) and step >= 0) or (step > 0 and step > self.coord_shift):
            raise TrainError(
                f"coord_shift_step must be >= 0 and at most coord_shift ({self.coord_shift}), "
                f"got {step}"
            )
        if (self.coord_shift or self.coord_zoom) and self.objective != "class":
            raise TrainError(
                "coord_shift / coord_zoom are views of the class objective (--objective class), "
                f"not of {self.objective!r}"
            )
        if not self.probe_lr_scale >= 0:
            raise TrainError(f"probe_lr_scale must be >= 0, got {self.probe_lr_scale}")
        if self.function_probes < 1:
            raise TrainError(f"function_probes must be >= 1, got {self.function_probes}")
        if self.probes < 1:
            raise TrainError(f"probes must be >= 1, got {self.probes}")
        try:
            check_train_probe_init(self.probe_init)
        except ProbeInitError as exc:
            raise TrainError(str(exc)) from None
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


def resolve_function_weight(config: TrainConfig) -> TrainConfig:
    """``config`` with ``function_weight`` decided: ``None`` becomes :data:`FUNCTION_WEIGHT`
    when every task of the zoo is built-in (else 0); a positive weight on a zoo with other
    tasks is an error."""
    if config.function_weight == 0:
        return config
    from weightspace.training.function_targets import unknown_tasks
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


@dataclass(frozen=True)
class StepReport:
    """What ``train(on_step=...)`` hears after each optimisation step (on rank 0)."""

    epoch: int  # the epoch in progress, from 0
    epochs: int  # the configured number of epochs
    step: int  # steps done in this epoch
    steps_per_epoch: int
    loss: float  # this step's training objective
