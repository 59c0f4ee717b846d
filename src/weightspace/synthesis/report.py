"""The synthesis section of the bench report, in Markdown, from ``results["synthesis"]`` alone.

:func:`synthesis_lines` writes one table per kind of measurement: merging at the midpoint (one
table per kind of method — data-free, data-using, references and the control), reconstructions,
sampling and the training budgets; then the goals, and per task the curve along α with its rows
grouped by kind. Figures (:data:`FIGURE_CAPTIONS`) sit under their tables, with captions.
Every number is read from the section's entries (see
:func:`weightspace.synthesis.benchmark.run_task`); nothing is typed in. The cross-task tables
are :mod:`weightspace.synthesis.report_tables`; this module adds the per-task sections and
places the figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from weightspace.synthesis.report_tables import (
    ALPHAS,
    GOAL_NAMES,
    KIND_TITLES,
    METHOD_LABELS,
    budget_table,
    curve_by_method,
    goal_table,
    group_name,
    markdown_table,
    method_kind,
    midpoint_tables,
    number,
    ordered_methods,
    reconstruction_table,
    sampling_table,
)

__all__ = ["FIGURE_CAPTIONS", "GOAL_NAMES", "KIND_TITLES", "figure_lines", "synthesis_lines"]


def _task_lines(task: str, entry: Mapping[str, Any]) -> list[str]:
    decoder = entry.get("decoder", {})
    pairs_note = ""
    if entry.get("pairs", 0) < entry.get("pairs_requested", 0):
        pairs_note = (
            f" — **fewer than the {entry['pairs_requested']} pairs asked for**: the zoo has only "
            f"{entry.get('held_out_models')} held-out models above the threshold"
        )
    elif not entry.get("disjoint_pairs", True):
        pairs_note = (
            f" (the pairs share models: {entry.get('distinct_models_in_pairs')} distinct "
            "held-out models)"
        )
    cap = decoder.get("time_limit") or 0
    lines = [
        f"### {group_name(task, entry)}",
        "",
        f"Architecture: {entry.get('arch_choice')}. Accuracy threshold "
        f"{number(entry.get('threshold'))}; {entry.get('pairs')} pairs{pairs_note}. Decoder: "
        f"{decoder.get('steps')} of {decoder.get('steps_requested')} steps in "
        f"{number(decoder.get('seconds'), 1)} s ("
        + (f"safety cap {number(float(cap), 0)} s" if cap else "no time cap")
        + f"), kept step {decoder.get('best_step')} (validation agreement "
        f"{number(decoder.get('val_agreement'))}), trained on {decoder.get('train_models')} "
        "models.",
        "",
    ]
    by_method = curve_by_method(entry)
    grouped: dict[str, list[str]] = {}
    for method in by_method:
        grouped.setdefault(method_kind(entry, method)[0], []).append(method)
    order = [*KIND_TITLES]
    header = ["kind", "method", *(f"α={a:g}" for a in ALPHAS)]
    rows = []
    for kind in sorted(grouped, key=lambda k: order.index(k) if k in order else 99):
        for method in ordered_methods(grouped[kind]):
            values = by_method[method]
            rows.append([kind, METHOD_LABELS.get(method, method), *(values.get(a) for a in ALPHAS)])
    lines += markdown_table(header, rows)
    notes = []
    if "distill" in by_method:
        notes.append(
            "`distilled ensemble` is measured at α = 0.5 only (one student per pair, distilled "
            "from the pair's output ensemble)"
        )
    if "mean-code" in by_method:
        notes.append(
            "`decoded mean code` is one network for the whole group (the decoder's output for the "
            "mean code of its training models), shown at every α"
        )
    if notes:
        lines += ["", "; ".join(notes) + "."]
    emb, ends = by_method.get("embedding", {}), by_method.get("endpoints", {})
    if {0.0, 1.0} <= set(emb) and {0.0, 1.0} <= set(ends):
        off = max(abs(emb[a] - ends[a]) for a in (0.0, 1.0))
        lines += [
            "",
            f"Decoding the endpoints' own embeddings (α = 0, 1) gives {number(emb[0.0])} and "
            f"{number(emb[1.0])} against the models' {number(ends[0.0])} and "
            f"{number(ends[1.0])}"
            + (
                ": the embedding curve is the decoder's output near the pair, not a merge that "
                "passes through the two models."
                if off > 0.01
                else "."
            ),
        ]
    control = entry.get("mean_code", {})
    if control.get("agreement_reconstructions") is not None:
        recon = entry.get("reconstruction", {})
        lines += [
            "",
            f"Mean-code control: the decoded mean code scores {number(control.get('accuracy'))};"
            f" held-out reconstructions share {number(control['agreement_reconstructions'])} of "
            f"their test predictions with it and {number(recon.get('agreement'))} with their "
            "own originals"
            + (
                " — the decoder's output depends little on the code."
                if recon.get("agreement") is not None
                and control["agreement_reconstructions"] >= recon["agreement"]
                else "."
            ),
        ]
    return [*lines, ""]


#: (alt text, caption) of each synthesis figure; each sits under its table.
FIGURE_CAPTIONS = {
    "merge_curves.png": (
        "merge curves",
        "Test accuracy along α per task (mean ± std over pairs); references dashed, the "
        "control dotted, the distilled ensemble (α = 0.5 only) a star.",
    ),
    "reconstructions.png": (
        "reconstructions",
        "Held-out reconstructions, coloured by task: decoded against original test accuracy "
        "(left); agreement with their own original against another model's reconstruction's "
        "agreement with it (right; above the diagonal is faithful).",
    ),
    "sampling.png": (
        "sampling",
        "Sampled models' test accuracy against novelty, beside zoo models plus noise, per task.",
    ),
}


def figure_lines(name: str | None, alt: str, caption: str) -> list[str]:
    """A figure and its italic caption in Markdown (nothing when there is no figure)."""
    return [f"![{alt}]({name})", "", f"*{caption}*", ""] if name else []


def synthesis_lines(
    synthesis: Mapping[str, Any], figures: Sequence[str] | None = None
) -> list[str]:
    """The report's synthesis section, from ``results["synthesis"]`` alone; each of
    ``figures`` (file names, see :data:`FIGURE_CAPTIONS`) is placed under its table."""
    shown = set(figures or ())

    def figure(name: str) -> list[str]:
        return figure_lines(name if name in shown else None, *FIGURE_CAPTIONS[name])

    if "tasks" not in synthesis:  # results.json of an older bench: its own Markdown
        return list(synthesis.get("markdown", []))
    tasks = synthesis["tasks"]
    lines = [
        "Per task, one architecture (each task below says how it was chosen). The decoder is "
        "fitted on the encoder's training runs for a fixed number of steps and early-stopped on "
        "a few of them; merge pairs and reconstructions are final checkpoints of held-out runs "
        "(validation + test) above the task's accuracy threshold. Methods are grouped by what "
        "they may use: *data-free* merges see only the two models' weights; *data-using* ones "
        "were fitted on the task's training data — the embedding merge (its decoder) and the "
        "distilled ensemble, a network of the architecture distilled from the pair's output "
        "ensemble on the decoder's training inputs, for the decoder's number of steps, loss, "
        "optimiser and total compute (example passes; see the budget table). The output "
        "ensemble is a reference (a network twice as wide); the decoded mean code is a control. "
        "Each method's `uses_data` flag is in `results.json`. Cells are test accuracy averaged "
        "over pairs. "
        f"Section time: {number(synthesis.get('seconds', float('nan')), 0)} s.",
        "",
    ]
    if tasks:
        lines += [
            "### Merging at α = 0.5",
            "",
            *midpoint_tables(tasks),
            *figure("merge_curves.png"),
            "### Reconstructions of held-out models",
            "",
            "`agree own`: share of test predictions a reconstruction shares with its original; "
            "`agree cross`: another model's reconstruction with it; `agree mean code`: a "
            "reconstruction with the decoded mean code; `probe`: a linear read-out from the "
            "embedding to the logits (the embedding's content, decoder aside).",
            "",
            *reconstruction_table(tasks),
            "",
            *figure("reconstructions.png"),
            "### Sampling",
            "",
            *sampling_table(tasks),
            "",
            *figure("sampling.png"),
            "### Training budgets",
            "",
            "An example pass is one network run on one input, forward and backward.",
            "",
            *budget_table(tasks),
            "",
            "### Goals (from the issue), per task",
            "",
            *goal_table(tasks),
            "",
            "Whether missed reconstruction goals come from the decoder's training data or from "
            "what the embedding holds: `python benchmarks/bench_decoder_codes.py --encoder ENC` "
            "fits decoders on one group with many more models and compares the embedding with "
            "a code that holds the models' outputs.",
            "",
        ]
    for task, entry in tasks.items():
        lines += _task_lines(task, entry)
    for task, why in synthesis.get("skipped", {}).items():
        lines.append(f"- {task}: not measured ({why})")
    return lines
