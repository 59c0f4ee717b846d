"""The benchmark report's figures, each drawn from :class:`~weightspace.evaluate.results.Results`.

Every function writes one PNG into ``out`` and returns its file name, or ``None`` when the
results hold nothing to draw. :mod:`weightspace.report` places each figure beside its table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from weightspace.evaluate.results import Results

__all__ = [
    "embedding_map",
    "find_training_log",
    "merge_curves",
    "merge_curves_figure",
    "predicted_vs_true",
    "predicted_vs_true_figure",
    "recall_at_k",
    "training_curves",
    "training_curves_figure",
]

#: log.csv columns that are bookkeeping, not a quantity worth a panel.
_BOOKKEEPING = ("epoch", "step", "seconds", "partial")


def _pyplot() -> Any:
    from weightspace.extras import require

    matplotlib = require("matplotlib", "bench", feature="report figures")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _text(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.2f}"


def _save(fig: Any, out: Path, name: str) -> str:
    plt = _pyplot()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def predicted_vs_true(results: Results, out: Path, protocol: str) -> str | None:
    """Write :func:`predicted_vs_true_figure` to ``predicted_vs_true.png``."""
    fig = predicted_vs_true_figure(results, protocol)
    return None if fig is None else _save(fig, out, "predicted_vs_true.png")


def predicted_vs_true_figure(results: Results, protocol: str) -> Any | None:
    """Seed 0's predicted against true test accuracy, one panel per method, shared axes; each
    title gives the method's within-group and pooled τ on the common subset (seed 0)."""
    data = results.predictions_seed0
    if data is None or not data.predicted:
        return None
    plt = _pyplot()
    n = len(data.predicted)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.0 * cols, 3.0 * rows), squeeze=False, sharex=True, sharey=True
    )
    true = np.asarray(data.true, dtype=float)
    scores = results.prediction.get(protocol)
    low, high = min(0.0, float(np.nanmin(true))) - 0.05, max(1.0, float(np.nanmax(true))) + 0.05
    for ax, (method, predicted) in zip(axes.flat, data.predicted.items(), strict=False):
        pred = np.asarray([np.nan if p is None else p for p in predicted], dtype=float)
        # a diverged regressor must not squash every other panel: clip to the shared axes
        off = np.isfinite(pred) & ((pred < low) | (pred > high))
        shown = np.clip(pred, low, high)
        ax.scatter(true[~off], shown[~off], s=4, alpha=0.5)
        ax.scatter(true[off], shown[off], s=8, marker="x", color="red")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
        ax.set_xlim(low, high)
        ax.set_ylim(low, high)
        common: dict[str, float] = {}
        if scores is not None and scores.methods.get(method):
            common = scores.methods[method][0].common
        # τ in every title, "–" for a method the protocol did not score
        title = (
            f"{method}\nτ within {_text(common.get('within_group_tau'))}, "
            f"pooled {_text(common.get('kendall_tau'))}"
        )
        if off.any():
            title += f"\n{int(off.sum())} off-scale (×, clipped)"
        ax.set_title(title, fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("predicted", fontsize=8)
    for col in range(cols):
        # the lowest drawn panel of each column carries the x axis (the grid's last row may be
        # short)
        lowest = max(r for r in range(rows) if r * cols + col < n)
        axes[lowest, col].set_xlabel("true test accuracy", fontsize=8)
        axes[lowest, col].xaxis.set_tick_params(labelbottom=True)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def recall_at_k(results: Results, out: Path, ours: tuple[str, ...]) -> str | None:
    """Recall@k against k for every method, one panel per retrieval protocol (mean over seeds)."""
    protocols = [p for p, per_method in results.retrieval.items() if per_method]
    if not protocols:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(protocols), figsize=(4 * len(protocols), 3.4), squeeze=False)
    for ax, protocol in zip(axes[0], protocols, strict=True):
        for method, scores in results.retrieval[protocol].items():
            ks = sorted(int(k.split("@")[1]) for k in scores[0].metrics if k.startswith("recall@"))
            means = [_mean([s.metrics.get(f"recall@{k}", math.nan) for s in scores]) for k in ks]
            ax.plot(ks, means, marker="o", ms=3, label=method, lw=2 if method in ours else 1)
        ax.set_title(f"retrieval {protocol}")
        ax.set_xlabel("k")
        ax.set_ylabel("Recall@k")
        ax.set_ylim(0, 1.02)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "recall_at_k.png", dpi=110)
    plt.close(fig)
    return "recall_at_k.png"


def embedding_map(results: Results, out: Path) -> str | None:
    """Our seed-0 embedding of the held-out checkpoints in 2-D (PCA), by task and by accuracy."""
    emap = results.embedding_map
    if not emap.get("x"):
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    tasks = emap.get("task") or ["all"] * len(emap["x"])
    for task in sorted(set(tasks)):
        idx = [i for i, t in enumerate(tasks) if t == task]
        axes[0].scatter([emap["x"][i] for i in idx], [emap["y"][i] for i in idx], s=5, label=task)
    axes[0].legend(fontsize=7, markerscale=2)
    axes[0].set_title("by task")
    if emap.get("test_accuracy"):
        points = axes[1].scatter(emap["x"], emap["y"], c=emap["test_accuracy"], s=5, cmap="viridis")
        fig.colorbar(points, ax=axes[1], label="test accuracy")
    axes[1].set_title("by test accuracy")
    fig.tight_layout()
    fig.savefig(out / "embedding_map.png", dpi=110)
    plt.close(fig)
    return "embedding_map.png"


