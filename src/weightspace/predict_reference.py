r"""What ``predict`` knows of the encoder's zoo: embeddings, labels, and the training domain.

A :class:`ZooReference` holds, for every zoo checkpoint, its embedding :math:`z_i`, test
accuracy, split (train / val / test runs of the encoder) and run, plus the columns neighbours
are shown with, and the *domain*: every input shape, output count, architecture family
(:func:`architecture_family`) and task of the zoo. It is computed once from the zoo and cached
in the encoder directory as ``predict_reference.safetensors`` (tensors, with the rest as JSON in
the header), so ``predict`` works without the zoo afterwards, and a bundled encoder can ship it.

**Distance threshold.** With unit vectors :math:`\hat z = z / \lVert z \rVert`, the cosine
distance is :math:`d(q, i) = 1 - \hat q^\top \hat z_i`. Each reference checkpoint :math:`i`
(a seeded sample of at most :data:`THRESHOLD_SAMPLE`) gets its distance to the nearest zoo
checkpoint *of another run*, :math:`\delta_i = \min_{j:\,\mathrm{run}(j) \ne \mathrm{run}(i)}
d(i, j)` — what a model from a new training run of a familiar setting sees. The threshold is
the :data:`QUANTILE` quantile of the :math:`\delta_i`; a query whose nearest zoo checkpoint is
farther is flagged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from weightspace.atomic import atomic_write

__all__ = [
    "QUANTILE",
    "REFERENCE_FILE",
    "DistributionCheck",
    "ZooReference",
    "architecture_family",
    "checkpoint_task",
    "load_or_build_reference",
]

REFERENCE_FILE = "predict_reference.safetensors"
REFERENCE_FORMAT = 1
#: Quantile of in-distribution nearest-neighbour distances above which a query is flagged.
QUANTILE = 0.95
#: Reference checkpoints whose nearest-other-run distance sets the threshold (seeded sample).
THRESHOLD_SAMPLE = 2000
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
_NEIGHBOUR_COLUMNS = ("run_id", "task", "arch", "epoch", "test_accuracy")


def architecture_family(spec: Any) -> str:
    """The kinds of a spec's parametrised layers, sorted and joined: ``linear``,
    ``conv2d+linear``, ...; depth and width are not part of it."""
    return "+".join(sorted({op.kind for op in spec.layers}))


def checkpoint_task(path: str | Path) -> str | None:
    """The ``task`` recorded in a safetensors checkpoint's metadata, if any."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception:  # unreadable files are reported by the loader
        return None
    return metadata.get("task")


@dataclass
class DistributionCheck:
    """How one query relates to the zoo: the reasons it is out of distribution (empty: in)."""

    reasons: list[str]
    nearest_distance: float
    neighbours: list[dict[str, Any]]


def _shape_text(shape: Any) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _seen_shape(shape: Any, seen: list[str]) -> tuple[int, ...]:
    """``shape``; for a free input size (global pooling) the first seen shape it fits
    (:func:`weightspace.input_domains.matching_domains`), as the probes assume it."""
    from weightspace.input_domains import has_free_size, matching_domains

    shape = tuple(int(s) for s in shape)
    if not has_free_size(shape):
        return shape
    keys = ["x".join(part.strip() for part in text.strip("[]").split(",")) for text in seen]
    found = matching_domains(shape, keys)
    return tuple(int(s) for s in found[0].split("x")) if found else shape


def _listing(values: list[Any], limit: int = 8) -> str:
    shown = [str(v) for v in values[:limit]]
    return ", ".join(shown) + (f", ... ({len(values)} in all)" if len(values) > limit else "")


