r"""One :class:`~weightspace.nn.layers.EdgeNodeConv` round over a large graph, streamed through
its edges in cache-sized chunks (inference only).

:meth:`EdgeNodeConv._forward_dense <weightspace.nn.layers.EdgeNodeConv._forward_dense>` makes
one pass over all ``E`` edges per elementwise step: node terms, ``+ W_e e``, the activation,
each aggregator in each direction, the edge update. For a ViT-Tiny (5.7M edges, ``d = 32``) each
pass moves 730 MB, and on a CPU the layer is bound by memory traffic, not arithmetic. Here each
layer block (``out x in`` target-major) is cut into chunks of whole target rows of about
:data:`STREAM_CHUNK_EDGES` edges, and every step runs on the chunk while it is in cache:

.. math::
    z_{ji} = \sigma(W_s h_j + W_t h_i + W_e e_{ji} + b), \qquad
    e_{ji} \leftarrow e_{ji} + W_o z_{ji}

with the forward aggregates of the chunk's target rows complete within the chunk (a reduction
over ``in``) and the backward aggregates of the block's source nodes accumulated across chunks
(running sums, sums of squares, maxima and minima, one ``(N, d)`` accumulator each). A node with
no edge in a direction aggregates to 0 (``std``: :math:`\sqrt{10^{-5}}`), as in the reference.
So a layer reads and writes the edge states once and allocates no ``(E, d)`` tensor.

On a CPU the kernels run on one intra-op thread (:func:`~weightspace.one_thread.one_thread`:
thousands of small parallel regions cost more than they gain, and on a shared CPU far more);
a graph of at least :data:`PARALLEL_EDGES` edges is instead split into as many shares of whole
blocks as torch is configured to use threads, streamed by as many Python threads (torch
releases the GIL) into their own accumulators, which are then merged in a fixed order
(deterministic).

The result equals the reference layer's up to float rounding (summation order), checked in
``tests/test_edge_stream.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from weightspace.nn.layers import DenseLink, DensePlan, DenseResidual, EdgeNodeConv, _activate
from weightspace.one_thread import one_thread

__all__ = ["PARALLEL_EDGES", "STREAM_CHUNK_EDGES", "InitialEdges", "stream_conv"]

#: ``initial(block, start, out)``: write the initial states of a block's edges
#: ``start:start + len(out)`` into ``out (count, edge_hidden)``.
InitialEdges = Callable[[int, int, Tensor], None]

#: Edges per chunk (whole target rows; a row wider than this is one chunk): ``(chunk, d)``
#: float32 temporaries of 2 MiB at ``d = 32``, within a core's share of the last-level cache.
STREAM_CHUNK_EDGES = 16_384


#: Graphs with fewer edges stream on one Python thread (a thread pool costs more than it saves).
PARALLEL_EDGES = 1_000_000


def _shares(blocks: Sequence[DenseLink | DenseResidual], workers: int) -> list[list[int]]:
    """Block indices split into at most ``workers`` shares of about equal edge counts
    (largest first, each to the lightest share; deterministic)."""

    def size(block: DenseLink | DenseResidual) -> int:
        return block.out * block.inp if isinstance(block, DenseLink) else block.size

    shares: list[list[int]] = [[] for _ in range(max(1, min(workers, len(blocks))))]
    loads = [0] * len(shares)
    for index in sorted(range(len(blocks)), key=lambda i: -size(blocks[i])):
        lightest = loads.index(min(loads))
        shares[lightest].append(index)
        loads[lightest] += size(blocks[index])
    return [sorted(share) for share in shares if share]


class _Accumulators:
    """Running per-node aggregates of one direction: ``(N, d)`` sums, sums of squares,
    maxima and minima (only those the aggregators need)."""

    def __init__(self, like: Tensor, num_nodes: int, d: int, aggregators: tuple[str, ...]) -> None:
        self.sum = (
            like.new_zeros(num_nodes, d)
            if any(a in aggregators for a in ("sum", "mean", "std"))
            else None
        )
        self.squares = like.new_zeros(num_nodes, d) if "std" in aggregators else None
        self.max = like.new_full((num_nodes, d), -math.inf) if "max" in aggregators else None
        self.min = like.new_full((num_nodes, d), math.inf) if "min" in aggregators else None

    def add(self, rows: slice, z: Tensor, axis: int) -> None:
        """Fold the messages ``z`` (a ``(r, c, d)`` block) reduced over ``axis`` into ``rows``."""
        if self.sum is not None:
            self.sum[rows] += z.sum(axis)
        if self.squares is not None:
            self.squares[rows] += z.square().sum(axis)
        if self.max is not None:
            torch.maximum(self.max[rows], z.amax(axis), out=self.max[rows])
        if self.min is not None:
            torch.minimum(self.min[rows], z.amin(axis), out=self.min[rows])

    def add_diagonal(self, rows: slice, z: Tensor) -> None:
        """Fold one message per node (``z (size, d)``, residual-like edges) into ``rows``."""
        if self.sum is not None:
            self.sum[rows] += z
        if self.squares is not None:
            self.squares[rows] += z.square()
        if self.max is not None:
            torch.maximum(self.max[rows], z, out=self.max[rows])
        if self.min is not None:
            torch.minimum(self.min[rows], z, out=self.min[rows])

    def merge(self, other: _Accumulators) -> None:
        """Fold another worker's accumulators (of disjoint edges) into these."""
        for mine, theirs, combine in (
            (self.sum, other.sum, torch.add),
            (self.squares, other.squares, torch.add),
            (self.max, other.max, torch.maximum),
            (self.min, other.min, torch.minimum),
        ):
            if mine is not None:
                combine(mine, theirs, out=mine)

    def values(
        self, aggregators: tuple[str, ...], degree: Tensor, inverse_degree: Tensor
    ) -> list[Tensor]:
        """The aggregates in ``aggregators`` order, ``(N, d)`` each; 0 where ``degree`` is 0
        (``std``: :math:`\\sqrt{10^{-5}}`)."""
        isolated = (degree == 0).unsqueeze(-1)  # (N, 1)
        inverse = inverse_degree.to(self.sum.dtype) if self.sum is not None else None
        out = []
        for name in aggregators:
            if name == "sum":
                out.append(self.sum)
            elif name == "mean":
                out.append(self.sum * inverse)
            elif name == "std":
                mean = self.sum * inverse
                variance = (self.squares * inverse - mean * mean).clamp(min=0)
                out.append(torch.sqrt(variance + 1e-5))
            else:
                extreme = self.max if name == "max" else self.min
                out.append(extreme.masked_fill(isolated, 0.0))
        return out


