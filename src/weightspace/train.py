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

Data parallel: under ``torchrun --nproc_per_node N -m weightspace train ...`` (gloo on CPU,
NCCL on CUDA) each rank encodes a disjoint shard of every global batch, the losses are those of
the whole batch (outputs gathered, NT-Xent negatives included), gradients are summed over ranks,
and rank 0 validates and writes (:mod:`weightspace.training.distributed`). Same seed, same
global batch: the same weights as one process, up to float summation order.

The pieces live in :mod:`weightspace.training`; this module is the loop and the public names.
The library shows nothing: ``on_load``, ``on_step`` and ``on_epoch`` report progress (the CLI
draws its bar from them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from weightspace.evaluate.splits import split_runs
from weightspace.nn.encoder import Encoder
from weightspace.training.config import (
    FUNCTION_WEIGHT,
    MissingLabelError,
    StepReport,
    TrainConfig,
    TrainError,
    TrainResult,
    resolve_function_weight,
)
from weightspace.training.data import (
    batches,
    encoder_config_for,
    load_data,
    resolve_branches,
    standardised_targets,
    zoo_fingerprint,
)
from weightspace.training.distributed import Distributed, shard_batch
from weightspace.training.function_targets import (
    FunctionTargets,
    function_targets,
    probe_inputs,
    unknown_tasks,
)
from weightspace.training.losses import (
    batch_losses,
    function_kl,
    nt_xent,
    uses_contrastive,
    weighted_sum,
)
from weightspace.training.optim import make_optimizer
from weightspace.training.records import (
    CHECKPOINT_FILE,
    LOG_FILE,
    load_checkpoint,
    save_checkpoint,
    write_log,
    write_outputs,
)
from weightspace.training.validation import validate
from weightspace.training.views import view

__all__ = [
    "FUNCTION_WEIGHT",
    "FunctionTargets",
    "MissingLabelError",
    "StepReport",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "function_kl",
    "function_targets",
    "nt_xent",
    "probe_inputs",
    "resolve_branches",
    "split_runs",  # the package's one run splitter (weightspace.evaluate.splits)
    "train",
    "unknown_tasks",
    "validate",
    "zoo_fingerprint",
]


def train(
    config: TrainConfig,
    *,
    on_load: Callable[[str, int, int], None] | None = None,
    on_step: Callable[[StepReport], None] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    progress: bool = False,
) -> TrainResult:
    """Fit an encoder on ``config.zoo`` and write it to ``config.out`` (see the module docstring).

    Args:
        config: the run.
        on_load: ``(what, done, total)`` while the data are prepared.
        on_step: after each optimisation step.
        on_epoch: each epoch's log row (losses, validation metrics), after it is saved.
        progress: must stay ``False`` (kept for old callers; the bar is the CLI's, from the
            callbacks above). Callbacks are called on rank 0 only.

    Raises:
        TrainError / MissingLabelError / ZooError: unusable configuration or zoo.
    """
    if progress:
        raise TrainError("train(progress=True) is gone: pass on_step / on_epoch callbacks")
    if not config.zoo or not config.out:
        raise TrainError("TrainConfig needs both zoo and out")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda was requested but torch sees no CUDA device")
    ddp = Distributed.current()
    device = ddp.device(device)
    if not ddp.is_main:
        on_load = on_step = on_epoch = None
    config = resolve_function_weight(config)

    data = load_data(config, config.encoder, on_load or (lambda what, done, total: None))
    encoder_config = encoder_config_for(config, data)
    standardised = standardised_targets(data, encoder_config)  # (n, T) the heads' targets
    torch.manual_seed(config.seed)
    encoder = Encoder(encoder_config).to(device)
    train_index = data.index["train"]
    order = (data.bank.spec_index, config.batch_size, config.batch_by_architecture)
    steps_per_epoch = len(batches(train_index, *order, None))
    optimizer, scheduler = make_optimizer(encoder, config, steps_per_epoch * config.epochs)

    state = {"epoch": 0, "step": 0, "best_score": -float("inf"), "best_epoch": 0, "bad": 0}
    log: list[dict[str, float]] = []
    best_weights = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    config_dict = config.to_dict()
    saved = load_checkpoint(out / CHECKPOINT_FILE, config_dict, data.fingerprint, device)
    if saved is not None:  # resume
        encoder.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        best_weights, state, log = saved["best_weights"], saved["state"], saved["log"]

    started = time.perf_counter()
    capped = False  # the safety cap (time_limit) ended the run
    while state["epoch"] < config.epochs and state["bad"] < config.patience:
        epoch = state["epoch"]
        encoder.train()
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        sums: dict[str, float] = {}
        out_of_time = False
        for step, index in enumerate(batches(train_index, *order, generator)):
            if config.time_limit and ddp.any(time.perf_counter() - started > config.time_limit):
                out_of_time = True
                break
            if index.numel() < 2:
                continue
            batch = data.bank.select(index)
            tuned = data.finetuned.select(index) if data.finetuned is not None else None
            views = [view(batch, tuned, config, generator)]
            if uses_contrastive(config):
                views.append(view(batch, tuned, config, generator))
            lo, hi = ddp.shard(index.numel())  # this rank's rows; heads see the whole batch
            outputs = [
                ddp.gather(encoder.heads(encoder(shard_batch(v, lo, hi).to(device))), len(index))
                for v in views
            ]
            losses = batch_losses(outputs, index, data, standardised, encoder, config)
            loss = weighted_sum(losses, config)
            optimizer.zero_grad(set_to_none=True)
            scale = ddp.loss_scale(len(index))
            (loss * scale if scale != 1 else loss).backward()
            ddp.all_reduce_gradients(list(encoder.parameters()))
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(encoder.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            state["step"] += 1
            for k, v in {"loss": loss, **losses}.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            sums["batches"] = sums.get("batches", 0.0) + 1
            if on_step:
                on_step(
                    StepReport(
                        epoch, config.epochs, step + 1, steps_per_epoch, float(loss.detach())
                    )
                )

        metrics = (
            validate(encoder, data, data.index["val"], config, device) if ddp.is_main else None
        )
        metrics = ddp.broadcast(metrics)
        row: dict[str, float] = {
            "epoch": epoch + 1,
            "step": state["step"],
            "lr": scheduler.get_last_lr()[0],
            "seconds": round(time.perf_counter() - started, 3),
            "partial": float(out_of_time),
        }
        done = max(sums.pop("batches", 1.0), 1.0)
        row.update({f"train_{k}": v / done for k, v in sums.items()})
        row.update(metrics)
        log.append(row)
        state["epoch"] = epoch + 1
        if metrics["val_score"] > state["best_score"]:
            state.update(best_score=metrics["val_score"], best_epoch=epoch + 1, bad=0)
            best_weights = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
        else:
            state["bad"] += 1
        if ddp.is_main:
            save_checkpoint(
                out / CHECKPOINT_FILE,
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
            )
            write_log(out / LOG_FILE, log)
            if on_epoch:
                on_epoch(row)
        over_time = config.time_limit and time.perf_counter() - started > config.time_limit
        if ddp.any(out_of_time or bool(over_time)):
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
    if ddp.is_main:
        write_outputs(out, encoder, config_dict, data, config.zoo)
        write_log(out / LOG_FILE, log)
    ddp.barrier()
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