@dataclass
class ZooReference:
    """See the module docstring. Arrays have one row per zoo checkpoint."""

    fingerprint: str
    ids: list[str]
    z: np.ndarray  # (n, d) float32 embeddings
    accuracy: np.ndarray  # (n,) test accuracy, NaN where unknown
    split: np.ndarray  # (n,) 0 train, 1 val, 2 test, -1 in no split
    runs: np.ndarray  # (n,) run index
    shapes: list[str]  # (n,) input shape as text, "[64]"
    columns: dict[str, list[Any]]  # neighbour columns, one list per column
    domain: dict[str, list[Any]]  # input_shapes, num_outputs, families, tasks
    threshold: float
    quantile: float = QUANTILE
    unit: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        norms = np.linalg.norm(self.z, axis=1, keepdims=True)
        self.unit = (self.z / np.maximum(norms, 1e-12)).astype(np.float32)

    def rows(self, split: str) -> np.ndarray:
        """Mask of the checkpoints of ``split`` whose test accuracy is known."""
        return (self.split == _SPLIT_CODES[split]) & np.isfinite(self.accuracy)

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls, encoder: Any, zoo: Any, splits: Mapping[str, list[str]], *, seed: int = 0
    ) -> ZooReference:
        """Embed every zoo checkpoint and measure the threshold (see the module docstring)."""
        table = zoo.table
        ids = [str(i) for i in table["checkpoint_id"]]
        z = np.asarray(encoder.embed([zoo.graph(i) for i in ids]), dtype=np.float32)
        run_ids = table["run_id"].astype(str).to_numpy() if "run_id" in table else np.array(ids)
        _, runs = np.unique(run_ids, return_inverse=True)
        code = {run: _SPLIT_CODES[s] for s, members in splits.items() if s in _SPLIT_CODES
                for run in members}  # fmt: skip
        split = np.array([code.get(r, -1) for r in run_ids], dtype=np.int64)
        accuracy = (
            table["test_accuracy"].to_numpy(float)
            if "test_accuracy" in table
            else np.full(len(ids), np.nan)
        )
        specs: dict[str, Any] = {}
        spec_texts = table["spec"].astype(str).tolist() if "spec" in table else None
        per_row = []
        for i, checkpoint_id in enumerate(ids):
            key = spec_texts[i] if spec_texts is not None else checkpoint_id
            if key not in specs:
                specs[key] = zoo.spec(checkpoint_id)
            per_row.append(specs[key])
        shapes = [_shape_text(s.input_shape) for s in per_row]
        tasks = sorted({str(t) for t in table["task"].dropna()}) if "task" in table else []
        domain = {
            "input_shapes": sorted(set(shapes)),
            "num_outputs": sorted({int(s.num_outputs) for s in per_row}),
            "families": sorted({architecture_family(s) for s in per_row}),
            "tasks": tasks,
        }
        columns = {
            c: [_json_value(v) for v in table[c].tolist()] for c in _NEIGHBOUR_COLUMNS if c in table
        }
        reference = cls(encoder.fingerprint, ids, z, accuracy, split, runs.astype(np.int64),
                        shapes, columns, domain, threshold=float("nan"))  # fmt: skip
        reference.threshold = reference._measure_threshold(seed)
        return reference

    def _measure_threshold(self, seed: int) -> float:
        n = len(self.ids)
        if n < 2 or len(np.unique(self.runs)) < 2:
            return float("nan")
        sample = np.random.default_rng(seed).permutation(n)[:THRESHOLD_SAMPLE]
        nearest = np.empty(len(sample), dtype=np.float64)
        for start in range(0, len(sample), 256):
            rows = sample[start : start + 256]
            sims = self.unit[rows] @ self.unit.T  # (b, n)
            sims[self.runs[rows][:, None] == self.runs[None, :]] = -np.inf  # other runs only
            nearest[start : start + len(rows)] = 1.0 - sims.max(axis=1)
        return float(np.quantile(nearest, self.quantile))

    # ------------------------------------------------------------------ checking
    def check(
        self, spec: Any, z: np.ndarray, *, task: str | None = None, k: int = 5
    ) -> DistributionCheck:
        """Compare a query (its spec, embedding ``z (d,)`` and task if known) with the zoo."""
        reasons = []
        domain = self.domain
        shape = _shape_text(_seen_shape(spec.input_shape, domain["input_shapes"]))
        if shape not in domain["input_shapes"]:
            reasons.append(
                f"input shape {shape} was never seen in training "
                f"(seen: {_listing(domain['input_shapes'])})"
            )
        if int(spec.num_outputs) not in domain["num_outputs"]:
            reasons.append(
                f"{int(spec.num_outputs)} outputs were never seen in training "
                f"(seen: {_listing(domain['num_outputs'])})"
            )
        family = architecture_family(spec)
        if family not in domain["families"]:
            reasons.append(
                f"architecture family {family!r} was never seen in training "
                f"(seen: {_listing(domain['families'])})"
            )
        if task is not None and domain["tasks"] and task not in domain["tasks"]:
            reasons.append(
                f"task {task!r} is not among the training tasks ({_listing(domain['tasks'])})"
            )
        query = np.asarray(z, dtype=np.float32)
        scores = self.unit @ (query / max(float(np.linalg.norm(query)), 1e-12))  # (n,)
        nearest = float(1.0 - scores.max())
        if np.isfinite(self.threshold) and nearest > self.threshold:
            reasons.append(
                f"its nearest zoo model is at cosine distance {nearest:.3f}, above the "
                f"{self.quantile:.0%} quantile of zoo models' distances to other runs "
                f"({self.threshold:.3f})"
            )
        order = np.argsort(-scores)[: max(k, 0)]
        neighbours = [
            {
                "checkpoint_id": self.ids[i],
                "score": float(scores[i]),
                **{c: values[i] for c, values in self.columns.items()},
            }
            for i in order
        ]
        if len(order) and all(self.shapes[i] != shape for i in order):
            seen = sorted({self.shapes[i] for i in order})
            near_tasks = sorted({str(n["task"]) for n in neighbours if n.get("task") is not None})
            of_tasks = f" (task {', '.join(near_tasks)})" if near_tasks else ""
            reasons.append(
                f"its {len(order)} nearest zoo models have input shape {', '.join(seen)}"
                f"{of_tasks}, not {shape}"
            )
        return DistributionCheck(reasons, nearest, neighbours)

    # ------------------------------------------------------------------ files
    def save(self, path: Path) -> Path:
        """Write the reference as safetensors (arrays) with a JSON header (the rest)."""
        from safetensors.numpy import save_file

        tensors = {
            "z": np.ascontiguousarray(self.z, dtype=np.float32),
            "accuracy": np.ascontiguousarray(self.accuracy, dtype=np.float64),
            "split": np.ascontiguousarray(self.split, dtype=np.int64),
            "runs": np.ascontiguousarray(self.runs, dtype=np.int64),
        }
        header = {
            "format": "weightspace-predict-reference",
            "format_version": REFERENCE_FORMAT,
            "encoder_fingerprint": self.fingerprint,
            "ids": self.ids,
            "shapes": self.shapes,
            "columns": self.columns,
            "domain": self.domain,
            "threshold": self.threshold,
            "quantile": self.quantile,
        }
        metadata = {"reference": json.dumps(header, allow_nan=True)}
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata))

    @classmethod
    def load(cls, path: Path, fingerprint: str) -> ZooReference | None:
        """The reference at ``path`` if it is this encoder's and readable, else ``None``."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as handle:
                header = json.loads((handle.metadata() or {})["reference"])
                if (
                    header.get("format_version") != REFERENCE_FORMAT
                    or header.get("encoder_fingerprint") != fingerprint
                ):
                    return None
                arrays = {key: handle.get_tensor(key) for key in ("z", "accuracy", "split", "runs")}
        except Exception:  # missing, stale or damaged: rebuilt from the zoo when reachable
            return None
        return cls(
            fingerprint, list(header["ids"]), arrays["z"], arrays["accuracy"], arrays["split"],
            arrays["runs"], list(header["shapes"]), dict(header["columns"]),
            dict(header["domain"]), threshold=float(header["threshold"]),
            quantile=float(header["quantile"]),
        )  # fmt: skip


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value if isinstance(value, str | int | float | bool) or value is None else str(value)


def load_or_build_reference(
    encoder: Any, encoder_dir: Path, zoo: Any | None, splits: Mapping[str, list[str]]
) -> ZooReference | None:
    """The cached reference of ``encoder``, else one built from ``zoo`` (and cached), else
    ``None`` (no zoo reachable and nothing cached)."""
    path = Path(encoder_dir) / REFERENCE_FILE
    cached = ZooReference.load(path, encoder.fingerprint) if path.exists() else None
    if cached is not None or zoo is None:
        return cached
    reference = ZooReference.build(encoder, zoo, splits)
    try:
        reference.save(path)
    except OSError:  # a read-only encoder directory (an installed bundle): use it uncached
        pass
    return reference
