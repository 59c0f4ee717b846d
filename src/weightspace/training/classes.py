"""The class objective (``TrainConfig.objective == "class"``) on class-target zoos: the zoo's
own split and its labels.

A class-target zoo (manifest ``target: "class"``: an INR release, ``zoo generate --preset
inr-digits``) carries a ``label`` per checkpoint (the class its model represents) and a
``split`` per checkpoint (``train`` / ``val`` / ``test``). Bench's classification protocol
(:mod:`weightspace.evaluate.classification`) scores the ``test`` rows, so training here reads
only the others: the runs of ``train`` train, the runs of ``val`` validate (when the zoo has no
``val`` rows, a seeded ``val_fraction`` of the training runs does), and the ``test`` runs are
dropped before any checkpoint is read.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from weightspace.training.config import MissingLabelError, TrainConfig, TrainError
from weightspace.training.coord_views import check_coordinate_zoo

__all__ = ["class_names", "class_splits"]


def _check_class_zoo(zoo: Any, table: pd.DataFrame) -> None:
    target = zoo.manifest.get("target")
    if target != "class":
        raise MissingLabelError(
            f"{zoo.root}: --objective class needs a class-target zoo (manifest target 'class'), "
            f"this one says {target!r}; train with --objective contrastive, supervised or both"
        )
    for column in ("label", "split"):
        if column not in table.columns or table[column].isna().any():
            raise MissingLabelError(
                f"{zoo.root}: --objective class needs a {column!r} on every checkpoint; "
                f"{'the column is missing' if column not in table.columns else 'some are empty'}"
            )


def class_splits(zoo: Any, table: pd.DataFrame, config: TrainConfig) -> dict[str, list[str]]:
    """Run ids per ``train`` / ``val`` / ``test`` from the zoo's ``split`` column.

    A run whose checkpoints disagree on their split is refused (a run on both sides would leak).
    Without ``val`` rows, ``val_fraction`` of the training runs (at least one, chosen by
    ``config.seed``) validate instead.

    Raises:
        MissingLabelError: not a class-target zoo, or ``label`` / ``split`` missing.
        CoordViewError: coordinate views asked of a zoo with a model that does not read
            coordinates (said here, before any checkpoint is read).
        TrainError: a run in two splits, an unknown split name, or too few training runs.
    """
    _check_class_zoo(zoo, table)
    if config.coord_shift or config.coord_zoom:
        firsts = table.drop_duplicates("spec")["checkpoint_id"] if "spec" in table else []
        check_coordinate_zoo(zoo.root, (zoo.spec(str(i)) for i in firsts))
    runs = table["run_id"].astype(str)
    split = table["split"].astype(str)
    unknown = sorted(set(split) - {"train", "val", "test"})
    if unknown:
        raise TrainError(f"{zoo.root}: unknown split name(s) {unknown}; expected train/val/test")
    per_run = split.groupby(runs).nunique()
    if (per_run > 1).any():
        raise TrainError(
            f"{zoo.root}: run {per_run[per_run > 1].index[0]!r} has checkpoints in several "
            "splits; a run must sit on one side"
        )
    first = split.groupby(runs).first()
    splits = {name: sorted(first.index[first == name]) for name in ("train", "val", "test")}
    if not splits["val"]:
        if len(splits["train"]) < 2:
            raise TrainError(f"{zoo.root}: fewer than two training runs to validate on")
        rng = np.random.default_rng(config.seed)
        count = max(1, round(config.val_fraction * len(splits["train"])))
        chosen = set(rng.permutation(splits["train"])[:count].tolist())
        splits["val"] = sorted(chosen)
        splits["train"] = [r for r in splits["train"] if r not in chosen]
    if not splits["train"]:
        raise TrainError(f"{zoo.root}: no training runs in the zoo's split column")
    return splits


def class_names(zoo: Any, table: pd.DataFrame) -> tuple[str, ...]:
    """The class head's class names ``("0", ..., str(C - 1))``: ``C`` is the manifest's
    ``num_classes``, else the largest label + 1 (labels are class indices).

    Raises:
        TrainError: a label that is not an integer in ``[0, C)``.
    """
    labels = table["label"].to_numpy()
    if not np.all(np.equal(np.mod(labels.astype(float), 1), 0)) or (labels < 0).any():
        raise TrainError(f"{zoo.root}: labels must be non-negative class indices")
    count = int(zoo.manifest.get("num_classes") or int(labels.max()) + 1)
    if int(labels.max()) >= count:
        raise TrainError(
            f"{zoo.root}: label {int(labels.max())} outside the {count} declared classes"
        )
    return tuple(str(i) for i in range(count))
