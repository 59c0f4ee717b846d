r"""Deterministic function-preserving transforms of one neuron group: permute, rescale, flip.

Every transform here acts neuron-wise on the neuron groups of :func:`weightspace.layout.layout_of`
(read its docstring: it says which groups admit which symmetry). A transform of group ``g`` is a
*monomial* change of basis: a permutation :math:`\pi` and per-neuron factors :math:`d`, so that
new neuron :math:`i` is old neuron :math:`\pi(i)` times :math:`d_i`. It rewrites the layer that
produces ``g`` (its rows) and every layer that reads ``g`` (its input columns):

.. math::
    W'_{\mathrm{prod}}[i] = d_i\, W_{\mathrm{prod}}[\pi(i)], \qquad
    b'_{\mathrm{prod}}[i] = d_i\, b_{\mathrm{prod}}[\pi(i)], \qquad
    W'_{\mathrm{read}}[:, i] = W_{\mathrm{read}}[:, \pi(i)] / d_i .

Rows are ``weight[i]`` of shape ``(in, *kernel)``; a reader's columns are
``weight.reshape(out, C, -1)[:, i]``: the ``kernel`` entries of a conv, or the ``S`` spatial
entries of a linear layer reading a flattened ``(C, *spatial)`` tensor (``in_features = C * S``).

The network computes the same function after the transform when

* ``d = 1`` and ``π`` is applied to every group of a residual tie set at once (permutation);
* ``π = id``, ``d > 0`` and the group's activations are positively homogeneous (rescaling);
* ``π = id``, ``d ∈ {−1, +1}`` and the group's activations are odd (sign flip).

All work on ``(spec, state_dict)`` pairs and return new state dicts (inputs are never modified).
Re-exported by :mod:`weightspace.symmetry`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from weightspace.errors import SymmetryError
from weightspace.graph_checks import check_state_dict
from weightspace.layout import LayerLink, Layout, layout_of
from weightspace.spec import POSITIVELY_HOMOGENEOUS_ACTIVATIONS, NetworkSpec

__all__ = ["permute", "rescale", "flip_signs", "permute_group", "StateDict", "GroupTensors"]

StateDict = dict[str, Tensor]
GroupTensors = dict[int, Tensor]


def _copy_checked(spec: NetworkSpec, state_dict: Mapping[str, Tensor]) -> StateDict:
    """Check keys and shapes against ``spec``; return a shallow copy (tensors are not mutated)."""
    check_state_dict(spec, state_dict, allow_nonfinite=True)
    return {key: state_dict[key] for key in spec.param_shapes()}


def _transform_group(
    state: StateDict,
    layout: Layout,
    group: int,
    perm: Tensor | None = None,
    factor: Tensor | None = None,
    *,
    rows: bool = True,
    readers: bool = True,
) -> None:
    """Apply ``new neuron i = factor[i] * old neuron perm[i]`` to one group, in place in ``state``.

    Args:
        state: state dict, updated by replacing tensors (never by writing into them).
        group: index into ``layout.groups``.
        perm: ``(n,)`` long permutation, or ``None`` for the identity.
        factor: ``(n,)`` nonzero factors, or ``None`` for ones.
        rows: rewrite the producing layer's rows (weight and bias).
        readers: rewrite the reading layers' input columns.
    """
    g = layout.groups[group]
    writer = layout.writer(group)
    if writer is not None and not writer.is_plain:  # embedding or attention (layout docstring)
        if rows:
            _transform_slice(state, writer, g.size, perm, factor, output=True)
            if g.bias_key is not None and g.bias_key in state:
                _transform_bias(state, g.bias_key, g.bias_start, g.size, perm, factor)
    elif rows and g.producer is not None:
        for key in (f"{g.producer}.weight", f"{g.producer}.bias"):
            if key not in state:
                continue
            t = state[key]  # (n, *rest)
            if perm is not None:
                t = t[perm.to(t.device)]
            if factor is not None:
                t = t * factor.to(t).view(-1, *(1,) * (t.dim() - 1))
            state[key] = t
    if readers:
        for name in g.readers:
            key = f"{name}.weight"
            w = state[key]
            cols = w.reshape(w.shape[0], g.size, -1)  # (out, n, S * kernel)
            if perm is not None:
                cols = cols[:, perm.to(w.device)]
            if factor is not None:
                cols = cols / factor.to(w).view(1, -1, 1)
            state[key] = cols.reshape(w.shape)
        for link in layout.links:
            if link.source == group and not link.is_plain:
                _transform_slice(state, link, layout.groups[link.target].size, perm, factor)


def _transform_slice(
    state: StateDict,
    link: LayerLink,
    rows: int,
    perm: Tensor | None,
    factor: Tensor | None,
    *,
    output: bool = False,
) -> None:
    """Permute/scale one attention or embedding link's output neurons (``output``) or input
    neurons (then divide by ``factor``), in its slice of the tensor that holds it."""
    w = state[link.key]
    view = w.t() if link.transposed else w  # (out rows, in)
    block = view[link.row_start : link.row_start + rows]
    if output:
        block = block if perm is None else block[perm.to(w.device)]
        block = block if factor is None else block * factor.to(w).view(-1, 1)
    else:
        block = block if perm is None else block[:, perm.to(w.device)]
        block = block if factor is None else block / factor.to(w).view(1, -1)
    new = torch.cat([view[: link.row_start], block, view[link.row_start + rows :]])
    state[link.key] = (new.t() if link.transposed else new).contiguous()


def _transform_bias(
    state: StateDict, key: str, start: int, size: int, perm: Tensor | None, factor: Tensor | None
) -> None:
    b = state[key]
    part = b[start : start + size]
    part = part if perm is None else part[perm.to(b.device)]
    part = part if factor is None else part * factor.to(b)
    state[key] = torch.cat([b[:start], part, b[start + size :]])


def _check_perm(perm: Tensor, size: int, what: str) -> Tensor:
    perm = torch.as_tensor(perm)
    if perm.dtype not in (torch.int64, torch.int32) or perm.shape != (size,):
        raise SymmetryError(
            f"{what}: expected a permutation as an integer tensor of shape ({size},), got "
            f"dtype {perm.dtype} and shape {tuple(perm.shape)}"
        )
    perm = perm.long()
    if not torch.equal(torch.sort(perm.cpu()).values, torch.arange(size)):
        raise SymmetryError(f"{what}: {perm.tolist()[:10]} is not a permutation of 0..{size - 1}")
    return perm


def _check_factor(values: Tensor, size: int, what: str) -> Tensor:
    values = torch.as_tensor(values)
    if values.shape != (size,):
        raise SymmetryError(
            f"{what}: expected one factor per neuron, shape ({size},), got {tuple(values.shape)}"
        )
    return values


def permute(
    spec: NetworkSpec, state_dict: Mapping[str, Tensor], perms: Mapping[int, Tensor]
) -> StateDict:
    r"""Permute hidden neurons: the deterministic core of :func:`random_permutation`.

    For each tie set with a permutation :math:`\pi` (new neuron ``i`` is old neuron ``π(i)``),
    every group ``g`` of the set gets :math:`W'_{\mathrm{prod}} = W_{\mathrm{prod}}[\pi]`,
    :math:`b' = b[\pi]` and, for each reader,
    ``W'_read = W_read.reshape(out, C, -1)[:, π].reshape(W_read.shape)``.
    Residual identity edges between the tied groups stay identities, so the function is kept.

    Args:
        spec: the architecture.
        state_dict: its tensors (not modified).
        perms: group index → ``(size,)`` long permutation. A permutation given for one group of a
            tie set applies to the whole set; groups not named stay as they are.

    Returns:
        The permuted state dict.

    Raises:
        SymmetryError: a group is an input/output group or tied to one, two groups of one tie set
            got different permutations, or a tensor is not a permutation of the group's size.
    """
    state = _copy_checked(spec, state_dict)
    layout = layout_of(spec)
    sets = {members[0]: members for members in layout.permutable_tie_sets()}
    set_of = {g: head for head, members in sets.items() for g in members}
    chosen: dict[int, Tensor] = {}
    for group, perm in perms.items():
        if not 0 <= group < len(layout.groups):
            raise SymmetryError(f"group {group} does not exist ({len(layout.groups)} groups)")
        if layout.groups[group].head_dim:
            raise SymmetryError(
                f"group {group} holds the head dimensions of attention "
                f"{layout.groups[group].producer!r}; permuting them neuron-wise changes the "
                "function (use weightspace.attention.permute_heads / transform_heads)"
            )
        if group not in set_of:
            raise SymmetryError(
                f"group {group} (written by {layout.groups[group].producer!r}) holds input or "
                "output neurons or is tied to them by a residual add; permuting it changes the "
                "function. Use permute_group(...) for a deliberately broken permutation."
            )
        perm = _check_perm(perm, layout.groups[group].size, f"group {group}")
        head = set_of[group]
        if head in chosen and not torch.equal(chosen[head], perm):
            raise SymmetryError(
                f"groups {sets[head]} are tied by residual adds and need one shared permutation; "
                "got different ones"
            )
        chosen[head] = perm
    for head, perm in chosen.items():
        for g in sets[head]:
            _transform_group(state, layout, g, perm=perm)
    return state


def rescale(
    spec: NetworkSpec, state_dict: Mapping[str, Tensor], scales: Mapping[int, Tensor]
) -> StateDict:
    r"""Rescale neurons of positively homogeneous groups by :math:`c > 0`.

    For group ``g`` with factors :math:`c \in \mathbb{R}_{>0}^{n}`:
    :math:`W'_{\mathrm{prod}}[i] = c_i W_{\mathrm{prod}}[i]`, :math:`b'[i] = c_i b[i]`,
    :math:`W'_{\mathrm{read}}[:, i] = W_{\mathrm{read}}[:, i] / c_i`. Since
    :math:`\sigma(c z) = c\,\sigma(z)` for ReLU, LeakyReLU, identity and pooling, the function is
    kept.

    Args:
        scales: group index (one of ``layout_of(spec).scalable_groups()``) → ``(size,)`` positive
            factors.

    Raises:
        SymmetryError: a group is not scalable, or a factor is not positive.
    """
    state = _copy_checked(spec, state_dict)
    layout = layout_of(spec)
    allowed = set(layout.scalable_groups())
    for group, scale in scales.items():
        if group not in allowed:
            raise SymmetryError(_not_scalable(layout, group, allowed))
        scale = _check_factor(scale, layout.groups[group].size, f"group {group}")
        if not bool((scale > 0).all()):
            raise SymmetryError(f"group {group}: rescaling factors must be positive")
        _transform_group(state, layout, group, factor=scale)
    return state


def _not_scalable(layout: Layout, group: int, allowed: set[int]) -> str:
    """Why ``group`` may not be rescaled, naming the activation that forbids it if one does."""
    where = f"group {group}"
    if 0 <= group < len(layout.groups):
        g = layout.groups[group]
        where += f" (written by {g.producer!r})"
        blocking = sorted(g.activations - POSITIVELY_HOMOGENEOUS_ACTIVATIONS)
        if g.normalised:
            return (
                f"{where} {_normalised_reason(layout, group)}; scalable groups: {sorted(allowed)}"
            )
        if "sine" in blocking:
            return (
                f"{where} feeds a sine activation: sin(w0·c·z) ≠ c·sin(w0·z), so a positive "
                "rescaling changes the function; sine neurons admit sign flips and "
                f"permutations only. Scalable groups: {sorted(allowed)}"
            )
        if blocking:
            return (
                f"{where} feeds {blocking}, which is not positively homogeneous, so a positive "
                f"rescaling changes the function; scalable groups: {sorted(allowed)}"
            )
    return (
        f"{where} does not admit positive rescaling (it must be hidden, untied and only see "
        f"ReLU/LeakyReLU/identity); scalable groups: {sorted(allowed)}"
    )


def _normalised_reason(layout: Layout, group: int) -> str:
    """Why a group read by a LayerNorm/RMSNorm admits no per-neuron rescaling or sign flip."""
    norms = [n for n in layout.norms if n.source == group]
    names = ", ".join(
        f"{n.name!r} ({'LayerNorm' if n.mode == 'layer' else 'RMSNorm'})" for n in norms
    )
    return (
        f"is normalised by {names}: norm(D·z) ≠ D·norm(z) for a per-neuron diagonal D (the "
        "mean and the norm mix all neurons), so only permutations are symmetries there"
    )


def flip_signs(
    spec: NetworkSpec, state_dict: Mapping[str, Tensor], signs: Mapping[int, Tensor]
) -> StateDict:
    r"""Flip neurons of odd groups: :math:`s \in \{-1, +1\}^n`, rows and bias × s, columns × s.

    Since :math:`\sigma(-z) = -\sigma(z)` for tanh, sine (:math:`\sin(-w_0 z) = -\sin(w_0 z)`),
    identity and average pooling, the function is kept.

    Args:
        signs: group index (one of ``layout_of(spec).sign_flippable_groups()``) → ``(size,)``
            entries in ``{-1, +1}``.

    Raises:
        SymmetryError: a group is not sign-flippable, or an entry is not ±1.
    """
    state = _copy_checked(spec, state_dict)
    layout = layout_of(spec)
    allowed = set(layout.sign_flippable_groups())
    for group, sign in signs.items():
        if group not in allowed and 0 <= group < len(layout.groups):
            if layout.groups[group].normalised:
                raise SymmetryError(
                    f"group {group} {_normalised_reason(layout, group)}; flippable groups: "
                    f"{sorted(allowed)}"
                )
        if group not in allowed:
            raise SymmetryError(
                f"group {group} does not admit sign flips (it must be hidden, untied and only "
                f"see tanh/sine/identity/average pooling); flippable groups: {sorted(allowed)}"
            )
        sign = _check_factor(sign, layout.groups[group].size, f"group {group}")
        if not bool((sign.abs() == 1).all()):
            raise SymmetryError(f"group {group}: sign flips must be -1 or +1")
        _transform_group(state, layout, group, factor=sign)
    return state


def permute_group(
    spec: NetworkSpec,
    state_dict: Mapping[str, Tensor],
    group: int,
    perm: Tensor,
    *,
    rows: bool = True,
    readers: bool = True,
) -> StateDict:
    """Permute one group with no checks of roles or ties: a tool for negative controls.

    ``rows`` permutes the producing layer's rows (and bias), ``readers`` the reading layers'
    input columns. Only ``rows=readers=True`` on a free hidden group keeps the function; use
    ``readers=False`` for "a layer permuted without the matching next-layer change", and
    ``group=0`` (the input, which has no producer) for "input neurons permuted".
    """
    state = _copy_checked(spec, state_dict)
    layout = layout_of(spec)
    if not 0 <= group < len(layout.groups):
        raise SymmetryError(f"group {group} does not exist ({len(layout.groups)} groups)")
    perm = _check_perm(perm, layout.groups[group].size, f"group {group}")
    _transform_group(state, layout, group, perm=perm, rows=rows, readers=readers)
    return state
