"""Predict a checkpoint's test accuracy from its weights, with a conformal interval and neighbours.

The interval is *split conformal*: on the validation runs the encoder was early-stopped on (never
its training runs), take the absolute residuals :math:`r_i = |\\hat a_i - a_i|`, ``n`` of them;
for coverage :math:`1 - \\alpha` the half-width is the
:math:`\\lceil (n + 1)(1 - \\alpha) \\rceil`-th smallest residual. Under exchangeability of the
query with the validation checkpoints, the interval holds the true accuracy with probability at
least :math:`1 - \\alpha`.

Calibration residuals and the zoo's embeddings are cached in the encoder directory
(``calibration.json``, ``zoo_embeddings.npz``), written atomically.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from weightspace.atomic import atomic_write
from weightspace.errors import WeightspaceError

__all__ = ["Prediction", "conformal_halfwidth", "predict_checkpoint"]

CALIBRATION_FILE = "calibration.json"
EMBEDDINGS_FILE = "zoo_embeddings.npz"


@dataclass
class Prediction:
    """What ``weightspace predict`` reports for one checkpoint."""

    file: str
    test_accuracy: float
    interval: tuple[float, float] | None  # conformal interval, None without calibration
    coverage: float
    calibration_size: int
    neighbours: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "predicted_test_accuracy": self.test_accuracy,
            "interval": list(self.interval) if self.interval else None,
            "coverage": self.coverage,
            "calibration_size": self.calibration_size,
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


def _calibration(encoder: Any, encoder_dir: Path, zoo: Any | None) -> np.ndarray | None:
    path = encoder_dir / CALIBRATION_FILE
    if path.exists():
        data = json.loads(path.read_text())
        if data.get("encoder_fingerprint") == encoder.fingerprint:
            return np.asarray(data["residuals"], dtype=float)
    if zoo is None:
        return None
    try:
        splits = json.loads((encoder_dir / "splits.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    table = zoo.table
    rows = table[table["run_id"].astype(str).isin(set(map(str, splits.get("val", []))))]
    rows = rows[rows["test_accuracy"].notna()]
    if rows.empty:
        return None
    ids = list(rows["checkpoint_id"].astype(str))
    predicted = encoder.predict_accuracy([zoo.graph(i) for i in ids])
    residuals = np.abs(predicted - rows["test_accuracy"].to_numpy(float))
    payload = {"encoder_fingerprint": encoder.fingerprint, "residuals": residuals.tolist()}
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(payload)))
    return residuals


def _zoo_embeddings(encoder: Any, encoder_dir: Path, zoo: Any) -> tuple[list[str], np.ndarray]:
    path = encoder_dir / EMBEDDINGS_FILE
    if path.exists():
        data = np.load(path, allow_pickle=False)
        if str(data["fingerprint"]) == encoder.fingerprint:
            return [str(i) for i in data["ids"]], data["z"]
    ids = list(map(str, zoo.ids))
    z = np.asarray(encoder.embed([zoo.graph(i) for i in ids]), dtype=np.float32)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, ids=np.asarray(ids), z=z, fingerprint=np.asarray(encoder.fingerprint))

    atomic_write(path, write)
    return ids, z


def predict_checkpoint(
    path: str | Path,
    encoder_dir: str | Path,
    *,
    k: int = 5,
    coverage: float = 0.9,
    device: str = "cpu",
    **load_kwargs: Any,
) -> Prediction:
    """Predict the test accuracy of the checkpoint at ``path`` (see the module docstring).

    Args:
        path: checkpoint file; ``load_kwargs`` (activation, spec, model, allow_nonfinite) as in
            :func:`weightspace.ingest.load_checkpoint`.
        encoder_dir: a directory written by ``weightspace train``.
        k: nearest zoo models to report (0: none).
        coverage: target coverage of the conformal interval.
    """
    from weightspace.graph import to_graph
    from weightspace.ingest import load_checkpoint
    from weightspace.nn import Encoder

    if not 0 < coverage < 1:
        raise WeightspaceError(f"coverage must be in (0, 1), got {coverage}")
    encoder_dir = Path(encoder_dir)
    encoder = Encoder.load(encoder_dir).to(device)
    spec, state = load_checkpoint(path, **load_kwargs)
    graph = to_graph(spec, state, check=False)
    value = float(encoder.predict_accuracy([graph])[0])
    zoo = _encoder_zoo(encoder_dir)
    residuals = _calibration(encoder, encoder_dir, zoo)
    interval = None
    if residuals is not None:
        half = conformal_halfwidth(residuals, coverage)
        interval = (max(0.0, value - half), min(1.0, value + half))
    neighbours: list[dict[str, Any]] = []
    if k > 0 and zoo is not None:
        ids, z = _zoo_embeddings(encoder, encoder_dir, zoo)
        query = np.asarray(encoder.embed([graph]), dtype=np.float32)[0]
        norms = np.linalg.norm(z, axis=1) * max(np.linalg.norm(query), 1e-12)
        scores = (z @ query) / np.maximum(norms, 1e-12)
        table = zoo.table.set_index(zoo.table["checkpoint_id"].astype(str))
        for i in np.argsort(-scores)[:k]:
            row = table.loc[ids[i]]
            neighbours.append(
                {
                    "checkpoint_id": ids[i],
                    "score": float(scores[i]),
                    **{
                        c: (row[c].item() if hasattr(row[c], "item") else row[c])
                        for c in ("run_id", "task", "arch", "epoch", "test_accuracy")
                        if c in row.index
                    },
                }
            )
    return Prediction(
        file=str(path),
        test_accuracy=value,
        interval=interval,
        coverage=coverage,
        calibration_size=0 if residuals is None else len(residuals),
        neighbours=neighbours,
    )
