r"""The encoder's memory-lean path for one large model (a ResNet-18: 1.9M edges).

:meth:`Encoder.embed <weightspace.nn.encoder.Encoder.embed>` batches small models into a
:class:`~weightspace.nn.batch.GraphBank` and runs the dense path (:func:`encode_dense`). For a
model whose graph has at least :data:`LARGE_GRAPH_EDGES` edges that costs several
``(E, K)`` and ``(E, d)`` copies (the padded graph, the bank, the selected batch, the
``(E, K F)`` scalar features of the edge embedding, a fresh message and edge tensor per layer),
and on a CPU whose page faults are slow every fresh large tensor costs as much as computing it.
Here the same function is computed from the model's weights directly:

* the edge embedding reads each layer's weight as its own ``(out * in, k)`` block
  (:func:`weightspace.graph_edges.edge_blocks`: a view, no padding to the widest kernel), which
  is exact because :math:`\phi(0) = 0`, so the padded columns add nothing:

  .. math::
      e^{(0)}_{ij} = W_e[:, :kF]\,\phi(w_{ij}) + b_e + E_{\mathrm{kind}}

  computed chunk by chunk (:func:`initial_edge_writer`) by the first layer as it reads them;
* the message-passing layers stream through the edges in cache-sized chunks
  (:func:`weightspace.nn.edge_stream.stream_conv`): messages, aggregates and the in-place edge
  update of a chunk are computed while it is in cache, so a layer reads and writes the one
  ``(E, d)`` edge buffer once and allocates no other ``(E, d)`` tensor;
* no bank or batch copies the graph; the graph branch never builds the padded ``(E, K)``
  features (the probe branch, where configured, reads the model's weights back from a
  :class:`~weightspace.graph.NeuralGraph` built once and freed before the graph branch runs).

The result equals the batched path's up to float rounding (summation order), which
``tests/test_large_graph_speed_paths.py`` checks on small models by lowering the threshold.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from weightspace.graph import NeuralGraph, to_graph, to_state_dict
from weightspace.graph_checks import check_state_dict, graph_size
from weightspace.graph_edges import EdgeBlock, edge_blocks, node_attributes
from weightspace.layout import layout_of
from weightspace.models import ModelInputError, as_spec_and_state
from weightspace.nn.batch import GraphBank, GraphBatch, symmetry_masks
from weightspace.nn.edge_stream import InitialEdges, stream_conv
from weightspace.nn.features import EdgeEmbedding
from weightspace.nn.layers import dense_plan
from weightspace.one_thread import one_thread
from weightspace.spec import NetworkSpec

if TYPE_CHECKING:
    from weightspace.nn.encoder import Encoder

__all__ = [
    "CHUNK_EDGES",
    "LARGE_GRAPH_EDGES",
    "embed_edge_blocks",
    "encode_graph_lean",
    "initial_edge_writer",
    "run_splitting_large",
    "single_graph_batch",
]

#: Models whose neural graph has at least this many edges take the lean path (one at a time).
LARGE_GRAPH_EDGES = 200_000
#: Rows of edge features turned into scalar features at once (bounds the ``(rows, k F)`` temp).
CHUNK_EDGES = 131_072


def initial_edge_writer(
    embedding: EdgeEmbedding, blocks: list[EdgeBlock], dtype: torch.dtype, device: torch.device
) -> InitialEdges:
    r"""A writer of initial edge states block by block (the ``initial`` of
    :func:`~weightspace.nn.edge_stream.stream_conv`): edges ``start:start + len(out)`` of
    block ``i`` of width ``k`` get :math:`W_e[:, :kF]\,\phi(w) + b_e + E_{\mathrm{kind}}`.

    Raises:
        ValueError: a block wider than the embedding accepts.
    """
    num_features = embedding.features.num_features
    tables = []
    for block in blocks:
        k = block.width
        if k > embedding.max_edge_features:
            raise ValueError(
                f"edges carry {k} weights but this encoder accepts at most "
                f"{embedding.max_edge_features}"
            )
        weight = embedding.weight[:, : k * num_features].t().to(device, dtype)  # (k F, d)
        row = (embedding.bias + embedding.kind.weight[block.kind]).unsqueeze(0)  # (1, d)
        tables.append((weight, row.to(device, dtype)))

    def write(index: int, start: int, out: Tensor) -> None:
        weight, row = tables[index]
        chunk = blocks[index].features[start : start + out.shape[0]]
        feats = embedding.features(chunk.to(device=device, dtype=dtype))  # (count, k F)
        torch.addmm(row, feats, weight, out=out)

    return write


def embed_edge_blocks(embedding: EdgeEmbedding, blocks: list[EdgeBlock], out: Tensor) -> Tensor:
    r"""The initial edge states of every block, written into ``out`` ``(E, d)`` in block order:
    :math:`W_e[:, :kF]\,\phi(w) + b_e + E_{\mathrm{kind}}` per block of width ``k``."""
    write = initial_edge_writer(embedding, blocks, out.dtype, out.device)
    start = 0
    for index, block in enumerate(blocks):
        for first in range(0, block.count, CHUNK_EDGES):
            count = min(CHUNK_EDGES, block.count - first)
            write(index, first, out[start : start + count])
            start += count
    return out


def encode_graph_lean(encoder: Encoder, spec: NetworkSpec, state: Mapping[str, Tensor]) -> Tensor:
    r"""The graph branch of ``encoder`` for one model given by its (canonicalised) weights:
    ``(1, embedding_dim)``, the value :func:`~weightspace.nn.encoder.encode_dense` gives on its
    graph. Inference only (it updates its buffers in place).

    .. math::
        h^{(0)}_i = W_b\,\phi(b_i) + T_i, \qquad
        (h, e) \leftarrow \mathrm{Conv}_l(h, e) \ (l = 1 \dots L), \qquad
        z = \mathrm{Pool}(h)
    """
    if torch.is_grad_enabled():
        raise RuntimeError("encode_graph_lean is inference-only: run it under torch.no_grad()")
    dtype, device = encoder.dtype, encoder.device
    layout = layout_of(spec)
    plan = dense_plan(spec)
    nodes = node_attributes(spec, state, layout=layout, dtype=dtype, device=device)
    depth = nodes.depth.to(device)
    table = encoder.node_embedding.attributes(
        depth,
        depth.max() - depth,
        nodes.role.to(device),
        nodes.activation.to(device),
        nodes.position.to(device),
    )  # (N, hidden)
    h = encoder.node_embedding.embed_bias(nodes.bias) + table  # (N, hidden)
    d = encoder.config.edge_hidden
    edges = torch.empty(plan.num_edges, d, dtype=dtype, device=device)  # (E, d)
    blocks = edge_blocks(spec, state, layout=layout)
    initial = initial_edge_writer(encoder.edge_embedding, blocks, dtype, device)
    for i, conv in enumerate(encoder.convs):
        last = i == len(encoder.convs) - 1
        # the first layer computes the initial edge states chunk by chunk as it reads them
        h = stream_conv(conv, h, edges, plan, not last, initial=None if i else initial)
    return encoder.pool(h, None, 1, nodes_per_graph=plan.num_nodes)


def single_graph_batch(graph: NeuralGraph) -> GraphBatch:
    """``GraphBank([graph]).select([0])`` without copying the graph's tensors (they are
    shared): what the probe branch reads for one large model."""
    masks = symmetry_masks(graph.spec)
    num_nodes, num_edges = int(graph.num_nodes), int(graph.edge_index.shape[1])
    layer_width = torch.cat([masks.layer_width, torch.ones(1, dtype=torch.long)])
    return GraphBatch(
        x=graph.x,
        edge_index=graph.edge_index,
        edge_attr=graph.edge_attr,
        edge_kind=graph.edge_kind,
        edge_layer=graph.edge_layer,
        edge_batch=torch.zeros(num_edges, dtype=torch.long),
        node_depth=graph.node_depth,
        node_role=graph.node_role,
        node_activation=graph.node_activation,
        node_position=graph.node_position,
        node_group=graph.node_group,
        node_scalable=masks.scalable,
        node_flippable=masks.flippable,
        node_permutable=masks.permutable,
        edge_width=layer_width[graph.edge_layer.cpu()],
        batch=torch.zeros(num_nodes, dtype=torch.long),
        num_graphs=1,
        max_num_nodes=num_nodes,
        spec=graph.spec,
        spec_ids=torch.zeros(1, dtype=torch.long),
        spec_table=(graph.spec,),
    )


def _forward_large(encoder: Encoder, spec: NetworkSpec, state: Mapping[str, Tensor]) -> Tensor:
    """:meth:`Encoder.forward` for one large model: ``(1, embedding_dim)``."""
    branches = encoder.config.branches
    probe = None
    if "probe" in branches:  # first: it refuses an input domain it was not trained on at once
        graph = to_graph(spec, state, check=False)
        batch = single_graph_batch(graph).to(encoder.device, encoder.dtype)
        probe = encoder._probe_forward(batch)
        del batch
        del graph
    parts = [encode_graph_lean(encoder, spec, state)] if "graph" in branches else []
    if probe is None:
        return parts[0]
    return encoder.fuse(torch.cat([*parts, probe], dim=-1))


def _prepare(model: Any, encoder: Encoder, index: int) -> NeuralGraph | tuple:
    """A small model as the graph the batched path reads; a large one as ``(spec, state)``
    (canonicalised if the encoder is configured so)."""
    from weightspace.nn.encoder import EncoderError, prepare_graph
    from weightspace.symmetry import canonicalize

    config = encoder.config
    if isinstance(model, NeuralGraph):
        if graph_size(model.spec)[1] < LARGE_GRAPH_EDGES:
            return prepare_graph(model, config, index=index)
        spec, state = model.spec, to_state_dict(model)
    else:
        try:
            spec, state = as_spec_and_state(model, index=index)
        except ModelInputError as exc:
            raise EncoderError(str(exc)) from None
        if graph_size(spec)[1] < LARGE_GRAPH_EDGES:
            return prepare_graph((spec, state), config, index=index)
    # per-tensor checks, per-head QR / SVD: small kernels, cheaper on one thread (one_thread)
    with one_thread():
        check_state_dict(
            spec,
            state,
            source="model",
            nonfinite_hint="a neural graph (and an embedding) needs finite weights",
        )
        width = layout_of(spec).max_edge_features
        if width > config.max_edge_features:
            widest = max(spec.layers, key=lambda op: op.kernel_numel)
            raise EncoderError(
                f"model #{index} ({spec.summary()}): its edges carry {width} weights (e.g. "
                f"layer {widest.name!r}, a kernel or flattened feature map), more than the "
                f"{config.max_edge_features} this encoder accepts; retrain the encoder with a "
                "larger max_edge_features"
            )
        if config.canonicalize:
            state = canonicalize(spec, state)
    return spec, state


def run_splitting_large(
    encoder: Encoder,
    models: Iterable[Any],
    batch_size: int,
    device: torch.device | str | None,
    with_heads: bool,
    compile: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``Encoder._run`` for a collection of models: those with at least
    :data:`LARGE_GRAPH_EDGES` edges one by one through the lean path, the rest batched through
    a :class:`~weightspace.nn.batch.GraphBank` as before; results in input order (and
    ``encoder.last_fallback`` likewise). ``compile`` applies to the batched models only (a
    large model runs eagerly: one compilation would cost more than it saves)."""
    from weightspace.nn.encoder import EncoderError

    if isinstance(models, str | os.PathLike | nn.Module | NeuralGraph) or (
        isinstance(models, tuple) and len(models) == 2 and isinstance(models[0], NetworkSpec)
    ):
        raise EncoderError(
            f"expected a collection of models, got one {type(models).__name__}; wrap it in a "
            "list: embed([model])"
        )
    items = [_prepare(model, encoder, i) for i, model in enumerate(models)]
    if not items:
        raise EncoderError("no models given to embed")
    small = [i for i, item in enumerate(items) if isinstance(item, NeuralGraph)]
    if len(small) == len(items):
        return encoder._run(GraphBank(items), batch_size, device, with_heads, compile)
    if device is not None:
        encoder.to(device)
    rows: dict[int, tuple[Tensor, dict[str, Tensor], Any]] = {}
    probing = "probe" in encoder.config.branches
    if small:
        z, out = encoder._run(
            GraphBank([items[i] for i in small]), batch_size, None, with_heads, compile
        )
        for j, i in enumerate(small):
            flag = encoder.last_fallback[j] if probing else None
            rows[i] = (z[j : j + 1], {k: v[j : j + 1] for k, v in out.items()}, flag)
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.inference_mode():
            for i, item in enumerate(items):
                if i in rows:
                    continue
                z = _forward_large(encoder, *item)
                heads = {k: v.cpu() for k, v in encoder.heads(z).items()} if with_heads else {}
                flag = encoder.last_fallback[0] if probing else None
                rows[i] = (z.cpu(), heads, flag)
    finally:
        encoder.train(was_training)
    ordered = [rows[i] for i in range(len(items))]
    encoder.last_fallback = np.array([r[2] for r in ordered], dtype=bool) if probing else None
    z = torch.cat([r[0] for r in ordered])
    keys = ordered[0][1].keys()
    return z, {k: torch.cat([r[1][k] for r in ordered]) for k in keys}
