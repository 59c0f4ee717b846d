"""Train / validation / test splits: always by run, never by checkpoint.

Every checkpoint of one training run lands on one side, since checkpoints of one run share most
of their weights. :func:`split_runs` is the one run splitter of the package (the encoder's
training and every protocol use it, so a saved encoder's recorded splits and a benchmark's agree
for the same seed). On top of it:

* :func:`split_by_run` — random runs held out;
* :func:`split_by_architecture` — the largest architectures held out (train on the narrower or
  shallower, test on the wider or deeper);
* :func:`split_by_task` — one whole task held out.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from weightspace.errors import WeightspaceError
from weightspace.evaluate.tables import (
    ID_COLUMNS,
    RUN_COLUMNS,
    ProtocolError,
    column_name,
    rows_of,
)

__all__ = [
    "Split",
    "check_split",
    "split_by_architecture",
    "split_by_run",
    "split_by_task",
    "split_runs",
]

RunId = TypeVar("RunId", bound=Hashable)


def split_runs(
    run_ids: Sequence[RunId], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[RunId]]:
    r"""Assign whole runs to ``"train"`` / ``"val"`` / ``"test"``: the package's one run splitter.

    The distinct runs are sorted, shuffled by ``numpy.random.default_rng(seed).permutation``, and
    cut in that order into

    .. math::
        n_\mathrm{val} = \max(1, \mathrm{round}(f_\mathrm{val}\, n)), \quad
        n_\mathrm{test} = \min(\mathrm{round}(f_\mathrm{test}\, n),\ n - n_\mathrm{val} - 1),

    validation first, then test; the rest (at least one run) is train. ``val_fraction = 0``
    gives no validation runs. Each side is returned sorted. The same ``run_ids`` and ``seed``
    always give the same split, whatever the order or repetition of ``run_ids``.

    Args:
        run_ids: the run of each checkpoint (repeats allowed) or the distinct runs.
        val_fraction, test_fraction: shares of the runs, ``>= 0``, summing to less than 1.
        seed: of the shuffle.

    Raises:
        ProtocolError: bad fractions, or too few runs for a non-empty train side plus the
            requested validation (and test) sides.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ProtocolError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be >= 0 and "
            "sum to less than 1"
        )
    runs = sorted(set(run_ids))
    needed = 1 + (val_fraction > 0) + (test_fraction > 0)
    if len(runs) < needed:
        raise ProtocolError(
            f"the zoo has {len(runs)} training run(s); splitting by run needs at least {needed} "
            "(generate a larger zoo)"
        )
    order = np.random.default_rng(seed).permutation(len(runs))
    shuffled = [runs[i] for i in order]
    n_val = max(1, round(val_fraction * len(runs))) if val_fraction > 0 else 0
    n_test = min(round(test_fraction * len(runs)), len(runs) - n_val - 1)
    return {
        "val": sorted(shuffled[:n_val]),
        "test": sorted(shuffled[n_val : n_val + n_test]),
        "train": sorted(shuffled[n_val + n_test :]),
    }


@dataclass(frozen=True)
class Split:
    """Checkpoint ids of a train / validation / test split, and how it was made."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    description: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Sizes and description, JSON-ready (for reports)."""
        return {
            "description": self.description,
            "train": len(self.train),
            "val": len(self.val),
            "test": len(self.test),
            **self.info,
        }


def check_split(table: pd.DataFrame, split: Split) -> None:
    """Raise :class:`ProtocolError` if a checkpoint or a run appears on two sides."""
    run_col = column_name(table, RUN_COLUMNS, "run id")
    runs = {}
    for side in ("train", "val", "test"):
        ids = getattr(split, side)
        if len(set(ids)) != len(ids):
            raise ProtocolError(f"the {side} split lists a checkpoint twice")
        runs[side] = set(rows_of(table, ids)[run_col]) if ids else set()
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = runs[a] & runs[b]
        if shared:
            raise ProtocolError(
                f"runs {sorted(shared)[:3]} have checkpoints in both {a} and {b}; splits must "
                "be by run"
            )


def _ids_of_runs(table: pd.DataFrame, runs: Sequence[str]) -> tuple[str, ...]:
    id_col = column_name(table, ID_COLUMNS, "checkpoint id")
    run_col = column_name(table, RUN_COLUMNS, "run id")
    wanted = set(runs)
    return tuple(
        str(i) for i, r in zip(table[id_col], table[run_col], strict=True) if str(r) in wanted
    )


