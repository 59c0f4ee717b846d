r"""Evaluation protocols: splits, accuracy prediction, and retrieval S / L / F.

Every protocol takes an *embedder* (anything with ``embed(models) -> (n, d)``: a baseline of
:mod:`weightspace.baselines` or :class:`weightspace.nn.Encoder`) or a *predictor* (``fit`` and
``predict``/``predict_accuracy``), the models as :class:`~weightspace.graph.NeuralGraph`, and the
metadata it needs (runs, tasks, accuracies), and returns a flat ``dict`` of metrics computed with
:mod:`weightspace.evaluate.metrics`.

Splits
    Always by run: every checkpoint of one training run lands on one side
    (:func:`split_by_run`), or whole architectures (:func:`split_by_architecture`: train on the
    narrower/shallower, test on the wider/deeper) or whole tasks (:func:`split_by_task`) are held
    out.

Accuracy prediction (:func:`evaluate_accuracy_prediction`)
    Kendall :math:`\tau`, :math:`R^2`, MAE on held-out checkpoints, and :math:`\tau` over the
    held-out checkpoints whose true accuracy is above chance (:math:`1/C` for a task with
    :math:`C` classes), where the ranking is harder and matters more.

Retrieval (gallery = held-out checkpoints)
    Queries are ranked against the gallery by cosine similarity of L2-normalised embeddings,

    .. math:: s(q, g) = \frac{z_q^\top z_g}{\lVert z_q\rVert\,\lVert z_g\rVert},

    and scored with Recall@1/5/10 (a relevant item in the top :math:`k`) and MRR; the gallery size
    is reported beside them.

    * **S** (:func:`evaluate_retrieval_symmetry`): the query is a gallery model under a random
      permutation + rescaling + sign flip (:func:`weightspace.symmetry.random_symmetry`); the
      relevant item is that model.
    * **L** (:func:`evaluate_retrieval_lineage`): the query is a *derivative* of a gallery model
      (:mod:`weightspace.evaluate.derivatives`: noise, pruning, quantisation, fine-tuning) then
      passed through a random symmetry transform, as a re-upload would be; the relevant items are
      the source run's checkpoints in the gallery.
    * **F** (:func:`evaluate_retrieval_function`): the query is a gallery model (itself excluded
      from its ranking); the relevant items are the ``k`` other gallery models of its task whose
      predicted labels on the task's test inputs agree most with its own.

Example::

    zoo = Zoo.open("zoo-small")
    split = split_by_run(zoo.table, (0.6, 0.2, 0.2), seed=0)
    model = get_embedder("statnn", random_state=0)
    accuracy = evaluate_accuracy_prediction(model, zoo.table, split, zoo)  # fits on split.train
    gallery = load_gallery(zoo, zoo.table, split.test)
    s = evaluate_retrieval_symmetry(model, gallery.graphs, seed=0)
    l = evaluate_retrieval_lineage(model, gallery.graphs, gallery.runs, tasks=gallery.tasks)
    f = evaluate_retrieval_function(model, gallery.graphs, gallery.tasks, k=5)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from weightspace.errors import WeightspaceError
from weightspace.evaluate.derivatives import DERIVATIVES, make_derivative
from weightspace.evaluate.metrics import (
    kendall_tau,
    mean_absolute_error,
    mean_reciprocal_rank,
    r2_score,
    recall_at_k,
)
from weightspace.graph import NeuralGraph, to_graph, to_state_dict
from weightspace.module import to_module

__all__ = [
    "ACCURACY_TARGET",
    "DEFAULT_KS",
    "Gallery",
    "ProtocolError",
    "Split",
    "accuracy_prediction_metrics",
    "check_split",
    "evaluate_accuracy_prediction",
    "evaluate_retrieval_function",
    "evaluate_retrieval_lineage",
    "evaluate_retrieval_symmetry",
    "load_gallery",
    "predicted_labels",
    "rank_by_cosine",
    "retrieval_metrics",
    "split_by_architecture",
    "split_by_run",
    "split_by_task",
]

ACCURACY_TARGET = "test_accuracy"
#: Cut-offs of Recall@k reported by every retrieval protocol.
DEFAULT_KS: tuple[int, ...] = (1, 5, 10)
_ID_COLUMNS = ("checkpoint_id", "id")
_RUN_COLUMNS = ("run_id", "run")


class ProtocolError(WeightspaceError, ValueError):
    """A protocol got inconsistent inputs (empty split, missing column, too small a gallery)."""


class SupportsEmbed(Protocol):
    def embed(self, models: Sequence[NeuralGraph]) -> np.ndarray: ...


#: Where graphs come from: a mapping id → graph, a function id → graph, or a zoo (``.graph(id)``).
GraphSource = Mapping[str, NeuralGraph] | Callable[[str], NeuralGraph] | Any


# ---------------------------------------------------------------------------------------------
# table helpers
# ---------------------------------------------------------------------------------------------
def _column(table: pd.DataFrame, candidates: Sequence[str], what: str) -> str:
    for name in candidates:
        if name in table.columns:
            return name
    raise ProtocolError(
        f"the table has no {what} column (looked for {list(candidates)}); it has "
        f"{list(table.columns)[:12]}"
    )


def _graph(source: GraphSource, checkpoint_id: str) -> NeuralGraph:
    if hasattr(source, "graph"):
        return source.graph(checkpoint_id)
    if isinstance(source, Mapping):
        try:
            return source[checkpoint_id]
        except KeyError:
            raise ProtocolError(f"no graph for checkpoint {checkpoint_id!r}") from None
    if callable(source):
        return source(checkpoint_id)
    raise ProtocolError(
        f"cannot load graphs from a {type(source).__name__}; pass a Zoo, a mapping id -> "
        "NeuralGraph or a function id -> NeuralGraph"
    )


def _rows(table: pd.DataFrame, ids: Sequence[str]) -> pd.DataFrame:
    id_col = _column(table, _ID_COLUMNS, "checkpoint id")
    indexed = table.set_index(id_col, drop=False)
    missing = [i for i in ids if i not in indexed.index]
    if missing:
        raise ProtocolError(f"checkpoints {missing[:5]} are not in the table")
    return indexed.loc[list(ids)]


@dataclass(frozen=True)
class Gallery:
    """Graphs of a set of checkpoints with the metadata retrieval needs, in one order."""

    ids: tuple[str, ...]
    graphs: list[NeuralGraph]
    runs: tuple[str, ...]
    tasks: tuple[str, ...] | None = None


def load_gallery(source: GraphSource, table: pd.DataFrame, ids: Sequence[str]) -> Gallery:
    """Load the graphs of ``ids`` from ``source`` with their runs and (if known) tasks."""
    rows = _rows(table, ids)
    run_col = _column(table, _RUN_COLUMNS, "run id")
    tasks = tuple(str(t) for t in rows["task"]) if "task" in rows.columns else None
    return Gallery(
        ids=tuple(ids),
        graphs=[_graph(source, i) for i in ids],
        runs=tuple(str(r) for r in rows[run_col]),
        tasks=tasks,
    )


# ---------------------------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Split:
    """Checkpoint ids of a train / validation / test split, and how it was made."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    description: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Sizes and description, JSON-ready (for reports)."""
        return {
            "description": self.description,
            "train": len(self.train),
            "val": len(self.val),
            "test": len(self.test),
            **self.info,
        }


