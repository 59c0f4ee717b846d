"""``report.md`` and its figures from a benchmark's ``results.json``.

Every number comes from :class:`~weightspace.evaluate.results.Results`; nothing is typed in by
hand. The report leads with the metrics a lookup of metadata cannot fake (within-group and
final-checkpoint Kendall τ), with the reference rows (``metadata``, ``probing-*``) beside every
method. A cell is the mean over seeds ± the std over seeds, or, when one given encoder fixes the
split, ± the std over bootstrap resamples of the test runs (the header says which). The tables
are :mod:`weightspace.report_tables`, the figures :mod:`weightspace.report_plots`; this module
puts them in order, each figure under its table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from weightspace import report_plots
from weightspace.evaluate.results import Results
from weightspace.report_tables import (
    OURS_METHODS,
    PREDICTION_COLUMNS,
    RETRIEVAL_COLUMNS,
    RETRIEVAL_NAMES,
    RUNS,
    format_cell,
    headline_lines,
    per_task_table,
    prediction_table,
    retrieval_lines,
    summarise,
)
from weightspace.synthesis.report import FIGURE_CAPTIONS, figure_lines, synthesis_lines

__all__ = [
    "PREDICTION_COLUMNS",
    "RETRIEVAL_COLUMNS",
    "RETRIEVAL_NAMES",
    "format_cell",
    "headline_lines",
    "summarise",
    "synthesis_lines",
    "write_report",
]


def _figure(name: str | None, alt: str, caption: str) -> list[str]:
    return figure_lines(name, alt, caption)


def _training_lines(results: Results, out: Path) -> list[str]:
    """The seed-0 encoder's last logged epoch as a table, its training curves under it."""
    path = report_plots.find_training_log(results, out)
    if path is None:
        return []
    import pandas as pd

    log = pd.read_csv(path)
    if log.empty or "epoch" not in log.columns:
        return []
    last = log.iloc[-1]
    quantities: dict[str, dict[str, float]] = {}
    for column in log.columns:
        if column.startswith(("train_", "val_")) and pd.notna(last[column]):
            split, _, quantity = column.partition("_")
            quantities.setdefault(quantity, {})[split] = float(last[column])
    lines = [
        "## Encoder training (seed 0)",
        "",
        f"`{path.parent.name}/log.csv`, last of {len(log)} logged epochs (epoch "
        f"{int(last['epoch'])}):",
        "",
        "| quantity | training | validation |",
        "|---|---|---|",
        *(
            f"| {q} | {format_cell([v.get('train', math.nan)])} | "
            f"{format_cell([v.get('val', math.nan)])} |"
            for q, v in quantities.items()
        ),
        "",
    ]
    return lines + _figure(
        report_plots.training_curves(out, path),
        "training curves",
        "Training of the seed-0 encoder: one panel per logged quantity against epoch, training "
        "and validation series of the same quantity together, every epoch marked.",
    )


def _encoder_source(source: Any) -> str:
    if isinstance(source, list) and len(source) == 1:
        return f"given, `{source[0]}`"
    if isinstance(source, list):
        return f"given, one per seed: {', '.join(f'`{s}`' for s in source)}"
    return str(source)


