"""Dense per-layer blocks of one architecture's neural graph: where each layer's edges and
nodes lie in the graph's tensors (:class:`DensePlan`), and the reductions over those blocks that
:class:`~weightspace.nn.layers.EdgeNodeConv` uses instead of scatters (:func:`aggregate_segment`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from weightspace.layout import layout_of
from weightspace.spec import NetworkSpec

__all__ = [
    "DenseLink",
    "DensePlan",
    "DenseResidual",
    "DenseSegment",
    "aggregate_segment",
    "dense_plan",
]


@dataclass(frozen=True)
class DenseLink:
    """One layer's edges in a graph: rows ``edge_start:edge_stop``, ``out x inp`` target-major,
    from nodes ``source_start:source_stop`` to nodes ``target_start:target_stop``."""

    edge_start: int
    edge_stop: int
    out: int
    inp: int
    source_start: int
    source_stop: int
    target_start: int
    target_stop: int


@dataclass(frozen=True)
class DenseResidual:
    """One residual ``add`` in a graph: identity edges ``edge_start + k`` from node
    ``source_start + k`` to node ``target_start + k``, ``k < size``."""

    edge_start: int
    size: int
    source_start: int
    target_start: int


@dataclass(frozen=True)
class DenseSegment:
    """The nodes ``start:stop`` (one neuron group) as seen by one aggregation direction: the
    layer blocks (indices into :attr:`DensePlan.links`) and residuals (indices into
    :attr:`DensePlan.residuals`) whose edges end (forward) or start (backward) there. Every node
    of the segment has ``degree`` such edges, so its mean is a sum times ``1 / degree``."""

    start: int
    stop: int
    links: tuple[int, ...]
    residuals: tuple[int, ...]
    degree: int


@dataclass(frozen=True)
class DensePlan:
    """Where each layer's block lives in the node and edge tensors of one architecture's
    graph (as :func:`~weightspace.graph.to_graph` lays them out).

    The dense path reads only the Python integers (``links``, ``residuals``, ``segments``), so
    it needs no device transfer and traces to a static graph under ``torch.compile``; the
    tensors describe the same structure for other uses.
    """

    num_nodes: int
    num_edges: int
    links: tuple[DenseLink, ...]
    residual_start: int  # first residual edge (== num_edges if none)
    residual_source: Tensor  # (R,) local node ids
    residual_target: Tensor  # (R,)
    in_degree: Tensor  # (N,)
    out_degree: Tensor  # (N,)
    inverse_in_degree: Tensor  # (N, 1), 0 where the degree is 0
    inverse_out_degree: Tensor  # (N, 1)
    residuals: tuple[DenseResidual, ...] = ()
    # (forward, backward): node segments in increasing order; nodes in no segment are isolated
    segments: tuple[tuple[DenseSegment, ...], tuple[DenseSegment, ...]] = ((), ())

    def to(self, device: torch.device) -> DensePlan:
        if self.in_degree.device == device:
            return self
        return DensePlan(
            **{
                name: value.to(device) if isinstance(value, Tensor) else value
                for name, value in self.__dict__.items()
            }
        )


@lru_cache(maxsize=256)
def dense_plan(spec: NetworkSpec) -> DensePlan:
    """The :class:`DensePlan` of ``spec`` (cached)."""
    # A cached plan may be used under autograd later: never build it as inference tensors.
    with torch.inference_mode(False):
        return _build_dense_plan(spec)


def _segments(
    links: list[DenseLink], residuals: list[DenseResidual], forward: bool
) -> tuple[DenseSegment, ...]:
    ranges: dict[tuple[int, int], tuple[list[int], list[int], int]] = {}
    for i, link in enumerate(links):
        key = (
            (link.target_start, link.target_stop)
            if forward
            else (link.source_start, link.source_stop)
        )
        entry = ranges.setdefault(key, ([], [], 0))
        entry[0].append(i)
        ranges[key] = (entry[0], entry[1], entry[2] + (link.inp if forward else link.out))
    for i, residual in enumerate(residuals):
        start = residual.target_start if forward else residual.source_start
        key = (start, start + residual.size)
        entry = ranges.setdefault(key, ([], [], 0))
        entry[1].append(i)
        ranges[key] = (entry[0], entry[1], entry[2] + 1)
    out = [
        DenseSegment(start, stop, tuple(li), tuple(ri), degree)
        for (start, stop), (li, ri, degree) in sorted(ranges.items())
    ]
    for a, b in zip(out, out[1:], strict=False):
        if a.stop > b.start:  # neuron groups never overlap; a plan relies on it
            raise ValueError(f"overlapping node ranges {a.start}:{a.stop} and {b.start}:{b.stop}")
    return tuple(out)


def _build_dense_plan(spec: NetworkSpec) -> DensePlan:
    layout = layout_of(spec)
    links, start = [], 0
    in_degree = torch.zeros(layout.num_nodes, dtype=torch.long)
    out_degree = torch.zeros(layout.num_nodes, dtype=torch.long)
    for link in layout.links:
        source, target = layout.groups[link.source], layout.groups[link.target]
        s0, t0 = layout.offsets[link.source], layout.offsets[link.target]
        stop = start + source.size * target.size
        links.append(
            DenseLink(
                start, stop, target.size, source.size, s0, s0 + source.size, t0, t0 + target.size
            )
        )
        in_degree[t0 : t0 + target.size] += source.size
        out_degree[s0 : s0 + source.size] += target.size
        start = stop
    residual_start = start
    residuals, residual_source, residual_target = [], [], []
    for skip, primary in layout.residuals:
        size = layout.groups[skip].size
        residuals.append(DenseResidual(start, size, layout.offsets[skip], layout.offsets[primary]))
        residual_source.append(torch.arange(size) + layout.offsets[skip])
        residual_target.append(torch.arange(size) + layout.offsets[primary])
        start += size
    for norm in layout.norms:  # diagonal edges like a residual's, after them (to_graph order)
        size = layout.groups[norm.source].size
        source, target = layout.offsets[norm.source], layout.offsets[norm.target]
        residuals.append(DenseResidual(start, size, source, target))
        residual_source.append(torch.arange(size) + source)
        residual_target.append(torch.arange(size) + target)
        start += size
    for query, key in layout.pairings:  # attention's query-key pairing: diagonal, after norms
        size = layout.groups[query].size
        source, target = layout.offsets[query], layout.offsets[key]
        residuals.append(DenseResidual(start, size, source, target))
        residual_source.append(torch.arange(size) + source)
        residual_target.append(torch.arange(size) + target)
        start += size
    residual_source_t = (
        torch.cat(residual_source) if residual_source else torch.zeros(0, dtype=torch.long)
    )
    residual_target_t = (
        torch.cat(residual_target) if residual_target else torch.zeros(0, dtype=torch.long)
    )
    in_degree += torch.bincount(residual_target_t, minlength=layout.num_nodes)
    out_degree += torch.bincount(residual_source_t, minlength=layout.num_nodes)

    def inverse(degree: Tensor) -> Tensor:
        degree = degree.to(torch.float64)  # cast to the compute dtype at use
        return torch.where(degree > 0, 1.0 / degree.clamp(min=1), 0.0).unsqueeze(-1)

    return DensePlan(
        num_nodes=layout.num_nodes,
        num_edges=start,
        links=tuple(links),
        residual_start=residual_start,
        residual_source=residual_source_t,
        residual_target=residual_target_t,
        in_degree=in_degree,
        out_degree=out_degree,
        inverse_in_degree=inverse(in_degree),
        inverse_out_degree=inverse(out_degree),
        residuals=tuple(residuals),
        segments=(_segments(links, residuals, True), _segments(links, residuals, False)),
    )


def aggregate_segment(
    messages: Tensor,
    plan: DensePlan,
    segment: DenseSegment,
    forward: bool,
    aggregators: tuple[str, ...],
    outs: dict[str, Tensor] | None,
) -> dict[str, Tensor]:
    """Every aggregator over one segment's edges: ``{name: (B, size, d)}``, written into
    ``outs`` (views of the node MLP's input) when given.

    ``messages`` is ``(B, E, d)`` in :func:`~weightspace.graph.to_graph` edge order; a forward
    segment reduces over each block's ``in`` axis, a backward one over its ``out`` axis.
    """
    b, _, d = messages.shape
    axis = 2 if forward else 1  # reduce over the neurons on the other side of the edge
    blocks = [
        messages[:, link.edge_start : link.edge_stop].view(b, link.out, link.inp, d)
        for link in (plan.links[i] for i in segment.links)
    ]
    residual = [
        messages[:, res.edge_start : res.edge_start + res.size]
        for res in (plan.residuals[i] for i in segment.residuals)
    ]  # (B, size, d): edge k of a residual is node k of the segment

    def reduce(kind: str, out: Tensor | None) -> Tensor:
        """Sum, sum of squares, max or min over all of the segment's edges (into ``out``)."""
        reducer = {"max": torch.amax, "min": torch.amin}.get(kind, torch.sum)
        combine = {"max": torch.maximum, "min": torch.minimum}.get(kind, torch.add)
        acc = None
        for is_block, value in [(True, v) for v in blocks] + [(False, v) for v in residual]:
            if kind == "squares":
                value = value.square()
            first_out = out if acc is None else None
            if is_block:
                value = reducer(value, axis, out=first_out)
            elif first_out is not None:
                value = first_out.copy_(value)
            acc = value if acc is None else combine(acc, value, out=out)
        return acc

    def dest(name: str) -> Tensor | None:
        return None if outs is None else outs[name]

    values: dict[str, Tensor] = {}
    names = aggregators
    scale = 1.0 / segment.degree
    single = len(blocks) == 1 and not residual
    total = None
    if "sum" in names or "std" in names or ("mean" in names and not single):
        total = reduce("sum", dest("sum") if "sum" in names else None)
        if "sum" in names:
            values["sum"] = total
    if "mean" in names:
        if total is None:  # one block: its mean
            values["mean"] = torch.mean(blocks[0], axis, out=dest("mean"))
        else:
            values["mean"] = torch.mul(total, scale, out=dest("mean"))
    if "std" in names:
        mean = total * scale
        variance = (reduce("squares", None) * scale - mean * mean).clamp(min=0)
        values["std"] = torch.sqrt(variance + 1e-5, out=dest("std"))
    for name in ("max", "min"):
        if name in names:
            values[name] = reduce(name, dest(name))
    return values
