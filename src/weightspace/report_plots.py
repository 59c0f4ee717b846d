"""The benchmark report's figures, each drawn from :class:`~weightspace.evaluate.results.Results`.

Every function writes one PNG into ``out`` and returns its file name, or ``None`` when the
results hold nothing to draw. :mod:`weightspace.report` places each figure beside its table.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from weightspace.evaluate.results import Results

__all__ = ["embedding_map", "predicted_vs_true", "recall_at_k", "training_curves"]


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


def predicted_vs_true(results: Results, out: Path, protocol: str) -> str | None:
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
        title = method
        if scores is not None and scores.methods.get(method):
            common = scores.methods[method][0].common
            title += (
                f"\nτ within {_text(common.get('within_group_tau'))}, "
                f"pooled {_text(common.get('kendall_tau'))}"
            )
        if off.any():
            title += f"\n{int(off.sum())} off-scale (×, clipped)"
        ax.set_title(title, fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("true test accuracy", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("predicted", fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "predicted_vs_true.png", dpi=110)
    plt.close(fig)
    return "predicted_vs_true.png"


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


def training_curves(out: Path) -> str | None:
    """Losses and validation metrics of the seed-0 encoder, from its ``log.csv``."""
    path = out / "encoders" / "seed-0" / "log.csv"
    if not path.exists():
        return None
    import pandas as pd

    log = pd.read_csv(path)
    columns = [c for c in log.columns if c != "epoch" and log[c].notna().any()]
    if not columns or "epoch" not in log.columns:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for column in columns:
        (axes[0] if "loss" in column else axes[1]).plot(log["epoch"], log[column], label=column)
    axes[0].set_title("training losses")
    axes[1].set_title("validation metrics")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "training_curves.png", dpi=110)
    plt.close(fig)
    return "training_curves.png"
