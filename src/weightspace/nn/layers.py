"""Equivariant message passing over neural graphs, with edge updates (Neural-Graphs style)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing

from weightspace.layout import layout_of
from weightspace.spec import NetworkSpec

__all__ = ["DensePlan", "EdgeNodeConv", "degree_inverses", "dense_plan", "make_activation"]

_DIRECTIONS = ("forward", "backward")
_AGGREGATORS = ("sum", "mean", "max", "min", "std")


def degree_inverses(
    edge_index: Tensor, num_nodes: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """``(1 / in-degree, 1 / out-degree)`` per node as ``(N, 1)`` tensors, 0 for isolated
    directions (their aggregated sums are 0 too)."""
    out = []
    for row in (1, 0):
        degree = torch.bincount(edge_index[row], minlength=num_nodes).to(dtype)
        out.append(torch.where(degree > 0, 1.0 / degree.clamp(min=1), 0.0).unsqueeze(-1))
    return out[0], out[1]


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
class DensePlan:
    """Where each layer's block lives in the node and edge tensors of one architecture's
    graph (as :func:`~weightspace.graph.to_graph` lays them out)."""

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
    residual_source, residual_target = [], []
    for skip, primary in layout.residuals:
        size = layout.groups[skip].size
        residual_source.append(torch.arange(size) + layout.offsets[skip])
        residual_target.append(torch.arange(size) + layout.offsets[primary])
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
        num_edges=start + residual_source_t.numel(),
        links=tuple(links),
        residual_start=start,
        residual_source=residual_source_t,
        residual_target=residual_target_t,
        in_degree=in_degree,
        out_degree=out_degree,
        inverse_in_degree=inverse(in_degree),
        inverse_out_degree=inverse(out_degree),
    )


def make_activation(name: str) -> nn.Module:
    """``relu``, ``silu`` or ``gelu`` as a module."""
    table = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; use one of {sorted(table)}")
    return table[name]()


class EdgeNodeConv(MessagePassing):
    r"""One round of edge and node updates on a neural graph, in both edge directions.

    Every edge :math:`j \to i` (from a neuron that is read to the neuron it feeds) first builds a
    message from its source, its target and itself, which also updates the edge:

    .. math::
        z_{ji} &= \sigma\big(W_s h_j + W_t h_i + W_e e_{ji} + b\big) \\
        e'_{ji} &= e_{ji} + W_o z_{ji}

    Node :math:`i` then aggregates the messages of its incoming edges (*forward*: what the
    layer below sends) and of its outgoing edges (*backward*: what the layer above reads), each
    with every aggregator :math:`\bigoplus \in \{\mathrm{sum}, \mathrm{mean}, \mathrm{max},
    \dots\}`, and updates its state with a residual MLP:

    .. math::
        h'_i = h_i + \mathrm{MLP}\Big(\mathrm{LN}\big[h_i \,\|\,
        \bigoplus_{j \to i} z_{ji} \,\|\, \bigoplus_{i \to k} z_{ik}\big]\Big)

    All weights are shared across nodes and edges and aggregators are symmetric functions, so
    permuting nodes (and relabelling ``edge_index`` to match) permutes ``h'`` and ``e'`` the same
    way: the layer is permutation-equivariant. The message is split as :math:`W_s h_j + W_t h_i`
    so that the two projections run over nodes, not edges.

    Args:
        hidden: width of node states.
        edge_hidden: width of edge states and messages.
        aggregators: aggregators applied to the messages of each direction
            (any of ``"sum"``, ``"mean"``, ``"max"``, ``"min"``, ``"std"``).
        directions: ``("forward", "backward")`` or one of them.
        activation: ``"relu"``, ``"silu"`` or ``"gelu"``.

    Shapes:
        - input: node states ``x (N, hidden)``, ``edge_index (2, E)``,
          edge states ``edge_attr (E, edge_hidden)``
        - output: ``(N, hidden)``, ``(E, edge_hidden)``
    """

    def __init__(
        self,
        hidden: int,
        edge_hidden: int,
        aggregators: Sequence[str] = ("mean", "max"),
        directions: Sequence[str] = _DIRECTIONS,
        activation: str = "silu",
    ) -> None:
        aggregators = tuple(aggregators)
        directions = tuple(directions)
        if not directions or any(d not in _DIRECTIONS for d in directions):
            raise ValueError(f"directions must be a non-empty subset of {_DIRECTIONS}")
        unknown = [a for a in aggregators if a not in _AGGREGATORS]
        if not aggregators or unknown:
            raise ValueError(f"aggregators must be a non-empty subset of {_AGGREGATORS}")
        super().__init__(aggr=None)
        self.hidden = hidden
        self.edge_hidden = edge_hidden
        self.aggregators = aggregators
        self.directions = directions
        self.activation_name = activation
        # W_s and W_t in one matrix: one matmul over nodes instead of two.
        self.lin_nodes = nn.Linear(hidden, 2 * edge_hidden)
        self.lin_edge = nn.Linear(edge_hidden, edge_hidden, bias=False)
        self.lin_edge_out = nn.Linear(edge_hidden, edge_hidden, bias=False)
        self.act = make_activation(activation)
        node_in = hidden + len(directions) * len(aggregators) * edge_hidden
        self.norm = nn.LayerNorm(node_in)
        self.node_mlp = nn.Sequential(
            nn.Linear(node_in, hidden), make_activation(activation), nn.Linear(hidden, hidden)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for lin in (self.lin_nodes, self.lin_edge, self.lin_edge_out):
            lin.reset_parameters()
        self.norm.reset_parameters()
        for module in self.node_mlp:
            if isinstance(module, nn.Linear):
                module.reset_parameters()

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        edge_attr: Tensor,
        reverse_edge_index: Tensor | None = None,
        inverse_degree: tuple[Tensor, Tensor] | None = None,
        plan: DensePlan | None = None,
        update_edges: bool = True,
    ) -> tuple[Tensor, Tensor | None]:
        """Update node and edge states.

        Args:
            x: node states ``(N, hidden)``.
            edge_index: ``(2, E)``, row 0 the source (read) neuron, row 1 the target.
            edge_attr: edge states ``(E, edge_hidden)``.
            reverse_edge_index: ``edge_index.flip(0)``, if precomputed by the caller.
            inverse_degree: ``(1 / in-degree, 1 / out-degree)`` as ``(N, 1)`` tensors (0 where
                the degree is 0), if precomputed by the caller (used by ``mean``).
            plan: the :class:`DensePlan` of the one architecture of every graph in the batch,
                when nodes and edges are in :func:`~weightspace.graph.to_graph` order; the
                layer then computes the same function on dense per-layer blocks (faster: no
                gathers, no scatters). ``edge_index`` is not read in that case.
            update_edges: compute the new edge states (the last layer's are unused).

        Returns:
            node states ``(N, hidden)`` and edge states ``(E, edge_hidden)`` (``None`` if not
            ``update_edges``).
        """
        if plan is not None:
            return self._forward_dense(x, edge_attr, plan, update_edges)
        num_nodes = x.shape[0]
        if reverse_edge_index is None:
            reverse_edge_index = edge_index.flip(0)
        if inverse_degree is None:
            inverse_degree = degree_inverses(edge_index, num_nodes, x.dtype)
        source, target = self.lin_nodes(x).split(self.edge_hidden, dim=-1)
        z = self.edge_updater(
            edge_index,
            source=source.contiguous(),
            target=target.contiguous(),
            edge_attr=edge_attr,
        )
        edge_out = (
            torch.addmm(edge_attr, z, self.lin_edge_out.weight.t()) if update_edges else None
        )  # (E, edge_hidden)
        parts = [x]
        size = (num_nodes, num_nodes)
        if "forward" in self.directions:
            parts.append(
                self.propagate(edge_index, z=z, size=size, inverse_degree=inverse_degree[0])
            )
        if "backward" in self.directions:
            parts.append(
                self.propagate(reverse_edge_index, z=z, size=size, inverse_degree=inverse_degree[1])
            )
        out = x + self.node_mlp(self.norm(torch.cat(parts, dim=-1)))  # (N, hidden)
        return out, edge_out

    def _forward_dense(
        self, x: Tensor, edge_attr: Tensor, plan: DensePlan, update_edges: bool
    ) -> tuple[Tensor, Tensor | None]:
        """:meth:`forward` on a batch of ``B`` graphs of one architecture, block by block.

        Every layer link is a complete bipartite block, stored target-major, so its messages
        view as ``(B, out, in, d)``: the source and target terms are broadcasts and the
        forward/backward aggregations are reductions over ``in``/``out``. Residual identity
        edges (few) go through index operations.
        """
        d = self.edge_hidden
        n, e = plan.num_nodes, plan.num_edges
        b = x.shape[0] // n
        source, target = self.lin_nodes(x).view(b, n, 2 * d).split(d, dim=-1)  # (B, N, d)
        pre = (edge_attr @ self.lin_edge.weight.t()).view(b, e, d)  # W_e e
        for link in plan.links:
            block = pre[:, link.edge_start : link.edge_stop].view(b, link.out, link.inp, d)
            block += source[:, link.source_start : link.source_stop].unsqueeze(1)
            block += target[:, link.target_start : link.target_stop].unsqueeze(2)
        if plan.residual_start < e:
            residual = pre[:, plan.residual_start :]
            residual += source[:, plan.residual_source] + target[:, plan.residual_target]
        z = self.act(pre)  # (B, E, d)
        # In-place running max/min is fastest but breaks autograd; use it for inference only.
        inplace = not torch.is_grad_enabled()

        parts = [x]
        for direction in self.directions:
            forward = direction == "forward"
            # Reduce each block over the neurons on the other side of the edge.
            axis = 2 if forward else 1
            stats = {}
            needs = set(self.aggregators)
            if needs & {"sum", "mean", "std"}:
                stats["sum"] = z.new_zeros(b, n, d)
            if "std" in needs:
                stats["squares"] = z.new_zeros(b, n, d)
            if "max" in needs:
                stats["max"] = z.new_full((b, n, d), -math.inf)
            if "min" in needs:
                stats["min"] = z.new_full((b, n, d), math.inf)
            for link in plan.links:
                block = z[:, link.edge_start : link.edge_stop].view(b, link.out, link.inp, d)
                if forward:
                    rows = slice(link.target_start, link.target_stop)
                else:
                    rows = slice(link.source_start, link.source_stop)
                if "sum" in stats:
                    stats["sum"][:, rows] += block.sum(axis)
                if "squares" in stats:
                    stats["squares"][:, rows] += block.square().sum(axis)
                for key, reduce in (("max", "amax"), ("min", "amin")):
                    if key not in stats:
                        continue
                    reduced = block.amax(axis) if key == "max" else block.amin(axis)
                    if inplace:
                        combine = torch.maximum if key == "max" else torch.minimum
                        stats[key][:, rows] = combine(stats[key][:, rows], reduced)
                    else:  # autograd: the running max must not be overwritten in place
                        index = torch.arange(rows.start, rows.stop, device=z.device)
                        index = index.view(1, -1, 1).expand_as(reduced)
                        stats[key] = stats[key].scatter_reduce(1, index, reduced, reduce)
            if plan.residual_start < e:
                messages = z[:, plan.residual_start :]  # (B, R, d)
                index = plan.residual_target if forward else plan.residual_source
                expanded = index.view(1, -1, 1).expand_as(messages)
                if "sum" in stats:
                    stats["sum"].index_add_(1, index, messages)
                if "squares" in stats:
                    stats["squares"].index_add_(1, index, messages.square())
                for key, reduce in (("max", "amax"), ("min", "amin")):
                    if key in stats and inplace:
                        stats[key].scatter_reduce_(1, expanded, messages, reduce)
                    elif key in stats:
                        stats[key] = stats[key].scatter_reduce(1, expanded, messages, reduce)
            isolated = (plan.in_degree if forward else plan.out_degree) == 0  # (N,)
            inverse = (plan.inverse_in_degree if forward else plan.inverse_out_degree).to(z.dtype)
            for name in self.aggregators:
                if name == "sum":
                    value = stats["sum"]
                elif name == "mean":
                    value = stats["sum"] * inverse
                elif name == "std":
                    mean = stats["sum"] * inverse
                    variance = (stats["squares"] * inverse - mean * mean).clamp(min=0)
                    value = torch.sqrt(variance + 1e-5)
                else:
                    value = stats[name].masked_fill(isolated.view(1, n, 1), 0.0)
                parts.append(value.reshape(b * n, d))
        out = x + self.node_mlp(self.norm(torch.cat(parts, dim=-1)))  # (B * N, hidden)
        edge_out = None
        if update_edges:
            edge_out = torch.addmm(edge_attr, z.view(b * e, d), self.lin_edge_out.weight.t())
        return out, edge_out

    def edge_update(self, source_j: Tensor, target_i: Tensor, edge_attr: Tensor) -> Tensor:
        pre = torch.addmm(source_j, edge_attr, self.lin_edge.weight.t())  # W_s h_j + W_e e
        return self.act(pre + target_i)

    def message(self, z: Tensor) -> Tensor:
        return z

    def aggregate(
        self, inputs: Tensor, index: Tensor, dim_size: int, inverse_degree: Tensor
    ) -> Tensor:
        outs = []
        total = None
        expanded = index.unsqueeze(-1).expand_as(inputs)
        for name in self.aggregators:
            if name in ("sum", "mean", "std"):
                if total is None:
                    total = inputs.new_zeros(dim_size, inputs.shape[1]).index_add_(0, index, inputs)
                if name == "sum":
                    outs.append(total)
                elif name == "mean":
                    outs.append(total * inverse_degree)
                else:
                    squares = inputs.new_zeros(dim_size, inputs.shape[1])
                    squares = squares.index_add_(0, index, inputs * inputs)
                    mean = total * inverse_degree
                    variance = (squares * inverse_degree - mean * mean).clamp(min=0)
                    outs.append(torch.sqrt(variance + 1e-5))
            else:
                reduce = "amax" if name == "max" else "amin"
                out = inputs.new_zeros(dim_size, inputs.shape[1])
                outs.append(out.scatter_reduce_(0, expanded, inputs, reduce, include_self=False))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(hidden={self.hidden}, edge_hidden={self.edge_hidden}, "
            f"aggregators={list(self.aggregators)}, directions={list(self.directions)}, "
            f"activation={self.activation_name!r})"
        )