def write_report(results: Results | Mapping[str, Any], out: str | Path) -> Path:
    """Write ``report.md`` (and its figures) for ``results`` into ``out``."""
    out = Path(out)
    if not isinstance(results, Results):
        results = Results.from_dict(dict(results))
    zoo, config = results.zoo, results.config
    seeds = max(
        (len(s) for sec in results.prediction.values() for s in sec.methods.values()), default=0
    )
    spread = (
        f"± is the std over {config.get('bootstrap')} bootstrap resamples of the test runs (one "
        "given encoder fixes the split)"
        if results.spread == "bootstrap"
        else "± is the std over seeds"
    )
    lines = [
        "# weightspace benchmark",
        "",
        f"Zoo **{zoo.name}** (`{zoo.path}`): {zoo.checkpoints} checkpoints from {zoo.runs} runs, "
        f"{zoo.architectures if zoo.architectures is not None else '?'} architectures, tasks "
        f"{', '.join(zoo.tasks) or '–'}. Seeds: {seeds} (held-out runs); cells are the mean over "
        f"seeds, {spread}. Splits are by run: every checkpoint of a run is on one side. Every "
        "method is scored on the same checkpoints.",
        "",
        f"Encoder: {_encoder_source(results.encoder.get('source'))}.",
        "",
    ]
    lines += [f"> **Note.** {note}\n" for note in results.notes]
    if results.updated_sections:
        lines += [f"Sections updated by the last run: {', '.join(results.updated_sections)}.", ""]
    lines += ["## Headline", "", *headline_lines(results), ""]
    lines += _training_lines(results, out)
    for protocol in results.prediction:
        section = results.prediction[protocol]
        lines += [f"## Accuracy prediction: {protocol}", ""]
        if section.split.get("description"):
            lines += [f"Split: {section.split['description']}.", ""]
        lines += [*prediction_table(results, protocol), ""]
        if protocol == RUNS:
            lines += per_task_table(results, protocol)
            lines += _figure(
                report_plots.predicted_vs_true(results, out, protocol),
                "predicted vs true",
                "Predicted against true test accuracy of the held-out runs (seed 0), one panel "
                "per method on shared axes; each title gives the method's within-group and pooled "
                "τ; the diagonal is a perfect prediction.",
            )
            lines += _figure(
                report_plots.embedding_map(results, out),
                "embedding map",
                "Our seed-0 embedding of the held-out checkpoints in 2-D (PCA), coloured by task "
                "and by test accuracy.",
            )
    lines += retrieval_lines(results, report_plots.recall_at_k(results, out, OURS_METHODS))
    if results.classification:
        lines += [
            "## Classification (class-target zoo)",
            "",
            results.classification["markdown"],
            "",
        ]
    if getattr(results, "published", None):  # the zoo is a published benchmark
        lines += ["## Published figures on this benchmark", "", results.published["markdown"], ""]
    if results.synthesis:
        # merge curves are redrawn from the numbers (a grid); the other figures are bench's
        figures = {report_plots.merge_curves(results, out)} | {
            p for p in results.synthesis.get("plots", []) if (out / p).exists()
        }
        placed = set(FIGURE_CAPTIONS) & figures
        lines += ["## Synthesis", "", *synthesis_lines(results.synthesis, sorted(placed)), ""]
        for p in sorted(figures - placed - {None}):
            lines += _figure(p, p, f"Synthesis figure `{p}`.")
    if results.skipped:
        lines += ["## Skipped, and why", ""]
        lines += [f"- `{what}`: {why}" for what, why in results.skipped.items()]
        lines.append("")
    if results.timings:
        lines += ["## Timings (seconds, mean over fits)", "", "| step | seconds |", "|---|---|"]
        lines += [f"| {step} | {summarise(v)[0]:.1f} |" for step, v in results.timings.items()]
        lines.append("")
    lines += [
        "Reproduce: `weightspace bench --zoo ZOO --out OUT` with the options in `results.json` "
        "(`config`). Regenerate this page from the numbers alone with "
        "`python -m weightspace.report OUT/results.json`.",
        "",
    ]
    from weightspace.atomic import atomic_write

    path = out / "report.md"
    atomic_write(path, lambda tmp: tmp.write_text("\n".join(lines)))
    return path


def main(argv: list[str] | None = None) -> None:
    """``python -m weightspace.report RESULTS.json``: rewrite report.md beside it."""
    import argparse
    import sys

    from weightspace.errors import WeightspaceError

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("results", type=Path)
    args = parser.parse_args(argv)
    try:
        print(write_report(Results.load(args.results), args.results.parent))
    except WeightspaceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
