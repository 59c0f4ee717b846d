"""The synthesis section of the bench report, in Markdown, from ``results["synthesis"]`` alone.

:func:`synthesis_lines` writes one table per kind of measurement: merging at the midpoint (one
table per kind of method — data-free, data-using, references and the control), reconstructions,
sampling and the training budgets; then the goals, and per task the curve along α with its rows
grouped by kind. Figures (:data:`FIGURE_CAPTIONS`) sit under their tables, with captions.
Every number is read from the section's entries (see
:func:`weightspace.synthesis.benchmark.run_task`); nothing is typed in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["FIGURE_CAPTIONS", "GOAL_NAMES", "KIND_TITLES", "figure_lines", "synthesis_lines"]

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)

GOAL_NAMES = {
    "embedding_midpoint_vs_rebasin": "embedding midpoint ≥ rebasin midpoint (data-free)",
    "embedding_midpoint_vs_distill": "embedding midpoint ≥ distilled ensemble (data-using, same "
    "budget)",
    "embedding_midpoint_vs_endpoints": "embedding midpoint ≥ endpoints' mean − 0.01",
    "reconstruction_accuracy": "held-out reconstructions within 0.01 of the original's accuracy",
    "reconstruction_faithful": "agreement with own original ≥ cross agreement + 0.05",
    "samples_beat_noise": "samples beat zoo + noise at equal novelty",
    "embedding_endpoints": "(check) decoding A's and B's own embeddings keeps their accuracy "
    "within 0.01",
    "decoder_reads_code": "(check) reconstructions agree more with their originals than with "
    "the decoded mean code",
}

KIND_TITLES = {
    "data-free": "Data-free merges (only the two models' weights)",
    "data-using": "Data-using merges (fitted on the task's training data)",
    "reference": "References (no single network of the architecture)",
    "control": "Control",
    "other": "Other methods",
}

_FALLBACK_KINDS = {
    "average": ("data-free", False),
    "rebasin": ("data-free", False),
    "embedding": ("data-using", True),
    "distill": ("data-using", True),
    "ensemble": ("reference", False),
    "endpoints": ("reference", False),
    "mean-code": ("control", True),
}

_LABELS = {
    "embedding": "embedding (ours)",
    "ensemble": "output ensemble (2× wide)",
    "rebasin": "weight matching",
    "average": "naive average",
    "distill": "distilled ensemble",
    "mean-code": "decoded mean code (control)",
}


def _number(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_number(cell) for cell in row) + " |" for row in rows]
    return lines


#: Method order within a kind (others follow in the order found).
_ORDER = ("average", "rebasin", "embedding", "distill", "ensemble", "endpoints", "mean-code")


def _ordered(methods: Sequence[str]) -> list[str]:
    return sorted(methods, key=lambda m: _ORDER.index(m) if m in _ORDER else len(_ORDER))


def _kind(entry: Mapping[str, Any], method: str) -> tuple[str, bool | None]:
    """(kind, uses_data) of ``method`` as the entry recorded it (older results: a fallback)."""
    info = entry.get("methods", {}).get(method)
    if info:
        return str(info.get("kind", "other")), info.get("uses_data")
    return _FALLBACK_KINDS.get(method, ("other", None))


def _methods_by_kind(tasks: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """Kind → methods with a curve in any task, kinds in report order."""
    found: dict[str, list[str]] = {}
    for entry in tasks.values():
        for row in entry.get("curves", []):
            kind, _ = _kind(entry, row["method"])
            if row["method"] not in found.setdefault(kind, []):
                found[kind].append(row["method"])
    order = [*KIND_TITLES]
    ranked = sorted(found, key=lambda k: order.index(k) if k in order else 99)
    return {k: _ordered(found[k]) for k in ranked}


def _curve(entry: Mapping[str, Any]) -> dict[str, dict[float, float]]:
    by_method: dict[str, dict[float, float]] = {}
    for row in entry.get("curves", []):
        by_method.setdefault(row["method"], {})[float(row["alpha"])] = row["accuracy_mean"]
    return by_method


def _name(task: str, entry: Mapping[str, Any]) -> str:
    return f"{task} / {entry.get('arch')}"


def _midpoint_tables(tasks: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines: list[str] = []
    for kind, methods in _methods_by_kind(tasks).items():
        uses = {_kind(e, m)[1] for e in tasks.values() for m in methods} - {None}
        flag = "" if len(uses) != 1 else f" — `uses_data` {next(iter(uses))}"
        header = ["task / architecture", *(_LABELS.get(m, m) for m in methods)]
        extra: list[str] = []
        if kind == "data-free":
            header.insert(1, "pairs")
        if kind == "control":
            extra = ["its agreement with held-out reconstructions", "with embedding midpoints"]
        rows = []
        for task, entry in tasks.items():
            mid = entry.get("midpoint", {})
            row: list[Any] = [_name(task, entry)]
            if kind == "data-free":
                row.append(entry.get("pairs"))
            row += [mid.get(m, float("nan")) for m in methods]
            if extra:
                control = entry.get("mean_code", {})
                row += [
                    control.get("agreement_reconstructions", float("nan")),
                    control.get("agreement_midpoints", float("nan")),
                ]
            rows.append(row)
        lines += [
            f"**{KIND_TITLES.get(kind, kind)}**{flag}:",
            "",
            *_table(header + extra, rows),
            "",
        ]
    return lines


def _reconstruction_table(tasks: Mapping[str, Mapping[str, Any]]) -> list[str]:
    rows = []
    for task, entry in tasks.items():
        recon, train = entry.get("reconstruction", {}), entry.get("reconstruction_train", {})
        probe = entry.get("embedding_probe", {})
        rows.append(
            [
                _name(task, entry),
                recon.get("models", 0),
                recon.get("accuracy"),
                recon.get("decoded_accuracy"),
                recon.get("accuracy_gap_abs"),
                recon.get("agreement"),
                recon.get("agreement_cross"),
                entry.get("mean_code", {}).get("agreement_reconstructions"),
                train.get("agreement"),
                probe.get("agreement"),
                probe.get("agreement_cross"),
            ]
        )
    header = [
        "task / architecture",
        "held-out models",
        "original acc.",
        "decoded acc.",
        "mean |gap|",
        "agree own",
        "agree cross",
        "agree mean code",
        "agree own (training models)",
        "probe own",
        "probe cross",
    ]
    return _table(header, rows)


def _sampling_table(tasks: Mapping[str, Mapping[str, Any]]) -> list[str]:
    rows = []
    for task, entry in tasks.items():
        sampling = entry.get("sampling", {})
        rows.append(
            [
                _name(task, entry),
                sampling.get("samples"),
                sampling.get("accuracy_mean"),
                sampling.get("novelty_mean"),
                sampling.get("zoo_accuracy_mean"),
                sampling.get("pool_accuracy_mean"),
                sampling.get("noise_accuracy_at_equal_novelty"),
                sampling.get("accuracy_gain_over_noise"),
            ]
        )
    header = [
        "task / architecture",
        "samples",
        "accuracy",
        "novelty",
        "zoo",
        "pool",
        "zoo + noise at equal novelty",
        "gain",
    ]
    return _table(header, rows)


def _budget_table(tasks: Mapping[str, Mapping[str, Any]]) -> list[str]:
    rows = []
    for task, entry in tasks.items():
        decoder, distill = entry.get("decoder", {}), entry.get("distill", {})
        steps = decoder.get("steps")
        batch, inputs = decoder.get("batch_size"), decoder.get("inputs_per_step")
        passes = steps * batch * inputs if None not in (steps, batch, inputs) else None
        steps_cell = f"{steps} of {decoder.get('steps_requested')}"
        if decoder.get("stopped_by_time_limit"):
            steps_cell += " (**stopped by the time cap**)"
        rows.append(
            [
                _name(task, entry),
                decoder.get("train_models"),
                steps_cell,
                decoder.get("best_step"),
                passes,
                _number(decoder.get("seconds"), 1),
                distill.get("students"),
                distill.get("inputs_per_step"),
                distill.get("example_passes"),
                _number(distill.get("seconds"), 1),
            ]
        )
    header = [
        "task / architecture",
        "decoder's training models",
        "decoder steps",
        "kept step",
        "decoder example passes",
        "decoder s",
        "students",
        "student inputs / step",
        "students' example passes",
        "distillation s",
    ]
    return _table(header, rows)


def _goal_table(tasks: Mapping[str, Mapping[str, Any]]) -> list[str]:
    names = list(tasks)
    lines = ["| goal | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for goal, label in GOAL_NAMES.items():
        cells = []
        for entry in tasks.values():
            met = entry.get("goals", {}).get(goal)
            cells.append("–" if met is None else ("met" if met else "**missed**"))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


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
        f"### {_name(task, entry)}",
        "",
        f"Architecture: {entry.get('arch_choice')}. Accuracy threshold "
        f"{_number(entry.get('threshold'))}; {entry.get('pairs')} pairs{pairs_note}. Decoder: "
        f"{decoder.get('steps')} of {decoder.get('steps_requested')} steps in "
        f"{_number(decoder.get('seconds'), 1)} s ("
        + (f"safety cap {_number(float(cap), 0)} s" if cap else "no time cap")
        + f"), kept step {decoder.get('best_step')} (validation agreement "
        f"{_number(decoder.get('val_agreement'))}), trained on {decoder.get('train_models')} "
        "models.",
        "",
    ]
    by_method = _curve(entry)
    grouped: dict[str, list[str]] = {}
    for method in by_method:
        grouped.setdefault(_kind(entry, method)[0], []).append(method)
    order = [*KIND_TITLES]
    header = ["kind", "method", *(f"α={a:g}" for a in ALPHAS)]
    rows = []
    for kind in sorted(grouped, key=lambda k: order.index(k) if k in order else 99):
        for method in _ordered(grouped[kind]):
            values = by_method[method]
            rows.append([kind, _LABELS.get(method, method), *(values.get(a) for a in ALPHAS)])
    lines += _table(header, rows)
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
            f"Decoding the endpoints' own embeddings (α = 0, 1) gives {_number(emb[0.0])} and "
            f"{_number(emb[1.0])} against the models' {_number(ends[0.0])} and "
            f"{_number(ends[1.0])}"
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
            f"Mean-code control: the decoded mean code scores {_number(control.get('accuracy'))};"
            f" held-out reconstructions share {_number(control['agreement_reconstructions'])} of "
            f"their test predictions with it and {_number(recon.get('agreement'))} with their "
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
        f"Section time: {_number(synthesis.get('seconds', float('nan')), 0)} s.",
        "",
    ]
    if tasks:
        lines += [
            "### Merging at α = 0.5",
            "",
            *_midpoint_tables(tasks),
            *figure("merge_curves.png"),
            "### Reconstructions of held-out models",
            "",
            "`agree own`: share of test predictions a reconstruction shares with its original; "
            "`agree cross`: another model's reconstruction with it; `agree mean code`: a "
            "reconstruction with the decoded mean code; `probe`: a linear read-out from the "
            "embedding to the logits (the embedding's content, decoder aside).",
            "",
            *_reconstruction_table(tasks),
            "",
            *figure("reconstructions.png"),
            "### Sampling",
            "",
            *_sampling_table(tasks),
            "",
            *figure("sampling.png"),
            "### Training budgets",
            "",
            "An example pass is one network run on one input, forward and backward.",
            "",
            *_budget_table(tasks),
            "",
            "### Goals (from the issue), per task",
            "",
            *_goal_table(tasks),
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
