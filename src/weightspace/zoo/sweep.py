"""Hyper-parameter sweeps in the spirit of Unterthiner et al. 2020 (*Small CNN Zoo*).

Each run draws its hyper-parameters from its own seed, so a run is the same whichever group,
shard or worker trains it:

================  =======================================================================
optimizer         ``sgd`` (momentum 0.9) or ``adam`` (β = 0.9, 0.999, ε = 1e-8), 50/50
learning_rate     log-uniform: sgd [1e-3, 0.5], adam [1e-4, 3e-2]
weight_decay      log-uniform [1e-8, 1e-2] (L2 added to the gradient, as in ``torch.optim``)
init_scale        log-uniform [0.1, 3]: multiplies PyTorch's default uniform init bounds
dropout           0 with probability ½, else uniform [0, 0.5]
train_fraction    uniform [0.1, 1]: the run trains on this fraction of the training split
label_noise       0 with probability ½, else uniform [0, 0.6]: fraction of the run's training
                  labels replaced by uniformly random classes
================  =======================================================================

Wide ranges are deliberate: together with early checkpoints (epoch 0 is the initialisation) they
spread test accuracy from chance to the best the task allows.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = [
    "HyperParams",
    "RunSpec",
    "SearchSpace",
    "TrainSettings",
    "derive_seed",
    "sample_hyperparams",
]


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any sequence of values: ``blake2b(repr(parts))``.

    Independent streams (init, data order, dropout, hyper-parameters) of one run come from
    ``derive_seed(run_seed, "init")`` etc., so adding a stream never shifts another.
    """
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass(frozen=True)
class HyperParams:
    """Hyper-parameters of one training run (see the module docstring for their meaning)."""

    optimizer: str = "adam"
    learning_rate: float = 1e-2
    weight_decay: float = 0.0
    init_scale: float = 1.0
    dropout: float = 0.0
    train_fraction: float = 1.0
    label_noise: float = 0.0

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(f"train_fraction must be in (0, 1], got {self.train_fraction}")
        if not 0.0 <= self.label_noise <= 1.0:
            raise ValueError(f"label_noise must be in [0, 1], got {self.label_noise}")

    def to_dict(self) -> dict[str, float | str]:
        return asdict(self)


@dataclass(frozen=True)
class SearchSpace:
    """Ranges the sweep samples from; ``(lo, hi)`` pairs, log-uniform where the name says so."""

    sgd_learning_rate: tuple[float, float] = (1e-3, 0.5)
    adam_learning_rate: tuple[float, float] = (1e-4, 3e-2)
    weight_decay: tuple[float, float] = (1e-8, 1e-2)
    init_scale: tuple[float, float] = (0.1, 3.0)
    dropout: tuple[float, float] = (0.0, 0.5)
    dropout_probability: float = 0.5  # chance that a run uses dropout at all
    train_fraction: tuple[float, float] = (0.1, 1.0)
    label_noise: tuple[float, float] = (0.0, 0.6)
    label_noise_probability: float = 0.5  # chance that a run has noisy labels at all

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    lo, hi = bounds
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def sample_hyperparams(seed: int, space: SearchSpace | None = None) -> HyperParams:
    """Hyper-parameters of the run with ``seed`` (deterministic, independent of other runs)."""
    space = space or SearchSpace()
    rng = np.random.default_rng(derive_seed(seed, "hyperparams"))
    optimizer = "sgd" if rng.uniform() < 0.5 else "adam"
    lr_bounds = space.sgd_learning_rate if optimizer == "sgd" else space.adam_learning_rate
    learning_rate = _log_uniform(rng, lr_bounds)
    weight_decay = _log_uniform(rng, space.weight_decay)
    init_scale = _log_uniform(rng, space.init_scale)
    use_dropout = rng.uniform() < space.dropout_probability
    dropout = float(rng.uniform(*space.dropout))
    train_fraction = float(rng.uniform(*space.train_fraction))
    noisy = rng.uniform() < space.label_noise_probability
    label_noise = float(rng.uniform(*space.label_noise))
    return HyperParams(
        optimizer=optimizer,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        init_scale=init_scale,
        dropout=dropout if use_dropout else 0.0,
        train_fraction=train_fraction,
        label_noise=label_noise if noisy else 0.0,
    )


@dataclass(frozen=True)
class TrainSettings:
    """Settings shared by every run trained together.

    An *epoch* is ``⌊N_train / batch_size⌋`` steps whatever the run's ``train_fraction``, so all
    models of a group take the same number of steps; a run on a fraction ``f`` of the data sees
    each of its examples about ``1/f`` times per epoch (its batches walk through successive random
    permutations of its own subset).
    """

    epochs: int = 20
    checkpoint_epochs: tuple[int, ...] = (0, 1, 2, 5, 10, 20)
    batch_size: int = 32
    momentum: float = 0.9  # sgd
    betas: tuple[float, float] = (0.9, 0.999)  # adam
    eps: float = 1e-8  # adam
    bn_momentum: float = 0.1

    def __post_init__(self) -> None:
        epochs = tuple(sorted({int(e) for e in self.checkpoint_epochs if 0 <= e <= self.epochs}))
        object.__setattr__(self, "checkpoint_epochs", epochs)
        object.__setattr__(self, "betas", tuple(self.betas))

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class RunSpec:
    """One training run: which task and architecture, its seed and hyper-parameters.

    ``run_id`` is ``"{task}.{arch}.r{index:05d}"``; a checkpoint's id appends ``".e{epoch:03d}"``.
    """

    run_id: str
    task: str
    arch: str
    index: int
    seed: int
    hyper: HyperParams = field(default_factory=HyperParams)

    @classmethod
    def make(
        cls, task: str, arch: str, index: int, zoo_seed: int, space: SearchSpace | None = None
    ) -> RunSpec:
        """The ``index``-th run of ``(task, arch)`` in a zoo seeded with ``zoo_seed``."""
        seed = derive_seed(zoo_seed, task, arch, index)
        return cls(
            run_id=f"{task}.{arch}.r{index:05d}",
            task=task,
            arch=arch,
            index=index,
            seed=seed,
            hyper=sample_hyperparams(seed, space),
        )

    def checkpoint_id(self, epoch: int) -> str:
        return f"{self.run_id}.e{epoch:03d}"
