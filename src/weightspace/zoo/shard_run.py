"""Training one shard of a generated zoo and writing it: its weights
(``weights/{shard}.safetensors``), its list of skipped checkpoints and, last, its part table
``parts/{shard}.parquet``, whose existence marks the shard finished; plus the worker processes
that run shards in parallel."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from weightspace.zoo.architectures import (
    build_model,
    fold_batchnorm,
    get_arch,
)
from weightspace.zoo.shard_plan import ShardPlan
from weightspace.zoo.store import (
    PARTS,
    WEIGHTS,
    ZooError,
    atomic_write,
    write_shard,
    write_table,
)
from weightspace.zoo.sweep import RunSpec, TrainSettings
from weightspace.zoo.tasks import get_task
from weightspace.zoo.trainer import CheckpointResult, train_group

__all__ = ["run_shard"]


def _spec_json(task_name: str, arch_name: str, first: CheckpointResult) -> str:
    """The spec of (task, arch), traced by ``weightspace.ingest.from_module`` on a trained model,
    after checking that our vectorisable BatchNorm folding gives the same tensors."""
    from weightspace.ingest import from_module

    task, arch = get_task(task_name), get_arch(arch_name)
    model = build_model(arch, task.input_shape(arch.family), task.num_classes)
    model.load_state_dict(first.state_dict)
    example = task.inputs("val", arch.family)[:4]
    spec, traced = from_module(model.eval(), example)
    ours = fold_batchnorm(arch, first.state_dict)
    if first.finite and (
        sorted(ours) != sorted(traced)
        or any(not torch.allclose(ours[k], traced[k], rtol=1e-5, atol=1e-6) for k in ours)
    ):
        raise ZooError(
            f"internal error: BatchNorm folding of {arch_name} disagrees with "
            f"weightspace.ingest.from_module (keys {sorted(ours)} vs {sorted(traced)})"
        )
    return spec.to_json()


def _checkpoint_row(
    shard: ShardPlan,
    run: RunSpec,
    result: CheckpointResult,
    spec_json: str,
    settings: TrainSettings,
    steps_per_epoch: int,
    num_params: int,
) -> dict[str, Any]:
    arch = get_arch(shard.arch)
    return {
        "checkpoint_id": run.checkpoint_id(result.epoch),
        "run_id": run.run_id,
        "run_index": run.index,
        "epoch": result.epoch,
        "step": result.epoch * steps_per_epoch,
        "task": shard.task,
        "arch": shard.arch,
        "family": arch.family,
        "activation": arch.activation,
        "depth": arch.depth,
        "width": arch.width,
        "batchnorm": arch.batchnorm,
        "residual": arch.residual,
        "num_params": num_params,
        "spec": spec_json,
        "shard": f"{WEIGHTS}/{shard.name}.safetensors",
        "weights_form": "module",
        "seed": run.seed,
        **run.hyper.to_dict(),
        "batch_size": settings.batch_size,
        "epochs": settings.epochs,
        **result.metrics,
    }


def run_shard(
    root: str | Path,
    shard: ShardPlan,
    settings: TrainSettings,
    device: str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> int:
    """Train one shard and write its weights, skipped list and part table; returns #stored."""
    root = Path(root)
    task = get_task(shard.task)
    results = train_group(task, shard.arch, shard.runs, settings, device=device, progress=progress)
    runs = {run.run_id: run for run in shard.runs}
    first = next((r for r in results if r.finite), results[0])
    spec_json = _spec_json(shard.task, shard.arch, first)
    steps_per_epoch = max(1, int(task.labels["train"].shape[0]) // settings.batch_size)
    num_params = sum(
        v.numel() for k, v in first.state_dict.items() if k.endswith(("weight", "bias"))
    )
    tensors: dict[str, torch.Tensor] = {}
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for result in results:
        run = runs[result.run_id]
        checkpoint_id = run.checkpoint_id(result.epoch)
        if not result.finite:
            skipped.append(
                {
                    "checkpoint_id": checkpoint_id,
                    "run_id": run.run_id,
                    "epoch": result.epoch,
                    "problem": "training diverged: non-finite weights",
                }
            )
            continue
        for key, value in result.state_dict.items():
            tensors[f"{checkpoint_id}/{key}"] = value
        rows.append(
            _checkpoint_row(shard, run, result, spec_json, settings, steps_per_epoch, num_params)
        )
    metadata = {
        "format": "weightspace-zoo",
        "spec": spec_json,
        "weights_form": "module",
        "task": shard.task,
        "arch": shard.arch,
    }
    write_shard(root / WEIGHTS / f"{shard.name}.safetensors", tensors, metadata)
    skipped_text = json.dumps(skipped, indent=1)
    atomic_write(root / PARTS / f"{shard.name}.skipped.json", lambda p: p.write_text(skipped_text))
    write_table(root / PARTS / f"{shard.name}.parquet", pd.DataFrame(rows))
    return len(rows)


def _shard_done(root: Path, shard: ShardPlan) -> bool:
    return (root / PARTS / f"{shard.name}.parquet").exists() and (
        root / WEIGHTS / f"{shard.name}.safetensors"
    ).exists()


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def _run_shard_in_worker(
    root: str, shard: ShardPlan, settings: TrainSettings, device: str
) -> tuple[str, int]:
    return shard.name, run_shard(root, shard, settings, device)


def _run_parallel(
    root: Path,
    todo: Sequence[ShardPlan],
    settings: TrainSettings,
    device: str,
    workers: int,
    threads: int,
    progress: Any,
    bar: Any,
    on_shard_done: Callable[[str], None] | None,
) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")
    sizes = {s.name: len(s.runs) for s in todo}
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_worker_init, initargs=(threads,)
    ) as pool:
        futures = [pool.submit(_run_shard_in_worker, str(root), s, settings, device) for s in todo]
        for future in as_completed(futures):
            name, _ = future.result()
            progress.update(bar, advance=sizes[name] * settings.epochs)
            if on_shard_done is not None:
                on_shard_done(name)
