r"""The synthesis section of ``weightspace bench``: every task of a zoo, one architecture each.

Per task, on one (task, architecture) group:

1. **Group.** The architecture is ``task=arch`` when given; otherwise, among the task's
   architectures whose models can be merged by every method (the ensemble network must be exact)
   and that have :data:`ENOUGH_HELD_OUT` held-out final checkpoints above the accuracy threshold
   (or as many as the best-stocked one), the one whose held-out models are most accurate. The
   threshold defaults to halfway from chance to the group's best final test
   accuracy, so a task where good models reach 0.6 is not measured against 0.5 like one where
   they reach 0.98.
2. **Measurement.** The embedding table, the decoder, merging, reconstructions and sampling:
   :func:`~weightspace.synthesis.benchmark_task.run_task`, whose module says how each is measured.

Every figure is measured; :func:`goals` compares them with the issue's targets, and the report
says where a target is missed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from weightspace.errors import WeightspaceError
from weightspace.synthesis.benchmark_groups import ENOUGH_HELD_OUT, SynthesisGroup, choose_groups
from weightspace.synthesis.benchmark_summary import (
    MIDPOINT_METHODS,
    goals,
    linear_probe,
    summary_row,
)
from weightspace.synthesis.benchmark_task import DECODER_CHECKPOINTS, run_task
from weightspace.synthesis.common import SynthesisError
from weightspace.synthesis.figures import plot_reconstructions, plot_sampling

__all__ = [
    "DECODER_CHECKPOINTS",
    "ENOUGH_HELD_OUT",
    "MIDPOINT_METHODS",
    "SynthesisGroup",
    "choose_groups",
    "goals",
    "linear_probe",
    "plot_reconstructions",
    "plot_sampling",
    "run_section",
    "run_task",
    "summary_row",
]


def run_section(
    zoo: Any,
    encoder: Any,
    splits: Mapping[str, Sequence[str]],
    out: str | Path,
    *,
    tasks: Sequence[str] = (),
    archs: Mapping[str, str] | None = None,
    min_accuracy: float | None = None,
    pairs: int = 50,
    samples: int = 100,
    decoder_steps: int = 1500,
    decoder_time_limit: float = 0.0,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every task: :func:`choose_groups`, then :func:`run_task`; plots into ``out``.

    Returns:
        ``{"tasks": {task: entry}, "skipped": {task: reason}, "summary": [rows], "plots":
        [file names], "seconds": total}``.
    """
    from weightspace.synthesis.evaluate import plot_merge_curves

    started = time.perf_counter()
    out = Path(out)
    groups, skipped = choose_groups(
        zoo, splits, tasks=tasks, archs=archs, min_accuracy=min_accuracy
    )
    entries: dict[str, Any] = {}
    frames: dict[str, dict[str, pd.DataFrame]] = {}
    for group in groups:
        try:
            entry, frame = run_task(
                group,
                zoo,
                encoder,
                pairs=pairs,
                samples=samples,
                decoder_steps=decoder_steps,
                decoder_time_limit=decoder_time_limit,
                device=device,
                log=log,
            )
        except WeightspaceError as exc:
            skipped[group.task] = str(exc).split("\n")[0][:300]
            continue
        entries[group.task], frames[group.task] = entry, frame
        mid = entry["midpoint"]
        log(
            f"  {group.task}: {entry['pairs']} pairs, midpoints "
            + ", ".join(f"{m} {mid[m]:.3f}" for m in MIDPOINT_METHODS if m in mid)
            + f" ({entry['seconds']['total']:.0f} s)"
        )
    plots = []
    if frames:
        curves = pd.concat([f["curves"] for f in frames.values()], ignore_index=True)
        if not curves.empty:
            plot_merge_curves(curves, out / "merge_curves.png", title="test accuracy along α")
            plots.append("merge_curves.png")
        plot_reconstructions(frames, out / "reconstructions.png")
        plots.append("reconstructions.png")
        try:
            plot_sampling(frames, out / "sampling.png")
            plots.append("sampling.png")
        except SynthesisError:
            pass
    return {
        "tasks": entries,
        "skipped": skipped,
        "summary": [summary_row(e) for e in entries.values()],
        "plots": plots,
        "seconds": time.perf_counter() - started,
    }
