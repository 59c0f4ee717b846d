"""``NeuralGraph``: a network's weights as a graph, and the exact conversions to and from it.

Nodes are neurons (channels for convs), input and output neurons included; edges are weights,
directed from the neuron that is read to the neuron that is written. For a layer with weight
``W`` of shape ``(out, in, *kernel)`` the edge ``i → o`` carries ``W[o, i].flatten()`` (a scalar
for a linear layer), zero-padded to the graph's edge feature width ``K``. A linear layer reading a
flattened ``(C, *spatial)`` tensor gives one edge per (channel, neuron) pair carrying the ``S``
spatial weights (see :mod:`weightspace.layout`). A residual ``add`` gives identity edges
``i → i`` (feature ``[1, 0, ...]``, ``edge_kind = 1``) from the skip group to the primary group.
A LayerNorm / RMSNorm ``y = γ ⊙ norm(x) + β`` writes a new group of normalised neurons: diagonal
edges ``i → i`` from the group it reads carry ``[γ_i, 0, ...]`` (``edge_kind`` 2 for LayerNorm,
3 for RMSNorm, so the encoder knows which normalisation mixes the source neurons) and the new
neurons' bias is ``β`` (see :mod:`weightspace.norm`).

Node attributes (``N`` nodes):

* ``x`` ``(N, 1)``: the bias (0 for input neurons and bias-free layers);
* ``node_depth`` ``(N,)``: 0 for inputs, ``l`` for the output of the ``l``-th layer;
* ``node_role`` ``(N,)``: 0 input, 1 hidden, 2 output;
* ``node_activation`` ``(N,)``: index into :data:`weightspace.spec.ACTIVATIONS`;
* ``node_position`` ``(N,)``: the neuron's index within the input or output layer, ``-1`` for
  hidden neurons — hidden neurons of one layer share one identity, so only true symmetries stay;
  an attention's query/key/value dimensions carry ``h * d + i`` (head ``h``, dimension ``i``):
  :func:`~weightspace.attention.canonical_attention` fixes that order (heads sorted, dimensions
  by singular value), so it is no symmetry left to the encoder;
* ``node_group`` ``(N,)``: the neuron group (:class:`weightspace.layout.NeuronGroup`).

Edge attributes (``E`` edges): ``edge_index`` ``(2, E)``, ``edge_attr`` ``(E, K)``,
``edge_layer`` ``(E,)`` (index of the layer, ``-1`` for residual and norm edges) and ``edge_kind``
``(E,)`` (0 weight, 1 residual, 2 LayerNorm, 3 RMSNorm; attention's 4 query, 5 key, 6 value,
7 output, 8 query-key pairing; 9 token and 10 position embedding). Edges come in that order:
layers (attention and embedding links among them), residuals, norms, query-key pairings.
``graph.spec`` holds the :class:`~weightspace.spec.NetworkSpec`.

Attention and embedding (see :mod:`weightspace.layout`): per attention, edges stream → query,
key and value head dimensions carry the rows of ``in_proj_weight``, the head dimensions' biases
the ``in_proj_bias``, edges value dimensions → output stream the ``out_proj`` weight; an
embedding's edges index neuron ``v`` → stream neuron ``e`` carry ``weight[v, e]``. Weights are
stored as given: canonicalise first (:func:`weightspace.symmetry.canonicalize` applies
:func:`weightspace.attention.canonical_attention`) for a form free of the within-head symmetries.

Conversions are vectorised: one tensor operation per layer, no Python loop over edges.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data

from weightspace.errors import ShapeMismatchError
from weightspace.graph_checks import (
    WEIGHT_DTYPES,
    check_graph_size,
    check_state_dict,
    graph_size,
)
from weightspace.graph_edges import (
    EDGE_LAYER_NORM,
    EDGE_RESIDUAL,
    EDGE_RMS_NORM,
    EDGE_WEIGHT,
    NORM_EDGE_KINDS,
    edge_blocks,
    node_attributes,
)
from weightspace.layout import (
    EDGE_ATTENTION_OUTPUT,
    EDGE_KEY,
    EDGE_POSITION_EMBEDDING,
    EDGE_QUERY,
    EDGE_QUERY_KEY,
    EDGE_TOKEN_EMBEDDING,
    EDGE_VALUE,
    Layout,
    layout_of,
)
from weightspace.spec import NetworkSpec

__all__ = [
    "NeuralGraph",
    "to_graph",
    "to_state_dict",
    "batch_graphs",
    "check_state_dict",
    "check_graph_size",
    "graph_size",
    "WEIGHT_DTYPES",
    "NUM_EDGE_KINDS",
    "EDGE_WEIGHT",
    "EDGE_RESIDUAL",
    "EDGE_LAYER_NORM",
    "EDGE_RMS_NORM",
    "EDGE_QUERY",
    "EDGE_KEY",
    "EDGE_VALUE",
    "EDGE_ATTENTION_OUTPUT",
    "EDGE_QUERY_KEY",
    "EDGE_TOKEN_EMBEDDING",
    "EDGE_POSITION_EMBEDDING",
]

#: Number of edge kinds: the four above and the attention and embedding kinds of
#: :mod:`weightspace.layout` (query, key, value, attention output, query-key pairing, token
#: embedding, position embedding: 4 to 10).
NUM_EDGE_KINDS = EDGE_POSITION_EMBEDDING + 1


class NeuralGraph(Data):
    """One network's weights as a PyG graph (see the module docstring for the attributes).

    Graphs of different architectures batch together with :func:`batch_graphs`, which pads the
    edge features to a common width. ``spec`` is kept as a plain Python attribute; a batch holds
    the list of specs.
    """

    @property
    def spec(self) -> NetworkSpec:
        return self["spec"]

    def __repr__(self) -> str:
        fields = []
        for key, value in self._store.items():
            if isinstance(value, Tensor):
                fields.append(f"{key}={list(value.shape)}")
            elif isinstance(value, NetworkSpec):
                fields.append(f"spec={value.summary()!r}")
            elif isinstance(value, list):
                fields.append(f"{key}=[{len(value)}]")
            else:
                fields.append(f"{key}={value!r}")
        return f"{type(self).__name__}({', '.join(fields)})"

    @property
    def edge_features(self) -> int:
        return int(self.edge_attr.shape[1])

    def to_state_dict(self) -> dict[str, Tensor]:
        """The state dict this graph encodes (exact inverse of :func:`to_graph`)."""
        return to_state_dict(self)

    def validate_layout(self) -> None:
        """Check that the node and edge counts match the spec's layout."""
        layout = layout_of(self.spec)
        if self.num_nodes != layout.num_nodes:
            raise ShapeMismatchError(
                f"graph has {self.num_nodes} nodes but its spec describes {layout.num_nodes}"
            )


