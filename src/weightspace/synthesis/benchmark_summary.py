"""What the synthesis benchmark reports per task: the goals, the summary row, the linear probe.

:func:`goals` compares one task's measured figures with the issue's targets;
:func:`summary_row` is its row of the cross-task table; :func:`linear_probe` asks how much of a
held-out model's function its embedding carries, the decoder aside.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

__all__ = ["MIDPOINT_METHODS", "goals", "linear_probe", "summary_row"]


#: Methods whose midpoints the summary reports, in order: data-free, data-using, references,
#: the control (see :func:`weightspace.synthesis.controls.method_info`).
MIDPOINT_METHODS = (
    "average",
    "rebasin",
    "embedding",
    "distill",
    "ensemble",
    "endpoints",
    "mean-code",
)


def linear_probe(
    zoo: Any,
    task: str,
    fit_ids: Sequence[str],
    held_ids: Sequence[str],
    z_table: Mapping[str, torch.Tensor],
    *,
    ridge: float = 10.0,
) -> dict[str, float]:
    """How much of a held-out model's function its embedding carries, decoder aside.

    A ridge regression from the standardised embedding to the model's class-centred test
    logits, fitted on ``fit_ids`` and applied to ``held_ids``: ``agreement`` is the share of
    test predictions the probe's logits share with the model's own, ``agreement_cross`` the
    share another held-out model's probe shares with it. When the two are equal the embedding
    says nothing model-specific (beyond the group's mean function) that a linear read-out can
    find, and no decoder can be faithful on held-out models either.
    """
    from sklearn.linear_model import Ridge

    from weightspace.synthesis.evaluate import task_split

    if len(fit_ids) < 2 or len(held_ids) < 2:
        return {}
    spec = zoo.spec(fit_ids[0])
    x, _ = task_split(task, spec, "test")

    def logits(cid: str) -> np.ndarray:
        from weightspace.module import to_module

        with torch.no_grad():
            out = to_module(spec, {k: v.float() for k, v in zoo.state_dict(cid).items()})(x)
        return (out - out.mean(-1, keepdim=True)).numpy()

    z_fit = torch.stack([z_table[c] for c in fit_ids]).double().numpy()
    z_held = torch.stack([z_table[c] for c in held_ids]).double().numpy()
    mean, std = z_fit.mean(0), z_fit.std(0) + 1e-6
    target = np.stack([logits(c) for c in fit_ids])  # (M, N, C)
    shape = target.shape[1:]
    model = Ridge(alpha=ridge).fit((z_fit - mean) / std, target.reshape(len(target), -1))
    probe = model.predict((z_held - mean) / std).reshape(len(held_ids), *shape).argmax(-1)
    original = np.stack([logits(c).argmax(-1) for c in held_ids])
    n = len(held_ids)
    return {
        "agreement": float((probe == original).mean()),
        "agreement_cross": float(
            np.mean([(probe[(i + 1) % n] == original[i]).mean() for i in range(n)])
        ),
    }


def _recon_means(frame: pd.DataFrame) -> dict[str, float]:
    if frame.empty:
        return {"models": 0}
    means = {k: float(v) for k, v in frame.mean(numeric_only=True).items()}
    means["models"] = int(len(frame))
    means["accuracy_gap_abs"] = float((frame["decoded_accuracy"] - frame["accuracy"]).abs().mean())
    return means


def goals(entry: Mapping[str, Any]) -> dict[str, bool | None]:
    """The issue's targets for one task, each ``True``/``False`` (``None``: not measured).

    * ``embedding_midpoint_vs_rebasin``: embedding midpoint ≥ weight matching's;
    * ``embedding_midpoint_vs_endpoints``: embedding midpoint ≥ endpoints' mean − 0.01;
    * ``reconstruction_accuracy``: mean |decoded − original accuracy| ≤ 0.01 (held out);
    * ``reconstruction_faithful``: agreement with the own original exceeds agreement of another
      model's reconstruction with it by at least 0.05 (held out);
    * ``samples_beat_noise``: samples more accurate than the noise baseline at equal novelty;
    * ``embedding_endpoints``: a check on the first two: decoding the endpoints' own embeddings
      (α = 0 and 1) gives their accuracy within 0.01 — otherwise the embedding curve measures
      the decoder's generic output rather than a merge of the two models;
    * ``embedding_midpoint_vs_distill``: embedding midpoint ≥ the distilled ensemble's (the
      data-using baseline on the decoder's data and budget; weight matching uses no data);
    * ``decoder_reads_code``: a check: held-out reconstructions agree more with their own
      originals than with the decoded mean code (otherwise the decoder's output barely depends
      on the code).
    """
    mid = entry.get("midpoint", {})
    recon = entry.get("reconstruction", {})
    sampling = entry.get("sampling", {})

    def both(a: Any, b: Any) -> bool:
        return a is not None and b is not None and np.isfinite(a) and np.isfinite(b)

    emb, reb, end = mid.get("embedding"), mid.get("rebasin"), mid.get("endpoints")
    dis = mid.get("distill")
    to_mean = entry.get("mean_code", {}).get("agreement_reconstructions")
    own, cross = recon.get("agreement"), recon.get("agreement_cross")
    gap = recon.get("accuracy_gap_abs")
    gain = sampling.get("accuracy_gain_over_noise")
    curve = {
        (row["method"], float(row["alpha"])): row["accuracy_mean"]
        for row in entry.get("curves", [])
    }
    ends = [
        abs(curve[("embedding", a)] - curve[("endpoints", a)])
        for a in (0.0, 1.0)
        if ("embedding", a) in curve and ("endpoints", a) in curve
    ]
    return {
        "embedding_midpoint_vs_rebasin": bool(emb >= reb) if both(emb, reb) else None,
        "embedding_midpoint_vs_endpoints": bool(emb >= end - 0.01) if both(emb, end) else None,
        "reconstruction_accuracy": bool(gap <= 0.01) if both(gap, 0.0) else None,
        "reconstruction_faithful": bool(own - cross >= 0.05) if both(own, cross) else None,
        "samples_beat_noise": bool(gain > 0) if both(gain, 0.0) else None,
        "embedding_endpoints": bool(max(ends) <= 0.01) if ends else None,
        "embedding_midpoint_vs_distill": bool(emb >= dis) if both(emb, dis) else None,
        "decoder_reads_code": bool(own > to_mean) if both(own, to_mean) else None,
    }


def summary_row(entry: Mapping[str, Any]) -> dict[str, Any]:
    """One row of the per-task summary table."""
    mid = entry.get("midpoint", {})
    recon = entry.get("reconstruction", {})
    sampling = entry.get("sampling", {})
    decoder = entry.get("decoder", {})
    row: dict[str, Any] = {"task": entry["task"], "arch": entry["arch"], "pairs": entry["pairs"]}
    for method in MIDPOINT_METHODS:
        row[f"mid {method}"] = mid.get(method, float("nan"))
    row.update(
        {
            "recon original": recon.get("accuracy", float("nan")),
            "recon decoded": recon.get("decoded_accuracy", float("nan")),
            "agree own": recon.get("agreement", float("nan")),
            "agree cross": recon.get("agreement_cross", float("nan")),
            "agree mean-code": entry.get("mean_code", {}).get(
                "agreement_reconstructions", float("nan")
            ),
            "sample acc": sampling.get("accuracy_mean", float("nan")),
            "sample novelty": sampling.get("novelty_mean", float("nan")),
            "noise acc @novelty": sampling.get("noise_accuracy_at_equal_novelty", float("nan")),
            "decoder steps": decoder.get("steps", 0),
            "decoder s": decoder.get("seconds", float("nan")),
            "distill s": entry.get("distill", {}).get("seconds", float("nan")),
        }
    )
    return row
