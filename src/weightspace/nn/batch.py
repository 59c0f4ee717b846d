"""Fast batching of neural graphs for the encoder.

:func:`torch_geometric.data.Batch.from_data_list` is general but costs tens of microseconds per
graph; the encoder only needs a fixed set of tensors. :class:`GraphBank` concatenates many
graphs once (node and edge tensors plus per-graph offsets) and cuts batches out of it with a
handful of vectorised gathers, so training and bulk embedding never loop over graphs in Python.
:class:`GraphBatch` is what the encoder consumes; a PyG ``Batch`` of
:class:`~weightspace.graph.NeuralGraph` works as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from functools import lru_cache

import torch
from torch import Tensor

from weightspace.graph import NeuralGraph
from weightspace.layout import layout_of
from weightspace.spec import NetworkSpec

__all__ = [
    "DENSE_MIN_MODELS",
    "GraphBatch",
    "GraphBank",
    "SymmetryMasks",
    "dense_groups",
    "inference_chunks",
    "symmetry_masks",
]

#: An architecture with at least this many models in a collection gets batches of its own (the
#: encoder's dense path, ~1.5x faster per model than message passing); fewer share mixed
#: batches, so a collection of many architectures costs a few calls, not one per architecture.
DENSE_MIN_MODELS = 32
#: Inside a mixed batch, the graph branch runs the models of one architecture as a dense
#: sub-batch when they have at least this many edges together (the dense path saves more than
#: a call costs; measured on a loaded 2-core CPU: ~10 µs per edge against ~25 ms per call),
#: and the rest together by message passing.
DENSE_MIN_EDGES = 2048


@dataclass
class GraphBatch:
    """A batch of neural graphs as plain tensors (``N`` nodes, ``E`` edges, ``B`` graphs).

    Attributes mirror :class:`~weightspace.graph.NeuralGraph`; ``batch`` maps nodes to graphs,
    ``edge_batch`` edges to graphs. ``node_scalable`` / ``node_flippable`` mark neurons that
    admit positive rescaling / sign flips / free permutation, and ``edge_width`` how many
    leading entries of each edge are real weights (used by the augmentations only). ``spec`` is
    set when every graph has that one architecture with nodes and edges in
    :func:`~weightspace.graph.to_graph` order, which lets the encoder run its dense fast path.
    """

    x: Tensor  # (N, 1) bias
    edge_index: Tensor  # (2, E) global node ids
    edge_attr: Tensor  # (E, K)
    edge_kind: Tensor  # (E,)
    edge_layer: Tensor  # (E,)
    edge_batch: Tensor  # (E,)
    node_depth: Tensor  # (N,)
    node_role: Tensor  # (N,)
    node_activation: Tensor  # (N,)
    node_position: Tensor  # (N,)
    node_group: Tensor  # (N,)
    node_scalable: Tensor  # (N,) bool
    node_flippable: Tensor  # (N,) bool
    node_permutable: Tensor  # (N,) bool
    edge_width: Tensor  # (E,) entries of edge_attr that are real weights (rest is padding)
    batch: Tensor  # (N,)
    num_graphs: int
    max_num_nodes: int
    spec: NetworkSpec | None = None  # the one architecture of every graph, in to_graph order
    spec_ids: Tensor | None = None  # (B,) each graph's architecture: an index into spec_table
    spec_table: tuple[NetworkSpec, ...] = ()  # the architectures spec_ids points into

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """Move to ``device``; cast floating tensors (``x``, ``edge_attr``) to ``dtype``."""
        changes = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                if value.is_floating_point() and dtype is not None:
                    value = value.to(device=device, dtype=dtype)
                else:
                    value = value.to(device=device)
                changes[f.name] = value
        return replace(self, **changes)

    def clone(self) -> GraphBatch:
        return replace(self, x=self.x.clone(), edge_attr=self.edge_attr.clone())


@dataclass(frozen=True)
class SymmetryMasks:
    """Per-node and per-layer facts about a spec that the augmentations need."""

    scalable: Tensor  # (N,) bool: admits positive rescaling
    flippable: Tensor  # (N,) bool: admits sign flips
    permutable: Tensor  # (N,) bool: hidden, in a group not tied by a residual add
    layer_width: Tensor  # (L,) real edge features of each layer's edges


@lru_cache(maxsize=256)
def symmetry_masks(spec: NetworkSpec) -> SymmetryMasks:
    """:class:`SymmetryMasks` of a spec's neurons (see :mod:`weightspace.layout`)."""
    with torch.inference_mode(False):  # cached: must stay usable under autograd
        return _symmetry_masks(spec)


