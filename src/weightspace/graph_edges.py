"""The neural graph's nodes and edges as unpadded blocks, straight from a state dict.

:func:`~weightspace.graph.to_graph` lays the edges out in runs: one complete bipartite block
per layer link (target-major: edge ``o * in + i`` goes from source neuron ``i`` to target
neuron ``o``), then one diagonal block per residual, norm and query-key pairing (edge ``k``
goes from neuron ``k`` of one group to neuron ``k`` of another). :func:`edge_blocks` returns
those runs in that order, each with its *own* feature width (a 3x3 conv's 9, a linear layer's
1) and, for plain layers, the features as a view of the weight tensor: nothing is padded to the
graph's widest edge and nothing is copied. :func:`~weightspace.graph.to_graph` writes them into
its padded ``edge_attr``; the encoder's memory-lean path (:mod:`weightspace.nn.large_graph`)
embeds them block by block without ever building the ``(E, K)`` tensor.

:func:`node_attributes` gives the node tensors of the graph (bias, depth, role, activation,
position, group), which are ``N``-sized and cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from weightspace.layout import (
    EDGE_QUERY_KEY,
    Layout,
    layout_of,
)
from weightspace.spec import ACTIVATION_IDS, NetworkSpec

__all__ = [
    "EDGE_LAYER_NORM",
    "EDGE_RESIDUAL",
    "EDGE_RMS_NORM",
    "EDGE_WEIGHT",
    "NORM_EDGE_KINDS",
    "EdgeBlock",
    "NodeAttributes",
    "edge_blocks",
    "node_attributes",
]

EDGE_WEIGHT, EDGE_RESIDUAL, EDGE_LAYER_NORM, EDGE_RMS_NORM = 0, 1, 2, 3
#: ``edge_kind`` of a norm's diagonal edges, by the norm op's ``mode``.
NORM_EDGE_KINDS: dict[str, int] = {"layer": EDGE_LAYER_NORM, "rms": EDGE_RMS_NORM}


@dataclass(frozen=True)
class EdgeBlock:
    """One run of consecutive edges of the neural graph.

    A bipartite block (``diagonal=False``) holds ``targets * sources`` edges, target-major; a
    diagonal block ``sources`` edges ``source_start + k → target_start + k``.

    Attributes:
        features: ``(count, width)`` unpadded edge features (a view of the weight where it can).
        kind: the ``edge_kind`` of every edge of the block.
        layer: the ``edge_layer`` (``-1`` for residual, norm and pairing edges).
        source_start: first node of the source group.
        sources: neurons in the source group.
        target_start: first node of the target group.
        targets: neurons in the target group (``== sources`` for a diagonal block).
        diagonal: ``True`` for identity-like ``k → k`` edges.
    """

    features: Tensor
    kind: int
    layer: int
    source_start: int
    sources: int
    target_start: int
    targets: int
    diagonal: bool

    @property
    def count(self) -> int:
        return self.sources if self.diagonal else self.sources * self.targets

    @property
    def width(self) -> int:
        return int(self.features.shape[1])

    def edge_index(self) -> Tensor:
        """``(2, count)`` source and target node ids of the block's edges."""
        if self.diagonal:
            ar = torch.arange(self.sources)
            return torch.stack([ar + self.source_start, ar + self.target_start])
        out = torch.empty(2, self.targets, self.sources, dtype=torch.long)
        out[0] = torch.arange(self.source_start, self.source_start + self.sources)
        out[1] = torch.arange(self.target_start, self.target_start + self.targets).unsqueeze(1)
        return out.view(2, -1)