def to_graph(
    spec: NetworkSpec,
    state_dict: Mapping[str, Tensor],
    *,
    dtype: torch.dtype | None = None,
    edge_features: int | None = None,
    check: bool = True,
) -> NeuralGraph:
    """Convert a state dict of ``spec`` to a :class:`NeuralGraph`.

    Args:
        spec: the architecture.
        state_dict: ``{"<layer>.weight": ..., "<layer>.bias": ...}`` for every layer of ``spec``.
        dtype: floating dtype of the features (default: the weights' dtype).
        edge_features: pad edge features to this width (default: the widest layer's).
        check: validate keys, shapes and finiteness first (:func:`check_state_dict`).

    Shapes:
        ``x (N, 1)``, ``edge_index (2, E)``, ``edge_attr (E, K)``; ``N`` = neurons of every group,
        ``E`` = sum over layers of ``out * in_channels`` plus residual identity edges.
    """
    if check:
        check_state_dict(
            spec,
            state_dict,
            source="model",
            nonfinite_hint="a neural graph (and an embedding) needs finite weights",
        )
    layout = layout_of(spec)
    first = state_dict[f"{spec.layers[0].name}.weight"]
    dtype = dtype or (first.dtype if first.is_floating_point() else torch.get_default_dtype())
    device = first.device
    width = edge_features or layout.max_edge_features
    if width < layout.max_edge_features:
        raise ShapeMismatchError(
            f"edge_features={width} is narrower than the widest layer ({layout.max_edge_features})"
        )

    nodes = node_attributes(spec, state_dict, layout=layout, dtype=dtype, device=device)
    blocks = edge_blocks(spec, state_dict, layout=layout)
    total = sum(block.count for block in blocks)
    # One buffer per edge tensor, each block written into its rows: no per-block padded copies
    # and no concatenation (a large model's (E, K) features are allocated exactly once).
    edge_index = torch.empty(2, total, dtype=torch.long)
    edge_attr = torch.empty(total, width, dtype=dtype, device=device)
    edge_layer = torch.empty(total, dtype=torch.long)
    edge_kind = torch.empty(total, dtype=torch.long)
    start = 0
    for block in blocks:
        stop = start + block.count
        edge_index[:, start:stop] = block.edge_index()
        edge_attr[start:stop, : block.width] = block.features
        edge_attr[start:stop, block.width :] = 0
        edge_layer[start:stop] = block.layer
        edge_kind[start:stop] = block.kind
        start = stop
    return NeuralGraph(
        x=nodes.bias,
        edge_index=edge_index.to(device),
        edge_attr=edge_attr,
        edge_layer=edge_layer.to(device),
        edge_kind=edge_kind.to(device),
        node_depth=nodes.depth.to(device),
        node_role=nodes.role.to(device),
        node_activation=nodes.activation.to(device),
        node_position=nodes.position.to(device),
        node_group=nodes.group.to(device),
        num_nodes=layout.num_nodes,
        spec=spec,
    )


