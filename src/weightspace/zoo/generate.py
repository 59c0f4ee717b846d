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
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from weightspace.zoo.presets import Preset
from weightspace.zoo.shard_plan import (  # noqa: F401 (re-exported)
    FITTED_PRESETS,
    ShardPlan,
    describe_preset,
    plan_shards,
    zoo_config,
)
from weightspace.zoo.shard_run import (  # noqa: F401 (re-exported)
    _checkpoint_row,
    _run_parallel,
    _run_shard_in_worker,
    _shard_done,
    _spec_json,
    _worker_init,
    run_shard,
)
from weightspace.zoo.store import (
    MANIFEST,
    PARTS,
    TABLE,
    Zoo,
    ZooError,
    library_versions,
    read_manifest,
    remove_temporaries,
    write_manifest,
    write_table,
)
from weightspace.zoo.sweep import TrainSettings
from weightspace.zoo.tasks import get_task
from weightspace.zoo.trainer import STREAMS_VERSION

__all__ = ["ShardPlan", "generate_zoo", "plan_shards", "zoo_config"]


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
