r"""Synthesis evaluation: merge curves, reconstructions and sampled models (for ``bench``).

* :func:`merge_pairs` / :func:`merge_curves` — pairs of independently trained models (same task
  and architecture, different runs, each run's final checkpoint); test accuracy along
  :math:`\alpha \in \{0, .25, .5, .75, 1\}` for every merge method, plus the ``endpoints`` line
  :math:`(1-\alpha)\,\mathrm{acc}_A + \alpha\,\mathrm{acc}_B`. Every row also records how often
  the merged model predicts what the output ensemble at the same :math:`\alpha` predicts.
  :func:`summarize_merge_curves` averages over pairs; :func:`plot_merge_curves` draws them.
  (These live in :mod:`weightspace.synthesis.merge_evaluation`, :func:`task_split` and
  :func:`predict` in :mod:`weightspace.synthesis.predictions`; this module re-exports them.)
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

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from weightspace.synthesis.common import SynthesisError
from weightspace.synthesis.decoder import Decoder, Synthesizer
from weightspace.synthesis.merge_evaluation import (
    ALPHAS,
    merge_curves,
    merge_pairs,
    plot_merge_curves,
    summarize_merge_curves,
)
from weightspace.synthesis.predictions import _accuracy, predict, task_split
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


NOISE_SCALES: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2, 2.0, 3.0)


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