def _train_val_runs(
    table: pd.DataFrame, val_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """A by-run train/validation cut of ``table``'s runs (no validation when too few runs)."""
    run_col = column_name(table, RUN_COLUMNS, "run id")
    runs = [str(r) for r in table[run_col].unique()]
    if val_fraction > 0 and len(runs) >= 2:
        parts = split_runs(runs, val_fraction, 0.0, seed)
        return parts["train"], parts["val"]
    return runs, []


def split_by_run(
    table: pd.DataFrame, fractions: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0
) -> Split:
    """Random train/val/test split of the *runs* (all checkpoints of a run on one side).

    Args:
        table: one row per checkpoint with ``checkpoint_id`` and ``run_id`` columns.
        fractions: of runs, for train, val, test (normalised; val may be 0), cut by
            :func:`split_runs`.
        seed: of the shuffle.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or fractions[0] <= 0:
        raise ProtocolError(f"fractions must be three non-negative numbers, got {fractions}")
    if fractions[2] <= 0:
        raise ProtocolError("a split by run needs a test fraction above 0")
    run_col = column_name(table, RUN_COLUMNS, "run id")
    runs = [str(r) for r in table[run_col].unique()]
    if len(runs) < 2:
        raise ProtocolError(f"a split by run needs at least 2 runs, the table has {len(runs)}")
    total = float(sum(fractions))
    parts = split_runs(runs, fractions[1] / total, fractions[2] / total, seed)
    if not parts["test"]:
        raise ProtocolError(
            f"{len(runs)} runs are too few to hold out a test fraction of {fractions[2] / total:.2f}"
        )
    train, val, test = (_ids_of_runs(table, parts[side]) for side in ("train", "val", "test"))
    return Split(
        train,
        val,
        test,
        description=f"by run, fractions {tuple(fractions)}, seed {seed}",
        info={"runs": [len(parts[s]) for s in ("train", "val", "test")], "seed": seed},
    )


def _arch_size(table: pd.DataFrame, arch: str, by: str) -> tuple[float, ...]:
    """``(depth, width)``-style size key of an architecture name, for ``by`` in
    ``{"width", "depth", "size"}``."""
    rows = table[table["arch"] == arch]
    width = depth = None
    if "width" in rows.columns and "depth" in rows.columns:
        width, depth = float(rows["width"].iloc[0]), float(rows["depth"].iloc[0])
    else:
        try:
            from weightspace.zoo.architectures import get_arch

            config = get_arch(arch)
            width, depth = float(config.width), float(config.depth)
        except WeightspaceError:
            pass
    if by == "width" and width is not None:
        return (width, depth or 0.0)
    if by == "depth" and depth is not None:
        return (depth, width or 0.0)
    if "spec" in rows.columns:  # parameter count of the spec
        from weightspace.spec import NetworkSpec

        spec = rows["spec"].iloc[0]
        spec = NetworkSpec.from_json(spec) if isinstance(spec, str) else spec
        return (float(spec.num_parameters),)
    if width is not None and depth is not None:
        return (width * depth, depth)
    raise ProtocolError(
        f"cannot tell how large architecture {arch!r} is: give the table 'width' and 'depth' "
        "columns, a 'spec' column, or use registered architecture names"
    )


def split_by_architecture(
    table: pd.DataFrame,
    *,
    by: str = "size",
    test_fraction: float = 0.25,
    val_fraction: float = 0.15,
    seed: int = 0,
) -> Split:
    """Hold out the largest architectures: train on narrower/shallower, test on wider/deeper.

    Architectures are ordered by ``by`` — ``"width"`` (then depth), ``"depth"`` (then width) or
    ``"size"`` (parameter count) — and the largest ones, ties together, go to test until they hold
    at least ``test_fraction`` of the checkpoints (at least one architecture; at least one stays
    for training). Validation is a by-run split of the remaining runs.

    Raises:
        ProtocolError: fewer than two architectures, or all of the same size (a one-architecture
            sweep): there is nothing to hold out.
    """
    if by not in ("width", "depth", "size"):
        raise ProtocolError(f"by must be 'width', 'depth' or 'size', got {by!r}")
    if "arch" not in table.columns:
        raise ProtocolError("split_by_architecture needs an 'arch' column")
    archs = sorted(str(a) for a in table["arch"].unique())
    if len(archs) < 2:
        raise ProtocolError(f"holding out architectures needs at least 2, the table has {archs}")
    sizes = {a: _arch_size(table, a, by) for a in archs}
    distinct = sorted(set(sizes.values()), reverse=True)
    if len(distinct) < 2:
        raise ProtocolError(f"every architecture has the same {by}; nothing to hold out")
    counts = table["arch"].astype(str).value_counts()
    held: list[str] = []
    for size in distinct[:-1]:  # the smallest size always stays in training
        held += [a for a in archs if sizes[a] == size]
        if counts[held].sum() >= test_fraction * len(table):
            break
    train_table = table[~table["arch"].astype(str).isin(held)]
    test_table = table[table["arch"].astype(str).isin(held)]
    id_col = column_name(table, ID_COLUMNS, "checkpoint id")
    train_runs, val_runs = _train_val_runs(train_table, val_fraction, seed)
    return Split(
        _ids_of_runs(train_table, train_runs),
        _ids_of_runs(train_table, val_runs),
        tuple(str(i) for i in test_table[id_col]),
        description=f"held-out architectures by {by}: {', '.join(held)}",
        info={"held_out": held, "by": by, "seed": seed},
    )


def split_by_task(
    table: pd.DataFrame, task: str, *, val_fraction: float = 0.15, seed: int = 0
) -> Split:
    """Hold out every checkpoint of ``task``; train/val is a by-run split of the other tasks."""
    if "task" not in table.columns:
        raise ProtocolError("split_by_task needs a 'task' column")
    tasks = sorted(str(t) for t in table["task"].unique())
    if task not in tasks:
        raise ProtocolError(f"task {task!r} is not in the table; it has {tasks}")
    if len(tasks) < 2:
        raise ProtocolError("holding out a task needs at least 2 tasks in the table")
    id_col = column_name(table, ID_COLUMNS, "checkpoint id")
    rest = table[table["task"].astype(str) != task]
    train_runs, val_runs = _train_val_runs(rest, val_fraction, seed)
    held = table[table["task"].astype(str) == task]
    return Split(
        _ids_of_runs(rest, train_runs),
        _ids_of_runs(rest, val_runs),
        tuple(str(i) for i in held[id_col]),
        description=f"held-out task {task}",
        info={"held_out": [task], "seed": seed},
    )