def stream_conv(
    conv: EdgeNodeConv,
    x: Tensor,
    edges: Tensor,
    plan: DensePlan,
    update_edges: bool,
    chunk_edges: int | None = None,
    initial: InitialEdges | None = None,
) -> Tensor:
    """``conv``'s update of one graph's node states ``x (N, hidden)``; the edge states
    ``edges (E, edge_hidden)`` (in :func:`~weightspace.graph.to_graph` order) are updated in
    place when ``update_edges``. Inference only.

    ``initial(block, start, out)``, when given, first writes the initial states of edges
    ``start:start + len(out)`` of block ``block`` (``plan.links`` then ``plan.residuals``)
    into ``out``, chunk by chunk, so the first layer reads them while they are in cache
    (``edges`` may then be uninitialised).

    Returns:
        the new node states ``(N, hidden)``.
    """
    if torch.is_grad_enabled():
        raise RuntimeError("stream_conv is inference-only: run it under torch.no_grad()")
    if x.device.type != "cpu":
        return _stream_conv(conv, x, edges, plan, update_edges, chunk_edges, initial, 1)
    # Thousands of cache-sized kernels: parallel regions would cost more than they gain, so
    # each of up to ``torch.get_num_threads()`` Python threads streams its own share of the
    # blocks on one intra-op thread, with its own accumulators, merged at the end.
    workers = torch.get_num_threads()
    with one_thread():
        return _stream_conv(conv, x, edges, plan, update_edges, chunk_edges, initial, workers)


