r"""Retrieval L (lineage): find the run a derived, re-uploaded model descends from.

A query takes gallery checkpoint :math:`i` of run :math:`r(i)`, applies a derivative
(:mod:`weightspace.evaluate.derivatives`; by default :data:`LINEAGE_DERIVATIVES`: a long
fine-tune with a new seed and learning rate, distillation into a fresh initialisation, pruning
then fine-tuning, Net2Net widening) and then a random exact symmetry
(:func:`weightspace.symmetry.random_symmetry`), as a re-upload would be. The source checkpoint
:math:`i` itself leaves the gallery (else a method that only undoes the symmetry finds it); the
relevant items are the *other* checkpoints of :math:`r(i)` in the gallery,

.. math:: R_q = \{\, j \ne i : r(j) = r(i) \,\},

and a gallery checkpoint whose run has no other checkpoint in the gallery cannot be a source
(``dropped_queries`` counts them). Scores: Recall@k, MRR and mAP, overall and per derivative
kind (``"<kind>/map"``, ``"<kind>/recall@1"``, ...).

A widened query has an architecture that is in no gallery. A method that embeds across
architectures handles it; for one that cannot (no ``MIXED_ARCHITECTURES`` capability, or its
``embed`` raises :class:`~weightspace.errors.WeightspaceError`) those queries count as misses in
the overall scores, the kind's own scores are left out, and :attr:`RetrievalResult.skipped` says
why. A query whose embedding is not finite (a method that does not cover it) is a miss too. A derivative that cannot be made for a model (a task without data, an architecture without a
free hidden layer to widen) drops those queries, counted in ``"<kind>/inapplicable"``.

Queries are built once per gallery and settings (:func:`lineage_queries`) and reused across
methods: :func:`evaluate_retrieval_lineage` caches the last few, or takes ``queries=``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from weightspace.errors import WeightspaceError
from weightspace.evaluate.api import MIXED_ARCHITECTURES
from weightspace.evaluate.derivatives import (
    ALL_DERIVATIVES,
    LINEAGE_DERIVATIVES,
    TRAINING_DERIVATIVES,
    DerivativeSettings,
    make_derivatives,
)
from weightspace.evaluate.retrieval import (
    DEFAULT_KS,
    RetrievalResult,
    SupportsEmbed,
    _query_indices,
    rank_by_cosine,
    retrieval_metrics,
)
from weightspace.evaluate.tables import ProtocolError
from weightspace.evaluate.tasks import task_training_data
from weightspace.graph import NeuralGraph, to_graph, to_state_dict

__all__ = ["LineageQueries", "evaluate_retrieval_lineage", "lineage_queries"]

#: Kinds whose queries have another architecture than their source.
CROSS_ARCHITECTURE = frozenset({"net2net"})
_CACHE: list[tuple[tuple[Any, ...], list[NeuralGraph], LineageQueries]] = []
_CACHE_SIZE = 2


@dataclass
class LineageQueries:
    """The queries of one lineage evaluation, reusable across methods.

    Attributes:
        sources: gallery index of each query's source checkpoint.
        kinds: derivative kind of each query.
        graphs: the derived, symmetry-transformed query graphs.
        relevant: per query, the gallery indices of the other checkpoints of its source's run.
        gallery_size: size of the gallery the queries were built for.
        dropped_queries: gallery checkpoints that could not be a source (no other checkpoint of
            their run in the gallery).
        symmetry: whether a random symmetry followed each derivative.
        inapplicable: per kind, how many drawn queries could not be derived, and why (``skipped``).
    """

    sources: list[int]
    kinds: list[str]
    graphs: list[NeuralGraph]
    relevant: list[list[int]]
    gallery_size: int
    dropped_queries: int = 0
    symmetry: bool = True
    inapplicable: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def _default_data(task: str, spec: Any) -> tuple[Tensor, Tensor]:
    return task_training_data(task, spec.input_shape)


def lineage_queries(
    gallery: Sequence[NeuralGraph],
    runs: Sequence[str],
    *,
    tasks: Sequence[str] | None = None,
    derivatives: Sequence[str] = LINEAGE_DERIVATIVES,
    num_queries: int | None = None,
    seed: int = 0,
    symmetry: bool = True,
    log_range: float = 1.0,
    settings: DerivativeSettings | None = None,
    finetune_data: Callable[[str, Any], tuple[Tensor, Tensor]] | None = None,
) -> LineageQueries:
    """Draw and derive the queries of :func:`evaluate_retrieval_lineage` (same arguments).

    Sources are drawn with ``seed`` among the eligible gallery checkpoints; kinds are dealt
    round-robin over them in a random order; derivatives are made per (kind, architecture, task)
    group, vectorised, in a fixed order, so the queries depend only on the arguments.
    """
    if len(runs) != len(gallery):
        raise ProtocolError(f"got {len(runs)} run ids for {len(gallery)} gallery models")
    unknown = [d for d in derivatives if d not in ALL_DERIVATIVES]
    if unknown or not derivatives:
        raise ProtocolError(f"unknown derivatives {unknown}; choose from {list(ALL_DERIVATIVES)}")
    needs_data = sorted(set(derivatives) & TRAINING_DERIVATIVES)
    if needs_data and tasks is None and finetune_data is None:
        raise ProtocolError(
            f"the derivatives {needs_data} train on each gallery model's task: pass tasks=... "
            "(or finetune_data=...), or leave them out of derivatives"
        )
    settings = settings or DerivativeSettings()
    load_data = finetune_data or _default_data
    members: dict[str, list[int]] = {}
    for j, run in enumerate(runs):
        members.setdefault(str(run), []).append(j)
    eligible = [i for i in range(len(gallery)) if len(members[str(runs[i])]) > 1]
    if not eligible:
        raise ProtocolError(
            "no run has two checkpoints in the gallery: lineage needs a source's run to stay in "
            "the gallery once the source leaves it (keep several checkpoints per run)"
        )
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    sources = [eligible[i] for i in _query_indices(len(eligible), num_queries, rng)]
    kinds = [derivatives[j % len(derivatives)] for j in rng.permutation(len(sources))]
    groups: dict[tuple[str, str, str], list[int]] = {}
    for q, (i, kind) in enumerate(zip(sources, kinds, strict=True)):
        task = str(tasks[i]) if tasks is not None else ""
        groups.setdefault((kind, gallery[i].spec.to_json(), task), []).append(q)
    derived: dict[int, NeuralGraph] = {}
    out = LineageQueries(
        [], [], [], [], len(gallery), len(gallery) - len(eligible), symmetry=symmetry
    )
    for (kind, _, task), group in sorted(groups.items()):
        spec = gallery[sources[group[0]]].spec
        try:
            data = load_data(task, spec) if kind in TRAINING_DERIVATIVES else None
            new_spec, states = make_derivatives(
                kind,
                spec,
                [to_state_dict(gallery[sources[q]]) for q in group],
                data=data,
                generator=generator,
                settings=settings,
            )
        except WeightspaceError as exc:
            out.inapplicable[kind] = out.inapplicable.get(kind, 0) + len(group)
            why = f"not derived for task {task!r}: {exc}"
            out.skipped.setdefault(kind, why[:300])
            continue
        for q, state in zip(group, states, strict=True):
            if symmetry:
                from weightspace.symmetry import random_symmetry

                state, _ = random_symmetry(new_spec, state, generator, log_range=log_range)
            width = gallery[sources[q]].edge_features
            derived[q] = to_graph(new_spec, state, edge_features=width, check=False)
    for q in sorted(derived):
        i = sources[q]
        out.sources.append(i)
        out.kinds.append(kinds[q])
        out.graphs.append(derived[q])
        out.relevant.append([j for j in members[str(runs[i])] if j != i])
    if not out.sources:
        raise ProtocolError(f"no lineage query could be derived: {out.skipped}")
    return out


def _cached_queries(
    gallery: Sequence[NeuralGraph], key: tuple[Any, ...], make: Callable[[], LineageQueries]
) -> LineageQueries:
    """The queries for ``key`` on this very gallery (same graph objects), made at most once."""
    for cached_key, cached_gallery, queries in _CACHE:
        if (
            cached_key == key
            and len(cached_gallery) == len(gallery)
            and all(a is b for a, b in zip(cached_gallery, gallery, strict=True))
        ):
            return queries
    queries = make()
    _CACHE.insert(0, (key, list(gallery), queries))
    del _CACHE[_CACHE_SIZE:]
    return queries


def _embed_or_reason(embedder: SupportsEmbed, graphs: list[NeuralGraph], kind: str) -> Any:
    """``(embeddings, None)``, or ``(None, why)`` when the embedder cannot embed ``kind``."""
    capabilities = getattr(embedder, "capabilities", None)
    if kind in CROSS_ARCHITECTURE and capabilities is not None:
        if MIXED_ARCHITECTURES not in capabilities:
            return None, "the method cannot embed across architectures; counted as misses"
    try:
        return np.asarray(embedder.embed(graphs), dtype=np.float64), None
    except WeightspaceError as exc:
        return None, f"embedding failed ({str(exc)[:200]}); counted as misses"


def evaluate_retrieval_lineage(
    embedder: SupportsEmbed,
    gallery: Sequence[NeuralGraph],
    runs: Sequence[str],
    *,
    tasks: Sequence[str] | None = None,
    derivatives: Sequence[str] = LINEAGE_DERIVATIVES,
    num_queries: int | None = None,
    seed: int = 0,
    symmetry: bool = True,
    log_range: float = 1.0,
    settings: DerivativeSettings | None = None,
    finetune_data: Callable[[str, Any], tuple[Tensor, Tensor]] | None = None,
    queries: LineageQueries | None = None,
    ks: Sequence[int] = DEFAULT_KS,
) -> RetrievalResult:
    """Retrieval L, see the module docstring.

    Args:
        embedder: fitted; ``embed(graphs) -> (n, d)``; may declare ``capabilities``.
        gallery: the held-out checkpoints (whole runs, several checkpoints each).
        runs: run id of each gallery model.
        tasks: task of each gallery model (the training derivatives use its training split).
        derivatives: names from :data:`~weightspace.evaluate.derivatives.ALL_DERIVATIVES`.
        num_queries: how many sources to draw (default: every eligible one), with ``seed``.
        symmetry: apply a random symmetry after the derivative. Without it a run's raw
            checkpoints sit so close together that flat weights already score well;
            ``symmetry=False`` exists to show exactly that.
        settings: strengths of the derivatives.
        finetune_data: ``(task, spec) -> (inputs, labels)``; default: the registered task's
            training split.
        queries: from :func:`lineage_queries` (the other query arguments are then ignored).

    Returns:
        ``recall@k``, ``mrr``, ``map``, ``gallery_size``, ``num_queries``, ``dropped_queries``,
        ``symmetry`` (1.0/0.0); per kind ``"<kind>/recall@k"``, ``"<kind>/mrr"``,
        ``"<kind>/map"``, ``"<kind>/num_queries"`` and ``"<kind>/inapplicable"``.
    """
    if queries is None:
        key = (
            tuple(map(str, runs)),
            tuple(map(str, tasks)) if tasks is not None else None,
            tuple(derivatives),
            num_queries,
            seed,
            symmetry,
            log_range,
            settings or DerivativeSettings(),
            finetune_data,
        )
        queries = _cached_queries(
            gallery,
            key,
            lambda: lineage_queries(
                gallery,
                runs,
                tasks=tasks,
                derivatives=derivatives,
                num_queries=num_queries,
                seed=seed,
                symmetry=symmetry,
                log_range=log_range,
                settings=settings,
                finetune_data=finetune_data,
            ),
        )
    if queries.gallery_size != len(gallery):
        raise ProtocolError(
            f"the queries were built for a gallery of {queries.gallery_size}, not {len(gallery)}"
        )
    gallery_z = np.asarray(embedder.embed(list(gallery)), dtype=np.float64)
    kinds = np.asarray(queries.kinds)
    out = RetrievalResult(skipped={f"L {k}": why for k, why in queries.skipped.items()})
    scored: list[int] = []
    query_z = np.zeros((len(kinds), gallery_z.shape[1]))
    same = [q for q, k in enumerate(kinds) if k not in CROSS_ARCHITECTURE]
    batches = [("", same)] + [(k, list(np.flatnonzero(kinds == k))) for k in CROSS_ARCHITECTURE]
    for kind, index in batches:
        if not index:
            continue
        z, why = _embed_or_reason(embedder, [queries.graphs[q] for q in index], kind)
        if z is None:
            out.skipped[f"L {kind}"] = why
            continue
        finite = np.isfinite(z).all(axis=1)  # a method that does not cover a query gives NaN
        if not finite.all():
            name = f"L {kind or 'same-architecture'} non-finite"
            out.skipped[name] = f"{int((~finite).sum())} queries got non-finite embeddings; misses"
        query_z[index] = np.where(finite[:, None], z, 0.0)
        scored += [q for q, ok in zip(index, finite, strict=True) if ok]
    scored.sort()
    position = {q: row for row, q in enumerate(scored)}
    ranked = rank_by_cosine(
        query_z[scored], gallery_z, exclude_sets=[[queries.sources[q]] for q in scored]
    )
    parts = [("", list(range(len(kinds))))]
    parts += [(f"{k}/", list(np.flatnonzero(kinds == k))) for k in dict.fromkeys(queries.kinds)]
    for prefix, members in parts:
        rows = [position[q] for q in members if q in position]
        if not rows:
            if not prefix:  # nothing scored at all: every query is a miss
                out.update({f"recall@{k}": 0.0 for k in ks} | {"mrr": 0.0, "map": 0.0})
            continue  # a kind the method could not embed: left out, the reason is in skipped
        metrics = retrieval_metrics(
            ranked[rows], [queries.relevant[scored[r]] for r in rows], len(gallery), ks
        )
        covered = len(rows) / len(members)  # queries not scored are misses
        for name, value in metrics.items():
            if name not in ("gallery_size", "num_queries"):
                out[f"{prefix}{name}"] = value * covered
        if prefix:
            out[f"{prefix}num_queries"] = float(len(members))
    out["gallery_size"] = float(len(gallery))
    out["num_queries"] = float(len(kinds))
    out["dropped_queries"] = float(queries.dropped_queries)
    out["symmetry"] = float(queries.symmetry)
    for kind, count in queries.inapplicable.items():
        out[f"{kind}/inapplicable"] = float(count)
    return out