def check_split(table: pd.DataFrame, split: Split) -> None:
    """Raise :class:`ProtocolError` if a checkpoint or a run appears on two sides."""
    run_col = _column(table, _RUN_COLUMNS, "run id")
    runs = {}
    for side in ("train", "val", "test"):
        ids = getattr(split, side)
        if len(set(ids)) != len(ids):
            raise ProtocolError(f"the {side} split lists a checkpoint twice")
        runs[side] = set(_rows(table, ids)[run_col]) if ids else set()
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = runs[a] & runs[b]
        if shared:
            raise ProtocolError(
                f"runs {sorted(shared)[:3]} have checkpoints in both {a} and {b}; splits must "
                "be by run"
            )


def _split_runs(
    runs: Sequence[str], fractions: Sequence[float], rng: np.random.Generator
) -> list[list[str]]:
    """Shuffle ``runs`` and cut them by ``fractions`` (rounded, every non-zero part non-empty
    when there are enough runs)."""
    runs = sorted(runs)
    order = [runs[i] for i in rng.permutation(len(runs))]
    total = float(sum(fractions))
    counts = [int(round(f / total * len(runs))) for f in fractions]
    for i, f in enumerate(fractions):  # give each requested part at least one run
        if f > 0 and counts[i] == 0:
            donor = int(np.argmax(counts))
            if counts[donor] > 1:
                counts[donor] -= 1
                counts[i] += 1
    counts[-1] = len(runs) - sum(counts[:-1])
    parts, start = [], 0
    for c in counts:
        parts.append(order[start : start + c])
        start += c
    return parts