def _stream_conv(
    conv: EdgeNodeConv,
    x: Tensor,
    edges: Tensor,
    plan: DensePlan,
    update_edges: bool,
    chunk_edges: int | None,
    initial: InitialEdges | None,
    workers: int,
) -> Tensor:
    chunk_edges = STREAM_CHUNK_EDGES if chunk_edges is None else chunk_edges
    d, n = conv.edge_hidden, plan.num_nodes
    plan = plan.to(x.device)
    source, target = conv.lin_nodes(x).split(d, dim=-1)  # (N, d) each
    edge_weight = conv.lin_edge.weight.t()  # (d, d)
    out_weight = conv.lin_edge_out.weight.t()  # (d, d)
    act = conv.activation_name
    aggregators = conv.aggregators
    blocks: list[DenseLink | DenseResidual] = [*plan.links, *plan.residuals]
    widest = max(
        [1]
        + [min(link.out, max(1, chunk_edges // link.inp)) * link.inp for link in plan.links]
        + [min(r.size, chunk_edges) for r in plan.residuals]
    )

    def run_blocks(indices: list[int]) -> tuple[_Accumulators | None, _Accumulators | None]:
        """Stream the blocks ``indices`` (one worker's share) into fresh accumulators."""
        forward = _Accumulators(x, n, d, aggregators) if "forward" in conv.directions else None
        backward = _Accumulators(x, n, d, aggregators) if "backward" in conv.directions else None
        buffer = x.new_empty(widest, d)

        def messages(block: int, offset: int, start: int, count: int) -> Tensor:
            """Messages of edges ``start:start + count`` (edge ``offset`` of ``block`` on)
            given their node terms (in the buffer); the edge states are updated in place."""
            pre = buffer[:count]
            state = edges[start : start + count]
            if initial is not None:
                initial(block, offset, state)
            pre.addmm_(state, edge_weight)
            z = _activate(pre, act, True)
            if update_edges:
                state.addmm_(z, out_weight)
            return z

        for index in indices:
            block = blocks[index]
            if isinstance(block, DenseLink):
                link = block
                rows = min(link.out, max(1, chunk_edges // link.inp))
                src = source[link.source_start : link.source_stop].unsqueeze(0)  # (1, in, d)
                for first in range(0, link.out, rows):
                    last = min(link.out, first + rows)
                    r = last - first
                    targets = slice(link.target_start + first, link.target_start + last)
                    terms = buffer[: r * link.inp].view(r, link.inp, d)
                    torch.add(src, target[targets].unsqueeze(1), out=terms)
                    offset = first * link.inp
                    z = messages(index, offset, link.edge_start + offset, r * link.inp)
                    z = z.view(r, link.inp, d)
                    if forward is not None:
                        forward.add(targets, z, 1)
                    if backward is not None:
                        backward.add(slice(link.source_start, link.source_stop), z, 0)
                continue
            res = block
            for first in range(0, res.size, chunk_edges):
                count = min(chunk_edges, res.size - first)
                sources = slice(res.source_start + first, res.source_start + first + count)
                targets = slice(res.target_start + first, res.target_start + first + count)
                terms = buffer[:count]
                torch.add(source[sources], target[targets], out=terms)
                z = messages(index, first, res.edge_start + first, count)
                if forward is not None:
                    forward.add_diagonal(targets, z)
                if backward is not None:
                    backward.add_diagonal(sources, z)
        return forward, backward

    shares = _shares(blocks, workers if plan.num_edges >= PARALLEL_EDGES else 1)
    if len(shares) == 1:
        forward, backward = run_blocks(shares[0])
    else:
        inference = torch.is_inference_mode_enabled()

        def work(indices: list[int]) -> tuple[_Accumulators | None, _Accumulators | None]:
            # grad modes and (with OpenMP) the intra-op thread count are per thread
            with torch.inference_mode(inference), torch.no_grad(), one_thread():
                return run_blocks(indices)

        with ThreadPoolExecutor(len(shares)) as pool:
            results = list(pool.map(work, shares))
        forward, backward = results[0]
        for other_forward, other_backward in results[1:]:  # a fixed order: deterministic
            if forward is not None:
                forward.merge(other_forward)
            if backward is not None:
                backward.merge(other_backward)

    parts = [x]
    for direction in conv.directions:  # the reference's column order
        if direction == "forward":
            parts += forward.values(aggregators, plan.in_degree, plan.inverse_in_degree)
        else:
            parts += backward.values(aggregators, plan.out_degree, plan.inverse_out_degree)
    return x + conv.node_mlp(conv.norm(torch.cat(parts, dim=-1)))  # (N, hidden)
