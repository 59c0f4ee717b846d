r"""Retrieval protocols S (symmetry) and F (function), and the ranking they share with L.

Every protocol takes an *embedder* (anything with ``embed(list_of_graphs) -> (n, d)``) and a
gallery of held-out checkpoints. Queries are ranked against the gallery by cosine similarity of
the embeddings,

.. math:: s(q, g) = \frac{z_q^\top z_g}{\lVert z_q\rVert\,\lVert z_g\rVert},

and scored with Recall@k (a relevant item in the top :math:`k`), MRR and mAP
(:mod:`weightspace.evaluate.metrics`); the gallery size and the number of queries are reported
beside them. Results are flat dicts of floats (:class:`RetrievalResult`).

* **S** (:func:`evaluate_retrieval_symmetry`) is an *invariance check*, not a retrieval task: the
  query is a gallery model under a random exact symmetry, so any method that canonicalises its
  input scores 1.0. It shows that a method is invariant, nothing more.
* **L** (lineage, :mod:`weightspace.evaluate.lineage`): find the run a derived, re-uploaded model
  descends from, with the source checkpoint itself out of the gallery.
* **F** (:func:`evaluate_retrieval_function`): find the models *of other runs* that behave like
  the query.
* **T** (:func:`evaluate_retrieval_function` with ``relevance="task"``): find the models *of
  other runs* trained on the query's task (every one of them is relevant); needs no test inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from weightspace.errors import WeightspaceError
from weightspace.evaluate.metrics import mean_average_precision, mean_reciprocal_rank, recall_at_k
from weightspace.evaluate.tables import ProtocolError
from weightspace.evaluate.tasks import task_test_inputs
from weightspace.graph import NeuralGraph, to_graph, to_state_dict
from weightspace.module import to_module

__all__ = [
    "DEFAULT_KS",
    "RetrievalResult",
    "SupportsEmbed",
    "evaluate_retrieval_function",
    "evaluate_retrieval_symmetry",
    "predicted_labels",
    "rank_by_cosine",
    "retrieval_metrics",
]

#: Cut-offs of Recall@k reported by every retrieval protocol.
DEFAULT_KS: tuple[int, ...] = (1, 5, 10)


class SupportsEmbed(Protocol):
    def embed(self, models: Sequence[NeuralGraph]) -> np.ndarray: ...


class RetrievalResult(dict[str, float]):
    """Metric name → value (floats only), plus :attr:`skipped`: part name → why it did not run.

    A ``dict`` subclass, so existing code that reads or compares metric dicts keeps working.
    """

    def __init__(self, *args: Any, skipped: Mapping[str, str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.skipped: dict[str, str] = dict(skipped or {})


def _normalise(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2:
        raise ProtocolError(f"embeddings must be 2-D (n, d), got shape {z.shape}")
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    return z / np.where(norm > 0, norm, 1.0)


def rank_by_cosine(
    queries: np.ndarray,
    gallery: np.ndarray,
    exclude: Sequence[int] | None = None,
    *,
    exclude_sets: Sequence[Collection[int]] | None = None,
) -> np.ndarray:
    r"""Gallery ids ranked by cosine similarity to each query, best first.

    Args:
        queries: ``(Q, d)`` embeddings.
        gallery: ``(N, d)`` embeddings.
        exclude: one gallery id per query to drop from its ranking (the query itself, when
            queries are gallery items); the result then has ``N - 1`` columns.
        exclude_sets: per query, gallery ids that are out of the competition (a lineage query's
            source, an F query's own run): they are moved to the end of the ranking, after every
            other item, in gallery order. Scoring is unaffected as long as they are never
            relevant.

    Returns:
        ``(Q, N)`` or ``(Q, N - 1)`` int array. Ties keep gallery order; an all-zero embedding
        scores 0 against everything, a non-finite one ranks last.
    """
    if queries.shape[1] != gallery.shape[1]:
        raise ProtocolError(
            f"query embeddings have {queries.shape[1]} dimensions, gallery {gallery.shape[1]}"
        )
    scores = _normalise(queries) @ _normalise(gallery).T  # (Q, N)
    scores = np.nan_to_num(scores, nan=-2.0, posinf=-2.0, neginf=-2.0)
    if exclude_sets is not None:
        if len(exclude_sets) != scores.shape[0]:
            raise ProtocolError("give one set of excluded gallery ids per query")
        for row, ids in enumerate(exclude_sets):
            scores[row, list(ids)] = -3.0  # below any cosine and below a non-finite embedding
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
    """``recall@k`` for each ``k``, ``mrr``, ``map``, ``gallery_size``, ``num_queries``."""
    out: dict[str, float] = {f"recall@{k}": recall_at_k(ranked, relevant, k) for k in ks}
    out["mrr"] = mean_reciprocal_rank(ranked, relevant)
    out["map"] = mean_average_precision(ranked, relevant)
    out["gallery_size"] = float(gallery_size)
    out["num_queries"] = float(len(relevant))
    return out


def _query_indices(n: int, num_queries: int | None, rng: np.random.Generator) -> np.ndarray:
    if n == 0:
        raise ProtocolError("the gallery is empty")
    if num_queries is None or num_queries >= n:
        return np.arange(n)
    if num_queries < 1:
        raise ProtocolError(f"num_queries must be >= 1, got {num_queries}")
    return np.sort(rng.choice(n, size=num_queries, replace=False))


def evaluate_retrieval_symmetry(
    embedder: SupportsEmbed,
    gallery: Sequence[NeuralGraph],
    *,
    num_queries: int | None = None,
    seed: int = 0,
    log_range: float = 1.0,
    ks: Sequence[int] = DEFAULT_KS,
) -> RetrievalResult:
    """Retrieval S, an **invariance check**: find the gallery model a symmetry-transformed query
    came from.

    Each query is gallery model ``i`` under :func:`weightspace.symmetry.random_symmetry` (every
    applicable permutation, positive rescaling with factors in :math:`[e^{-r}, e^{r}]`,
    ``r = log_range``, and sign flip) — the same function, other weights. Relevant: ``{i}``.
    Any method fed canonical inputs (:func:`weightspace.symmetry.canonicalize`) scores 1.0, so a
    perfect S shows invariance, not that an embedding has learned anything; report it as such.

    Args:
        embedder: fitted; ``embed(graphs) -> (n, d)``.
        gallery: the held-out checkpoints.
        num_queries: how many gallery models to query with (default: all), drawn with ``seed``.
        seed: of the query choice and the transforms.

    Returns:
        :func:`retrieval_metrics` (with one relevant item, ``map`` equals ``mrr``).
    """
    from weightspace.symmetry import random_symmetry

    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    sources = _query_indices(len(gallery), num_queries, rng)
    queries = []
    for i in sources:
        g = gallery[i]
        state, _ = random_symmetry(g.spec, to_state_dict(g), generator, log_range=log_range)
        queries.append(to_graph(g.spec, state, edge_features=g.edge_features, check=False))
    gallery_z = np.asarray(embedder.embed(list(gallery)))
    query_z = np.asarray(embedder.embed(queries))
    ranked = rank_by_cosine(query_z, gallery_z)
    return RetrievalResult(retrieval_metrics(ranked, [[int(i)] for i in sources], len(gallery), ks))


@torch.no_grad()
def predicted_labels(graph: NeuralGraph, inputs: Tensor) -> np.ndarray:
    """``argmax`` of ``to_module(graph)`` on ``inputs`` (reshaped to the spec's input shape)."""
    spec = graph.spec
    state = to_state_dict(graph)
    dtype = next(iter(state.values())).dtype
    x = inputs.reshape(inputs.shape[0], *spec.input_shape)
    x = x.round().long() if spec.is_tokens else x.to(dtype)  # token ids index an embedding
    return to_module(spec, state)(x).argmax(-1).cpu().numpy()


def evaluate_retrieval_function(
    embedder: SupportsEmbed,
    gallery: Sequence[NeuralGraph],
    tasks: Sequence[str],
    *,
    k: int = 5,
    runs: Sequence[str] | None = None,
    inputs: Mapping[str, Tensor] | Callable[[str], Tensor] | None = None,
    num_queries: int | None = None,
    seed: int = 0,
    ks: Sequence[int] = DEFAULT_KS,
    relevance: str = "agreement",
) -> RetrievalResult:
    r"""Retrieval F: find the models *of other runs* that behave like the query.

    For gallery models :math:`i, j` of one task with predicted labels :math:`\hat y_i` on the
    task's test inputs :math:`x_1..x_n`, the agreement is

    .. math:: a_{ij} = \frac{1}{n} \sum_t \mathbb{1}[\hat y_i(x_t) = \hat y_j(x_t)].

    The query is gallery model :math:`i`. Checkpoints of its own run are out: they are neither
    relevant nor ranked among the others (they are put last), since a run's checkpoints are
    near-copies of each other and finding them is lineage, not function. The relevant items are
    the ``k`` models of its task *and of other runs* with the highest :math:`a_{ij}`, ties at the
    ``k``-th value included; models of other tasks are never relevant. Queries with ``k`` or
    fewer candidates (same task, other run) are skipped, and so are tasks without test inputs
    (named in :attr:`RetrievalResult.skipped`).

    With ``relevance="task"`` (protocol T) every model of the query's task from other runs is
    relevant, :math:`R(i) = \{j : \text{task}_j = \text{task}_i,\ \text{run}_j \ne
    \text{run}_i\}`: retrieval of the task a model was trained for (a LoRA adapter's task), which
    reads no test inputs and ignores ``k``; a query whose task has no other run in the gallery is
    skipped.

    Args:
        tasks: task of each gallery model.
        k: relevant items per query.
        runs: run of each gallery model. Default ``None`` treats every model as its own run (only
            the query itself is excluded): pass the runs to measure function retrieval proper.
        inputs: test inputs per task (mapping or function); default: the registered task's test
            split.
        num_queries: gallery models to query with (default: all), drawn with ``seed``.
        relevance: ``"agreement"`` (the ``k`` most agreeing, above) or ``"task"``.

    Returns:
        :func:`retrieval_metrics` (``map`` over the relevant sets) and ``k``.
    """
    if relevance not in ("agreement", "task"):
        raise ProtocolError(f"relevance must be 'agreement' or 'task', got {relevance!r}")
    if len(tasks) != len(gallery):
        raise ProtocolError(f"got {len(tasks)} tasks for {len(gallery)} gallery models")
    if runs is not None and len(runs) != len(gallery):
        raise ProtocolError(f"got {len(runs)} run ids for {len(gallery)} gallery models")
    if k < 1:
        raise ProtocolError(f"k must be >= 1, got {k}")
    run_of = [str(r) for r in runs] if runs is not None else [str(i) for i in range(len(gallery))]

    def task_inputs(task: str) -> Tensor:
        if inputs is None:
            return task_test_inputs(task)
        return inputs[task] if isinstance(inputs, Mapping) else inputs(task)

    by_task: dict[str, list[int]] = {}
    for i, task in enumerate(tasks):
        by_task.setdefault(str(task), []).append(i)
    relevant_of: dict[int, list[int]] = {}
    skipped: dict[str, str] = {}
    for task, members in by_task.items():
        if relevance == "task":
            for i in members:
                others = [j for j in members if run_of[j] != run_of[i]]
                if others:
                    relevant_of[i] = others
            continue
        if len(members) <= k:
            continue
        try:
            x = task_inputs(task)
        except WeightspaceError as exc:  # an imported zoo's task: no test inputs to compare
            skipped[f"F {task}"] = f"no test inputs: {exc}"[:300]
            continue
        labels = np.stack([predicted_labels(gallery[i], x) for i in members])  # (m, n)
        agreement = (labels[:, None, :] == labels[None, :, :]).mean(-1)  # (m, m)
        same_run = np.array([[run_of[a] == run_of[b] for b in members] for a in members])
        agreement[same_run] = -np.inf  # the query itself and its run's other checkpoints
        for row, i in enumerate(members):
            if np.isfinite(agreement[row]).sum() <= k:
                continue
            threshold = np.sort(agreement[row])[::-1][k - 1]
            relevant_of[i] = [members[c] for c in np.flatnonzero(agreement[row] >= threshold)]
    candidates = np.array(sorted(relevant_of), dtype=int)
    if candidates.size == 0:
        raise ProtocolError(
            f"no gallery model has {'any' if relevance == 'task' else f'more than k={k}'} models "
            "of its task from other runs; enlarge "
            f"the gallery or lower k {list(skipped.values())[:1]}"
        )
    rng = np.random.default_rng(seed)
    sources = candidates[_query_indices(len(candidates), num_queries, rng)]
    members_of_run: dict[str, list[int]] = {}
    for j, run in enumerate(run_of):
        members_of_run.setdefault(run, []).append(j)
    gallery_z = np.asarray(embedder.embed(list(gallery)))
    ranked = rank_by_cosine(
        gallery_z[sources],
        gallery_z,
        exclude_sets=[members_of_run[run_of[int(i)]] for i in sources],
    )
    out = RetrievalResult(
        retrieval_metrics(ranked, [relevant_of[int(i)] for i in sources], len(gallery), ks),
        skipped=skipped,
    )
    out["k"] = float(k)
    return out