def _ids_of_runs(table: pd.DataFrame, runs: Sequence[str]) -> tuple[str, ...]:
    id_col = _column(table, _ID_COLUMNS, "checkpoint id")
    run_col = _column(table, _RUN_COLUMNS, "run id")
    wanted = set(runs)
    return tuple(str(i) for i, r in zip(table[id_col], table[run_col], strict=True) if r in wanted)


def split_by_run(
    table: pd.DataFrame, fractions: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0
) -> Split:
    """Random train/val/test split of the *runs* (all checkpoints of a run on one side).

    Args:
        table: one row per checkpoint with ``checkpoint_id`` and ``run_id`` columns.
        fractions: of runs, for train, val, test (normalised; val may be 0).
        seed: of the shuffle.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or fractions[0] <= 0:
        raise ProtocolError(f"fractions must be three non-negative numbers, got {fractions}")
    run_col = _column(table, _RUN_COLUMNS, "run id")
    runs = [str(r) for r in table[run_col].unique()]
    if len(runs) < 2:
        raise ProtocolError(f"a split by run needs at least 2 runs, the table has {len(runs)}")
    parts = _split_runs(runs, fractions, np.random.default_rng(seed))
    train, val, test = (_ids_of_runs(table, p) for p in parts)
    return Split(
        train,
        val,
        test,
        description=f"by run, fractions {tuple(fractions)}, seed {seed}",
        info={"runs": [len(p) for p in parts], "seed": seed},
    )


def _arch_size(table: pd.DataFrame, arch: str, by: str) -> tuple[float, ...]:
    """``(depth, width)``-style size key of an architecture name, for ``by`` in
    ``{"width", "depth", "size"}``."""
    rows = table[table["arch"] == arch]
    width = depth = None
    if "width" in rows.columns and "depth" in rows.columns:
        width, depth = float(rows["width"].iloc[0]), float(rows["depth"].iloc[0])
    else:
        try:
            from weightspace.zoo.architectures import get_arch

            config = get_arch(arch)
            width, depth = float(config.width), float(config.depth)
        except WeightspaceError:
            pass
    if by == "width" and width is not None:
        return (width, depth or 0.0)
    if by == "depth" and depth is not None:
        return (depth, width or 0.0)
    if "spec" in rows.columns:  # parameter count of the spec
        from weightspace.spec import NetworkSpec

        spec = rows["spec"].iloc[0]
        spec = NetworkSpec.from_json(spec) if isinstance(spec, str) else spec
        return (float(spec.num_parameters),)
    if width is not None and depth is not None:
        return (width * depth, depth)
    raise ProtocolError(
        f"cannot tell how large architecture {arch!r} is: give the table 'width' and 'depth' "
        "columns, a 'spec' column, or use registered architecture names"
    )


def split_by_architecture(
    table: pd.DataFrame,
    *,
    by: str = "size",
    test_fraction: float = 0.25,
    val_fraction: float = 0.15,
    seed: int = 0,
) -> Split:
    """Hold out the largest architectures: train on narrower/shallower, test on wider/deeper.

    Architectures are ordered by ``by`` — ``"width"`` (then depth), ``"depth"`` (then width) or
    ``"size"`` (parameter count) — and the largest ones, ties together, go to test until they hold
    at least ``test_fraction`` of the checkpoints (at least one architecture; at least one stays
    for training). Validation is a by-run split of the remaining runs.
    """
    if by not in ("width", "depth", "size"):
        raise ProtocolError(f"by must be 'width', 'depth' or 'size', got {by!r}")
    if "arch" not in table.columns:
        raise ProtocolError("split_by_architecture needs an 'arch' column")
    archs = sorted(str(a) for a in table["arch"].unique())
    if len(archs) < 2:
        raise ProtocolError(f"holding out architectures needs at least 2, the table has {archs}")
    sizes = {a: _arch_size(table, a, by) for a in archs}
    distinct = sorted(set(sizes.values()), reverse=True)
    if len(distinct) < 2:
        raise ProtocolError(f"every architecture has the same {by}; nothing to hold out")
    counts = table["arch"].astype(str).value_counts()
    held: list[str] = []
    for size in distinct[:-1]:  # the smallest size always stays in training
        held += [a for a in archs if sizes[a] == size]
        if counts[held].sum() >= test_fraction * len(table):
            break
    train_table = table[~table["arch"].astype(str).isin(held)]
    test_table = table[table["arch"].astype(str).isin(held)]
    id_col = _column(table, _ID_COLUMNS, "checkpoint id")
    run_col = _column(table, _RUN_COLUMNS, "run id")
    runs = [str(r) for r in train_table[run_col].unique()]
    if val_fraction > 0 and len(runs) >= 2:
        train_runs, val_runs = _split_runs(
            runs, (1 - val_fraction, val_fraction), np.random.default_rng(seed)
        )
    else:
        train_runs, val_runs = runs, []
    return Split(
        _ids_of_runs(train_table, train_runs),
        _ids_of_runs(train_table, val_runs),
        tuple(str(i) for i in test_table[id_col]),
        description=f"held-out architectures by {by}: {', '.join(held)}",
        info={"held_out": held, "by": by, "seed": seed},
    )


def split_by_task(
    table: pd.DataFrame, task: str, *, val_fraction: float = 0.15, seed: int = 0
) -> Split:
    """Hold out every checkpoint of ``task``; train/val is a by-run split of the other tasks."""
    if "task" not in table.columns:
        raise ProtocolError("split_by_task needs a 'task' column")
    tasks = sorted(str(t) for t in table["task"].unique())
    if task not in tasks:
        raise ProtocolError(f"task {task!r} is not in the table; it has {tasks}")
    if len(tasks) < 2:
        raise ProtocolError("holding out a task needs at least 2 tasks in the table")
    id_col = _column(table, _ID_COLUMNS, "checkpoint id")
    run_col = _column(table, _RUN_COLUMNS, "run id")
    rest = table[table["task"].astype(str) != task]
    runs = [str(r) for r in rest[run_col].unique()]
    if val_fraction > 0 and len(runs) >= 2:
        train_runs, val_runs = _split_runs(
            runs, (1 - val_fraction, val_fraction), np.random.default_rng(seed)
        )
    else:
        train_runs, val_runs = runs, []
    held = table[table["task"].astype(str) == task]
    return Split(
        _ids_of_runs(rest, train_runs),
        _ids_of_runs(rest, val_runs),
        tuple(str(i) for i in held[id_col]),
        description=f"held-out task {task}",
        info={"held_out": [task], "seed": seed},
    )


# ---------------------------------------------------------------------------------------------
# accuracy prediction
# ---------------------------------------------------------------------------------------------
def _predict_accuracy(predictor: Any, graphs: Sequence[NeuralGraph]) -> np.ndarray:
    """``predict_accuracy`` if the predictor has it (the encoder), else ``predict``."""
    if hasattr(predictor, "predict_accuracy"):
        out = predictor.predict_accuracy(graphs)
    else:
        out = predictor.predict(graphs)
    if isinstance(out, Mapping):
        out = out[ACCURACY_TARGET]
    return np.asarray(out, dtype=np.float64).reshape(-1)


def _chance_levels(tasks: Sequence[str], chance: float | Mapping[str, float] | None) -> np.ndarray:
    if isinstance(chance, int | float):
        return np.full(len(tasks), float(chance))
    levels: dict[str, float] = dict(chance or {})
    for task in sorted(set(tasks) - set(levels)):
        from weightspace.zoo.tasks import get_task

        try:
            levels[task] = 1.0 / get_task(task).num_classes
        except WeightspaceError:
            levels[task] = float("nan")
    return np.array([levels[t] for t in tasks])


def accuracy_prediction_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, chance: np.ndarray | float | None = None
) -> dict[str, float]:
    r"""Kendall :math:`\tau`, :math:`R^2`, MAE, and :math:`\tau` over ``y_true > chance``.

    ``chance`` is one level per checkpoint (or one for all); NaN or ``None`` skips the
    above-chance metric. Metrics that are undefined (constant truth, fewer than two points) are
    NaN rather than errors, so a report can still be written.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)

    def safe(fn: Callable[..., float], *args: Any) -> float:
        try:
            return float(fn(*args))
        except ValueError:
            return float("nan")

    out = {
        "kendall_tau": safe(kendall_tau, y_true, y_pred),
        "r2": safe(r2_score, y_true, y_pred),
        "mae": safe(mean_absolute_error, y_true, y_pred),
        "n_test": int(y_true.size),
    }
    if chance is not None:
        levels = np.broadcast_to(np.asarray(chance, dtype=np.float64), y_true.shape)
        above = np.isfinite(levels) & (y_true > levels)
        out["kendall_tau_above_chance"] = safe(kendall_tau, y_true[above], y_pred[above])
        out["n_above_chance"] = int(above.sum())
    return out