def edge_blocks(
    spec: NetworkSpec,
    state_dict: Mapping[str, Tensor],
    *,
    layout: Layout | None = None,
    dtype: torch.dtype | None = None,
) -> list[EdgeBlock]:
    """The edges of ``spec``'s neural graph as blocks in :func:`~weightspace.graph.to_graph`
    order: layer links, then residuals, norms and query-key pairings.

    Args:
        spec: the architecture.
        state_dict: its weights (not checked here: see
            :func:`~weightspace.graph_checks.check_state_dict`).
        layout: ``layout_of(spec)``, if the caller has it.
        dtype: cast the features to this dtype (default: keep the weights'; a plain layer's
            features then stay a view of its weight).
    """
    layout = layout or layout_of(spec)
    offsets, groups = layout.offsets, layout.groups
    blocks: list[EdgeBlock] = []

    def cast(t: Tensor) -> Tensor:
        return t if dtype is None else t.to(dtype)

    for link in layout.links:
        src, dst = groups[link.source], groups[link.target]
        w = state_dict[link.key]
        if link.transposed:  # nn.Embedding's (V, E) table: edge v -> e carries weight[v, e]
            w = w.t()
        if not link.is_plain:
            w = w[link.row_start : link.row_start + dst.size]
        # (out, in, S*k) row-major: for a linear layer reading a flattened (C, *spatial) tensor
        # that is exactly (out, C, S), since flatten() is channel-major.
        feats = cast(w.reshape(dst.size * src.size, link.edge_features))
        blocks.append(
            EdgeBlock(feats, link.edge_kind, link.index, offsets[src.index], src.size,
                      offsets[dst.index], dst.size, diagonal=False)
        )  # fmt: skip

    def diagonal(source: int, target: int, kind: int, values: Tensor) -> EdgeBlock:
        size = groups[source].size
        feats = cast(values.reshape(size, 1))
        return EdgeBlock(
            feats, kind, -1, offsets[source], size, offsets[target], size, diagonal=True
        )

    ones_dtype = dtype
    if ones_dtype is None and layout.links:
        ones_dtype = blocks[0].features.dtype if blocks[0].features.is_floating_point() else None
    for skip, primary in layout.residuals:
        blocks.append(diagonal(skip, primary, EDGE_RESIDUAL, _ones(groups[skip].size, ones_dtype)))
    for norm in layout.norms:
        gamma = state_dict.get(f"{norm.name}.weight")
        if gamma is None:
            gamma = _ones(groups[norm.source].size, ones_dtype)
        blocks.append(diagonal(norm.source, norm.target, NORM_EDGE_KINDS[norm.mode], gamma))
    for query, key in layout.pairings:  # query dim i pairs with key dim i: a fixed 1
        blocks.append(diagonal(query, key, EDGE_QUERY_KEY, _ones(groups[query].size, ones_dtype)))
    return blocks


def _ones(size: int, dtype: torch.dtype | None) -> Tensor:
    return torch.ones(size, dtype=dtype or torch.get_default_dtype())


@dataclass(frozen=True)
class NodeAttributes:
    """The node tensors of a neural graph (see :mod:`weightspace.graph` for their meaning).

    Shapes: ``bias (N, 1)``; the others ``(N,)`` longs.
    """

    bias: Tensor
    depth: Tensor
    role: Tensor
    activation: Tensor
    position: Tensor
    group: Tensor


def node_attributes(
    spec: NetworkSpec,
    state_dict: Mapping[str, Tensor],
    *,
    layout: Layout | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> NodeAttributes:
    """The node tensors of ``spec``'s neural graph: biases from ``state_dict`` (0 where a group
    has none), the rest from the layout. ``bias`` takes ``dtype`` (default: the default dtype)
    and ``device``; the long tensors stay on the CPU."""
    layout = layout or layout_of(spec)
    n = layout.num_nodes
    bias = torch.zeros(n, 1, dtype=dtype or torch.get_default_dtype(), device=device)
    depth = torch.empty(n, dtype=torch.long)
    role = torch.empty(n, dtype=torch.long)
    activation = torch.empty(n, dtype=torch.long)
    position = torch.full((n,), -1, dtype=torch.long)
    group = torch.empty(n, dtype=torch.long)
    for g, offset in zip(layout.groups, layout.offsets, strict=True):
        sl = slice(offset, offset + g.size)
        depth[sl] = g.depth
        role[sl] = g.role
        activation[sl] = ACTIVATION_IDS[g.activation]
        group[sl] = g.index
        if g.role != 1 or g.head_dim:  # head dims: fixed order once canonicalised
            position[sl] = torch.arange(g.size)
        key = g.bias_name()
        if key is not None and key in state_dict:
            bias[sl, 0] = state_dict[key][g.bias_start : g.bias_start + g.size]
    return NodeAttributes(bias, depth, role, activation, position, group)
