r"""The synthesis section of ``weightspace bench``: every task of a zoo, one architecture each.

Per task, on one (task, architecture) group:

1. **Group.** The architecture is ``task=arch`` when given; otherwise, among the task's
   architectures whose models can be merged by every method (the ensemble network must be exact)
   and that have :data:`ENOUGH_HELD_OUT` held-out final checkpoints above the accuracy threshold
   (or as many as the best-stocked one), the one whose held-out models are most accurate. The
   threshold defaults to halfway from chance to the group's best final test
   accuracy, so a task where good models reach 0.6 is not measured against 0.5 like one where
   they reach 0.98.
2. **Embedding table.** The frozen encoder embeds every checkpoint the section needs once; the
   decoder's training, the ``embedding`` merges, the reconstructions and the sampling pool read
   this table.
3. **Decoder.** Fitted on the encoder's *training* runs — every checkpoint of them (not only
   the final ones) at or above a lower threshold, halfway from chance to the group's threshold
   (:data:`DECODER_CHECKPOINTS`) — early-stopped on the final checkpoints of a few of those runs
   held back (agreement of reconstructions with originals), for ``decoder_steps`` steps (the
   bound; a time limit is only an optional safety cap, off by default, so the figures do not
   move with the machine's load).
4. **Merging.** ``pairs`` pairs of held-out final checkpoints (disjoint pairs first, then distinct
   random pairs when the group has fewer than ``2 * pairs`` models): test accuracy along
   :math:`\alpha \in \{0, .25, .5, .75, 1\}` for every method, the endpoints and the ensemble.
   Every method has a kind (:func:`weightspace.synthesis.controls.method_info`): data-free
   (averaging, weight matching), data-using (the embedding merge; ``distill``, the pair's output
   ensemble distilled into one network on the decoder's data, steps and compute — at α = 0.5
   only), references (ensemble, endpoints) and the ``mean-code`` control (the decoder's output
   for the mean code of its training models, the same network at every α of every pair).
5. **Reconstructions** of every held-out final checkpoint above the threshold (and of some
   decoder-training models, to tell generalisation from capacity): accuracy of original and
   decoded model, agreement with the original, and the controls (another model's reconstruction
   against this original; two originals against each other).
6. **Sampling.** ``samples`` models from a KDE over the training runs' best embeddings, against
   the zoo and the "zoo model + noise" baseline at equal novelty.

Every figure is measured; :func:`goals` compares them with the issue's targets, and the report
says where a target is missed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from weightspace.errors import WeightspaceError
from weightspace.synthesis.common import SynthesisError
from weightspace.synthesis.figures import plot_reconstructions, plot_sampling

__all__ = [
    "SynthesisGroup",
    "choose_groups",
    "run_task",
    "summary_row",
    "goals",
    "plot_sampling",
    "plot_reconstructions",
]

#: Held-out models an automatically chosen architecture should have: 11 give 55 distinct pairs.
ENOUGH_HELD_OUT = 11

#: Which checkpoints of the training runs the decoder fits: ``"all"`` (every epoch at or above
#: halfway from chance to the group's threshold; about five times as many models as ``"final"``,
#: the runs' last checkpoints).
DECODER_CHECKPOINTS = "all"

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


@dataclass
class SynthesisGroup:
    """The (task, architecture) group synthesis is measured on for one task.

    Attributes:
        task, arch: the group.
        threshold: minimum final test accuracy of the models merged and reconstructed.
        held_out: final checkpoints of held-out runs (validation + test) above the threshold.
        train: final checkpoints of the encoder's training runs (any accuracy).
        how: how the architecture was chosen (a phrase for the report).
    """

    task: str
    arch: str
    threshold: float
    held_out: list[str]
    train: list[str]
    how: str


def _chance(task: str) -> float:
    """Chance accuracy of ``task``; 0 for a task weightspace does not know (no threshold lift)."""
    from weightspace.evaluate.tasks import chance_level

    level = chance_level(task)
    return 0.0 if np.isnan(level) else level


def _finals(table: pd.DataFrame) -> pd.DataFrame:
    last = table.groupby("run_id")["epoch"].transform("max")
    return table[table["epoch"] == last]


def _mergeable(spec: Any) -> bool:
    from weightspace.synthesis.merge import ensemble_spec

    try:
        ensemble_spec(spec)
    except SynthesisError:
        return False
    return True


def choose_groups(
    zoo: Any,
    splits: Mapping[str, Sequence[str]],
    *,
    tasks: Sequence[str] = (),
    archs: Mapping[str, str] | None = None,
    min_accuracy: float | None = None,
) -> tuple[list[SynthesisGroup], dict[str, str]]:
    """One group per task (see the module docstring).

    Args:
        zoo: the zoo.
        splits: the encoder's run split (``train``, ``val``, ``test`` run ids).
        tasks: the tasks (default: every task of the zoo).
        archs: task → architecture, overriding the automatic choice.
        min_accuracy: an absolute threshold for every task instead of the relative default.

    Returns:
        The groups, and task → reason for the tasks left out.
    """
    table = zoo.table.copy()
    table["run_id"] = table["run_id"].astype(str)
    table["checkpoint_id"] = table["checkpoint_id"].astype(str)
    archs = dict(archs or {})
    known = sorted(table["task"].astype(str).unique())
    unknown = [t for t in [*tasks, *archs] if t not in known]
    if unknown:
        raise SynthesisError(f"the zoo has no task(s) {sorted(set(unknown))}; it holds {known}")
    train_runs = set(map(str, splits["train"]))
    held_runs = set(map(str, splits.get("val", []))) | set(map(str, splits.get("test", [])))
    finals = _finals(table)
    groups, skipped = [], {}
    for task in tasks or known:
        rows = finals[finals["task"].astype(str) == task]
        candidates = []
        for arch, group in rows.groupby(rows["arch"].astype(str), sort=True):
            if task in archs and arch != archs[task]:
                continue
            if task not in archs and not _mergeable(zoo.spec(group["checkpoint_id"].iloc[0])):
                continue
            chance = _chance(task)
            best = float(group["test_accuracy"].max())
            threshold = (
                float(min_accuracy) if min_accuracy is not None else chance + 0.5 * (best - chance)
            )
            held = group[group["run_id"].isin(held_runs) & (group["test_accuracy"] >= threshold)]
            train = group[group["run_id"].isin(train_runs)]
            candidates.append(
                (
                    len(held),
                    float(held["test_accuracy"].mean()) if len(held) else 0.0,
                    arch,
                    threshold,
                    list(held.sort_values("run_id")["checkpoint_id"]),
                    list(train.sort_values("run_id")["checkpoint_id"]),
                )
            )
        if not candidates:
            skipped[task] = (
                f"the zoo has no {archs[task]} models on {task}"
                if task in archs
                else "no architecture of this task can be merged by every method"
            )
            continue
        # enough held-out models for the pairs (or as many as any architecture has), then the
        # most accurate of those: synthesis is about good models
        enough = min(ENOUGH_HELD_OUT, max(c[0] for c in candidates))
        n_held, _, arch, threshold, held, train = max(
            (c for c in candidates if c[0] >= enough), key=lambda c: (c[1], c[0], c[2])
        )
        if n_held < 2 or len(train) < 2:
            skipped[task] = (
                f"{arch}: {n_held} held-out models above the threshold {threshold:.3f} and "
                f"{len(train)} training models; too few to merge and to fit a decoder"
            )
            continue
        how = (
            "given"
            if task in archs
            else f"the most accurate held-out models among the {len(candidates)} mergeable "
            f"architectures with at least {enough} held-out models above their threshold"
        )
        groups.append(SynthesisGroup(task, arch, threshold, held, train, how))
    return groups, skipped


def _embedding_table(encoder: Any, zoo: Any, ids: Sequence[str]) -> dict[str, torch.Tensor]:
    ids = list(dict.fromkeys(ids))
    z = torch.as_tensor(
        np.asarray(encoder.embed([(zoo.spec(c), zoo.state_dict(c)) for c in ids])),
        dtype=torch.float32,
    )
    return dict(zip(ids, z, strict=True))


def run_task(
    group: SynthesisGroup,
    zoo: Any,
    encoder: Any,
    *,
    pairs: int = 50,
    samples: int = 100,
    decoder_steps: int = 1500,
    decoder_time_limit: float = 0.0,
    decoder_validation_runs: float = 0.15,
    decoder_checkpoints: str | None = None,
    device: str = "cpu",
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """Measure merging, reconstruction and sampling on one group.

    ``decoder_checkpoints``: ``"final"`` or ``"all"`` (default :data:`DECODER_CHECKPOINTS`),
    the training runs' checkpoints the decoder fits.

    Returns:
        The JSON-able entry for ``results.json`` and the frames behind it (``curves``,
        ``reconstruction``, ``reconstruction_train``, ``sampling`` — the samples' accuracy and
        novelty — and ``noise_curve``), for plots.
    """
    from weightspace.synthesis.controls import (
        distilled_midpoints,
        mean_code_control,
        method_info,
    )
    from weightspace.synthesis.decoder import (
        DecoderConfig,
        DecoderExample,
        Synthesizer,
        fit_decoder,
    )
    from weightspace.synthesis.evaluate import (
        merge_curves,
        merge_pairs,
        reconstruction_metrics,
        sample_metrics,
        summarize_merge_curves,
    )
    from weightspace.synthesis.sample import sample_models

    started = time.perf_counter()
    table = zoo.table.set_index(zoo.table["checkpoint_id"].astype(str))
    run_of = {c: str(table.loc[c, "run_id"]) for c in group.train}
    runs = sorted(set(run_of.values()))
    order = np.random.default_rng(seed).permutation(len(runs))
    n_val = min(max(2, round(decoder_validation_runs * len(runs))), len(runs) // 4)
    val_runs = {runs[i] for i in order[:n_val]}
    fit_ids = [c for c in group.train if run_of[c] not in val_runs]
    val_ids = [c for c in group.train if run_of[c] in val_runs]
    decoder_ids = fit_ids
    which = decoder_checkpoints or DECODER_CHECKPOINTS
    if which not in ("final", "all"):
        raise SynthesisError(f"decoder_checkpoints must be 'final' or 'all', got {which!r}")
    if which == "all":
        chance = _chance(group.task)
        lower = chance + 0.5 * (group.threshold - chance)
        fit_runs = {run_of[c] for c in fit_ids}
        rows = table[
            (table["task"].astype(str) == group.task)
            & (table["arch"].astype(str) == group.arch)
            & table["run_id"].astype(str).isin(fit_runs)
        ]
        finals = set(fit_ids)
        extra = [
            str(c)
            for c, accuracy in zip(rows.index, rows["test_accuracy"], strict=True)
            if str(c) not in finals and np.isfinite(accuracy) and accuracy >= lower
        ]
        decoder_ids = [*fit_ids, *sorted(extra)]

    t = time.perf_counter()
    z_table = _embedding_table(encoder, zoo, [*decoder_ids, *val_ids, *group.held_out])
    embed_seconds = time.perf_counter() - t

    def examples(ids: Sequence[str]) -> list[DecoderExample]:
        return [
            DecoderExample(zoo.spec(c), zoo.state_dict(c), group.task, str(table.loc[c, "run_id"]))
            for c in ids
        ]

    log(
        f"  {group.task} / {group.arch}: decoder on {len(decoder_ids)} training models "
        f"(early stopping on {len(val_ids)})"
    )
    t = time.perf_counter()
    config = DecoderConfig(steps=decoder_steps, time_limit=decoder_time_limit, seed=seed)
    decoder = fit_decoder(
        encoder,
        examples(decoder_ids),
        config,
        embeddings=torch.stack([z_table[c] for c in decoder_ids]),
        validation=examples(val_ids) or None,
        validation_embeddings=torch.stack([z_table[c] for c in val_ids]) if val_ids else None,
        device=device,
    )
    decoder_seconds = time.perf_counter() - t
    steps_run = max((int(r["step"]) for r in decoder.log if "step" in r), default=0)
    best = next((r for r in reversed(decoder.log) if "best_step" in r), {})
    capped = any(r.get("stopped_by_time_limit") for r in decoder.log)
    synthesizer = Synthesizer(encoder, decoder)

    t = time.perf_counter()
    pair_table = merge_pairs(
        zoo,
        pairs_per_group=pairs,
        runs=[str(table.loc[c, "run_id"]) for c in group.held_out],
        tasks=[group.task],
        archs=[group.arch],
        seed=seed,
    )
    pair_table = pair_table[
        pair_table["id_a"].astype(str).isin(group.held_out)
        & pair_table["id_b"].astype(str).isin(group.held_out)
    ]
    spec = zoo.spec(group.held_out[0])
    mean_state, mean_code = mean_code_control(
        decoder,
        spec,
        group.task,
        torch.stack([z_table[c] for c in decoder_ids]),
        held_codes=torch.stack([z_table[c] for c in group.held_out]),
        pair_codes=torch.stack(
            [
                torch.stack([z_table[str(a)], z_table[str(b)]])
                for a, b in zip(pair_table["id_a"], pair_table["id_b"], strict=True)
            ]
        )
        if len(pair_table)
        else None,
    )
    students, distill_budget = distilled_midpoints(
        zoo, pair_table, group.task, config, max(steps_run, 1), seed=seed, device=device
    )
    curves = merge_curves(
        zoo,
        pair_table,
        synthesizer=synthesizer,
        embeddings=z_table,
        seed=seed,
        fixed_models={"mean-code": mean_state},
        midpoint_models={"distill": students} if students else None,
    )
    merge_seconds = time.perf_counter() - t
    summary = summarize_merge_curves(curves)
    methods = {str(m): method_info(str(m)) for m in dict.fromkeys(summary["method"])}
    summary["kind"] = [methods[str(m)]["kind"] for m in summary["method"]]
    summary["uses_data"] = [methods[str(m)]["uses_data"] for m in summary["method"]]

    t = time.perf_counter()
    recon = reconstruction_metrics(synthesizer, zoo, group.held_out, embeddings=z_table)
    good_fit = [c for c in fit_ids if float(table.loc[c, "test_accuracy"]) >= group.threshold]
    recon_train = reconstruction_metrics(synthesizer, zoo, good_fit[:20], embeddings=z_table)
    probe = linear_probe(zoo, group.task, fit_ids, group.held_out, z_table)
    recon_seconds = time.perf_counter() - t

    t = time.perf_counter()
    train_runs = sorted({str(table.loc[c, "run_id"]) for c in group.train})
    drawn = sample_models(
        synthesizer,
        zoo,
        samples,
        task=group.task,
        arch=group.arch,
        runs=train_runs,
        seed=seed,
        embeddings=z_table,
    )
    everything = table[
        (table["task"].astype(str) == group.task) & (table["arch"].astype(str) == group.arch)
    ]
    sampled = sample_metrics(drawn, zoo, list(everything.index), seed=seed, return_per_sample=True)
    sample_seconds = time.perf_counter() - t

    distinct = len(set(pair_table["id_a"]) | set(pair_table["id_b"]))
    midpoint = {
        str(row.method): float(row.accuracy_mean)
        for row in summary[np.isclose(summary["alpha"], 0.5)].itertuples(index=False)
    }
    entry: dict[str, Any] = {
        "task": group.task,
        "arch": group.arch,
        "arch_choice": group.how,
        "threshold": group.threshold,
        "held_out_models": len(group.held_out),
        "pairs": int(len(pair_table)),
        "pairs_requested": int(pairs),
        "distinct_models_in_pairs": int(distinct),
        "disjoint_pairs": bool(distinct == 2 * len(pair_table)),
        "midpoint": midpoint,
        "methods": methods,
        "curves": summary.to_dict(orient="records"),
        "mean_code": mean_code,
        "distill": distill_budget,
        "decoder": {
            "steps": steps_run,
            "steps_requested": int(decoder_steps),
            "best_step": int(best.get("best_step", steps_run)),
            "val_agreement": best.get("val_agreement"),
            "seconds": decoder_seconds,
            "time_limit": decoder_time_limit,
            "stopped_by_time_limit": capped,
            "batch_size": config.batch_size,
            "inputs_per_step": config.inputs_per_step,
            "train_models": len(decoder_ids),
            "train_checkpoints": which,
            "validation_models": len(val_ids),
            "final_distill": next(
                (r["distill"] for r in reversed(decoder.log) if "distill" in r), None
            ),
        },
        "reconstruction": _recon_means(recon),
        "reconstruction_train": _recon_means(recon_train),
        "embedding_probe": probe,
        "sampling": {k: v for k, v in sampled.items() if k not in ("per_sample",)},
        "seconds": {
            "embedding table": embed_seconds,
            "decoder": decoder_seconds,
            "merging": merge_seconds,
            "distillation": distill_budget.get("seconds", 0.0),
            "reconstruction": recon_seconds,
            "sampling": sample_seconds,
            "total": time.perf_counter() - started,
        },
    }
    entry["goals"] = goals(entry)
    frames = {
        "curves": curves,
        "reconstruction": recon,
        "reconstruction_train": recon_train,
        "sampling": pd.DataFrame(sampled["per_sample"]),
        "noise_curve": pd.DataFrame(sampled["noise_curve"]),
    }
    return entry, frames


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


def run_section(
    zoo: Any,
    encoder: Any,
    splits: Mapping[str, Sequence[str]],
    out: str | Path,
    *,
    tasks: Sequence[str] = (),
    archs: Mapping[str, str] | None = None,
    min_accuracy: float | None = None,
    pairs: int = 50,
    samples: int = 100,
    decoder_steps: int = 1500,
    decoder_time_limit: float = 0.0,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every task: :func:`choose_groups`, then :func:`run_task`; plots into ``out``.

    Returns:
        ``{"tasks": {task: entry}, "skipped": {task: reason}, "summary": [rows], "plots":
        [file names], "seconds": total}``.
    """
    from weightspace.synthesis.evaluate import plot_merge_curves

    started = time.perf_counter()
    out = Path(out)
    groups, skipped = choose_groups(
        zoo, splits, tasks=tasks, archs=archs, min_accuracy=min_accuracy
    )
    entries: dict[str, Any] = {}
    frames: dict[str, dict[str, pd.DataFrame]] = {}
    for group in groups:
        try:
            entry, frame = run_task(
                group,
                zoo,
                encoder,
                pairs=pairs,
                samples=samples,
                decoder_steps=decoder_steps,
                decoder_time_limit=decoder_time_limit,
                device=device,
                log=log,
            )
        except WeightspaceError as exc:
            skipped[group.task] = str(exc).split("\n")[0][:300]
            continue
        entries[group.task], frames[group.task] = entry, frame
        mid = entry["midpoint"]
        log(
            f"  {group.task}: {entry['pairs']} pairs, midpoints "
            + ", ".join(f"{m} {mid[m]:.3f}" for m in MIDPOINT_METHODS if m in mid)
            + f" ({entry['seconds']['total']:.0f} s)"
        )
    plots = []
    if frames:
        curves = pd.concat([f["curves"] for f in frames.values()], ignore_index=True)
        if not curves.empty:
            plot_merge_curves(curves, out / "merge_curves.png", title="test accuracy along α")
            plots.append("merge_curves.png")
        plot_reconstructions(frames, out / "reconstructions.png")
        plots.append("reconstructions.png")
        try:
            plot_sampling(frames, out / "sampling.png")
            plots.append("sampling.png")
        except SynthesisError:
            pass
    return {
        "tasks": entries,
        "skipped": skipped,
        "summary": [summary_row(e) for e in entries.values()],
        "plots": plots,
        "seconds": time.perf_counter() - started,
    }
