"""Predict a checkpoint's test accuracy from its weights, with a conformal interval, neighbours
and a warning when the model lies outside what the encoder was trained on.

**Heads.** ``encoder``: the encoder's own accuracy head. ``gbt``: the frozen embedding with a
gradient-boosted tree head (``weightspace-gbt`` in ``bench``): tuned once by run-grouped
cross-validation on the encoder's training runs
(:func:`weightspace.baselines.tuning.tuned_regressor`), the chosen hyper-parameters cached, the
head refit (deterministically) on each call.

**Interval.** *Split conformal*: on the validation runs the encoder was early-stopped on (never
its training runs), take the absolute residuals :math:`r_i = |\\hat a_i - a_i|` of the head,
``n`` of them; for coverage :math:`1 - \\alpha` the half-width is the
:math:`\\lceil (n + 1)(1 - \\alpha) \\rceil`-th smallest residual. Under exchangeability of the
query with the validation checkpoints, the interval holds the true accuracy with probability at
least :math:`1 - \\alpha`.

**Out of distribution.** The interval's promise needs the query to resemble the zoo, so the
answer says when it does not (:mod:`weightspace.predict_reference`): an input shape, output
count, architecture family or task no zoo model has, nearest zoo models of another input shape,
or a cosine distance to the nearest zoo model above the 95th percentile of the zoo's own
nearest-other-run distances. Such a model is still answered, with the reasons.

Calibration residuals (``calibration.json``), the zoo reference (``predict_reference.
safetensors``) and the tree head's choice (``gbt_head.json``) are cached in the encoder
directory, written atomically, so that after the first call ``predict`` needs no zoo.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from weightspace.atomic import atomic_write
from weightspace.errors import WeightspaceError

__all__ = ["HEADS", "Prediction", "Predictor", "conformal_halfwidth", "predict_checkpoint"]

CALIBRATION_FILE = "calibration.json"
GBT_FILE = "gbt_head.json"
#: The accuracy heads ``predict`` offers.
HEADS: tuple[str, ...] = ("encoder", "gbt")


@dataclass
class Prediction:
    """What ``weightspace predict`` reports for one checkpoint."""

    file: str
    test_accuracy: float
    interval: tuple[float, float] | None  # conformal interval, None without calibration
    coverage: float
    calibration_size: int
    neighbours: list[dict[str, Any]]
    head: str = "encoder"
    out_of_distribution: bool | None = None  # None: nothing to compare with
    ood_reasons: list[str] = field(default_factory=list)
    nearest_distance: float | None = None
    distance_threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "predicted_test_accuracy": self.test_accuracy,
            "head": self.head,
            "interval": list(self.interval) if self.interval else None,
            "coverage": self.coverage,
            "calibration_size": self.calibration_size,
            "out_of_distribution": self.out_of_distribution,
            "ood_reasons": list(self.ood_reasons),
            "nearest_distance": self.nearest_distance,
            "distance_threshold": self.distance_threshold,
            "neighbours": self.neighbours,
        }


def conformal_halfwidth(residuals: np.ndarray, coverage: float) -> float:
    """The split-conformal half-width for ``coverage`` from absolute ``residuals``.

    Returns ``inf`` when there are too few residuals for that coverage.
    """
    r = np.sort(np.abs(np.asarray(residuals, dtype=float)))
    n = len(r)
    rank = math.ceil((n + 1) * coverage)
    if n == 0 or rank > n:
        return float("inf")
    return float(r[rank - 1])


def _encoder_zoo(encoder_dir: Path) -> Any | None:
    from weightspace.zoo import Zoo

    try:
        record = json.loads((encoder_dir / "zoo_fingerprint.json").read_text())
        return Zoo.open(record["zoo"])
    except (OSError, KeyError, json.JSONDecodeError, WeightspaceError):
        return None


def _splits(encoder_dir: Path) -> dict[str, list[str]]:
    try:
        data = json.loads((encoder_dir / "splits.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {str(k): [str(r) for r in v] for k, v in data.items() if isinstance(v, list)}


def _calibration(encoder: Any, encoder_dir: Path, zoo: Any | None) -> np.ndarray | None:
    path = encoder_dir / CALIBRATION_FILE
    if path.exists():
        data = json.loads(path.read_text())
        if data.get("encoder_fingerprint") == encoder.fingerprint:
            return np.asarray(data["residuals"], dtype=float)
    if zoo is None:
        return None
    val_runs = set(_splits(encoder_dir).get("val", []))
    table = zoo.table
    rows = table[table["run_id"].astype(str).isin(val_runs)]
    rows = rows[rows["test_accuracy"].notna()]
    if rows.empty:
        return None
    ids = list(rows["checkpoint_id"].astype(str))
    predicted = encoder.predict_accuracy([zoo.graph(i) for i in ids])
    residuals = np.abs(predicted - rows["test_accuracy"].to_numpy(float))
    payload = {"encoder_fingerprint": encoder.fingerprint, "residuals": residuals.tolist()}
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(payload)))
    return residuals


class PredictError(WeightspaceError):
    """``predict`` was asked for something the encoder directory cannot give."""


class Predictor:
    """An encoder directory ready to predict many checkpoints (everything loaded once).

    Args:
        encoder_dir: a directory written by ``weightspace train`` (or ``pretrained:NAME``).
        head: ``"encoder"`` or ``"gbt"`` (see the module docstring).
        k: nearest zoo models to report (0: none).
        coverage: target coverage of the conformal interval, in ``(0, 1)``.
    """

    def __init__(
        self,
        encoder_dir: str | Path,
        *,
        head: str = "encoder",
        k: int = 5,
        coverage: float = 0.9,
        device: str = "cpu",
    ) -> None:
        from weightspace.nn import Encoder
        from weightspace.predict_reference import ZooReference, load_or_build_reference

        if not 0 < coverage < 1:
            raise PredictError(f"coverage must be in (0, 1), got {coverage}")
        if head not in HEADS:
            raise PredictError(f"unknown head {head!r}; valid: {', '.join(HEADS)}")
        self.encoder_dir = _resolve_encoder_dir(encoder_dir)
        self.head, self.k, self.coverage = head, k, coverage
        self.encoder = Encoder.load(self.encoder_dir).to(device)
        zoo = _encoder_zoo(self.encoder_dir)
        self.reference: ZooReference | None = load_or_build_reference(
            self.encoder, self.encoder_dir, zoo, _splits(self.encoder_dir)
        )
        self.gbt_: Any = None
        if head == "gbt":
            if self.reference is None:
                raise PredictError(
                    f"{self.encoder_dir}: --head gbt fits a tree head on the encoder's zoo, but "
                    "the zoo is not reachable and no predict_reference.safetensors is cached; "
                    "use --head encoder"
                )
            self.gbt_, self.residuals = _gbt_head(self.encoder, self.encoder_dir, self.reference)
        else:
            self.residuals = _calibration(self.encoder, self.encoder_dir, zoo)

    def predict(
        self,
        models: Sequence[tuple[Any, dict]],
        names: Sequence[str],
        tasks: Sequence[str | None] | None = None,
    ) -> list[Prediction]:
        """Predictions for ``models`` (``(spec, state_dict)`` pairs) named ``names``."""
        from weightspace.graph import to_graph

        if not models:
            return []
        graphs = [to_graph(spec, state, check=False) for spec, state in models]
        z = np.asarray(self.encoder.embed(graphs), dtype=np.float32)  # (n, d)
        if self.gbt_ is not None:
            values = self.gbt_.predict(z.astype(np.float64))
        else:
            values = np.asarray(self.encoder.predict_accuracy(graphs), dtype=float)
        half = None
        if self.residuals is not None and len(self.residuals):
            half = conformal_halfwidth(self.residuals, self.coverage)
        out = []
        for i, ((spec, _), name) in enumerate(zip(models, names, strict=True)):
            value = float(values[i])
            prediction = Prediction(
                file=str(name),
                test_accuracy=value,
                interval=None if half is None else (max(0.0, value - half), min(1.0, value + half)),
                coverage=self.coverage,
                calibration_size=0 if self.residuals is None else len(self.residuals),
                neighbours=[],
                head=self.head,
            )
            if self.reference is not None:
                task = None if tasks is None else tasks[i]
                check = self.reference.check(spec, z[i], task=task, k=self.k)
                prediction.neighbours = check.neighbours
                prediction.out_of_distribution = bool(check.reasons)
                prediction.ood_reasons = check.reasons
                prediction.nearest_distance = check.nearest_distance
                prediction.distance_threshold = self.reference.threshold
            out.append(prediction)
        return out


def _resolve_encoder_dir(reference: str | Path) -> Path:
    try:
        from weightspace.pretrained import resolve_encoder_reference
    except ImportError:  # pragma: no cover - an installation without bundled encoders
        return Path(reference)
    return resolve_encoder_reference(reference)


def _gbt_head(encoder: Any, encoder_dir: Path, reference: Any) -> tuple[Any, np.ndarray | None]:
    """The tree head on the reference's training rows, and its validation residuals.

    The grid search (run-grouped CV) runs once; its choice is cached in ``gbt_head.json`` and
    the head refit with it (fixed seed: the same trees every time).
    """
    from weightspace.baselines.tuning import tuned_regressor

    train = reference.rows("train")
    if not train.any():
        raise PredictError(
            f"{encoder_dir}: no training checkpoint with a test accuracy to fit the tree head on"
        )
    z = reference.z.astype(np.float64)
    y = reference.accuracy
    path = encoder_dir / GBT_FILE
    cached: dict[str, Any] = {}
    if path.exists():
        try:
            cached = json.loads(path.read_text())
        except json.JSONDecodeError:
            cached = {}
    if cached.get("encoder_fingerprint") == encoder.fingerprint and "best_params" in cached:
        grid = {key: [value] for key, value in cached["best_params"].items()}
        head = tuned_regressor("gbt", z[train], y[train], None, 0, grid=grid or None)
        residuals = cached.get("residuals")
        return head, None if residuals is None else np.asarray(residuals, dtype=float)
    head = tuned_regressor("gbt", z[train], y[train], reference.runs[train], 0)
    val = reference.rows("val")
    residuals = np.abs(head.predict(z[val]) - y[val]) if val.any() else None
    payload = {
        "encoder_fingerprint": encoder.fingerprint,
        "best_params": head.best_params_,
        "cv_r2": None if math.isnan(head.cv_score_) else head.cv_score_,
        "residuals": None if residuals is None else residuals.tolist(),
    }
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(payload)))
    return head, residuals


def predict_checkpoint(
    path: str | Path,
    encoder_dir: str | Path,
    *,
    k: int = 5,
    coverage: float = 0.9,
    device: str = "cpu",
    head: str = "encoder",
    **load_kwargs: Any,
) -> Prediction:
    """Predict the test accuracy of the checkpoint at ``path`` (see the module docstring).

    Args:
        path: checkpoint file; ``load_kwargs`` (activation, spec, model, allow_nonfinite) as in
            :func:`weightspace.ingest.load_checkpoint`.
        encoder_dir: a directory written by ``weightspace train``.
        k: nearest zoo models to report (0: none).
        coverage: target coverage of the conformal interval.
        head: ``"encoder"`` or ``"gbt"``.
    """
    from weightspace.ingest import load_checkpoint
    from weightspace.predict_reference import checkpoint_task

    if not 0 < coverage < 1:
        raise PredictError(f"coverage must be in (0, 1), got {coverage}")
    predictor = Predictor(encoder_dir, head=head, k=k, coverage=coverage, device=device)
    spec, state = load_checkpoint(path, **load_kwargs)
    [prediction] = predictor.predict([(spec, state)], [str(path)], [checkpoint_task(path)])
    return prediction