def evaluate_accuracy_prediction(
    predictor: Any,
    table: pd.DataFrame,
    split: Split,
    source: GraphSource,
    *,
    fit: bool = True,
    target: str = ACCURACY_TARGET,
    chance: float | Mapping[str, float] | None = None,
) -> dict[str, float]:
    r"""Fit on ``split.train`` (unless ``fit=False``), predict ``split.test``, score.

    Args:
        predictor: ``fit(graphs, {"test_accuracy": y})`` and ``predict(graphs) -> (n,)``, or an
            already trained encoder (``predict_accuracy``) with ``fit=False``.
        table: the checkpoint table (``checkpoint_id``, ``run_id``, ``target``, ``task``).
        split: from :func:`split_by_run`, :func:`split_by_architecture` or :func:`split_by_task`.
        source: a Zoo, a mapping id → graph, or a function id → graph.
        target: the accuracy column.
        chance: chance accuracy — one number, a mapping task → number, or ``None`` for
            :math:`1/C` of each registered task (:func:`weightspace.zoo.tasks.get_task`).

    Returns:
        ``kendall_tau``, ``r2``, ``mae``, ``kendall_tau_above_chance``, ``n_above_chance``,
        ``n_train``, ``n_test``.
    """
    if not split.test or (fit and not split.train):
        raise ProtocolError("the split has an empty train or test side")
    if target not in table.columns:
        raise ProtocolError(f"the table has no {target!r} column")
    check_split(table, split)
    if fit:
        train_rows = _rows(table, split.train)
        predictor.fit(
            [_graph(source, i) for i in split.train],
            {ACCURACY_TARGET: train_rows[target].to_numpy(dtype=np.float64)},
        )
    test_rows = _rows(table, split.test)
    y_pred = _predict_accuracy(predictor, [_graph(source, i) for i in split.test])
    y_true = test_rows[target].to_numpy(dtype=np.float64)
    levels: np.ndarray | None = None
    if isinstance(chance, int | float):
        levels = np.full(len(y_true), float(chance))
    elif "task" in test_rows.columns:
        levels = _chance_levels([str(t) for t in test_rows["task"]], chance)
    out: dict[str, float] = accuracy_prediction_metrics(y_true, y_pred, levels)
    out["n_train"] = len(split.train) if fit else 0
    return out


