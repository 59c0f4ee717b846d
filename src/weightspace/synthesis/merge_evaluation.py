r"""Merge curves: test accuracy along :math:`\alpha` for every merge method, on pairs of models.

:func:`merge_pairs` picks pairs of independently trained models (same task and architecture,
different runs, each run's final checkpoint); :func:`merge_curves` measures every method at
:math:`\alpha \in \{0, .25, .5, .75, 1\}`, plus the ``endpoints`` line
:math:`(1-\alpha)\,\mathrm{acc}_A + \alpha\,\mathrm{acc}_B`. Every row also records how often
the merged model predicts what the output ensemble at the same :math:`\alpha` predicts.
:func:`summarize_merge_curves` averages over pairs; :func:`plot_merge_curves` draws them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from weightspace.synthesis.common import SynthesisError, pyplot, save_figure
from weightspace.synthesis.decoder import Synthesizer
from weightspace.synthesis.merge import ensemble, list_merge_methods, merge
from weightspace.synthesis.predictions import _accuracy, predict, task_split

__all__ = [
    "ALPHAS",
    "merge_curves",
    "merge_pairs",
    "plot_merge_curves",
    "summarize_merge_curves",
]


ALPHAS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


def merge_pairs(
    zoo: Any,
    *,
    pairs_per_group: int = 50,
    runs: Iterable[str] | None = None,
    tasks: Iterable[str] | None = None,
    archs: Iterable[str] | None = None,
    min_accuracy: float | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Pairs of final checkpoints of different runs, per (task, arch).

    Disjoint pairs first (runs shuffled by ``seed`` and paired off); if a group has fewer than
    ``2 * pairs_per_group`` runs, further distinct random pairs fill it up.

    Returns:
        Columns ``task, arch, pair, id_a, id_b, run_a, run_b``.
    """
    table = zoo.table
    if runs is not None:
        table = table[table["run_id"].isin(set(runs))]
    if tasks is not None:
        table = table[table["task"].isin(set(tasks))]
    if archs is not None:
        table = table[table["arch"].isin(set(archs))]
    last = table.groupby("run_id")["epoch"].transform("max")
    table = table[table["epoch"] == last]
    if min_accuracy is not None:
        table = table[table["test_accuracy"] >= min_accuracy]
    rng = np.random.default_rng(seed)
    rows = []
    for (task, arch), group in table.groupby(["task", "arch"], sort=True):
        ids = list(group.sort_values("run_id")["checkpoint_id"])
        run_of = dict(zip(group["checkpoint_id"], group["run_id"], strict=True))
        if len(ids) < 2:
            continue
        order = [ids[i] for i in rng.permutation(len(ids))]
        chosen = [(order[2 * i], order[2 * i + 1]) for i in range(len(order) // 2)]
        chosen = chosen[:pairs_per_group]
        if len(chosen) < pairs_per_group:
            seen = {frozenset(p) for p in chosen}
            candidates = [p for p in itertools.combinations(ids, 2) if frozenset(p) not in seen]
            extra = rng.permutation(len(candidates))[: pairs_per_group - len(chosen)]
            chosen += [candidates[i] for i in extra]
        for k, (a, b) in enumerate(chosen):
            rows.append(
                {
                    "task": task,
                    "arch": arch,
                    "pair": k,
                    "id_a": a,
                    "id_b": b,
                    "run_a": run_of[a],
                    "run_b": run_of[b],
                }
            )
    return pd.DataFrame(rows, columns=["task", "arch", "pair", "id_a", "id_b", "run_a", "run_b"])


def merge_curves(
    zoo: Any,
    pairs: pd.DataFrame | None = None,
    *,
    methods: Sequence[str] | None = None,
    alphas: Sequence[float] = ALPHAS,
    synthesizer: Synthesizer | None = None,
    embeddings: Mapping[str, Tensor] | None = None,
    split: str = "test",
    seed: int = 0,
    fixed_models: Mapping[str, Mapping[str, Tensor]] | None = None,
    midpoint_models: Mapping[str, Sequence[Mapping[str, Tensor]]] | None = None,
    **pair_options: Any,
) -> pd.DataFrame:
    """Accuracy of merged models along ``alphas`` for every method and pair.

    Args:
        zoo: a :class:`weightspace.zoo.Zoo`.
        pairs: from :func:`merge_pairs` (built with ``pair_options`` if omitted).
        methods: merge methods (default: every registered one; ``embedding`` only with a
            ``synthesizer`` whose decoder knows the pair's architecture).
        embeddings: checkpoint id → embedding, a cached table the ``embedding`` method reads
            instead of running the encoder again (missing ids are embedded).
        split: the task split accuracies are measured on.
        fixed_models: name → one model of the pairs' architecture, reported at every ``alpha``
            of every pair (a control that ignores the pair, e.g. the decoded mean code).
        midpoint_models: name → one model per row of ``pairs`` (in order), reported at
            ``alpha = 0.5`` only (e.g. the distilled ensembles).

    Weight matching runs once per pair (its permutation does not depend on ``alpha``) and the
    ``embedding`` method decodes every ``alpha`` of a pair in one batch; both give the same
    models as :func:`weightspace.synthesis.merge.merge`.

    Returns:
        One row per (pair, method, alpha): ``task, arch, pair, id_a, id_b, method, alpha,
        accuracy, agreement_ensemble`` — ``method`` also takes the value ``endpoints``
        (linear interpolation of the two models' accuracies).
    """
    from weightspace.synthesis.rebasin import align, interpolate

    if pairs is None:
        pairs = merge_pairs(zoo, seed=seed, **pair_options)
    if methods is None:
        methods = [m for m in list_merge_methods() if m != "embedding" or synthesizer is not None]
    alphas = [float(a) for a in alphas]
    rows = []
    fixed_models = dict(fixed_models or {})
    midpoint_models = dict(midpoint_models or {})
    for name, models in midpoint_models.items():
        if len(models) != len(pairs):
            raise SynthesisError(f"{name}: {len(models)} midpoint models for {len(pairs)} pairs")
    for index, pair in enumerate(pairs.itertuples(index=False)):
        spec = zoo.spec(pair.id_a)
        state_a, state_b = zoo.state_dict(pair.id_a), zoo.state_dict(pair.id_b)
        x, y = task_split(pair.task, spec, split)
        pred_a, pred_b = predict(spec, state_a, x), predict(spec, state_b, x)
        acc_a, acc_b = _accuracy(pred_a, y), _accuracy(pred_b, y)
        base = {"task": pair.task, "arch": pair.arch, "pair": pair.pair, "id_a": pair.id_a}
        base["id_b"] = pair.id_b
        ensembles = []
        for alpha in alphas:
            ens = ensemble(spec, [state_a, state_b], [1 - alpha, alpha])
            ensembles.append(predict(ens.spec, ens.state_dict, x))
            rows.append(
                {
                    **base,
                    "method": "endpoints",
                    "alpha": alpha,
                    "accuracy": (1 - alpha) * acc_a + alpha * acc_b,
                    "agreement_ensemble": np.nan,
                }
            )
        for method in methods:
            if method == "ensemble":
                preds = ensembles
            elif method == "rebasin":
                aligned = align(spec, state_a, state_b, seed=seed)
                preds = [predict(spec, interpolate(spec, state_a, aligned, a), x) for a in alphas]
            elif method == "embedding":
                if synthesizer is None or not synthesizer.decoder.supports(spec):
                    continue
                z = synthesizer.embed_checkpoints(zoo, [pair.id_a, pair.id_b], embeddings)
                t = torch.tensor(alphas, dtype=z.dtype).unsqueeze(1)
                decoded = synthesizer.decode(torch.lerp(z[0:1], z[1:2], t), spec)
                preds = [predict(spec, state, x) for state in decoded]
            else:
                preds = []
                for alpha in alphas:
                    result = merge(
                        method,
                        spec,
                        state_a,
                        spec,
                        state_b,
                        alpha,
                        synthesizer=synthesizer,
                        seed=seed,
                    )
                    preds.append(predict(result.spec, result.state_dict, x))
            for alpha, pred, pred_ens in zip(alphas, preds, ensembles, strict=True):
                rows.append(
                    {
                        **base,
                        "method": method,
                        "alpha": alpha,
                        "accuracy": _accuracy(pred, y),
                        "agreement_ensemble": _accuracy(pred, pred_ens),
                    }
                )
        for name, state in fixed_models.items():
            pred = predict(spec, state, x)
            for alpha, pred_ens in zip(alphas, ensembles, strict=True):
                rows.append(
                    {
                        **base,
                        "method": name,
                        "alpha": alpha,
                        "accuracy": _accuracy(pred, y),
                        "agreement_ensemble": _accuracy(pred, pred_ens),
                    }
                )
        for name, models in midpoint_models.items():
            pred = predict(spec, models[index], x)
            ens = ensemble(spec, [state_a, state_b])
            rows.append(
                {
                    **base,
                    "method": name,
                    "alpha": 0.5,
                    "accuracy": _accuracy(pred, y),
                    "agreement_ensemble": _accuracy(pred, predict(ens.spec, ens.state_dict, x)),
                }
            )
    return pd.DataFrame(rows)


def summarize_merge_curves(curves: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation and count of accuracy per (task, arch, method, alpha)."""
    return (
        curves.groupby(["task", "arch", "method", "alpha"])
        .agg(
            accuracy_mean=("accuracy", "mean"),
            accuracy_std=("accuracy", "std"),
            agreement_ensemble=("agreement_ensemble", "mean"),
            pairs=("pair", "nunique"),
        )
        .reset_index()
    )


def plot_merge_curves(curves: pd.DataFrame, path: str | Path, *, title: str | None = None) -> Path:
    """Accuracy vs alpha per method (mean ± std over pairs), one panel per (task, arch)."""
    plt = pyplot()

    from weightspace.synthesis.controls import method_kind

    summary = summarize_merge_curves(curves)
    panels = list(summary.groupby(["task", "arch"], sort=True))
    if not panels:
        raise SynthesisError("no merge curves to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, ((task, arch), frame) in zip(axes[0], panels, strict=True):
        for method, line in frame.groupby("method", sort=True):
            line = line.sort_values("alpha")
            kind = method_kind(str(method))
            # references dashed, the control dotted; a one-point method (distill) as a star
            style = {"reference": "--", "control": ":"}.get(kind, "-")
            marker, size = ("*", 12) if len(line) == 1 else ("o", 5)
            ax.plot(
                line["alpha"],
                line["accuracy_mean"],
                style,
                marker=marker,
                markersize=size,
                label=f"{method} ({kind})",
            )
            if kind in ("control",) or len(line) == 1:
                continue
            ax.fill_between(
                line["alpha"],
                line["accuracy_mean"] - line["accuracy_std"].fillna(0),
                line["accuracy_mean"] + line["accuracy_std"].fillna(0),
                alpha=0.15,
            )
        pairs = int(frame["pairs"].max())
        ax.set_title(f"{task} · {arch} ({pairs} pairs)", fontsize=9)
        ax.set_xlabel("α (0: model A, 1: model B)")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)
