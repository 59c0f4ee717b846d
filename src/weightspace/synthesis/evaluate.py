r"""Synthesis evaluation: merge curves, reconstructions and sampled models (for ``bench``).

* :func:`merge_pairs` / :func:`merge_curves` — pairs of independently trained models (same task
  and architecture, different runs, each run's final checkpoint); test accuracy along
  :math:`\alpha \in \{0, .25, .5, .75, 1\}` for every merge method, plus the ``endpoints`` line
  :math:`(1-\alpha)\,\mathrm{acc}_A + \alpha\,\mathrm{acc}_B`. Every row also records how often
  the merged model predicts what the output ensemble at the same :math:`\alpha` predicts.
  :func:`summarize_merge_curves` averages over pairs; :func:`plot_merge_curves` draws them.
* :func:`reconstruction_metrics` — encode → decode each model; accuracy of both and agreement.
* :func:`sample_metrics` — sampled models against the zoo and against the "zoo model + noise"
  baseline at equal *novelty*, the fraction of test predictions that differ from the nearest
  zoo model:

  .. math::
      \mathrm{novelty}(f) = 1 - \max_{g \in \mathrm{zoo}}
          \frac{1}{N} \sum_{n} [\arg\max f(x_n) = \arg\max g(x_n)].

  The noise baseline adds :math:`\mathcal{N}(0, (\sigma s_k)^2)` to each tensor ``k`` of a pool
  model (:math:`s_k` its standard deviation) for a grid of :math:`\sigma`; its accuracy as a
  function of novelty is interpolated at each sample's novelty.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from weightspace.module import to_module
from weightspace.spec import NetworkSpec
from weightspace.synthesis.common import SynthesisError, pyplot, save_figure
from weightspace.synthesis.decoder import Decoder, Synthesizer
from weightspace.synthesis.merge import ensemble, list_merge_methods, merge
from weightspace.synthesis.sample import SampledModel

__all__ = [
    "ALPHAS",
    "merge_pairs",
    "merge_curves",
    "summarize_merge_curves",
    "plot_merge_curves",
    "reconstruction_metrics",
    "sample_metrics",
    "task_split",
    "predict",
]

ALPHAS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
NOISE_SCALES: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2, 2.0, 3.0)


@functools.lru_cache(maxsize=64)
def _split_cached(task: str, split: str, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    from weightspace.zoo.tasks import get_task

    t = get_task(task)
    x = t.features[split]
    return x.reshape(x.shape[0], *shape), t.labels[split]


def task_split(task: str, spec: NetworkSpec, split: str = "test") -> tuple[Tensor, Tensor]:
    """Inputs shaped for ``spec`` and labels of one split of a registered task."""
    return _split_cached(task, split, tuple(spec.input_shape))


@torch.no_grad()
def predict(spec: NetworkSpec, state: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """Class predictions ``(N,)`` of one model (float32)."""
    module = to_module(spec, {k: v.float() for k, v in state.items()})
    return module(x).argmax(-1)


def _accuracy(predictions: Tensor, labels: Tensor) -> float:
    return float((predictions == labels).float().mean())


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


def reconstruction_metrics(
    synthesizer: Synthesizer | Decoder,
    zoo: Any,
    ids: Sequence[str],
    *,
    split: str = "test",
    embeddings: Mapping[str, Tensor] | None = None,
) -> pd.DataFrame:
    """Encode → decode each checkpoint and compare with the original.

    Columns: ``id, task, arch, accuracy, decoded_accuracy, agreement`` (fraction of equal
    predictions of original and reconstruction), and two controls that tell a faithful
    reconstruction from a generic good network: ``agreement_other`` (the original against
    another zoo model of the list, the next one of the same task and architecture) and
    ``agreement_cross`` (the original against the *other* model's reconstruction).

    ``embeddings`` (checkpoint id → embedding) is a cached table read instead of the encoder.
    A bare :class:`~weightspace.synthesis.decoder.Decoder` (one fitted on other codes than an
    encoder's, ``fit_decoder(None, ...)``) reads every checkpoint's code from this table.
    """
    decoder = synthesizer.decoder if isinstance(synthesizer, Synthesizer) else synthesizer
    table = zoo.table.set_index("checkpoint_id")
    entries = []
    ids = [c for c in ids if decoder.supports(zoo.spec(c))]
    if isinstance(synthesizer, Synthesizer):
        z_all = synthesizer.embed_checkpoints(zoo, ids, embeddings) if ids else None
    else:
        missing = [c for c in ids if embeddings is None or c not in embeddings]
        if missing:
            raise SynthesisError(
                f"a decoder without its encoder needs every checkpoint's code in `embeddings`; "
                f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}"
            )
        z_all = torch.stack([torch.as_tensor(embeddings[c]).float() for c in ids]) if ids else None
    for i, cid in enumerate(ids):
        spec, state = zoo.spec(cid), zoo.state_dict(cid)
        task = str(table.loc[cid, "task"])
        x, y = task_split(task, spec, split)
        (decoded,) = decoder.decode(z_all[i : i + 1], spec)
        entries.append(
            {
                "id": cid,
                "task": task,
                "arch": str(table.loc[cid, "arch"]),
                "labels": y,
                "pred": predict(spec, state, x),
                "pred_decoded": predict(spec, decoded, x),
            }
        )
    rows = []
    for i, e in enumerate(entries):
        same = [
            o
            for o in entries[i + 1 :] + entries[:i]
            if o["task"] == e["task"] and o["arch"] == e["arch"]
        ]
        other = same[0] if same else None
        rows.append(
            {
                "id": e["id"],
                "task": e["task"],
                "arch": e["arch"],
                "accuracy": _accuracy(e["pred"], e["labels"]),
                "decoded_accuracy": _accuracy(e["pred_decoded"], e["labels"]),
                "agreement": _accuracy(e["pred_decoded"], e["pred"]),
                "agreement_other": np.nan if other is None else _accuracy(other["pred"], e["pred"]),
                "agreement_cross": (
                    np.nan if other is None else _accuracy(other["pred_decoded"], e["pred"])
                ),
            }
        )
    return pd.DataFrame(rows)


def _novelty(pred: Tensor, reference: Tensor) -> float:
    """1 − the largest agreement of ``pred (N,)`` with a row of ``reference (R, N)``."""
    return 1.0 - float((reference == pred.unsqueeze(0)).float().mean(1).max())


def sample_metrics(
    samples: Sequence[SampledModel],
    zoo: Any,
    reference_ids: Sequence[str],
    *,
    noise_scales: Sequence[float] = NOISE_SCALES,
    noise_models: int = 20,
    split: str = "test",
    seed: int = 0,
    return_per_sample: bool = False,
) -> dict[str, Any]:
    """Accuracy and novelty of sampled models against the zoo and the noise baseline.

    Args:
        samples: from :func:`weightspace.synthesis.sample.sample_models` (one task and spec).
        zoo: the zoo they were sampled from.
        reference_ids: zoo checkpoints that count as "the zoo" for novelty (e.g. every final
            checkpoint of the task and architecture) — the pool should be among them.
        noise_scales: relative noise levels :math:`\\sigma` of the baseline.
        noise_models: pool models the baseline perturbs (per noise level).

    Returns:
        A dict: ``samples``, ``accuracy_mean/std/median``, ``novelty_mean``, ``zoo_accuracy_mean``
        (reference models), ``pool_accuracy_mean`` (the samples' anchors), ``noise_curve``
        (list of ``{sigma, accuracy, novelty}``), ``noise_accuracy_at_equal_novelty`` and
        ``accuracy_gain_over_noise`` (mean over samples of accuracy minus the baseline's
        interpolated accuracy at the sample's novelty), ``beyond_noise_range`` (share of samples
        more novel than the noisiest baseline point, compared with that point); with ``return_per_sample`` also
        ``per_sample`` (list of ``{accuracy, novelty, noise_accuracy, anchor}``).
    """
    if not samples:
        raise SynthesisError("no samples to evaluate")
    keys = {(s.task, s.spec) for s in samples}
    if len(keys) != 1:
        raise SynthesisError("sample_metrics takes samples of one task and architecture")
    task, spec = next(iter(keys))
    x, y = task_split(task, spec, split)
    reference_preds, reference_acc = [], []
    for cid in reference_ids:
        if zoo.spec(cid) != spec:
            continue
        pred = predict(spec, zoo.state_dict(cid), x)
        reference_preds.append(pred)
        reference_acc.append(_accuracy(pred, y))
    if not reference_preds:
        raise SynthesisError("no reference model shares the samples' architecture")
    reference = torch.stack(reference_preds)  # (R, N)
    accuracy, novelty = [], []
    for sample in samples:
        pred = predict(spec, sample.state_dict, x)
        accuracy.append(_accuracy(pred, y))
        novelty.append(_novelty(pred, reference))
    anchors = sorted({s.anchor for s in samples})
    pool_acc = [_accuracy(predict(spec, zoo.state_dict(a), x), y) for a in anchors]

    generator = torch.Generator().manual_seed(seed)
    chosen = [anchors[i % len(anchors)] for i in range(noise_models)]
    curve = []
    for sigma in noise_scales:
        accs, novs = [], []
        for cid in chosen:
            state = zoo.state_dict(cid)
            noisy = {
                k: v
                + sigma
                * v.float().std().nan_to_num(0.0)
                * torch.randn(v.shape, generator=generator)
                for k, v in state.items()
            }
            pred = predict(spec, noisy, x)
            accs.append(_accuracy(pred, y))
            novs.append(_novelty(pred, reference))
        curve.append(
            {
                "sigma": float(sigma),
                "accuracy": float(np.mean(accs)),
                "novelty": float(np.mean(novs)),
            }
        )
    curve_novelty = np.array([0.0] + [c["novelty"] for c in curve])
    curve_accuracy = np.array([float(np.mean(pool_acc))] + [c["accuracy"] for c in curve])
    order = np.argsort(curve_novelty, kind="stable")
    baseline = np.interp(np.array(novelty), curve_novelty[order], curve_accuracy[order])
    out: dict[str, Any] = {
        "task": task,
        "arch": spec.summary(),
        "samples": len(samples),
        "accuracy_mean": float(np.mean(accuracy)),
        "accuracy_std": float(np.std(accuracy)),
        "accuracy_median": float(np.median(accuracy)),
        "novelty_mean": float(np.mean(novelty)),
        "zoo_accuracy_mean": float(np.mean(reference_acc)),
        "pool_accuracy_mean": float(np.mean(pool_acc)),
        "noise_curve": curve,
        "noise_accuracy_at_equal_novelty": float(np.mean(baseline)),
        "accuracy_gain_over_noise": float(np.mean(np.array(accuracy) - baseline)),
        # samples more novel than the noisiest baseline: compared with its last (most accurate
        # such) point, which favours the baseline
        "beyond_noise_range": float(np.mean(np.array(novelty) > curve_novelty.max())),
    }
    if return_per_sample:
        out["per_sample"] = [
            {"accuracy": a, "novelty": n, "noise_accuracy": float(b), "anchor": s.anchor}
            for a, n, b, s in zip(accuracy, novelty, baseline, samples, strict=True)
        ]
    return out
