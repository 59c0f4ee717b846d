"""The synthesis section's tables, in Markdown, and the helpers they share.

One table per kind of measurement, across tasks: merging at the midpoint (one table per kind of
method: data-free, data-using, references, the control), reconstructions, sampling, training
budgets and the goals. Methods are grouped by the kind their entry records
(:func:`method_kind`) and ordered the same way everywhere (:data:`METHOD_ORDER`).
:mod:`weightspace.synthesis.report` assembles the section.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "ALPHAS",
    "FALLBACK_KINDS",
    "GOAL_NAMES",
    "KIND_TITLES",
    "METHOD_LABELS",
    "METHOD_ORDER",
    "budget_table",
    "curve_by_method",
    "goal_table",
    "group_name",
    "markdown_table",
    "method_kind",
    "methods_by_kind",
    "midpoint_tables",
    "number",
    "ordered_methods",
    "reconstruction_table",
    "sampling_table",
]

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

FALLBACK_KINDS = {
    "average": ("data-free", False),
    "rebasin": ("data-free", False),
    "embedding": ("data-using", True),
    "distill": ("data-using", True),
    "ensemble": ("reference", False),
    "endpoints": ("reference", False),
    "mean-code": ("control", True),
}

METHOD_LABELS = {
    "embedding": "embedding (ours)",
    "ensemble": "output ensemble (2× wide)",
    "rebasin": "weight matching",
    "average": "naive average",
    "distill": "distilled ensemble",
    "mean-code": "decoded mean code (control)",
}


def number(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(number(cell) for cell in row) + " |" for row in rows]
    return lines


#: Method order within a kind (others follow in the order found).
METHOD_ORDER = ("average", "rebasin", "embedding", "distill", "ensemble", "endpoints", "mean-code")


def ordered_methods(methods: Sequence[str]) -> list[str]:
    return sorted(
        methods, key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER)
    )


def method_kind(entry: Mapping[str, Any], method: str) -> tuple[str, bool | None]:
    """(kind, uses_data) of ``method`` as the entry recorded it (older results: a fallback)."""
    info = entry.get("methods", {}).get(method)
    if info:
        return str(info.get("kind", "other")), info.get("uses_data")
    return FALLBACK_KINDS.get(method, ("other", None))


def methods_by_kind(tasks: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """Kind → methods with a curve in any task, kinds in report order."""
    found: dict[str, list[str]] = {}
    for entry in tasks.values():
        for row in entry.get("curves", []):
            kind, _ = method_kind(entry, row["method"])
            if row["method"] not in found.setdefault(kind, []):
                found[kind].append(row["method"])
    order = [*KIND_TITLES]
    ranked = sorted(found, key=lambda k: order.index(k) if k in order else 99)
    return {k: ordered_methods(found[k]) for k in ranked}


def curve_by_method(entry: Mapping[str, Any]) -> dict[str, dict[float, float]]:
    by_method: dict[str, dict[float, float]] = {}
    for row in entry.get("curves", []):
        by_method.setdefault(row["method"], {})[float(row["alpha"])] = row["accuracy_mean"]
    return by_method


def group_name(task: str, entry: Mapping[str, Any]) -> str:
    return f"{task} / {entry.get('arch')}"


def midpoint_tables(tasks: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines: list[str] = []
    for kind, methods in methods_by_kind(tasks).items():
        uses = {method_kind(e, m)[1] for e in tasks.values() for m in methods} - {None}
        flag = "" if len(uses) != 1 else f" — `uses_data` {next(iter(uses))}"
        header = ["task / architecture", *(METHOD_LABELS.get(m, m) for m in methods)]
        extra: list[str] = []
        if kind == "data-free":
            header.insert(1, "pairs")
        if kind == "control":
            extra = ["its agreement with held-out reconstructions", "with embedding midpoints"]
        rows = []
        for task, entry in tasks.items():
            mid = entry.get("midpoint", {})
            row: list[Any] = [group_name(task, entry)]
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
            *markdown_table(header + extra, rows),
            "",
        ]
    return lines


def reconstruction_table(tasks: Mapping[str, Mapping[str, Any]]) -> list[str]:
    rows = []
    for task, entry in tasks.items():
        recon, train = entry.get("reconstruction", {}), entry.get("reconstruction_train", {})
        probe = entry.get("embedding_probe", {})
        rows.append(
            [
                group_name(task, entry),
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
    return markdown_table(header, rows)


def sampling_table(tasks: Mapping[str, Mapping[str, Any]]) -> list[str]:
    rows = []
    for task, entry in tasks.items():
        sampling = entry.get("sampling", {})
        rows.append(
            [
                group_name(task, entry),
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
    return markdown_table(header, rows)


def budget_table(tasks: Mapping[str, Mapping[str, Any]]) -> list[str]:
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
                group_name(task, entry),
                decoder.get("train_models"),
                steps_cell,
                decoder.get("best_step"),
                passes,
                number(decoder.get("seconds"), 1),
                distill.get("students"),
                distill.get("inputs_per_step"),
                distill.get("example_passes"),
                number(distill.get("seconds"), 1),
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
    return markdown_table(header, rows)


def goal_table(tasks: Mapping[str, Mapping[str, Any]]) -> list[str]:
    names = list(tasks)
    lines = ["| goal | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for goal, label in GOAL_NAMES.items():
        cells = []
        for entry in tasks.values():
            met = entry.get("goals", {}).get(goal)
            cells.append("–" if met is None else ("met" if met else "**missed**"))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines
