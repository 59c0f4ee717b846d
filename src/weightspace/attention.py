r"""Multi-head attention in weight space: its parameters, its symmetries and an exact canonical form.

Self-attention over tokens :math:`x_1, \dots, x_T \in \mathbb{R}^E` with :math:`H` heads of width
:math:`d = E / H`; with :math:`\tilde x = [x; 1]` (so that biases are columns) and, per head
:math:`h`, :math:`\tilde Q_h, \tilde K_h, \tilde V_h \in \mathbb{R}^{d \times (E+1)}` (rows
:math:`hd{:}(h+1)d` of ``in_proj_weight`` beside ``in_proj_bias``) and
:math:`O_h \in \mathbb{R}^{E \times d}` (columns of ``out_proj.weight``):

.. math::
    \mathrm{MHA}(x)_i = \sum_h O_h \sum_j \operatorname{softmax}_j\Big(
        \tfrac{1}{\sqrt d}\, \tilde x_i^\top \underbrace{\tilde Q_h^\top \tilde K_h}_{M^{QK}_h}
        \tilde x_j\Big)\, \tilde V_h \tilde x_j + b_O .

**Symmetries** (each keeps the function exactly):

* *head permutation*: the :math:`H` heads are a set (:func:`permute_heads`);
* *within-head* :math:`GL(d)`: :math:`\tilde Q_h \to A_h^\top \tilde Q_h`,
  :math:`\tilde K_h \to A_h^{-1} \tilde K_h` keeps :math:`M^{QK}_h`; :math:`\tilde V_h \to B_h
  \tilde V_h`, :math:`O_h \to O_h B_h^{-1}` keeps :math:`M^{VO}_h = O_h \tilde V_h`
  (:func:`transform_heads`);
* *residual stream*: a permutation :math:`P` of the :math:`E` features, applied to the columns of
  :math:`\tilde Q, \tilde K, \tilde V` and the rows of :math:`O, b_O`, gives
  :math:`\mathrm{MHA}'(Px) = P\,\mathrm{MHA}(x)` (:func:`permute_stream`); in a transformer block
  the LayerNorms' :math:`\gamma, \beta` and the MLP's first columns and last rows move with it;
* the MLP inside a block keeps its hidden-neuron permutation (:func:`permute_block_hidden`);
* token and learned positional embeddings (``nn.Embedding`` ``(V, E)``, a ``(T, E)``
  parameter) write the residual stream: its permutation moves their columns
  (``weight[:, perm]``, see :func:`embedding_weights`).

**Canonical form.** The products :math:`M^{QK}_h` (:math:`(E{+}1)^2`, rank :math:`\le d`) and
:math:`M^{VO}_h` (:math:`E \times (E{+}1)`) are invariant under the within-head :math:`GL(d)`.
Each is factored exactly as a LoRA product is (:func:`weightspace.lora.canonical_factors`: QR, then
the SVD of the small core, singular vectors' signs fixed by their third moment), which gives one
representative per :math:`GL(d)` orbit that still computes the same function; heads are then
sorted by their singular values (invariant under every symmetry above, so the order is too), which
fixes the head permutation. The result is invariant under head permutations and within-head
:math:`GL(d)`, and equivariant under residual-stream permutations (it is permuted like the model),
so a permutation-equivariant encoder of the residual stream sees each orbit once.

The form is exact when each head's singular values are distinct and heads differ in them (true of
generic, e.g. trained or random, weights); tied singular values leave a rotation inside the tied
subspace, as for any SVD. Not (yet) symmetries handled here: the key bias's component that only shifts each query's scores
by a constant (softmax ignores it) is kept as is.

The parameter containers, their reading from and writing to modules and state dicts, and
:func:`attention_forward` are in :mod:`weightspace.attention_params` (re-exported here).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from weightspace.attention_params import (  # noqa: F401 (re-exported: weightspace.attention)
    AttentionWeights,
    EncoderLayerWeights,
    _from_augmented,
    attention_forward,
    attention_state,
    attention_weights,
    embedding_weights,
    encoder_layer_weights,
    load_attention,
    load_attention_state,
    load_encoder_layer,
)
from weightspace.errors import SymmetryError
from weightspace.one_thread import one_thread

__all__ = [
    "AttentionWeights",
    "EncoderLayerWeights",
    "attention_weights",
    "encoder_layer_weights",
    "load_attention",
    "load_encoder_layer",
    "permute_heads",
    "transform_heads",
    "permute_stream",
    "permute_block_stream",
    "permute_block_hidden",
    "random_invertible",
    "canonical_attention",
    "embedding_weights",
    "attention_state",
    "load_attention_state",
]


# ------------------------------------------------------------------------------ symmetries
def permute_heads(weights: AttentionWeights, perm: Tensor) -> AttentionWeights:
    """New head ``i`` is old head ``perm[i]`` (Q, K, V rows and O columns move together)."""
    if sorted(perm.tolist()) != list(range(weights.num_heads)):
        raise SymmetryError(f"a head permutation of {weights.num_heads} heads, got {perm.tolist()}")
    q, k, v = weights.augmented()
    o = weights.head_outputs()
    return _from_augmented(weights, q[perm], k[perm], v[perm], o[perm])


def transform_heads(weights: AttentionWeights, qk: Tensor, vo: Tensor) -> AttentionWeights:
    r"""Within-head :math:`GL(d)`: :math:`\tilde Q_h \to A_h^\top \tilde Q_h`,
    :math:`\tilde K_h \to A_h^{-1} \tilde K_h`, :math:`\tilde V_h \to B_h \tilde V_h`,
    :math:`O_h \to O_h B_h^{-1}`, with ``qk`` = :math:`A` and ``vo`` = :math:`B`, ``(H, d, d)``
    invertible. (A bias-free model stays bias-free: its bias columns are zero.)"""
    q, k, v = weights.augmented()
    o = weights.head_outputs()
    return _from_augmented(
        weights,
        qk.transpose(1, 2) @ q,
        torch.linalg.solve(qk, k),
        vo @ v,
        torch.linalg.solve(vo.transpose(1, 2), o.transpose(1, 2)).transpose(1, 2),
    )


def permute_stream(weights: AttentionWeights, perm: Tensor) -> AttentionWeights:
    """Residual-stream permutation: new feature ``i`` is old feature ``perm[i]``, for the input
    (columns of ``in_proj``) and the output (rows of ``out_proj`` and ``out_bias``)."""
    if sorted(perm.tolist()) != list(range(weights.embed_dim)):
        raise SymmetryError(f"a permutation of the {weights.embed_dim} stream features expected")
    out_bias = None if weights.out_bias is None else weights.out_bias[perm]
    return replace(
        weights,
        in_proj=weights.in_proj[:, perm],
        out_proj=weights.out_proj[perm],  # its columns are head dimensions, not stream features
        out_bias=out_bias,
    )


def permute_block_stream(weights: EncoderLayerWeights, perm: Tensor) -> EncoderLayerWeights:
    r"""Residual-stream permutation of a whole encoder layer: attention, both LayerNorms'
    :math:`\gamma, \beta`, ``linear1``'s columns and ``linear2``'s rows and bias;
    then ``layer'(x P) = layer(x) P`` over the feature axis."""
    p = dict(weights.params)
    for key in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "linear2.bias"):
        if key in p:
            p[key] = p[key][perm]
    p["linear1.weight"] = p["linear1.weight"][:, perm]
    p["linear2.weight"] = p["linear2.weight"][perm]
    return replace(weights, attention=permute_stream(weights.attention, perm), params=p)


