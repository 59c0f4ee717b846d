r"""Input embeddings of a :class:`~weightspace.graph.NeuralGraph`: scalar weights to vectors.

Weights and biases are small reals with a wide range (``1e-4`` to ``1e2`` after canonical
rescaling), so they are first passed through a fixed elementwise transform that compresses the
range, then through a learned linear map:

* ``signlog``: :math:`\phi_\tau(w) = \operatorname{sign}(w)\,\log(1 + |w|/\tau)` for a few
  scales :math:`\tau`, so that both ``0.001`` and ``100`` land in a useful range;
* ``fourier``: random Fourier features :math:`[\sin(2\pi b_k w),\ \cos(2\pi b_k w) - 1]`
  with log-uniformly spread fixed frequencies :math:`b_k`.

Both maps send ``0`` to ``0``, so the zero padding of narrow edges (a linear layer's scalar in a
graph whose conv kernels have 9 entries) contributes nothing, and the encoder may slice its
input weight matrix to a batch's actual width without changing the result.

Node identity follows the design's symmetry rule: input and output neurons get a learned
embedding indexed by their position (they are not interchangeable); hidden neurons get only what
every neuron of their layer shares — depth, depth from the output, role and activation — so the
encoder cannot tell hidden neurons of one layer apart except by their weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from weightspace.spec import ACTIVATIONS

__all__ = ["ScalarFeatures", "NodeEmbedding", "EdgeEmbedding", "NUM_EDGE_KINDS"]

#: Rows of the edge-kind table: weight, residual, LayerNorm, RMSNorm, then attention's query,
#: key, value, output and query-key pairing, token and position embedding
#: (:data:`weightspace.graph.NUM_EDGE_KINDS`).
NUM_EDGE_KINDS = 11
# Kinds that existed before the norm kinds: their rows are drawn from the global RNG exactly as
# before, the newer rows from private generators (one per batch of added kinds), so a seeded
# encoder initialises as it did and its older rows keep their values.
_LEGACY_EDGE_KINDS = 2
_NORM_EDGE_KINDS = 4  # the kinds before attention
_NEW_KINDS_SEED = 20260101
_ATTENTION_KINDS_SEED = 20261129
_HEAD_POSITION_SEED = 20261130


def _extend_rows(state_dict: dict[str, Tensor], key: str, current: Tensor) -> None:
    """Let an embedding saved with fewer rows load: ``state_dict[key]`` keeps its saved rows and
    takes ``current``'s rows for the ones appended since (same width only; else unchanged)."""
    saved = state_dict.get(key)
    if (
        saved is not None
        and saved.dim() == 2
        and saved.shape[1] == current.shape[1]
        and saved.shape[0] < current.shape[0]
    ):
        state_dict[key] = torch.cat([saved, current.detach()[saved.shape[0] :].to(saved)])


class ScalarFeatures(nn.Module):
    r"""A fixed elementwise map of each scalar to ``F`` features, zero at zero.

    .. math::
        \phi(w) = \big[\operatorname{sign}(w)\log(1 + |w| / \tau_1), \dots,
        \operatorname{sign}(w)\log(1 + |w| / \tau_F)\big]

    for ``kind="signlog"``, or for ``kind="fourier"`` with ``F = 2M`` and fixed frequencies
    :math:`b_1 \dots b_M` spread log-uniformly over ``[1 / max_scale, 1 / min_scale]``:

    .. math::
        \phi(w) = \big[\sin(2\pi b_m w),\ \cos(2\pi b_m w) - 1\big]_{m=1}^{M}

    Args:
        kind: ``"signlog"`` or ``"fourier"``.
        scales: the :math:`\tau` of ``signlog``; for ``fourier`` the min and max scale.
        num_frequencies: ``M`` for ``fourier``.

    Shapes:
        - input: ``(*, K)``
        - output: ``(*, K * F)`` (features of one scalar are contiguous)
    """

    def __init__(
        self,
        kind: str = "signlog",
        scales: Sequence[float] = (0.01, 0.1, 1.0),
        num_frequencies: int = 4,
    ) -> None:
        super().__init__()
        if kind not in {"signlog", "fourier"}:
            raise ValueError(f"unknown scalar feature kind {kind!r}; use 'signlog' or 'fourier'")
        self.kind = kind
        if kind == "signlog":
            inv = torch.tensor([1.0 / s for s in scales])
        else:
            lo, hi = min(scales), max(scales)
            inv = torch.logspace(math.log10(1.0 / hi), math.log10(1.0 / lo), num_frequencies)
            inv = 2 * math.pi * inv
        self.register_buffer("inverse_scales", inv, persistent=False)

    @property
    def num_features(self) -> int:
        n = int(self.inverse_scales.numel())
        return n if self.kind == "signlog" else 2 * n

    def forward(self, w: Tensor) -> Tensor:
        inverse = self.inverse_scales.to(w.dtype)
        if self.kind == "signlog":
            # sign(w / tau) log(1 + |w| / tau), with the sign taken on the narrow (*, K) input
            # and the wide (*, K, M) tensor written once (then updated in place when w needs
            # no gradient): half the memory traffic of the literal formula, same values.
            out = w.abs().unsqueeze(-1) * inverse  # (*, K, M)
            sign = torch.sign(w).unsqueeze(-1)
            if torch.is_grad_enabled() and w.requires_grad:
                out = torch.log1p(out) * sign
            else:
                out = out.log1p_().mul_(sign)
        else:
            z = w.unsqueeze(-1) * inverse  # (*, K, M)
            out = torch.cat([torch.sin(z), torch.cos(z) - 1], dim=-1)
        return out.flatten(-2)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, num_features={self.num_features}"


