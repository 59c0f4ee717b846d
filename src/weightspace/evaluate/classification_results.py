"""What the classification protocol reports: one row per method, the whole result, its Markdown
table, and the protocol's error."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from weightspace.errors import WeightspaceError

__all__ = ["ClassificationError", "ClassificationResults", "MethodAccuracy", "to_markdown"]


class ClassificationError(WeightspaceError):
    """The zoo cannot be evaluated by the classification protocol (one line saying why)."""


@dataclass
class MethodAccuracy:
    """Top-1 test accuracy of one method (fractions in ``[0, 1]``).

    Attributes:
        method: the method's name.
        accuracy: top-1 accuracy on the test models (uncovered models count as wrong).
        bootstrap_std: standard deviation over resamples of the test runs.
        ci_low, ci_high: the 2.5 % and 97.5 % bootstrap percentiles.
        cv_accuracy: the best grouped-CV accuracy on the training split.
        head: the chosen head and its hyper-parameters.
        coverage: fraction of test models with a finite embedding.
        seconds: fit + embed + head time.
        error: why the method could not run (then the numbers are NaN).
    """

    method: str
    accuracy: float = float("nan")
    bootstrap_std: float = float("nan")
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    cv_accuracy: float = float("nan")
    head: dict[str, Any] = field(default_factory=dict)
    coverage: float = float("nan")
    seconds: float = float("nan")
    error: str | None = None


@dataclass
class ClassificationResults:
    """What :func:`run_classification` measured."""

    zoo: str
    num_classes: int
    train_models: int
    test_models: int
    chance: float
    seed: int
    bootstrap: int
    head: str
    rows: list[MethodAccuracy]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)

    def row(self, method: str) -> MethodAccuracy:
        """The row of ``method`` (KeyError if it was not run)."""
        for row in self.rows:
            if row.method == method:
                return row
        raise KeyError(method)


def to_markdown(results: ClassificationResults) -> str:
    """The results as Markdown: one row per method (accuracy ± bootstrap std, 95 % interval,
    CV accuracy, coverage) and the chance row."""
    lines = [
        f"INR classification on `{results.zoo}`: {results.train_models} training / "
        f"{results.test_models} test models, {results.num_classes} classes, head "
        f"{results.head}, bootstrap {results.bootstrap} (seed {results.seed})",
        "",
        "| method | test top-1 (%) | ± boot std | 95 % interval | CV top-1 (%) | coverage |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| chance (majority class) | {100 * results.chance:.1f} | | | | |",
    ]
    for row in results.rows:
        if row.error:
            lines.append(f"| {row.method} | — | | | | failed: {row.error} |")
            continue
        cv = f"{100 * row.cv_accuracy:.1f}" if np.isfinite(row.cv_accuracy) else "—"
        lines.append(
            f"| {row.method} | {100 * row.accuracy:.1f} | {100 * row.bootstrap_std:.1f} | "
            f"{100 * row.ci_low:.1f}–{100 * row.ci_high:.1f} | {cv} | "
            f"{100 * row.coverage:.0f} % |"
        )
    return "\n".join(lines)