def permute_block_hidden(weights: EncoderLayerWeights, perm: Tensor) -> EncoderLayerWeights:
    """Hidden-neuron permutation of the MLP: ``linear1``'s rows and bias, ``linear2``'s columns."""
    p = dict(weights.params)
    p["linear1.weight"] = p["linear1.weight"][perm]
    if "linear1.bias" in p:
        p["linear1.bias"] = p["linear1.bias"][perm]
    p["linear2.weight"] = p["linear2.weight"][:, perm]
    return replace(weights, params=p)


def random_invertible(
    count: int, size: int, generator: torch.Generator, dtype: torch.dtype = torch.float64
) -> Tensor:
    r"""``(count, size, size)`` random well-conditioned invertible matrices
    :math:`U \operatorname{diag}(e^{s}) V^\top`, :math:`s \sim U(-1, 1)`, :math:`U, V` orthogonal
    (signs included: determinants of both signs occur)."""
    u, _ = torch.linalg.qr(torch.randn(count, size, size, generator=generator, dtype=dtype))
    v, _ = torch.linalg.qr(torch.randn(count, size, size, generator=generator, dtype=dtype))
    s = torch.rand(count, size, generator=generator, dtype=dtype) * 2 - 1
    return u @ torch.diag_embed(s.exp()) @ v.transpose(1, 2)