def _symmetry_masks(spec: NetworkSpec) -> SymmetryMasks:
    layout = layout_of(spec)

    def mask(groups: list[int]) -> Tensor:
        out = torch.zeros(layout.num_nodes, dtype=torch.bool)
        for group in groups:
            start = layout.offsets[group]
            out[start : start + layout.groups[group].size] = True
        return out

    permutable = [members[0] for members in layout.permutable_tie_sets() if len(members) == 1]
    return SymmetryMasks(
        scalable=mask(layout.scalable_groups()),
        flippable=mask(layout.sign_flippable_groups()),
        permutable=mask(permutable),
        layer_width=torch.tensor([link.edge_features for link in layout.links]),
    )


def _ranges(starts: Tensor, counts: Tensor) -> Tensor:
    """Concatenation of ``arange(s, s + c)`` for each pair, without a Python loop."""
    total = int(counts.sum())
    new_starts = torch.cumsum(counts, 0) - counts
    shift = torch.repeat_interleave(starts - new_starts, counts, output_size=total)
    return torch.arange(total, device=starts.device) + shift


class GraphBank:
    """Many neural graphs concatenated once; batches are cut out by index.

    Args:
        graphs: the graphs (any architectures).
        edge_features: pad edge features to this width (default: the widest graph's).

    The bank keeps node ids local to each graph (``edge_index`` relative to the graph's first
    node) and per-graph node/edge offsets, so :meth:`select` needs no Python loop.
    """

    def __init__(self, graphs: Sequence[NeuralGraph], edge_features: int | None = None) -> None:
        if not graphs:
            raise ValueError("a GraphBank needs at least one graph")
        width = edge_features or max(int(g.edge_attr.shape[1]) for g in graphs)
        node_counts = torch.tensor([int(g.num_nodes) for g in graphs])
        edge_counts = torch.tensor([int(g.edge_index.shape[1]) for g in graphs])
        self.node_ptr = torch.cumsum(node_counts, 0) - node_counts
        self.edge_ptr = torch.cumsum(edge_counts, 0) - edge_counts
        self.node_counts = node_counts
        self.edge_counts = edge_counts
        self.specs = [g.spec for g in graphs]
        unique: dict[NetworkSpec, int] = {}
        self.spec_index = torch.tensor([unique.setdefault(s, len(unique)) for s in self.specs])
        self.unique_specs = list(unique)
        self.spec_table = tuple(unique)

        def cat(name: str) -> Tensor:
            return torch.cat([g[name].cpu() for g in graphs])

        self.x = cat("x")
        attrs = []
        for g in graphs:
            a = g.edge_attr.cpu()
            if a.shape[1] < width:
                a = torch.nn.functional.pad(a, (0, width - a.shape[1]))
            attrs.append(a)
        self.edge_attr = torch.cat(attrs)
        # Each graph's edge_index is local to it (node ids from 0), which is what select needs.
        self.edge_index = torch.cat([g.edge_index.cpu() for g in graphs], dim=1)
        self.edge_kind = cat("edge_kind")
        self.edge_layer = cat("edge_layer")
        for name in ("node_depth", "node_role", "node_activation", "node_position", "node_group"):
            setattr(self, name, cat(name))
        masks = [symmetry_masks(spec) for spec in self.specs]
        self.node_scalable = torch.cat([m.scalable for m in masks])
        self.node_flippable = torch.cat([m.flippable for m in masks])
        self.node_permutable = torch.cat([m.permutable for m in masks])
        # Residual edges (layer -1) carry one real entry, the identity's 1.
        self.edge_width = torch.cat(
            [
                torch.cat([m.layer_width, torch.ones(1, dtype=torch.long)])[g.edge_layer.cpu()]
                for m, g in zip(masks, graphs, strict=True)
            ]
        )

    def __len__(self) -> int:
        return len(self.specs)

    @property
    def edge_features(self) -> int:
        return int(self.edge_attr.shape[1])

    def select(self, index: Tensor | Sequence[int] | slice) -> GraphBatch:
        """The graphs at ``index`` (in that order) as one :class:`GraphBatch`."""
        if isinstance(index, slice):
            index = torch.arange(len(self))[index]
        index = torch.as_tensor(index, dtype=torch.long)
        n, e = self.node_counts[index], self.edge_counts[index]
        nodes = _ranges(self.node_ptr[index], n)
        edges = _ranges(self.edge_ptr[index], e)
        new_node_ptr = torch.cumsum(n, 0) - n
        b = index.numel()
        graph_ids = torch.arange(b)
        spec_ids = self.spec_index[index]
        uniform = b > 0 and bool((spec_ids == spec_ids[0]).all())
        edge_batch = torch.repeat_interleave(graph_ids, e, output_size=edges.numel())
        return GraphBatch(
            x=self.x[nodes],
            edge_index=self.edge_index[:, edges] + new_node_ptr[edge_batch],
            edge_attr=self.edge_attr[edges],
            edge_kind=self.edge_kind[edges],
            edge_layer=self.edge_layer[edges],
            edge_batch=edge_batch,
            node_depth=self.node_depth[nodes],
            node_role=self.node_role[nodes],
            node_activation=self.node_activation[nodes],
            node_position=self.node_position[nodes],
            node_group=self.node_group[nodes],
            node_scalable=self.node_scalable[nodes],
            node_flippable=self.node_flippable[nodes],
            node_permutable=self.node_permutable[nodes],
            edge_width=self.edge_width[edges],
            batch=torch.repeat_interleave(graph_ids, n, output_size=nodes.numel()),
            num_graphs=b,
            max_num_nodes=int(n.max()) if b else 0,
            spec=self.unique_specs[int(spec_ids[0])] if uniform else None,
            spec_ids=spec_ids,
            spec_table=self.spec_table,
        )


def inference_chunks(
    spec_index: Tensor,
    batch_size: int,
    node_counts: Tensor | None = None,
    dense_min: int = DENSE_MIN_MODELS,
) -> list[Tensor]:
    """Split a collection into batches for inference: the models of each architecture that has
    at least ``dense_min`` of them in batches of that architecture only (the encoder's dense
    path), every other model in mixed batches (message passing), sorted by node count so that
    a mixed batch pads its pooling to similar sizes. Every index appears once.

    Args:
        spec_index: ``(n,)`` each model's architecture id.
        batch_size: models per batch at most.
        node_counts: ``(n,)`` nodes per model (for the sort; none: input order).
        dense_min: see :data:`DENSE_MIN_MODELS`.
    """
    if not spec_index.numel():
        return []
    counts = torch.bincount(spec_index)
    own = counts >= dense_min
    chunks: list[Tensor] = []
    for spec_id in torch.nonzero(own).flatten().tolist():
        chunks += list(torch.nonzero(spec_index == spec_id).flatten().split(batch_size))
    rest = torch.nonzero(~own[spec_index]).flatten()
    if not rest.numel():
        return chunks
    if node_counts is not None:
        rest = rest[torch.sort(node_counts[rest], stable=True).indices]
    return chunks + list(rest.split(batch_size))


def dense_groups(
    spec_ids: Tensor, edge_counts: Tensor, min_edges: int = DENSE_MIN_EDGES
) -> list[tuple[Tensor, bool]]:
    """Positions of a mixed batch grouped for the graph branch: ``(positions, True)`` for each
    architecture whose models have at least ``min_edges`` edges together (a dense sub-batch),
    then ``(positions, False)`` for all the others together (message passing), if any.

    Args:
        spec_ids: ``(B,)`` each model's architecture id.
        edge_counts: ``(B,)`` each model's edges.
    """
    if not spec_ids.numel():
        return []
    ids, inverse = torch.unique(spec_ids, return_inverse=True)
    totals = torch.zeros(ids.numel(), dtype=torch.long).index_add_(0, inverse, edge_counts)
    dense = totals >= min_edges
    groups = [
        (torch.nonzero(inverse == i).flatten(), True)
        for i in torch.nonzero(dense).flatten().tolist()
    ]
    rest = torch.nonzero(~dense[inverse]).flatten()
    return groups + ([(rest, False)] if rest.numel() else [])