class NodeEmbedding(nn.Module):
    r"""Initial node states from the bias and the layer-shared node attributes.

    .. math::
        h_i^{(0)} = W_b\,\phi(b_i) + E_{\mathrm{depth}}[d_i] + E_{\mathrm{rdepth}}[L - d_i]
        + E_{\mathrm{role}}[r_i] + E_{\mathrm{act}}[a_i]
        + \mathbb{1}[r_i = \mathrm{in}]\,E_{\mathrm{in}}[p_i]
        + \mathbb{1}[r_i = \mathrm{out}]\,E_{\mathrm{out}}[p_i]
        + \mathbb{1}[r_i = \mathrm{hidden},\ p_i \ge 0]\,E_{\mathrm{head}}[p_i]

    where :math:`d_i` is the node's depth, :math:`L` its graph's output depth, :math:`r_i` its
    role, :math:`a_i` its activation and :math:`p_i` its position within the input or output
    layer (taken modulo ``max_positions``). Hidden neurons carry no position, so the embedding is
    equivariant to permutations of hidden neurons; the exception are an attention's head
    dimensions, whose order the canonical form fixes (:mod:`weightspace.graph`).

    Args:
        hidden: output width.
        features: the scalar feature map applied to the bias.
        max_depth: depths at or beyond ``max_depth - 1`` share the last depth embedding.
        max_positions: size of the input and output position tables.

    Shapes:
        - input: ``bias (N, 1)``, ``depth, role, activation, position (N,)``,
          ``reverse_depth (N,)``
        - output: ``(N, hidden)``
    """

    def __init__(
        self,
        hidden: int,
        features: ScalarFeatures,
        max_depth: int = 32,
        max_positions: int = 1024,
    ) -> None:
        super().__init__()
        self.hidden = hidden
        self.max_depth = max_depth
        self.max_positions = max_positions
        self.features = features
        self.bias = nn.Linear(features.num_features, hidden)
        self.depth = nn.Embedding(max_depth, hidden)
        self.reverse_depth = nn.Embedding(max_depth, hidden)
        self.role = nn.Embedding(3, hidden)
        self.activation = nn.Embedding(len(ACTIVATIONS), hidden)
        self.input_position = nn.Embedding(max_positions, hidden)
        self.output_position = nn.Embedding(max_positions, hidden)
        # Attention head dimensions (hidden nodes with a position); made without drawing from
        # the global RNG, so seeded encoders initialise every older table as they did.
        self.head_position = nn.Embedding(
            max_positions, hidden, _weight=torch.zeros(max_positions, hidden)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.bias.reset_parameters()
        for table in (
            self.depth,
            self.reverse_depth,
            self.role,
            self.activation,
            self.input_position,
            self.output_position,
        ):
            nn.init.normal_(table.weight, std=0.5)
        gen = torch.Generator().manual_seed(_HEAD_POSITION_SEED)
        with torch.no_grad():
            rows = torch.randn(self.max_positions, self.hidden, generator=gen)
            self.head_position.weight.copy_(0.5 * rows)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # Activations are appended to ACTIVATIONS (sine came last); an encoder saved before that
        # has fewer rows. Keep its rows and this module's fresh rows for the newer activations.
        head = f"{prefix}head_position.weight"
        if head not in state_dict and f"{prefix}input_position.weight" in state_dict:
            state_dict[head] = self.head_position.weight.detach().clone()  # saved before it
        _extend_rows(state_dict, f"{prefix}activation.weight", self.activation.weight)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(
        self,
        bias: Tensor,
        depth: Tensor,
        reverse_depth: Tensor,
        role: Tensor,
        activation: Tensor,
        position: Tensor,
    ) -> Tensor:
        return self.embed_bias(bias) + self.attributes(
            depth, reverse_depth, role, activation, position
        )

    def embed_bias(self, bias: Tensor) -> Tensor:
        r""":math:`W_b\,\phi(b_i)`: ``(*, 1)`` biases to ``(*, hidden)``."""
        return self.bias(self.features(bias))

    def attributes(
        self,
        depth: Tensor,
        reverse_depth: Tensor,
        role: Tensor,
        activation: Tensor,
        position: Tensor,
    ) -> Tensor:
        """The table terms of :math:`h^{(0)}` (everything but the bias term): ``(M, hidden)``
        from ``(M,)`` attributes. They depend on the architecture only, so a batch of one
        architecture computes them for one graph's ``M`` nodes and broadcasts."""
        top = self.max_depth - 1
        h = self.depth(depth.clamp(0, top)) + self.reverse_depth(reverse_depth.clamp(0, top))
        h = h + self.role(role) + self.activation(activation)
        # One gather per table over all nodes, masked, is cheaper than boolean indexing.
        pos = position.clamp(min=0) % self.max_positions
        h = h + (role == 0).unsqueeze(-1).to(h.dtype) * self.input_position(pos)
        h = h + (role == 2).unsqueeze(-1).to(h.dtype) * self.output_position(pos)
        head = (role == 1) & (position >= 0)  # attention head dimensions (graph docstring)
        return h + head.unsqueeze(-1).to(h.dtype) * self.head_position(pos)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(hidden={self.hidden}, max_depth={self.max_depth}, "
            f"max_positions={self.max_positions}, features={self.features.kind!r})"
        )


class EdgeEmbedding(nn.Module):
    r"""Initial edge states from the weights (or flattened kernels) and the edge kind.

    .. math::
        e_{ij}^{(0)} = W_e\,\phi(w_{ij}) + b_e + E_{\mathrm{kind}}[k_{ij}]

    ``w_ij`` has ``K <= max_edge_features`` entries; :math:`W_e` is sliced to the first ``K``
    entries' features, which is exact because :math:`\phi(0) = 0`.

    Args:
        hidden: output width.
        features: the scalar feature map applied to each weight.
        max_edge_features: widest edge (kernel entries, or spatial positions of a flattened
            conv output) the embedding accepts.

    Shapes:
        - input: ``edge_attr (E, K)``, ``edge_kind (E,)``
        - output: ``(E, hidden)``
    """

    def __init__(self, hidden: int, features: ScalarFeatures, max_edge_features: int = 64) -> None:
        super().__init__()
        self.hidden = hidden
        self.max_edge_features = max_edge_features
        self.features = features
        self.weight = nn.Parameter(torch.empty(hidden, max_edge_features * features.num_features))
        self.bias = nn.Parameter(torch.empty(hidden))
        # weight, residual, LayerNorm, RMSNorm (weightspace.graph's EDGE_* ids)
        legacy = nn.Embedding(_LEGACY_EDGE_KINDS, hidden)  # the global RNG draws it always made
        rows = torch.cat(
            [legacy.weight.detach(), legacy.weight.new_zeros(NUM_EDGE_KINDS - 2, hidden)]
        )
        self.kind = nn.Embedding(NUM_EDGE_KINDS, hidden, _weight=rows)
        self.reset_parameters()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # Edge kinds are appended (the norm kinds came after weight and residual); an encoder
        # saved before has fewer rows. Keep its rows and this module's fresh ones for the rest.
        _extend_rows(state_dict, f"{prefix}kind.weight", self.kind.weight)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def reset_parameters(self) -> None:
        # Scale as if the layer saw only a 3x3 kernel's features, the common case.
        fan_in = 9 * self.features.num_features
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)
        with torch.no_grad():
            nn.init.normal_(self.kind.weight[:_LEGACY_EDGE_KINDS], std=0.5)
            gen = torch.Generator().manual_seed(_NEW_KINDS_SEED)
            extra = torch.randn(_NORM_EDGE_KINDS - _LEGACY_EDGE_KINDS, self.hidden, generator=gen)
            self.kind.weight[_LEGACY_EDGE_KINDS:_NORM_EDGE_KINDS] = 0.5 * extra.to(self.kind.weight)
            gen = torch.Generator().manual_seed(_ATTENTION_KINDS_SEED)
            extra = torch.randn(NUM_EDGE_KINDS - _NORM_EDGE_KINDS, self.hidden, generator=gen)
            self.kind.weight[_NORM_EDGE_KINDS:] = 0.5 * extra.to(self.kind.weight)

    def forward(self, edge_attr: Tensor, edge_kind: Tensor) -> Tensor:
        return self.embed_weights(edge_attr) + self.attributes(edge_kind)

    def embed_weights(self, edge_attr: Tensor) -> Tensor:
        r""":math:`W_e\,\phi(w_{ij})`: ``(*, K)`` to ``(*, hidden)``."""
        width = edge_attr.shape[-1]
        if width > self.max_edge_features:
            raise ValueError(
                f"edges carry {width} weights but this encoder accepts at most "
                f"{self.max_edge_features}"
            )
        feats = self.features(edge_attr)  # (*, K * F)
        return feats @ self.weight[:, : feats.shape[-1]].t()

    def attributes(self, edge_kind: Tensor) -> Tensor:
        """The bias and kind terms, ``(M, hidden)`` from ``(M,)`` kinds (per architecture, like
        :meth:`NodeEmbedding.attributes`)."""
        return self.bias + self.kind(edge_kind)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(hidden={self.hidden}, "
            f"max_edge_features={self.max_edge_features}, features={self.features.kind!r})"
        )
