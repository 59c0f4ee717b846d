"""Permutation-invariant pooling of node states: a transformer over each graph's nodes, then
attention from learned seed vectors (a Set Transformer with PMA readout)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.utils import to_dense_batch

__all__ = ["TransformerPooling"]


class _Attention(nn.Module):
    """Multi-head attention with a key padding mask, on ``scaled_dot_product_attention``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, queries: Tensor, keys: Tensor, key_mask: Tensor | None) -> Tensor:
        b, q, d = queries.shape
        n = keys.shape[1]
        h = self.heads
        query = self.query(queries).view(b, q, h, d // h).transpose(1, 2)  # (B, H, Q, D/H)
        key, value = self.key_value(keys).view(b, n, 2, h, d // h).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, N)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)  # (B, H, Q, D/H)
        return self.out(out.transpose(1, 2).reshape(b, q, d))


class _Block(nn.Module):
    """Pre-norm transformer block: self-attention then a feed-forward layer, both residual."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)
        )

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        y = self.norm1(x)
        x = x + self.attention(y, y, mask)
        return x + self.feed_forward(self.norm2(x))


class TransformerPooling(nn.Module):
    r"""Transformer over each graph's node states, then multi-head attention pooling.

    .. math::
        H &= \mathrm{TransformerBlock}^{\circ T}(\{h_i\}_{i \in G}) \\
        z_G &= W \,\mathrm{LN}\big[\big\Vert_{s=1}^{S}
        \mathrm{Attn}(q_s, \mathrm{LN}(H), \mathrm{LN}(H))\big]

    with ``S`` learned seed queries :math:`q_s`. No positional encoding is added: the
    transformer is permutation-equivariant over nodes and the seed attention invariant, so the
    output depends on the node states only as a set. Graphs of different sizes are padded to a
    dense ``(B, N_max, d)`` batch and masked.

    Args:
        hidden: width of node states.
        out_channels: width of the pooled embedding.
        heads: attention heads.
        num_layers: transformer blocks ``T`` before the readout (0 for attention readout only).
        num_seeds: seed queries ``S``.

    Shapes:
        - input: ``x (N, hidden)``, ``batch (N,)`` sorted graph index per node
        - output: ``(B, out_channels)``
    """

    def __init__(
        self,
        hidden: int,
        out_channels: int,
        heads: int = 4,
        num_layers: int = 1,
        num_seeds: int = 1,
    ) -> None:
        super().__init__()
        self.hidden = hidden
        self.out_channels = out_channels
        self.heads = heads
        self.num_layers = num_layers
        self.num_seeds = num_seeds
        self.blocks = nn.ModuleList(_Block(hidden, heads) for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden)
        self.seeds = nn.Parameter(torch.empty(1, num_seeds, hidden))
        self.readout = _Attention(hidden, heads)
        self.out_norm = nn.LayerNorm(num_seeds * hidden)
        self.out = nn.Linear(num_seeds * hidden, out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        nn.init.normal_(self.seeds, std=0.5)

    def forward(
        self,
        x: Tensor,
        batch: Tensor | None,
        num_graphs: int | None = None,
        max_num_nodes: int | None = None,
        nodes_per_graph: int | None = None,
    ) -> Tensor:
        """Pool node states ``x`` of graphs ``batch``; ``nodes_per_graph`` says every graph
        has that many nodes, contiguous, so the dense batch is a view and needs no mask."""
        if nodes_per_graph is not None:
            dense, mask = x.view(-1, nodes_per_graph, x.shape[-1]), None
        else:
            dense, mask = to_dense_batch(
                x, batch, batch_size=num_graphs, max_num_nodes=max_num_nodes
            )  # (B, N_max, hidden), (B, N_max)
        for block in self.blocks:
            dense = block(dense, mask)
        keys = self.norm(dense)
        seeds = self.seeds.expand(dense.shape[0], -1, -1).to(dense.dtype)
        pooled = self.readout(seeds, keys, mask)  # (B, S, hidden)
        return self.out(self.out_norm(pooled.flatten(1)))

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(hidden={self.hidden}, out_channels={self.out_channels}, "
            f"heads={self.heads}, num_layers={self.num_layers}, num_seeds={self.num_seeds})"
        )
