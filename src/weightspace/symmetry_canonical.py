"""Exact canonical forms: one representative of each orbit under rescaling and sign flips.

:func:`canonicalize_scale` fixes every positively homogeneous neuron to unit incoming norm,
:func:`canonicalize_sign` every odd neuron to a positive bias (or a fall-back), and
:func:`canonicalize_attention` the heads of attention ops; :func:`canonicalize` applies them in
that order. Each is a composition of the transforms of :mod:`weightspace.symmetry_transforms`,
so the function is kept. Re-exported by :mod:`weightspace.symmetry`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from weightspace.layout import layout_of
from weightspace.spec import NetworkSpec
from weightspace.symmetry_transforms import StateDict, _copy_checked, _transform_group

__all__ = ["canonicalize_scale", "canonicalize_sign", "canonicalize", "canonicalize_attention"]


def _incoming(state: Mapping[str, Tensor], producer: str) -> tuple[Tensor, Tensor | None]:
    w = state[f"{producer}.weight"]
    return w.reshape(w.shape[0], -1), state.get(f"{producer}.bias")  # (n, in * kernel), (n,)


def canonicalize_scale(spec: NetworkSpec, state_dict: Mapping[str, Tensor]) -> StateDict:
    r"""Normalise each neuron of every scalable group to unit incoming norm.

    For each group ``g`` of ``layout_of(spec).scalable_groups()``, in creation (topological)
    order, with :math:`W \in \mathbb{R}^{n \times m}` its producer's rows flattened and ``b`` its
    bias (zero if absent):

    .. math::
        \nu_i = \sqrt{\lVert W[i] \rVert_2^2 + b_i^2}, \qquad
        W'[i] = W[i] / \nu_i,\quad b'_i = b_i / \nu_i,\quad
        W'_{\mathrm{read}}[:, i] = \nu_i\, W_{\mathrm{read}}[:, i]

    (neurons with :math:`\nu_i = 0` are left alone). This is :func:`rescale` with
    :math:`c = 1/\nu`, so the function is kept. Because each group's incoming rows are fixed
    before the groups it feeds are processed, any positive rescaling of the input model gives the
    same result: ``canonicalize_scale(rescale(sd, c)) == canonicalize_scale(sd)`` up to rounding.
    """
    state = _copy_checked(spec, state_dict)
    layout = layout_of(spec)
    for group in layout.scalable_groups():
        producer = layout.groups[group].producer
        assert producer is not None  # scalable groups are written by a layer
        rows, bias = _incoming(state, producer)
        squared = rows.pow(2).sum(dim=1)  # (n,)
        if bias is not None:
            squared = squared + bias.pow(2)
        norm = squared.sqrt()
        norm = torch.where(norm > 0, norm, torch.ones_like(norm))
        _transform_group(state, layout, group, factor=1.0 / norm)
    return state


def canonicalize_sign(spec: NetworkSpec, state_dict: Mapping[str, Tensor]) -> StateDict:
    r"""Flip each neuron of every sign-flippable group so that its bias is positive.

    For each group of ``layout_of(spec).sign_flippable_groups()``, in creation order:

    .. math::
        s_i = \operatorname{sign}(b_i) \text{ if } b_i \ne 0, \text{ else }
        \operatorname{sign}\Big(\sum_j W[i, j]\Big), \text{ else }
        \operatorname{sign}\Big(\sum_j W[i, j]^3\Big)

    with :math:`W` the producer's rows flattened (:math:`s_i = 1` if all are zero), then
    :func:`flip_signs` with :math:`s`. The fall-backs for bias-free neurons are odd in the row
    and depend only on the multiset of its entries (summed in sorted order, so bitwise), hence
    invariant to permutations of the neurons the group reads — a "first nonzero weight" rule
    would not be. Earlier groups are fixed first, so the row no longer depends on how the inputs
    of ``g`` were flipped: ``canonicalize_sign(flip_signs(sd, s)) == canonicalize_sign(sd)``.
    """
    state = _copy_checked(spec, state_dict)
    layout = layout_of(spec)
    for group in layout.sign_flippable_groups():
        producer = layout.groups[group].producer
        assert producer is not None
        rows, bias = _incoming(state, producer)
        ordered = rows.sort(dim=1).values  # (n, fan_in): permutation-invariant order
        sign = torch.sign(ordered.sum(dim=1))  # (n,)
        cubes = torch.sign(ordered.pow(3).sum(dim=1))
        sign = torch.where(sign == 0, cubes, sign)
        if bias is not None:
            sign = torch.where(bias != 0, torch.sign(bias), sign)
        sign = torch.where(sign == 0, torch.ones_like(sign), sign)
        _transform_group(state, layout, group, factor=sign)
    return state


def canonicalize(spec: NetworkSpec, state_dict: Mapping[str, Tensor]) -> StateDict:
    """:func:`canonicalize_scale`, then :func:`canonicalize_sign`.

    The result is the same for every model in the orbit of ``state_dict`` under positive
    rescalings and sign flips (not permutations: those are left to the equivariant encoder), and
    computes the same function.
    """
    state = canonicalize_sign(spec, canonicalize_scale(spec, state_dict))
    return canonicalize_attention(spec, state) if spec.is_tokens else state


def canonicalize_attention(spec: NetworkSpec, state_dict: Mapping[str, Tensor]) -> StateDict:
    """Every ``attention`` op of ``spec`` in the canonical form of
    :func:`weightspace.attention.canonical_attention`: the same for every model in the orbit under
    head permutations and within-head :math:`GL(d)`, same function."""
    from weightspace.attention import attention_state, canonical_attention, load_attention_state

    state = dict(state_dict)
    for op in spec.ops:
        if op.kind == "attention":
            weights = canonical_attention(attention_state(op, state))
            state.update(load_attention_state(op, weights))
    return state