# ---------------------------------------------------------------------------------------------
# retrieval
# ---------------------------------------------------------------------------------------------
def _normalise(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2:
        raise ProtocolError(f"embeddings must be 2-D (n, d), got shape {z.shape}")
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    return z / np.where(norm > 0, norm, 1.0)


def rank_by_cosine(
    queries: np.ndarray, gallery: np.ndarray, exclude: Sequence[int] | None = None
) -> np.ndarray:
    r"""Gallery ids ranked by cosine similarity to each query, best first.

    Args:
        queries: ``(Q, d)`` embeddings.
        gallery: ``(N, d)`` embeddings.
        exclude: one gallery id per query to drop from its ranking (the query itself, when
            queries are gallery items); the result then has ``N - 1`` columns.

    Returns:
        ``(Q, N)`` or ``(Q, N - 1)`` int array. Ties keep gallery order; an all-zero embedding
        scores 0 against everything.
    """
    if queries.shape[1] != gallery.shape[1]:
        raise ProtocolError(
            f"query embeddings have {queries.shape[1]} dimensions, gallery {gallery.shape[1]}"
        )
    scores = _normalise(queries) @ _normalise(gallery).T  # (Q, N)
    scores = np.nan_to_num(scores, nan=-2.0)
    if exclude is not None:
        if len(exclude) != scores.shape[0]:
            raise ProtocolError("give one excluded gallery id per query")
        scores[np.arange(scores.shape[0]), np.asarray(exclude)] = -np.inf
    ranked = np.argsort(-scores, axis=1, kind="stable")
    return ranked[:, :-1] if exclude is not None else ranked


def retrieval_metrics(
    ranked: np.ndarray,
    relevant: Sequence[Sequence[int]],
    gallery_size: int,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, float]:
    """``recall@k`` for each ``k``, ``mrr``, ``gallery_size``, ``num_queries``."""
    out: dict[str, float] = {f"recall@{k}": recall_at_k(ranked, relevant, k) for k in ks}
    out["mrr"] = mean_reciprocal_rank(ranked, relevant)
    out["gallery_size"] = int(gallery_size)
    out["num_queries"] = len(relevant)
    return out


def _query_indices(n: int, num_queries: int | None, rng: np.random.Generator) -> np.ndarray:
    if n == 0:
        raise ProtocolError("the gallery is empty")
    if num_queries is None or num_queries >= n:
        return np.arange(n)
    if num_queries < 1:
        raise ProtocolError(f"num_queries must be >= 1, got {num_queries}")
    return np.sort(rng.choice(n, size=num_queries, replace=False))


def _with_state_dict(graph: NeuralGraph, state_dict: Mapping[str, Tensor]) -> NeuralGraph:
    return to_graph(graph.spec, state_dict, edge_features=graph.edge_features, check=False)


def _symmetric_copy(graph: NeuralGraph, generator: torch.Generator, log_range: float) -> Any:
    from weightspace.symmetry import random_symmetry

    state, _ = random_symmetry(graph.spec, to_state_dict(graph), generator, log_range=log_range)
    return state


def evaluate_retrieval_symmetry(
    embedder: SupportsEmbed,
    gallery: Sequence[NeuralGraph],
    *,
    num_queries: int | None = None,
    seed: int = 0,
    log_range: float = 1.0,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, float]:
    """Retrieval S: find the gallery model a symmetry-transformed query came from.

    Each query is gallery model ``i`` under :func:`weightspace.symmetry.random_symmetry` (every
    applicable permutation, positive rescaling with factors in :math:`[e^{-r}, e^{r}]`,
    ``r = log_range``, and sign flip) — the same function, other weights. Relevant: ``{i}``.

    Args:
        embedder: fitted; ``embed(graphs) -> (n, d)``.
        gallery: the held-out checkpoints.
        num_queries: how many gallery models to query with (default: all), drawn with ``seed``.
        seed: of the query choice and the transforms.
    """
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    sources = _query_indices(len(gallery), num_queries, rng)
    queries = [
        _with_state_dict(gallery[i], _symmetric_copy(gallery[i], generator, log_range))
        for i in sources
    ]
    gallery_z = np.asarray(embedder.embed(list(gallery)))
    query_z = np.asarray(embedder.embed(queries))
    ranked = rank_by_cosine(query_z, gallery_z)
    return retrieval_metrics(ranked, [[int(i)] for i in sources], len(gallery), ks)


def _finetune_data(task: str, spec: Any) -> tuple[Tensor, Tensor]:
    from weightspace.zoo.tasks import get_task

    t = get_task(task)
    x = t.features["train"]
    return x.reshape(x.shape[0], *spec.input_shape), t.labels["train"]


def evaluate_retrieval_lineage(
    embedder: SupportsEmbed,
    gallery: Sequence[NeuralGraph],
    runs: Sequence[str],
    *,
    tasks: Sequence[str] | None = None,
    derivatives: Sequence[str] = DERIVATIVES,
    num_queries: int | None = None,
    seed: int = 0,
    symmetry: bool = True,
    log_range: float = 1.0,
    noise_strength: float = 0.05,
    prune_fraction: float = 0.2,
    quantize_bits: int = 8,
    finetune_steps: int = 5,
    finetune_learning_rate: float = 0.01,
    finetune_data: Callable[[str, Any], tuple[Tensor, Tensor]] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, Any]:
    """Retrieval L: find the run a derived, re-uploaded model descends from.

    Query ``q`` takes gallery model ``i``, applies derivative ``derivatives[q % len]`` (cycled
    over the queries in random order; see :mod:`weightspace.evaluate.derivatives`) and then, with
    ``symmetry=True``, a random symmetry transform. Relevant: every gallery checkpoint of
    ``runs[i]``. Without the transform a run's raw checkpoints sit so close together that flat
    weights already score 1.0; ``symmetry=False`` exists to show exactly that.

    Args:
        runs: run id of each gallery model.
        tasks: task of each gallery model (needed for ``"finetune"``: its training split).
        derivatives: names from :data:`~weightspace.evaluate.derivatives.DERIVATIVES`.
        finetune_data: ``(task, spec) -> (inputs, labels)``; default: the registered task's
            training split.

    Returns:
        The metrics of :func:`retrieval_metrics`, plus ``by_derivative``: the same per
        derivative.
    """
    if len(runs) != len(gallery):
        raise ProtocolError(f"got {len(runs)} run ids for {len(gallery)} gallery models")
    unknown = [d for d in derivatives if d not in DERIVATIVES]
    if unknown or not derivatives:
        raise ProtocolError(f"unknown derivatives {unknown}; choose from {list(DERIVATIVES)}")
    if "finetune" in derivatives and tasks is None and finetune_data is None:
        raise ProtocolError(
            "the 'finetune' derivative needs each gallery model's task: pass tasks=... (or "
            "finetune_data=...), or leave 'finetune' out of derivatives"
        )
    load_data = finetune_data or _finetune_data
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    sources = _query_indices(len(gallery), num_queries, rng)
    kinds = [derivatives[j % len(derivatives)] for j in rng.permutation(len(sources))]
    queries = []
    for i, kind in zip(sources, kinds, strict=True):
        g = gallery[i]
        task = str(tasks[i]) if tasks is not None else ""
        data = load_data(task, g.spec) if kind == "finetune" else None
        state = make_derivative(
            kind,
            g.spec,
            to_state_dict(g),
            generator,
            noise_strength=noise_strength,
            prune_fraction=prune_fraction,
            quantize_bits=quantize_bits,
            finetune_data=data,
            finetune_steps=finetune_steps,
            finetune_learning_rate=finetune_learning_rate,
        )
        if symmetry:
            from weightspace.symmetry import random_symmetry

            state, _ = random_symmetry(g.spec, state, generator, log_range=log_range)
        queries.append(_with_state_dict(g, state))
    members: dict[str, list[int]] = {}
    for j, run in enumerate(runs):
        members.setdefault(str(run), []).append(j)
    relevant = [members[str(runs[i])] for i in sources]
    ranked = rank_by_cosine(
        np.asarray(embedder.embed(queries)), np.asarray(embedder.embed(list(gallery)))
    )
    out: dict[str, Any] = retrieval_metrics(ranked, relevant, len(gallery), ks)
    out["by_derivative"] = {
        kind: retrieval_metrics(
            ranked[[j for j, k in enumerate(kinds) if k == kind]],
            [r for r, k in zip(relevant, kinds, strict=True) if k == kind],
            len(gallery),
            ks,
        )
        for kind in derivatives
        if kind in kinds
    }
    out["symmetry"] = symmetry
    return out


@torch.no_grad()
def predicted_labels(graph: NeuralGraph, inputs: Tensor) -> np.ndarray:
    """``argmax`` of ``to_module(graph)`` on ``inputs`` (reshaped to the spec's input shape)."""
    spec = graph.spec
    state = to_state_dict(graph)
    dtype = next(iter(state.values())).dtype
    x = inputs.reshape(inputs.shape[0], *spec.input_shape).to(dtype)
    return to_module(spec, state)(x).argmax(-1).cpu().numpy()


def _test_inputs(task: str) -> Tensor:
    from weightspace.zoo.tasks import get_task

    return get_task(task).features["test"]


def evaluate_retrieval_function(
    embedder: SupportsEmbed,
    gallery: Sequence[NeuralGraph],
    tasks: Sequence[str],
    *,
    k: int = 5,
    inputs: Mapping[str, Tensor] | Callable[[str], Tensor] | None = None,
    num_queries: int | None = None,
    seed: int = 0,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, Any]:
    r"""Retrieval F: find the models that behave like the query.

    For gallery models :math:`i, j` of one task with predicted labels :math:`\hat y_i` on the
    task's test inputs :math:`x_1..x_n`, the agreement is

    .. math:: a_{ij} = \frac{1}{n} \sum_t \mathbb{1}[\hat y_i(x_t) = \hat y_j(x_t)].

    The query is gallery model :math:`i` (excluded from its own ranking); the relevant items are
    the ``k`` other models of its task with the highest :math:`a_{ij}`, ties at the ``k``-th value
    included. Models of other tasks are never relevant. Queries whose task has ``k`` or fewer
    other models are skipped.

    Args:
        tasks: task of each gallery model.
        k: relevant items per query.
        inputs: test inputs per task (mapping or function); default: the registered task's test
            split.
        num_queries: gallery models to query with (default: all), drawn with ``seed``.
    """
    if len(tasks) != len(gallery):
        raise ProtocolError(f"got {len(tasks)} tasks for {len(gallery)} gallery models")
    if k < 1:
        raise ProtocolError(f"k must be >= 1, got {k}")

    def task_inputs(task: str) -> Tensor:
        if inputs is None:
            return _test_inputs(task)
        return inputs[task] if isinstance(inputs, Mapping) else inputs(task)

    by_task: dict[str, list[int]] = {}
    for i, task in enumerate(tasks):
        by_task.setdefault(str(task), []).append(i)
    relevant_of: dict[int, list[int]] = {}
    for task, members in by_task.items():
        if len(members) <= k:
            continue
        x = task_inputs(task)
        labels = np.stack([predicted_labels(gallery[i], x) for i in members])  # (m, n)
        agreement = (labels[:, None, :] == labels[None, :, :]).mean(-1)  # (m, m)
        np.fill_diagonal(agreement, -np.inf)
        for row, i in enumerate(members):
            threshold = np.sort(agreement[row])[::-1][k - 1]
            relevant_of[i] = [members[c] for c in np.flatnonzero(agreement[row] >= threshold)]
    candidates = np.array(sorted(relevant_of), dtype=int)
    if candidates.size == 0:
        raise ProtocolError(
            f"no task has more than k={k} gallery models; enlarge the gallery or lower k"
        )
    rng = np.random.default_rng(seed)
    sources = candidates[_query_indices(len(candidates), num_queries, rng)]
    gallery_z = np.asarray(embedder.embed(list(gallery)))
    ranked = rank_by_cosine(gallery_z[sources], gallery_z, exclude=[int(i) for i in sources])
    out: dict[str, Any] = retrieval_metrics(
        ranked, [relevant_of[int(i)] for i in sources], len(gallery), ks
    )
    out["k"] = k
    return out
