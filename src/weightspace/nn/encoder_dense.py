"""The dense path of :meth:`Encoder.forward <weightspace.nn.encoder.Encoder.forward>`: one
architecture's batch as ``(B, N, hidden)`` tensors, eagerly or under ``torch.compile``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from weightspace.nn.layers import DensePlan

if TYPE_CHECKING:
    from weightspace.nn.encoder import Encoder

__all__ = ["encode_dense"]


def encode_dense(
    encoder: Encoder,
    plan: DensePlan,
    num_graphs: int,
    x: Tensor,
    edge_attr: Tensor,
    node_depth: Tensor,
    node_role: Tensor,
    node_activation: Tensor,
    node_position: Tensor,
    edge_kind: Tensor,
) -> Tensor:
    r""":meth:`Encoder.forward` for ``B = num_graphs`` graphs of the architecture of ``plan``,
    nodes and edges in :func:`~weightspace.graph.to_graph` order: ``(B, embedding_dim)``.

    The node attributes (depth, role, activation, position) and edge kinds are the same in every
    graph, so the table terms of the input embeddings are computed once, on the first graph's
    ``N`` nodes and ``E`` edges, and broadcast:

    .. math::
        h^{(0)}_{g,i} = W_b\,\phi(b_{g,i}) + T_i, \qquad
        e^{(0)}_{g,k} = W_e\,\phi(w_{g,k}) + b_e + E_{\mathrm{kind}}[k]

    with :math:`T = ` :meth:`~weightspace.nn.features.NodeEmbedding.attributes`, the reverse
    depth taken from the architecture's output depth. The layers then run
    :meth:`~weightspace.nn.layers.EdgeNodeConv._forward_dense` and the pooling sees a
    ``(B, N, hidden)`` view (no padding, no mask).

    The function reads only tensors and the plan's Python integers, so it is what
    ``torch.compile`` traces (``Encoder.forward(..., compile=True)``).

    Shapes:
        - input: ``x (B * N, 1)``, ``edge_attr (B * E, K)`` in the encoder's dtype; node
          attributes ``(B * N,)`` and ``edge_kind (B * E,)`` (only the first graph's are read)
        - output: ``(B, embedding_dim)``
    """
    n, e, b = plan.num_nodes, plan.num_edges, num_graphs
    depth = node_depth[:n]
    table = encoder.node_embedding.attributes(
        depth, depth.max() - depth, node_role[:n], node_activation[:n], node_position[:n]
    )  # (N, hidden)
    h = encoder.node_embedding.embed_bias(x).view(b, n, -1) + table
    edge_table = encoder.edge_embedding.attributes(edge_kind[:e])  # (E, edge_hidden)
    edges = encoder.edge_embedding.embed_weights(edge_attr).view(b, e, -1)
    # Inference (no autograd, not compiling): every layer updates the fresh edge states in place
    # and writes its messages into one shared buffer (no fresh (B E, d) tensors per layer).
    inference = not torch.is_grad_enabled() and not torch.compiler.is_compiling()
    edges = edges.add_(edge_table) if inference else edges + edge_table
    h, edges = h.view(b * n, -1), edges.view(b * e, -1)
    messages = edges.new_empty(edges.shape) if inference else None
    for i, conv in enumerate(encoder.convs):
        h, edges = conv._forward_dense(
            h,
            edges,
            plan,
            update_edges=i < len(encoder.convs) - 1,
            message_buffer=messages,
            edges_in_place=inference,
        )
    return encoder.pool(h, None, b, nodes_per_graph=n)


_COMPILED_ENCODE_DENSE: Any = None


def _compiled_encode_dense() -> Any:
    """:func:`encode_dense` under ``torch.compile(dynamic=False)``, created once per process
    (dynamo recompiles it per architecture, batch size, dtype and device)."""
    global _COMPILED_ENCODE_DENSE
    if _COMPILED_ENCODE_DENSE is None:
        _COMPILED_ENCODE_DENSE = torch.compile(encode_dense, dynamic=False)
    return _COMPILED_ENCODE_DENSE
