r"""One (task, architecture) group of the synthesis benchmark: :func:`run_task`.

Steps 2–6 of the section (:mod:`weightspace.synthesis.benchmark`), on the group that step 1,
:func:`~weightspace.synthesis.benchmark_groups.choose_groups`, picked:

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

Every figure is measured; :func:`~weightspace.synthesis.benchmark_summary.goals` compares them
with the issue's targets.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from weightspace.synthesis.benchmark_groups import SynthesisGroup, _chance
from weightspace.synthesis.benchmark_summary import _recon_means, goals, linear_probe
from weightspace.synthesis.common import SynthesisError

__all__ = ["DECODER_CHECKPOINTS", "run_task"]


#: Which checkpoints of the training runs the decoder fits: ``"all"`` (every epoch at or above
#: halfway from chance to the group's threshold; about five times as many models as ``"final"``,
#: the runs' last checkpoints).
DECODER_CHECKPOINTS = "all"


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
