"""The benchmark report's tables: accuracy prediction, per task, retrieval, and the headline.

A cell is the mean over seeds ± the std over seeds, or ± the std over bootstrap resamples of the
test runs when one given encoder fixes the split (:func:`format_cell`). Rows come in one order
everywhere: ours, the reference rows, then the rest (:func:`method_rows`).
:mod:`weightspace.report` assembles them into ``report.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from weightspace.evaluate.methods import OURS, OURS_GBT, REFERENCE_METHODS
from weightspace.evaluate.results import MethodScore, Results
from weightspace.synthesis.report import figure_lines

__all__ = [
    "OURS_METHODS",
    "PREDICTION_COLUMNS",
    "RETRIEVAL_COLUMNS",
    "RETRIEVAL_NAMES",
    "RUNS",
    "format_cell",
    "headline_lines",
    "per_task_table",
    "prediction_table",
    "retrieval_lines",
    "summarise",
]

OURS_METHODS = (OURS, OURS_GBT)
RUNS = "held-out runs"
#: (key, header, higher is better) of the prediction tables: primary metrics first.
PREDICTION_COLUMNS = (
    ("within_group_tau", "**within-group τ**", True),
    ("final_tau", "**final-ckpt τ**", True),
    ("kendall_tau", "pooled τ", True),
    ("kendall_tau_above_chance", "τ > chance", True),
    ("r2", "R²", True),
    ("mae", "MAE", False),
)
RETRIEVAL_COLUMNS = ("recall@1", "recall@5", "recall@10", "mrr", "map", "gallery_size")
RETRIEVAL_NAMES = {
    "S": "S — symmetry, an invariance check (query = random permutation + rescaling + sign flip "
    "of a gallery model)",
    "L": "L — lineage (query = a derivative of a gallery model, then a random symmetry "
    "transform; relevant = its source run's checkpoints)",
    "F": "F — function (relevant = the gallery models whose test predictions agree most)",
    "T": "T — task (relevant = every gallery model of the query's task from other runs)",
}


def summarise(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, standard deviation (0 for one value) and count of the finite values."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return float("nan"), float("nan"), 0
    return float(np.mean(finite)), float(np.std(finite)), len(finite)


def format_cell(values: Sequence[float], digits: int = 3, spread: float | None = None) -> str:
    """``mean ± std`` of ``values`` (``spread`` replaces the std when given: a bootstrap)."""
    mean, std, n = summarise(values)
    if n == 0:
        return "–"
    if spread is not None:
        std, n = spread, 2 if math.isfinite(spread) else 1
    if abs(mean) >= 1e4:  # diverged regressors (R² of -1e38): keep the table readable
        return f"{mean:.2e}" if n == 1 else f"{mean:.2e} ± {std:.1e}"
    return f"{mean:.{digits}f}" if n == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _score_cell(results: Results, scores: Sequence[MethodScore], read: Callable, key: str) -> str:
    values = [read(s).get(key, math.nan) for s in scores]
    spread = None
    if results.spread == "bootstrap":
        spread = summarise([s.bootstrap_std.get(key, math.nan) for s in scores])[0]
    return format_cell(values, spread=spread)


def _label(method: str) -> str:
    if method in OURS_METHODS:
        return f"**{method}** (ours)"
    return f"{method} (reference)" if method in REFERENCE_METHODS else method


def _rows(results: Results, present: Sequence[str]) -> list[str]:
    """Ours, then the reference rows (always, when they were asked for), then the rest."""
    asked = list(results.config.get("methods", ())) + [m for m in present]
    order = [*OURS_METHODS, *REFERENCE_METHODS]
    rows = [m for m in order if m in asked] + [m for m in dict.fromkeys(asked) if m not in order]
    return list(dict.fromkeys(rows))


def _why(results: Results, method: str, protocol: str) -> str:
    for key in (f"{method} ({protocol})", f"{method} retrieval {protocol}", f"{method} retrieval"):
        if key in results.skipped:
            return results.skipped[key]
    return "not run"


def prediction_table(results: Results, protocol: str) -> list[str]:
    """The prediction table of ``protocol`` (common subset), and one on each method's own
    coverage for methods that skip test checkpoints."""
    section = results.prediction[protocol]
    header = [h for _, h, _ in PREDICTION_COLUMNS]
    lines = [
        "| method | " + " | ".join([*header[:2], "coverage", *header[2:]]) + " |",
        "|---|" + "---|" * (len(header) + 1),
    ]
    own = []
    for method in _rows(results, list(section.methods)):
        scores = section.methods.get(method)
        if not scores:
            lines.append(f"| {_label(method)} | – ({_why(results, method, protocol)[:80]}) |")
            continue
        coverage = format_cell([s.coverage for s in scores])
        if not all(s.in_common for s in scores):
            lines.append(
                f"| {_label(method)} | – | – | {coverage} | – (covers too few test checkpoints "
                "to join the common subset; see its own coverage below) |"
            )
        else:
            cells = [
                _score_cell(results, scores, lambda s: s.common, k)
                for k, _, _ in PREDICTION_COLUMNS
            ]
            lines.append(
                f"| {_label(method)} | " + " | ".join([*cells[:2], coverage, *cells[2:]]) + " |"
            )
        if any(s.coverage < 1 for s in scores):
            cells = [
                _score_cell(results, scores, lambda s: s.own, k) for k, _, _ in PREDICTION_COLUMNS
            ]
            refused = sorted({a for s in scores for a in s.refused})
            own.append(
                f"| {_label(method)} | {coverage} | "
                + " | ".join(cells)
                + " | "
                + (", ".join(refused) or "–")
                + " |"
            )
    common, _, _ = summarise(section.common_size)
    total, _, _ = summarise(section.test_size)
    lines += [
        "",
        f"Scored on the {common:.0f} test checkpoints every method covers (of {total:.0f}); "
        "within-group τ: inside each (task, architecture, epoch > 0) group, weighted by size; "
        "final-checkpoint τ: among the final checkpoints of the test runs of each (task, "
        "architecture). Pooled τ, R² and MAE are secondary: a lookup of metadata scores well on "
        "them.",
    ]
    for metric, why in section.skipped_metrics.items():
        lines.append(f"- `{metric}` not computed: {why}.")
    if own:
        lines += [
            "",
            "Methods that do not cover every test checkpoint, scored on their own coverage:",
            "",
            "| method | coverage | " + " | ".join(header) + " | architectures not covered |",
            "|---|" + "---|" * (len(header) + 2),
            *own,
        ]
    return lines


def per_task_table(results: Results, protocol: str) -> list[str]:
    """Within-group τ per task (nothing for fewer than two tasks)."""
    section = results.prediction[protocol]
    tasks = sorted({t for scores in section.methods.values() for s in scores for t in s.per_task})
    if len(tasks) < 2:
        return []
    lines = [
        "Within-group τ per task (common subset):",
        "",
        "| method | " + " | ".join(tasks) + " |",
        "|---|" + "---|" * len(tasks),
    ]
    for method in _rows(results, list(section.methods)):
        scores = section.methods.get(method, [])
        if scores:
            cells = [
                format_cell(
                    [s.per_task.get(t, {}).get("within_group_tau", math.nan) for s in scores]
                )
                for t in tasks
            ]
            lines.append(f"| {_label(method)} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _best(results: Results, protocol: str, metric: str, among: Sequence[str]) -> tuple[str, float]:
    best, value = "", math.nan
    for method, scores in results.prediction[protocol].methods.items():
        if method in among:
            mean = summarise([s.common.get(metric, math.nan) for s in scores])[0]
            if math.isfinite(mean) and not mean <= value:
                best, value = method, mean
    return best, value


def headline_lines(results: Results) -> list[str]:
    """Plain sentences: our best row against the best reference row and the best baseline on
    the primary metrics of every prediction protocol, and the budget our encoder had."""
    lines = []
    epochs = results.timings.get("encoder_epochs")
    if epochs:
        lines.append(
            f"- Our encoder trained for {summarise(epochs)[0]:.1f} epochs per fit (bound: "
            f"{results.config.get('train_epochs')} epochs, early stopping on validation runs)."
        )
    for protocol, section in results.prediction.items():
        baselines = [m for m in section.methods if m not in (*OURS_METHODS, *REFERENCE_METHODS)]
        for metric, header, _ in PREDICTION_COLUMNS[:2]:
            ours, ours_value = _best(results, protocol, metric, OURS_METHODS)
            reference, reference_value = _best(results, protocol, metric, REFERENCE_METHODS)
            baseline, baseline_value = _best(results, protocol, metric, baselines)
            others = (
                f"best reference `{reference or '–'}` {reference_value:.3f}, best baseline "
                f"`{baseline or '–'}` {baseline_value:.3f}"
            )
            if not ours:
                lines.append(f"- {protocol}, {header.strip('*')}: {others}.")
                continue
            rivals = [
                (v, m) for v, m in ((reference_value, reference), (baseline_value, baseline)) if m
            ]
            verdict = "leads every other row"
            if rivals and max(rivals)[0] > ours_value:
                verdict = f"**trails `{max(rivals)[1]}`**"
            lines.append(
                f"- {protocol}, {header.strip('*')}: `{ours}` {ours_value:.3f} {verdict} "
                f"({others})."
            )
    return lines


def retrieval_lines(results: Results, figure: str | None) -> list[str]:
    """One section per retrieval protocol (and per derivative kind), the Recall@k figure under
    them."""
    lines = []
    for protocol, per_method in results.retrieval.items():
        if not per_method:
            continue
        present = [
            c
            for c in RETRIEVAL_COLUMNS
            if any(c in s.metrics for v in per_method.values() for s in v)
        ]
        lines += [
            f"## Retrieval {RETRIEVAL_NAMES.get(protocol, protocol)}",
            "",
            "| method | " + " | ".join(present) + " |",
            "|---|" + "---|" * len(present),
        ]
        kinds: dict[str, dict[str, list[float]]] = {}
        for method in _rows(results, list(per_method)):
            scores = per_method.get(method)
            if not scores:
                lines.append(f"| {_label(method)} | – ({_why(results, method, protocol)[:80]}) |")
                continue
            cells = [
                format_cell(
                    [s.metrics.get(c, math.nan) for s in scores], 0 if c == "gallery_size" else 3
                )
                for c in present
            ]
            lines.append(f"| {_label(method)} | " + " | ".join(cells) + " |")
            for s in scores:
                for kind, metrics in s.by_kind.items():
                    value = metrics.get("map", metrics.get("recall@10", math.nan))
                    kinds.setdefault(method, {}).setdefault(kind, []).append(value)
        names = sorted({k for v in kinds.values() for k in v})
        if names:
            lines += [
                "",
                "Per derivative kind (mAP, or Recall@10 where mAP is absent):",
                "",
                "| method | " + " | ".join(names) + " |",
                "|---|" + "---|" * len(names),
            ]
            for method, per_kind in kinds.items():
                cells = [format_cell(per_kind.get(k, [])) for k in names]
                lines.append(f"| {_label(method)} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines + figure_lines(
        figure,
        "Recall@k",
        "Recall@k against k for every method, one panel per retrieval protocol (mean over seeds).",
    )
