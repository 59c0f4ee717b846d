"""Which (task, architecture) group the synthesis benchmark measures, per task.

Among a task's architectures whose models every merge method can combine, the one with enough
held-out final checkpoints above the accuracy threshold and the most accurate of them (step 1 of
:mod:`weightspace.synthesis.benchmark`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from weightspace.synthesis.common import SynthesisError

__all__ = ["ENOUGH_HELD_OUT", "SynthesisGroup", "choose_groups"]


#: Held-out models an automatically chosen architecture should have: 11 give 55 distinct pairs.
ENOUGH_HELD_OUT = 11


@dataclass
class SynthesisGroup:
    """The (task, architecture) group synthesis is measured on for one task.

    Attributes:
        task, arch: the group.
        threshold: minimum final test accuracy of the models merged and reconstructed.
        held_out: final checkpoints of held-out runs (validation + test) above the threshold.
        train: final checkpoints of the encoder's training runs (any accuracy).
        how: how the architecture was chosen (a phrase for the report).
    """

    task: str
    arch: str
    threshold: float
    held_out: list[str]
    train: list[str]
    how: str


def _chance(task: str) -> float:
    """Chance accuracy of ``task``; 0 for a task weightspace does not know (no threshold lift)."""
    from weightspace.evaluate.tasks import chance_level

    level = chance_level(task)
    return 0.0 if np.isnan(level) else level


def _finals(table: pd.DataFrame) -> pd.DataFrame:
    last = table.groupby("run_id")["epoch"].transform("max")
    return table[table["epoch"] == last]


def _mergeable(spec: Any) -> bool:
    from weightspace.synthesis.merge import ensemble_spec

    try:
        ensemble_spec(spec)
    except SynthesisError:
        return False
    return True


def choose_groups(
    zoo: Any,
    splits: Mapping[str, Sequence[str]],
    *,
    tasks: Sequence[str] = (),
    archs: Mapping[str, str] | None = None,
    min_accuracy: float | None = None,
) -> tuple[list[SynthesisGroup], dict[str, str]]:
    """One group per task (see the module docstring).

    Args:
        zoo: the zoo.
        splits: the encoder's run split (``train``, ``val``, ``test`` run ids).
        tasks: the tasks (default: every task of the zoo).
        archs: task → architecture, overriding the automatic choice.
        min_accuracy: an absolute threshold for every task instead of the relative default.

    Returns:
        The groups, and task → reason for the tasks left out.
    """
    table = zoo.table.copy()
    table["run_id"] = table["run_id"].astype(str)
    table["checkpoint_id"] = table["checkpoint_id"].astype(str)
    archs = dict(archs or {})
    known = sorted(table["task"].astype(str).unique())
    unknown = [t for t in [*tasks, *archs] if t not in known]
    if unknown:
        raise SynthesisError(f"the zoo has no task(s) {sorted(set(unknown))}; it holds {known}")
    train_runs = set(map(str, splits["train"]))
    held_runs = set(map(str, splits.get("val", []))) | set(map(str, splits.get("test", [])))
    finals = _finals(table)
    groups, skipped = [], {}
    for task in tasks or known:
        rows = finals[finals["task"].astype(str) == task]
        candidates = []
        for arch, group in rows.groupby(rows["arch"].astype(str), sort=True):
            if task in archs and arch != archs[task]:
                continue
            if task not in archs and not _mergeable(zoo.spec(group["checkpoint_id"].iloc[0])):
                continue
            chance = _chance(task)
            best = float(group["test_accuracy"].max())
            threshold = (
                float(min_accuracy) if min_accuracy is not None else chance + 0.5 * (best - chance)
            )
            held = group[group["run_id"].isin(held_runs) & (group["test_accuracy"] >= threshold)]
            train = group[group["run_id"].isin(train_runs)]
            candidates.append(
                (
                    len(held),
                    float(held["test_accuracy"].mean()) if len(held) else 0.0,
                    arch,
                    threshold,
                    list(held.sort_values("run_id")["checkpoint_id"]),
                    list(train.sort_values("run_id")["checkpoint_id"]),
                )
            )
        if not candidates:
            skipped[task] = (
                f"the zoo has no {archs[task]} models on {task}"
                if task in archs
                else "no architecture of this task can be merged by every method"
            )
            continue
        # enough held-out models for the pairs (or as many as any architecture has), then the
        # most accurate of those: synthesis is about good models
        enough = min(ENOUGH_HELD_OUT, max(c[0] for c in candidates))
        n_held, _, arch, threshold, held, train = max(
            (c for c in candidates if c[0] >= enough), key=lambda c: (c[1], c[0], c[2])
        )
        if n_held < 2 or len(train) < 2:
            skipped[task] = (
                f"{arch}: {n_held} held-out models above the threshold {threshold:.3f} and "
                f"{len(train)} training models; too few to merge and to fit a decoder"
            )
            continue
        how = (
            "given"
            if task in archs
            else f"the most accurate held-out models among the {len(candidates)} mergeable "
            f"architectures with at least {enough} held-out models above their threshold"
        )
        groups.append(SynthesisGroup(task, arch, threshold, held, train, how))
    return groups, skipped
