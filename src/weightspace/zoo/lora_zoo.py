r"""``zoo generate --preset lora``: LoRA adapters of one small transformer on synthetic tasks.

**Base.** :func:`weightspace.transformer.tiny_transformer` (vocabulary 12, width 16, 2 heads, one
post-norm encoder layer with a 32-unit ReLU MLP, mean pool, 4 outputs, sequences of 8), trained
(seed ``seed``) for ``BASE_EPOCHS`` epochs on the task ``max``.

**Tasks**: six adapter tasks on token sequences (:mod:`weightspace.zoo.lora_tasks`, which also
registers a lora zoo's tasks and data when it is opened).

**Adapters.** Each run adapts ``linear1``, ``linear2`` and the head with LoRA
(:math:`W + \tfrac{\alpha}{r} BA`, :math:`\alpha = r`, :math:`A` drawn like ``peft``'s Kaiming
init, :math:`B = 0`), the base frozen, Adam on :math:`A, B` only. Run ``i`` of a task has rank
:math:`(1, 2, 4, 8)_{i \bmod 4}`, learning rate :math:`10^{U(-2,-1.3)}` and its own seed. A
checkpoint is the *merged* model (:func:`weightspace.lora.apply_adapter`, the same spec for
every checkpoint), so the encoder, baselines and probes read it like any other; the columns
``adapter_task`` / ``label`` (task index), ``rank``, ``lr`` say what the adapter is, and the
``task`` column is ``lora-seq-<task>``, so bench's groups (task × architecture × epoch) and
function retrieval (same task, other runs) are per adapter task.

Splits: 2,000 training, 500 validation, 1,000 test sequences per zoo (``seed``), shared by every
task (only the labels differ); ``test_accuracy`` is on the adapter's own task. Training is one
adapter at a time on CPU, ~0.5 s each.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from weightspace.zoo.lora_tasks import (  # noqa: F401 (re-exported: weightspace.zoo.lora_zoo)
    CLASSES,
    LENGTH,
    TASK,
    TASK_SETS,
    TASKS,
    VOCAB,
    lora_task_data,
    register_lora_tasks,
    task_labels,
    token_splits,
)
from weightspace.zoo.store import MANIFEST, ZooError, read_manifest

__all__ = [
    "TASKS",
    "RANKS",
    "TARGETS",
    "generate_lora_zoo",
    "lora_base",
    "lora_task_data",
    "register_lora_tasks",
    "task_labels",
    "token_splits",
    "trained_base",
]

BASE_TASK, BASE_EPOCHS = "max", 20
RANKS = (1, 2, 4, 8)
#: the adapted linear layers of the base (module paths in ``tiny_transformer``'s Sequential)
TARGETS = ("2.linear1", "2.linear2", "4")


def _base(seed: int) -> nn.Module:
    from weightspace.transformer import tiny_transformer

    torch.manual_seed(seed)
    return tiny_transformer(
        VOCAB,
        width=16,
        num_heads=2,
        num_layers=1,
        feedforward=32,
        num_outputs=CLASSES,
        max_positions=LENGTH,
    )


def trained_base(seed: int, batch_size: int) -> tuple[nn.Module, dict[str, Tensor]]:
    """The zoo's base (trained on ``max`` for ``BASE_EPOCHS``, in eval mode) and its token
    splits (:func:`token_splits`): a function of ``seed`` and ``batch_size`` alone."""
    gen, splits = token_splits(seed)
    # no dropout in tiny_transformer; eval keeps attention's fast path off
    base = _base(seed).eval()
    x_train = splits["train"]

    def base_loss(x: Tensor, y: Tensor) -> Tensor:
        return nn.functional.cross_entropy(base(x), y)

    labels = task_labels(BASE_TASK, x_train)
    _train(base_loss, list(base.parameters()), x_train, labels, 3e-3, BASE_EPOCHS, gen, batch_size)
    return base, splits


def lora_base(zoo: Any) -> Any:
    """The base of a lora-preset ``zoo`` as an :class:`~weightspace.nn.adapter_features.AdapterBase`,
    rebuilt from the manifest's seed and checked: every tensor the adapters do not touch must
    equal the zoo's first checkpoint's exactly.

    Raises:
        ZooError: not a lora zoo, or the rebuilt base does not match (another generator).
    """
    from weightspace.nn.adapter_features import AdapterBase
    from weightspace.zoo.presets import get_preset

    config = zoo.manifest.get("config") or {}
    if config.get("preset") != "lora" or not isinstance(config.get("seed"), int):
        raise ZooError(f"{zoo.root}: not a lora-preset zoo, so it has no base to rebuild")
    batch = zoo.manifest.get("batch_size", get_preset("lora").settings.batch_size)
    base, _ = trained_base(int(config["seed"]), int(batch))
    state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    first = str(zoo.table.iloc[0]["checkpoint_id"])
    stored = zoo.state_dict(first)
    adapted = {f"{m}.weight" for m in TARGETS}
    for key, value in stored.items():
        if key not in adapted and (key not in state or not torch.equal(state[key], value)):
            raise ZooError(
                f"{zoo.root}: the base rebuilt from seed {config['seed']} differs from "
                f"checkpoint {first} at {key!r}; this zoo's base cannot be rebuilt"
            )
    return AdapterBase(f"{TASK}-base", zoo.spec(first), state, TARGETS)


def _train(
    loss_of: Any,
    params: list[Tensor],
    x: Tensor,
    y: Tensor,
    lr: float,
    epochs: int,
    gen: torch.Generator,
    batch: int,
    on_epoch: Any = None,
) -> None:
    opt = torch.optim.Adam(params, lr=lr)
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), batch):
            pick = order[start : start + batch]
            loss = loss_of(x[pick], y[pick])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if on_epoch is not None:
            on_epoch(epoch)


def generate_lora_zoo(out: str | Path, preset: Any, *, seed: int = 0, device: str = "cpu") -> Any:
    """Train the base, then ``preset.runs`` adapters per task, and write the zoo at ``out``
    (checkpoints at ``settings.checkpoint_epochs``; ``settings.batch_size``).

    Raises:
        ZooError: ``out`` holds another zoo; ``device`` is not ``cpu``.
    """
    from torch.func import functional_call

    from weightspace.lora import LoraAdapter, LoraFactors, apply_adapter
    from weightspace.transformer import token_model_spec
    from weightspace.zoo.formats.common import CheckpointRecord, pack_records, write_zoo
    from weightspace.zoo.store import Zoo, library_versions

    if device != "cpu":
        raise ZooError("the lora preset trains on the CPU only (an adapter is about a second)")
    root = Path(out)
    settings = preset.settings
    kept = set(settings.checkpoint_epochs)
    config = {
        "preset": preset.name,
        "seed": seed,
        "runs": preset.runs,
        "tasks": list(TASKS),
        "epochs": settings.epochs,
        "checkpoint_epochs": sorted(kept),
        "base_task": BASE_TASK,
        "base_epochs": BASE_EPOCHS,
        "ranks": list(RANKS),
    }
    if (root / MANIFEST).exists():
        existing = read_manifest(root)
        if existing.get("config") == config and existing.get("complete"):
            return Zoo.open(root)
        raise ZooError(f"{root}: already holds a different zoo; use a new --out")
    started = time.perf_counter()
    base, splits = trained_base(seed, settings.batch_size)
    x_train = splits["train"]
    spec, base_state = token_model_spec(base, x_train[:1])
    frozen = {k: v.detach() for k, v in base.state_dict().items()}
    shapes = {name: tuple(frozen[f"{name}.weight"].shape) for name in TARGETS}

    records: list[CheckpointRecord] = []
    for t, task in enumerate(TASKS):
        labels = {s: task_labels(task, x) for s, x in splits.items()}
        for run in range(preset.runs):
            rng = np.random.default_rng([seed, t, run])
            rank, lr = RANKS[run % len(RANKS)], float(10 ** rng.uniform(-2.0, -1.3))
            run_gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
            factors = {}
            for name, (out_f, in_f) in shapes.items():
                bound = 1 / math.sqrt(in_f)  # peft: kaiming_uniform_(a=sqrt(5)) on A
                a = ((torch.rand(rank, in_f, generator=run_gen) * 2 - 1) * bound).requires_grad_()
                factors[name] = (a, torch.zeros(out_f, rank, requires_grad=True))

            def merged(factors: dict = factors) -> dict[str, Tensor]:
                state = dict(frozen)
                for name, (a, b) in factors.items():
                    state[f"{name}.weight"] = frozen[f"{name}.weight"] + b @ a  # alpha = r
                return state

            def loss_of(x: Tensor, y: Tensor, merged: Any = merged) -> Tensor:
                return nn.functional.cross_entropy(functional_call(base, merged(), (x,)), y)

            run_id = f"{TASK}.{task}.r{run:03d}"

            def save(
                epoch: int,
                factors: dict = factors,
                run_id: str = run_id,
                labels: dict = labels,
                rank: int = rank,
                lr: float = lr,
                task: str = task,
                t: int = t,
            ) -> None:
                if epoch not in kept:
                    return
                adapter = LoraAdapter(
                    {
                        n: LoraFactors(a.detach().clone(), b.detach().clone(), 1.0)
                        for n, (a, b) in factors.items()
                    },
                    r=rank,
                    alpha=float(rank),
                    base_model=f"{TASK}-base",
                )
                merged_state = apply_adapter(spec, base_state, adapter)
                state = {k: v.detach().clone() for k, v in merged_state.items()}  # own storage
                with torch.no_grad():
                    acc = {
                        s: float(
                            (functional_call(base, state, (splits[s],)).argmax(1) == labels[s])
                            .float()
                            .mean()
                        )
                        for s in splits
                    }
                records.append(
                    CheckpointRecord(
                        checkpoint_id=f"{run_id}.e{epoch:03d}",
                        run_id=run_id,
                        epoch=epoch,
                        task=f"{TASK}-{task}",
                        spec=spec,
                        state=state,
                        test_accuracy=acc["test"],
                        extra={
                            "adapter_task": task,
                            "label": t,
                            "rank": rank,
                            "lr": lr,
                            "train_accuracy": acc["train"],
                            "val_accuracy": acc["val"],
                            "seed": seed,
                        },
                    )
                )

            params = [p for pair in factors.values() for p in pair]
            _train(
                loss_of,
                params,
                x_train,
                labels["train"],
                lr,
                settings.epochs,
                run_gen,
                settings.batch_size,
                save,
            )
    shards, table = pack_records(records)
    manifest = {
        "kind": "generated",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config,
        "device": device,
        "batch_size": settings.batch_size,  # the base's too: lora_base rebuilds it with this
        "base_test_accuracy": float(
            (base(splits["test"]).argmax(1) == task_labels(BASE_TASK, splits["test"]))
            .float()
            .mean()
        ),
        "versions": library_versions(),
        "failed": [],
        "skipped": [],
        "last_session_seconds": round(time.perf_counter() - started, 2),
    }
    write_zoo(root, shards, table, manifest)
    return Zoo.open(root)
