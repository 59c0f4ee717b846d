"""Equivariant message passing over neural graphs, with edge updates (Neural-Graphs style).

The dense per-layer layout that the fast path reads is in :mod:`weightspace.nn.dense_plan`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing

from weightspace.nn.dense_plan import (  # noqa: F401 (re-exported: weightspace.nn.layers)
    DenseLink,
    DensePlan,
    DenseResidual,
    DenseSegment,
    aggregate_segment,
    dense_plan,
)

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


def _activate(x: Tensor, name: str, inplace: bool) -> Tensor:
    """``make_activation(name)(x)``, in place when ``inplace`` (``gelu``: never)."""
    if name == "silu":
        return F.silu(x, inplace=inplace)
    if name == "relu":
        return F.relu(x, inplace=inplace)
    return F.gelu(x)


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
        self,
        x: Tensor,
        edge_attr: Tensor,
        plan: DensePlan,
        update_edges: bool,
        message_buffer: Tensor | None = None,
        edges_in_place: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        r""":meth:`forward` on a batch of ``B`` graphs of one architecture, block by block.

        Every layer link is a complete bipartite block, stored target-major, so its messages
        view as ``(B, out, in, d)``: the source and target terms are broadcasts and the
        forward/backward aggregations are reductions over ``in``/``out``. Residual identity
        edges pair node ``k`` of one group with node ``k`` of another, so they are contiguous
        ``(B, size, d)`` slices as well: the whole layer runs on slices, without gathers or
        scatters.

        Within a :class:`DenseSegment` (one neuron group) every node has the same degree
        :math:`D`, so :math:`\mathrm{mean} = \frac{1}{D}\sum` with a Python scalar; nodes with no
        edge in a direction aggregate to 0 (``std``: :math:`\sqrt{10^{-5}}`), as in the
        message-passing path.

        Without autograd and outside ``torch.compile`` (inference), every intermediate is
        written once into preallocated buffers: the node terms straight into the message
        buffer (``pre = W_s h_j + W_t h_i``, then ``pre += W_e e`` by one in-place ``addmm``),
        and each aggregate straight into its column block of the node MLP's input
        ``[h | aggregates]`` (``out=`` reductions), so there is no zero fill, no running
        update and no concatenation. Otherwise the same values are built functionally (slices
        concatenated), which autograd differentiates and inductor fuses.

        For a large graph (inference only) ``message_buffer`` ``(B * E, edge_hidden)`` receives
        the messages instead of a fresh tensor, and ``edges_in_place`` adds the edge update
        into ``edge_attr`` itself, so a stack of layers reuses two ``(E, d)`` buffers
        (:mod:`weightspace.nn.large_graph`).
        """
        d = self.edge_hidden
        n, e = plan.num_nodes, plan.num_edges
        b = x.shape[0] // n
        inplace = not torch.is_grad_enabled() and not torch.compiler.is_compiling()
        source, target = self.lin_nodes(x).view(b, n, 2 * d).split(d, dim=-1)  # (B, N, d)

        # Node terms of every edge's pre-activation, in edge order.
        def node_terms(link_or_residual, out: Tensor | None) -> Tensor:
            if isinstance(link_or_residual, DenseLink):
                link = link_or_residual
                src = source[:, link.source_start : link.source_stop].unsqueeze(1)
                tgt = target[:, link.target_start : link.target_stop].unsqueeze(2)
                shape = (b, link.out, link.inp, d)
            else:
                res = link_or_residual
                src = source[:, res.source_start : res.source_start + res.size]
                tgt = target[:, res.target_start : res.target_start + res.size]
                shape = (b, res.size, d)
            if out is not None:
                return torch.add(src, tgt, out=out.view(shape))
            return (src + tgt).reshape(b, -1, d)

        blocks = (*plan.links, *plan.residuals)
        starts = [link.edge_start for link in blocks]
        stops = [*starts[1:], e]
        if inplace:
            pre = x.new_empty(b, e, d) if message_buffer is None else message_buffer.view(b, e, d)
            for block, start, stop in zip(blocks, starts, stops, strict=True):
                node_terms(block, pre[:, start:stop])
            pre = pre.view(b * e, d)  # addmm into its own input (addmm_, seen by flop counters)
            pre = torch.addmm(pre, edge_attr, self.lin_edge.weight.t(), out=pre)
        else:
            terms = torch.cat([node_terms(block, None) for block in blocks], dim=1)
            pre = torch.addmm(terms.view(b * e, d), edge_attr, self.lin_edge.weight.t())
        z = _activate(pre, self.activation_name, inplace)  # (B * E, d)
        messages = z.view(b, e, d)

        hidden = self.hidden
        width = hidden + len(self.directions) * len(self.aggregators) * d
        node_input = None
        columns: list[list[Tensor]] = []
        if inplace:
            node_input = x.new_empty(b, n, width)
            node_input[..., :hidden] = x.view(b, n, hidden)
        column = hidden
        for direction in self.directions:
            forward = direction == "forward"
            outs = None
            if node_input is not None:
                outs = {
                    name: node_input[..., column + k * d : column + (k + 1) * d]
                    for k, name in enumerate(self.aggregators)
                }
            pieces: dict[str, list[Tensor]] = {name: [] for name in self.aggregators}
            cursor = 0
            segments = plan.segments[0 if forward else 1]
            for segment in (*segments, None):
                gap_stop = n if segment is None else segment.start
                if gap_stop > cursor:  # isolated nodes in this direction
                    for name in self.aggregators:
                        fill = math.sqrt(1e-5) if name == "std" else 0.0
                        if outs is not None:
                            outs[name][:, cursor:gap_stop].fill_(fill)
                        else:
                            pieces[name].append(z.new_full((b, gap_stop - cursor, d), fill))
                if segment is None:
                    break
                rows = slice(segment.start, segment.stop)
                values = aggregate_segment(
                    messages,
                    plan,
                    segment,
                    forward,
                    self.aggregators,
                    None if outs is None else {k: v[:, rows] for k, v in outs.items()},
                )
                for name in self.aggregators:
                    pieces[name].append(values[name])
                cursor = segment.stop
            if outs is None:
                columns += [pieces[name] for name in self.aggregators]
            column += len(self.aggregators) * d
        if node_input is None:
            parts = [x.view(b, n, hidden)] + [torch.cat(p, dim=1) for p in columns]
            node_input = torch.cat(parts, dim=-1)
        first, _, second = self.node_mlp
        u = first(self.norm(node_input.view(b * n, width)))
        u = second(_activate(u, self.activation_name, inplace))
        out = u.add_(x) if inplace else u + x  # (B * N, hidden)
        edge_out = None
        if update_edges and edges_in_place and inplace:
            edge_out = edge_attr.addmm_(z, self.lin_edge_out.weight.t())
        elif update_edges:
            edge_out = torch.addmm(edge_attr, z, self.lin_edge_out.weight.t())
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
