"""The typed results of ``weightspace bench``: what ``bench`` writes and ``report`` reads.

One :class:`Results` per benchmark directory, saved as ``results.json`` (atomically, after every
section, so a failure late in a run keeps what came before). Accuracy prediction is one
:class:`PredictionSection` per protocol (held-out runs, architectures, a task) holding one
:class:`MethodScore` per method and seed; retrieval is one :class:`RetrievalScore` per protocol
(S, L, F), method and seed.

Every method of a prediction section is scored on the same checkpoints: ``common`` holds the
metrics on the test checkpoints that *every* method covers, ``own`` those on the checkpoints
this method covers (its ``coverage``), which may be more.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from weightspace.errors import WeightspaceError

__all__ = [
    "RESULTS_FORMAT",
    "MethodScore",
    "PredictionSection",
    "Predictions",
    "Results",
    "ResultsError",
    "RetrievalScore",
    "ZooSummary",
]

#: Version of the ``results.json`` layout; ``report`` refuses other versions with a clear error.
RESULTS_FORMAT = 2


class ResultsError(WeightspaceError):
    """A ``results.json`` that this version cannot read."""


@dataclass
class MethodScore:
    """One method on one split (one seed) of an accuracy-prediction protocol.

    Metric names: ``within_group_tau``, ``final_tau``, ``kendall_tau``,
    ``kendall_tau_above_chance``, ``r2``, ``mae``, ``n`` (checkpoints scored).
    """

    seed: int
    coverage: float  # share of the test checkpoints with a finite prediction
    common: dict[str, float]  # metrics on the checkpoints every method covers
    own: dict[str, float]  # metrics on the checkpoints this method covers
    per_task: dict[str, dict[str, float]] = field(default_factory=dict)  # common subset, by task
    bootstrap_std: dict[str, float] = field(default_factory=dict)  # std over run resamples
    refused: dict[str, str] = field(default_factory=dict)  # architecture -> why not covered
    seconds: float = float("nan")  # fit + predict
    in_common: bool = True  # False: covers too little to join the common subset (own only)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodScore:
        return cls(**data)


@dataclass
class PredictionSection:
    """Accuracy prediction on one protocol: every method, every seed."""

    protocol: str  # "held-out runs", "held-out architectures", "held-out task (wine)"
    split: dict[str, Any] = field(default_factory=dict)  # description and sizes (last seed)
    test_size: list[int] = field(default_factory=list)  # per seed: test checkpoints
    common_size: list[int] = field(default_factory=list)  # per seed: covered by every method
    skipped_metrics: dict[str, str] = field(default_factory=dict)  # metric -> why not computed
    methods: dict[str, list[MethodScore]] = field(default_factory=dict)

    def add(self, method: str, score: MethodScore) -> None:
        self.methods.setdefault(method, []).append(score)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PredictionSection:
        methods = {
            name: [MethodScore.from_dict(s) for s in scores]
            for name, scores in data.get("methods", {}).items()
        }
        return cls(**{**data, "methods": methods})


@dataclass
class RetrievalScore:
    """One method on one retrieval protocol and seed: flat metrics (``recall@k``, ``mrr``,
    ``map``, ``gallery_size``, ...) and, for lineage, the same per derivative kind."""

    seed: int
    metrics: dict[str, float]
    by_kind: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetrievalScore:
        return cls(**data)


@dataclass
class Predictions:
    """Seed 0's held-out-runs predictions, for the predicted-vs-true figure."""

    true: list[float]
    predicted: dict[str, list[float | None]]  # method -> one value (None: not covered)


@dataclass
class ZooSummary:
    path: str
    name: str
    checkpoints: int
    runs: int
    tasks: list[str]
    architectures: int | None
    columns: list[str] = field(default_factory=list)  # the zoo table's columns


@dataclass
class Results:
    """Everything one benchmark directory holds. ``save`` / ``load`` round-trip it exactly."""

    config: dict[str, Any]
    zoo: ZooSummary
    encoder: dict[str, Any] = field(default_factory=dict)  # where our encoder(s) came from
    spread: str = "seeds"  # how ± is computed: "seeds" (std over seeds) or "bootstrap"
    prediction: dict[str, PredictionSection] = field(default_factory=dict)
    retrieval: dict[str, dict[str, list[RetrievalScore]]] = field(default_factory=dict)
    predictions_seed0: Predictions | None = None
    embedding_map: dict[str, list[Any]] = field(default_factory=dict)
    synthesis: dict[str, Any] | None = None
    classification: dict[str, Any] | None = None  # class-target zoos (INRs): top-1 per method
    published: dict[str, Any] | None = None  # published figures on this zoo's benchmark
    skipped: dict[str, str] = field(default_factory=dict)  # what did not run -> why
    notes: list[str] = field(default_factory=list)
    timings: dict[str, list[float]] = field(default_factory=dict)
    updated_sections: list[str] = field(default_factory=list)  # set by a partial (--only) run
    format: int = RESULTS_FORMAT

    def section(self, protocol: str) -> PredictionSection:
        """The prediction section of ``protocol``, created empty if new."""
        return self.prediction.setdefault(protocol, PredictionSection(protocol))

    def add_retrieval(self, protocol: str, method: str, score: RetrievalScore) -> None:
        self.retrieval.setdefault(protocol, {}).setdefault(method, []).append(score)

    def time(self, step: str, seconds: float) -> None:
        self.timings.setdefault(step, []).append(float(seconds))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Results:
        if data.get("format") != RESULTS_FORMAT:
            raise ResultsError(
                f"results of format {data.get('format', 1)!r}, this version reads format "
                f"{RESULTS_FORMAT}; rerun `weightspace bench` to regenerate them"
            )
        seed0 = data.get("predictions_seed0")
        return cls(
            **{
                **data,
                "zoo": ZooSummary(**data["zoo"]),
                "prediction": {
                    k: PredictionSection.from_dict(v) for k, v in data.get("prediction", {}).items()
                },
                "retrieval": {
                    protocol: {
                        m: [RetrievalScore.from_dict(s) for s in scores]
                        for m, scores in per_method.items()
                    }
                    for protocol, per_method in data.get("retrieval", {}).items()
                },
                "predictions_seed0": Predictions(**seed0) if seed0 else None,
            }
        )

    def save(self, path: str | Path) -> Path:
        """Write ``results.json`` atomically (NaN is written as ``NaN``, as Python reads it)."""
        from weightspace.atomic import atomic_write

        text = json.dumps(self.to_dict(), indent=1, default=_json_default)
        return atomic_write(path, lambda tmp: tmp.write_text(text))

    @classmethod
    def load(cls, path: str | Path) -> Results:
        """Read a ``results.json``; :class:`ResultsError` names the file and the problem."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ResultsError(f"{path}: cannot read benchmark results ({exc})") from None
        if not isinstance(data, dict):
            raise ResultsError(f"{path}: not a benchmark results object")
        try:
            return cls.from_dict(data)
        except ResultsError as exc:
            raise ResultsError(f"{path}: {exc}") from None
        except (TypeError, KeyError) as exc:
            raise ResultsError(f"{path}: malformed benchmark results ({exc})") from None


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
        return None if isinstance(value, float) and math.isnan(value) else value
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