# ------------------------------------------------------------------------------ canonical form
def _canonical_pairs(left: Tensor, right: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""Per head, ``left[h] (m, d) @ right[h] (d, n)`` refactored canonically: the factors of
    :func:`~weightspace.lora.canonical_factors` (:math:`B^\star = U\Sigma`,
    :math:`A^\star = V^\top`, signs fixed by :math:`\sum_i u_i^3 > 0`), computed for all heads
    in one batched QR / SVD. Returns ``B* (H, m, d)``, ``A* (H, d, n)`` and the singular values
    ``(H, d)`` (zero beyond the rank)."""
    heads, m, d = left.shape
    q_b, r_b = torch.linalg.qr(left)  # (H, m, k_b), (H, k_b, d)
    q_a, r_a = torch.linalg.qr(right.transpose(1, 2))  # (H, n, k_a), (H, k_a, d)
    u_c, sigma, vh_c = torch.linalg.svd(r_b @ r_a.transpose(1, 2), full_matrices=False)
    u, v = q_b @ u_c, q_a @ vh_c.transpose(1, 2)  # (H, m, k), (H, n, k)
    sign = torch.sign(u.pow(3).sum(dim=1, keepdim=True))  # (H, 1, k)
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    u, v = u * sign, v * sign
    k = sigma.shape[-1]
    a_star = right.new_zeros(heads, d, right.shape[2])
    b_star = left.new_zeros(heads, m, d)
    a_star[:, :k], b_star[:, :, :k] = v.transpose(1, 2), u * sigma.unsqueeze(1)
    return b_star, a_star, b_star.pow(2).sum(1).sqrt()  # column norms: the singular values


def canonical_attention(weights: AttentionWeights) -> AttentionWeights:
    r"""One representative of the orbit of ``weights`` under head permutations and within-head
    :math:`GL(d)` (module docstring); it computes the same function.

    Per head, :math:`M^{QK}_h = \tilde Q_h^\top \tilde K_h` and :math:`M^{VO}_h = O_h \tilde V_h`
    are refactored as :math:`U\Sigma \cdot V^\top` (canonical signs); heads are ordered by
    :math:`(\Sigma^{QK}_h, \Sigma^{VO}_h)`, largest first, lexicographically. Float64 inside,
    all heads at once.
    """
    q, k, v = (t.double() for t in weights.augmented())  # (H, d, E + 1) each
    o = weights.head_outputs().double()  # (H, E, d)
    with one_thread():  # small QRs and SVDs: a thread pool's barriers cost more than it gains
        q_t, k_star, s_qk = _canonical_pairs(q.transpose(1, 2), k)  # (H, E+1, d), (H, d, E+1)
        o_star, v_star, s_vo = _canonical_pairs(o, v)  # (H, E, d), (H, d, E+1)
    keys = torch.cat([s_qk, s_vo], dim=1).tolist()  # (H, 2d)
    order = sorted(range(weights.num_heads), key=lambda h: [-x for x in keys[h]])
    dtype = weights.in_proj.dtype

    def pick(t: Tensor) -> Tensor:
        return t[order].to(dtype)

    return _from_augmented(
        weights, pick(q_t.transpose(1, 2)), pick(k_star), pick(v_star), pick(o_star)
    )
