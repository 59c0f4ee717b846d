"""The Rich progress bar of ``weightspace train``, fed by :func:`weightspace.train.train`'s
callbacks (the library itself shows nothing)."""

from __future__ import annotations

import math
from typing import Any

from weightspace.training.config import StepReport

__all__ = ["TrainProgress"]


class TrainProgress:
    """Bars for data preparation, epochs and the batches of the epoch in progress, with the
    running loss and the last epoch's validation metrics. Use as a context manager and pass
    :meth:`on_load`, :meth:`on_step` and :meth:`on_epoch` to ``train``."""

    SHOWN = ("train_loss", "val_accuracy_tau", "val_accuracy_mae", "val_view_top1")

    def __init__(self, epochs: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.epochs = epochs
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> TrainProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def _task(self, name: str, total: int) -> Any:
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=total, info="")
        return self.tasks[name]

    def on_load(self, what: str, done: int, total: int) -> None:
        if done == total or done % 50 == 0:
            self.progress.update(self._task(what, total), total=total, completed=done)

    def on_step(self, report: StepReport) -> None:
        epochs = self._task("epochs", report.epochs)
        self.progress.update(epochs, completed=report.epoch)
        batches = self._task("batches", report.steps_per_epoch)
        self.progress.update(
            batches,
            total=report.steps_per_epoch,
            completed=report.step,
            info=f"loss {report.loss:.4f}",
        )

    def on_epoch(self, row: dict[str, float]) -> None:
        shown = []
        for key in self.SHOWN:
            value = row.get(key)
            if isinstance(value, float) and math.isfinite(value):
                shown.append(f"{key.replace('val_', 'val ').replace('train_', '')} {value:.3f}")
        epochs = self._task("epochs", self.epochs)
        self.progress.update(epochs, completed=int(row["epoch"]), info=" · ".join(shown))