def find_training_log(results: Results, out: Path) -> Path | None:
    """The seed-0 encoder's ``log.csv``: the one bench trained under ``out/encoders/seed-0``,
    or that of the given encoder, whose path is read as recorded, then relative to ``out`` and
    to each folder above it (bench records it relative to the folder it ran in)."""
    trained = out / "encoders" / "seed-0" / "log.csv"
    if trained.is_file():
        return trained
    source = results.encoder.get("source")
    sources = source if isinstance(source, list) else [source]
    if not sources or not isinstance(sources[0], str):
        return None
    given = Path(sources[0])
    for base in (Path.cwd(), out, *out.resolve().parents):
        path = (given if given.is_absolute() else base / given) / "log.csv"
        if path.is_file():
            return path
    return None


def _quantity(column: str) -> str:
    """``train_contrastive`` and ``val_contrastive`` are one quantity, ``contrastive``."""
    for prefix in ("train_", "val_"):
        if column.startswith(prefix):
            return column[len(prefix) :]
    return column


def training_curves_figure(log: Any) -> Any | None:
    """One panel per logged quantity against epoch (training and validation series of the same
    quantity share a panel), every point marked so that a one-epoch run still shows."""
    if "epoch" not in log.columns:
        return None
    panels: dict[str, list[str]] = {}
    for column in log.columns:
        if column not in _BOOKKEEPING and log[column].notna().any():
            panels.setdefault(_quantity(column), []).append(column)
    if not panels:
        return None
    plt = _pyplot()
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.0 * cols, 2.4 * rows), squeeze=False, sharex=True
    )
    for ax, (quantity, columns) in zip(axes.flat, panels.items(), strict=False):
        for column in columns:
            kept = log[["epoch", column]].dropna()
            label = "validation" if column.startswith("val_") else "training"
            ax.plot(kept["epoch"], kept[column], marker="o", ms=4, label=label)
        ax.set_title(quantity, fontsize=8)
        ax.tick_params(labelsize=7)
        if len(columns) > 1:
            ax.legend(fontsize=6)
    for col in range(cols):
        lowest = max(r for r in range(rows) if r * cols + col < len(panels))
        axes[lowest, col].set_xlabel("epoch", fontsize=8)
        axes[lowest, col].xaxis.set_tick_params(labelbottom=True)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def training_curves(out: Path, log_path: Path | None = None) -> str | None:
    """Write the seed-0 encoder's training log (``log_path``, by default the one bench trained
    under ``out``) to ``training_curves.png``."""
    path = log_path or out / "encoders" / "seed-0" / "log.csv"
    if not path.is_file():
        return None
    import pandas as pd

    fig = training_curves_figure(pd.read_csv(path))
    return None if fig is None else _save(fig, out, "training_curves.png")


#: line style per method kind: references dashed, the control dotted.
_KIND_STYLE = {"reference": "--", "control": ":"}


def merge_curves_figure(synthesis: Mapping[str, Any]) -> Any | None:
    """Test accuracy along α per method (mean ± std over pairs), one panel per task in a grid
    of at most three columns; the legend takes a free cell when there is one."""
    tasks = {t: e for t, e in synthesis.get("tasks", {}).items() if e.get("curves")}
    if not tasks:
        return None
    plt = _pyplot()
    cols = min(3, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 3.2 * rows), squeeze=False)
    handles: dict[str, Any] = {}
    methods = sorted({row["method"] for e in tasks.values() for row in e["curves"]})
    colour = {m: f"C{i % 10}" for i, m in enumerate(methods)}  # one colour per method throughout
    for ax, (task, entry) in zip(axes.flat, tasks.items(), strict=False):
        by_method: dict[str, list[Mapping[str, Any]]] = {}
        for row in entry["curves"]:
            by_method.setdefault(row["method"], []).append(row)
        for method, points in sorted(by_method.items()):
            points = sorted(points, key=lambda r: r["alpha"])
            alpha = np.array([p["alpha"] for p in points], dtype=float)
            mean = np.array([p["accuracy_mean"] for p in points], dtype=float)
            std = np.nan_to_num(np.array([p.get("accuracy_std") for p in points], dtype=float))
            kind = points[0].get("kind") or entry.get("methods", {}).get(method, {}).get("kind")
            marker, size = ("*", 11) if len(points) == 1 else ("o", 4)
            (line,) = ax.plot(
                alpha,
                mean,
                _KIND_STYLE.get(kind, "-"),
                marker=marker,
                ms=size,
                color=colour[method],
                label=method,
            )
            if len(points) > 1 and kind not in _KIND_STYLE:  # spread of the merges only
                ax.fill_between(alpha, mean - std, mean + std, alpha=0.12, color=colour[method])
            handles.setdefault(f"{method} ({kind})" if kind else method, line)
        ax.set_title(f"{task} · {entry.get('arch')} ({entry.get('pairs')} pairs)", fontsize=8)
        ax.set_xlabel("α (0: model A, 1: model B)", fontsize=8)
        ax.set_ylabel("test accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    finish_grid(fig, axes, len(tasks), handles)
    return fig


def finish_grid(fig: Any, axes: Any, used: int, handles: Mapping[str, Any]) -> None:
    """Blank a figure grid's panels after the first ``used``, put the legend (``handles``: label
    → artist) in the first blank one (or the last used panel when none is blank), tighten."""
    spare = list(axes.flat)[used:]
    for ax in spare:
        ax.axis("off")
    where = spare[0] if spare else axes.flat[used - 1]
    where.legend(
        list(handles.values()), list(handles), fontsize=7, loc="center" if spare else "best"
    )
    fig.tight_layout()


def merge_curves(results: Results, out: Path) -> str | None:
    """Write :func:`merge_curves_figure` of the results' synthesis section to
    ``merge_curves.png``."""
    fig = merge_curves_figure(results.synthesis or {})
    return None if fig is None else _save(fig, out, "merge_curves.png")
