"""``zoo generate``: plan the runs of a preset, train them shard by shard, write the zoo.

A *shard* is up to ``runs_per_shard`` runs of one (task, architecture) pair: they train together
(vectorised) and their checkpoints go to ``weights/{shard}.safetensors``. A shard is finished
when ``parts/{shard}.parquet`` exists — it is written last, atomically, after the weights and the
list of skipped checkpoints. Rerunning the same command therefore resumes: finished shards are
kept, unfinished ones are trained again from scratch (deterministically), leftover temporary
files are swept away, and ``checkpoints.parquet`` is assembled from the parts at the end.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from weightspace.zoo.architectures import (
    build_model,
    fold_batchnorm,
    get_arch,
)
from weightspace.zoo.presets import Preset
from weightspace.zoo.store import (
    MANIFEST,
    PARTS,
    TABLE,
    WEIGHTS,
    Zoo,
    ZooError,
    atomic_write,
    library_versions,
    read_manifest,
    remove_temporaries,
    write_manifest,
    write_shard,
    write_table,
)
from weightspace.zoo.sweep import RunSpec, TrainSettings
from weightspace.zoo.tasks import get_task, task_families
from weightspace.zoo.trainer import STREAMS_VERSION, CheckpointResult, train_group

__all__ = ["ShardPlan", "generate_zoo", "plan_shards", "zoo_config"]


@dataclass(frozen=True)
class ShardPlan:
    """Runs trained together and stored in one shard."""

    name: str
    task: str
    arch: str
    runs: tuple[RunSpec, ...]


#: presets written by a generator of their own: name → ``"module:function"``, called as
#: ``function(out, preset, seed=..., device=...)`` and returning the opened zoo.
FITTED_PRESETS: dict[str, str] = {
    "vit-digits": "weightspace.zoo.vit_digits:generate_vit_digits_zoo",
    "lora": "weightspace.zoo.lora_zoo:generate_lora_zoo",
}


def zoo_config(preset: Preset, seed: int) -> dict[str, Any]:
    """The JSON-able configuration that determines a zoo's contents (stored in the manifest).

    ``streams_version`` is the version of the runs' random streams
    (:data:`~weightspace.zoo.streams.STREAMS_VERSION`): the same config under other streams gives
    other weights, so a zoo is only resumed by the streams that began it.
    """
    return {
        "streams_version": STREAMS_VERSION,
        "preset": preset.name,
        "seed": seed,
        "tasks": list(preset.tasks),
        "archs": list(preset.archs),
        "runs": preset.runs,
        "runs_per_shard": preset.runs_per_shard,
        "settings": json.loads(json.dumps(preset.settings.to_dict())),
        "search_space": json.loads(json.dumps(preset.search_space.to_dict())),
    }


def plan_shards(preset: Preset, seed: int) -> list[ShardPlan]:
    """Every shard of ``preset``: compatible (task, arch) pairs × runs, chunked.

    Raises:
        UnknownNameError: a task or architecture name is unknown (lists the valid ones).
        ZooError: no architecture fits any of the tasks, or ``preset`` is an INR preset (one
            vectorised fit, :mod:`weightspace.zoo.inr_fit`, no shards).
    """
    if preset.inr is not None:
        raise ZooError(f"preset {preset.name!r} fits INRs in one go; it has no shard plan")
    if preset.name in FITTED_PRESETS:
        raise ZooError(f"preset {preset.name!r} is written by its own generator; no shard plan")
    shards: list[ShardPlan] = []
    skipped: list[str] = []
    for task_name in preset.tasks:
        families = task_families(task_name)
        for arch_name in preset.archs:
            arch = get_arch(arch_name)
            if arch.family not in families:
                skipped.append(f"{arch.name} on {task_name}")
                continue
            runs = [
                RunSpec.make(task_name, arch.name, i, seed, preset.search_space)
                for i in range(preset.runs)
            ]
            for chunk, start in enumerate(range(0, len(runs), preset.runs_per_shard)):
                shards.append(
                    ShardPlan(
                        name=f"{task_name}__{arch.name}__{chunk:03d}",
                        task=task_name,
                        arch=arch.name,
                        runs=tuple(runs[start : start + preset.runs_per_shard]),
                    )
                )
    if not shards:
        raise ZooError(
            f"no architecture fits any task: {', '.join(skipped)} are incompatible (MLPs fit every "
            "task, cnn2d fits digits, cnn1d fits mnist1d)"
        )
    return shards


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


#: ``runner(root, shards, settings, device)`` trains and writes (:func:`run_shard`) each shard,
#: yielding its name when done.
ShardRunner = Callable[[Path, Sequence[ShardPlan], TrainSettings, str], Iterable[str]]


def generate_zoo(
    out: str | Path,
    preset: Preset,
    *,
    seed: int = 0,
    device: str = "cpu",
    workers: int = 1,
    threads: int = 1,
    show_progress: bool = True,
    console: Any = None,
    on_shard_done: Callable[[str], None] | None = None,
    shard_runner: ShardRunner | None = None,
) -> Zoo:
    """Generate (or resume) the zoo of ``preset`` in ``out`` and return it opened.

    Args:
        out: the zoo directory (created; may hold an unfinished zoo of the same config).
        preset: the recipe, with any CLI overrides applied.
        seed: the zoo seed; every run's seed derives from it, the task, the arch and the index.
        device: ``"cpu"`` or ``"cuda"``.
        workers: processes training shards in parallel.
        threads: torch intra-op threads per worker. The default 1 is deliberate: these ops are
            small, and on a busy machine several OpenMP threads per process thrash (measured
            20× slower on a loaded 2-core box); use ``workers`` to occupy more cores.
        show_progress: draw a Rich progress bar with ETA.
        on_shard_done: called with each finished shard's name (tests use it to interrupt).
        shard_runner: trains the unfinished shards elsewhere, yielding each one's name once
            written (e.g. :func:`weightspace.distributed.ray_zoo.ray_shard_runner`); default:
            this machine, ``workers`` processes. An INR preset (``preset.inr``) is fitted
            here in one vectorised job (:func:`~weightspace.zoo.inr_fit.generate_inr_zoo`):
            ``workers`` and ``shard_runner`` do not apply to it.

    Raises:
        ZooError: ``out`` holds a different zoo (other config or an imported zoo).
    """
    if preset.name in FITTED_PRESETS:  # presets with a generator of their own (no shard plan)
        import importlib

        module, function = FITTED_PRESETS[preset.name].split(":")
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        with _restore_threads(previous_threads):
            generate = getattr(importlib.import_module(module), function)
            return generate(out, preset, seed=seed, device=device)
    if preset.inr is not None:  # INR presets fit one SIREN per image instead (inr_fit)
        from weightspace.zoo.inr_fit import generate_inr_zoo

        previous_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        with _restore_threads(previous_threads):
            return generate_inr_zoo(out, preset, seed=seed, device=device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ZooError("--device cuda was given but CUDA is not available on this machine")
    root = Path(out)
    config = zoo_config(preset, seed)
    shards = plan_shards(preset, seed)
    tasks = sorted({s.task for s in shards})
    if (root / MANIFEST).exists():
        existing = read_manifest(root)
        old_config = existing.get("config") or {}
        if existing.get("kind") == "generated" and old_config.get("streams_version") != (
            STREAMS_VERSION
        ):
            raise ZooError(
                f"{root}: this zoo was generated with random streams version "
                f"{old_config.get('streams_version', 1)}, but this weightspace trains with version "
                f"{STREAMS_VERSION}; its runs would get different weights, so it cannot be resumed "
                "— generate into a new --out (or with the weightspace that began it)"
            )
        if existing.get("kind") != "generated" or existing.get("config") != config:
            raise ZooError(
                f"{root}: already holds a different zoo (preset {existing.get('config', {}).get('preset')!r}, "
                f"kind {existing.get('kind')!r}); use a new --out, or the same options to resume"
            )
        if existing.get("complete") and (root / TABLE).exists():
            return Zoo.open(root)
    root.mkdir(parents=True, exist_ok=True)
    remove_temporaries(root)
    manifest: dict[str, Any] = {
        "kind": "generated",
        "complete": False,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config,
        "versions": library_versions(),
        "device": device,
        "tasks": {name: get_task(name).describe() for name in tasks},
        "failed": [],
        "skipped": [],
    }
    write_manifest(root, manifest)

    todo = [s for s in shards if not _shard_done(root, s)]
    shard_by_name, epochs = {s.name: s for s in todo}, preset.settings.epochs
    total = sum(len(s.runs) for s in shards) * preset.settings.epochs
    done = total - sum(len(s.runs) for s in todo) * preset.settings.epochs
    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    with _progress(show_progress, console) as progress, _restore_threads(previous_threads):
        bar = progress.add_task(f"zoo {preset.name}", total=total, completed=done)
        advance: Callable[[int], None] = lambda n: progress.update(bar, advance=n)  # noqa: E731
        if shard_runner is not None:
            for name in shard_runner(root, todo, preset.settings, device):
                progress.update(bar, advance=len(shard_by_name[name].runs) * epochs)
                if on_shard_done is not None:
                    on_shard_done(name)
        elif workers <= 1 or len(todo) <= 1:
            for shard in todo:
                progress.update(bar, description=f"{shard.task} {shard.arch}")
                run_shard(root, shard, preset.settings, device, advance)
                if on_shard_done is not None:
                    on_shard_done(shard.name)
        else:
            _run_parallel(
                root, todo, preset.settings, device, workers, threads, progress, bar, on_shard_done
            )
    elapsed = time.perf_counter() - started

    parts, skipped = [], []
    for shard in shards:
        parts.append(pd.read_parquet(root / PARTS / f"{shard.name}.parquet"))
        skipped += json.loads((root / PARTS / f"{shard.name}.skipped.json").read_text())
    table = pd.concat([p for p in parts if len(p)], ignore_index=True)
    write_table(root / TABLE, table)
    manifest.update(
        complete=True,
        skipped=skipped,
        num_runs=int(table["run_id"].nunique()),
        num_checkpoints=len(table),
        last_session_seconds=round(elapsed, 2),
    )
    write_manifest(root, manifest)
    return Zoo.open(root)


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


@contextlib.contextmanager
def _restore_threads(threads: int) -> Iterator[None]:
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _NullProgress:
    def __enter__(self) -> _NullProgress:
        return self

    def __exit__(self, *args: object) -> None:
        return None

    def add_task(self, *args: object, **kwargs: object) -> int:
        return 0

    def update(self, *args: object, **kwargs: object) -> None:
        return None


def _progress(show: bool, console: Any) -> Any:
    if not show:
        return _NullProgress()
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description:<40}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("model-epochs"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )


def describe_preset(preset: Preset, seed: int = 0) -> dict[str, Any]:
    """Counts a preset would produce (runs, checkpoints, shards) without training anything."""
    if preset.inr is not None:
        return {
            "preset": preset.name,
            "shards": 1,
            "runs": preset.runs,
            "checkpoints": preset.runs * len(preset.settings.checkpoint_epochs),
            "model_epochs": preset.runs * preset.settings.epochs,
            **{"config": asdict(preset.settings)},
        }
    shards = plan_shards(preset, seed)
    runs = sum(len(s.runs) for s in shards)
    return {
        "preset": preset.name,
        "shards": len(shards),
        "runs": runs,
        "checkpoints": runs * len(preset.settings.checkpoint_epochs),
        "model_epochs": runs * preset.settings.epochs,
        **{"config": asdict(preset.settings)},
    }
