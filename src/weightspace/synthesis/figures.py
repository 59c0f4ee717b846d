"""The synthesis section's per-task figures: sampled models and reconstructions.

``sampling.png`` is a grid like ``merge_curves.png`` (:func:`weightspace.report_plots.
merge_curves_figure`): one panel per task, at most three columns, the legend in a spare cell;
its caption is :data:`weightspace.synthesis.report.FIGURE_CAPTIONS`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from weightspace.report_plots import finish_grid
from weightspace.synthesis.common import SynthesisError, pyplot, save_figure

__all__ = ["plot_reconstructions", "plot_sampling", "sampling_figure"]

#: panels per row of a per-task grid
GRID_COLUMNS = 3


def sampling_figure(frames: Mapping[str, Mapping[str, pd.DataFrame]]) -> Any:
    """Accuracy against novelty per task, as a grid: the samples (dots) and the
    zoo-plus-noise baseline's curve (dashed).

    Args:
        frames: task → ``{"sampling": per-sample novelty and accuracy, "noise_curve": novelty
            and accuracy per noise level, ...}``, as
            :func:`weightspace.synthesis.benchmark.run_task` returns them.

    Raises:
        SynthesisError: no task has samples.
    """
    tasks = [t for t in frames if not frames[t]["sampling"].empty]
    if not tasks:
        raise SynthesisError("no samples to plot")
    plt = pyplot()
    cols = min(GRID_COLUMNS, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 3.2 * rows), squeeze=False)
    handles: dict[str, Any] = {}
    for ax, task in zip(axes.flat, tasks, strict=False):
        per_sample, curve = frames[task]["sampling"], frames[task]["noise_curve"]
        dots = ax.scatter(per_sample["novelty"], per_sample["accuracy"], s=8, alpha=0.6)
        handles.setdefault("samples", dots)
        if not curve.empty:
            curve = curve.sort_values("novelty")
            (line,) = ax.plot(curve["novelty"], curve["accuracy"], "k--", marker="x", ms=4)
            handles.setdefault("zoo model + noise", line)
        ax.set_title(f"{task} ({len(per_sample)} samples)", fontsize=8)
        ax.set_xlabel("novelty (1 − agreement with nearest zoo model)", fontsize=8)
        ax.set_ylabel("test accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    finish_grid(fig, axes, len(tasks), handles)
    return fig


def plot_sampling(frames: Mapping[str, Mapping[str, pd.DataFrame]], path: str | Path) -> Path:
    """Write :func:`sampling_figure` to ``path``."""
    return save_figure(sampling_figure(frames), path)


def plot_reconstructions(
    frames: Mapping[str, Mapping[str, pd.DataFrame]], path: str | Path
) -> Path:
    """Decoded vs original test accuracy of held-out models, one colour per task."""
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for task, frame in frames.items():
        recon = frame["reconstruction"]
        if recon.empty:
            continue
        axes[0].scatter(recon["accuracy"], recon["decoded_accuracy"], s=10, label=task)
        axes[1].scatter(recon["agreement_cross"], recon["agreement"], s=10, label=task)
    for ax in axes:
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
        ax.grid(alpha=0.3)
    axes[0].set_xlabel("original test accuracy")
    axes[0].set_ylabel("reconstruction's test accuracy")
    axes[0].set_title("held-out reconstructions", fontsize=9)
    axes[1].set_xlabel("agreement of another model's reconstruction with the original")
    axes[1].set_ylabel("agreement of own reconstruction")
    axes[1].set_title("faithfulness (above the diagonal: faithful)", fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