def to_state_dict(graph: NeuralGraph, *, spec: NetworkSpec | None = None) -> dict[str, Tensor]:
    """Read the weights back out of ``graph`` (exact inverse of :func:`to_graph`).

    Edges may come in any order; nodes must keep their groups' index ranges (a permutation of
    neurons within a group is allowed and yields the correspondingly permuted weights).
    """
    spec = spec or graph.spec
    layout: Layout = layout_of(spec)
    if graph.num_nodes != layout.num_nodes:
        raise ShapeMismatchError(
            f"graph has {graph.num_nodes} nodes but its spec describes {layout.num_nodes}"
        )
    state: dict[str, Tensor] = {}
    pieces: dict[str, list[tuple[int, Tensor]]] = {}  # key -> (first row, rows) of shared tensors
    for link in layout.links:
        src, dst = layout.groups[link.source], layout.groups[link.target]
        op = spec[link.name]
        mask = graph.edge_layer == link.index
        sources = graph.edge_index[0, mask] - layout.offsets[src.index]
        targets = graph.edge_index[1, mask] - layout.offsets[dst.index]
        if sources.numel() != dst.size * src.size:
            raise ShapeMismatchError(
                f"layer {link.name!r}: graph has {sources.numel()} edges, expected "
                f"{dst.size * src.size}"
            )
        w = graph.edge_attr.new_zeros(dst.size, src.size, link.edge_features)
        w[targets, sources] = graph.edge_attr[mask, : link.edge_features]
        if not link.is_plain:  # attention and embedding: a slice of a tensor, maybe transposed
            w = w[..., 0]
            pieces.setdefault(link.key, []).append(
                (link.row_start, w.t() if link.transposed else w)
            )
            continue
        state[f"{link.name}.weight"] = w.reshape(op.weight_shape())
        if op.attrs.get("bias", True):
            offset = layout.offsets[dst.index]
            state[f"{link.name}.bias"] = graph.x[offset : offset + dst.size, 0].clone()
    for group in layout.groups:
        if group.bias_key is not None:
            offset = layout.offsets[group.index]
            bias = graph.x[offset : offset + group.size, 0].clone()
            pieces.setdefault(group.bias_key, []).append((group.bias_start, bias))
    shapes = spec.param_shapes()
    for key, parts in pieces.items():
        if key in shapes:  # a bias-free attention has no bias tensors (its nodes carry zeros)
            state[key] = torch.cat([t for _, t in sorted(parts, key=lambda p: p[0])])
    for norm in layout.norms:
        op = spec[norm.name]
        dst = layout.groups[norm.target]
        offset = layout.offsets[dst.index]
        if norm.affine:
            targets = graph.edge_index[1] - offset
            mask = (graph.edge_kind == NORM_EDGE_KINDS[norm.mode]) & (targets >= 0)
            mask &= targets < dst.size
            if int(mask.sum()) != dst.size:
                raise ShapeMismatchError(
                    f"norm {norm.name!r}: graph has {int(mask.sum())} norm edges, expected "
                    f"{dst.size}"
                )
            gamma = graph.edge_attr.new_zeros(dst.size)
            gamma[targets[mask]] = graph.edge_attr[mask, 0]
            state[f"{norm.name}.weight"] = gamma
            if op.attrs["mode"] == "layer" and op.attrs.get("bias", True):
                state[f"{norm.name}.bias"] = graph.x[offset : offset + dst.size, 0].clone()
    return state


def batch_graphs(graphs: Sequence[NeuralGraph]) -> Batch:
    """Batch graphs of possibly different architectures (edge features padded to one width)."""
    width = max(g.edge_attr.shape[1] for g in graphs)
    padded = []
    for g in graphs:
        if g.edge_attr.shape[1] < width:
            g = g.clone()
            g.edge_attr = torch.nn.functional.pad(g.edge_attr, (0, width - g.edge_attr.shape[1]))
        padded.append(g)
    return Batch.from_data_list(padded)
