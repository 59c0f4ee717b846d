r"""Function-preserving transforms of a network's weights, and exact canonical forms.

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

The core works on ``(spec, state_dict)`` pairs and returns new state dicts (inputs are never
modified). :func:`transform_module` and :func:`transform_graph` lift any of them to
``nn.Module`` and :class:`~weightspace.graph.NeuralGraph`.

Example::

    sd2, perms = random_permutation(spec, sd, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(to_module(spec, sd)(x), to_module(spec, sd2)(x), atol=1e-6)
    canonicalize(spec, random_rescale(spec, sd)[0])  # == canonicalize(spec, sd)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from weightspace.errors import NonFiniteWeightsError, SymmetryError, WeightspaceError
from weightspace.graph import NeuralGraph, check_state_dict, to_graph, to_state_dict
from weightspace.layout import ROLE_INPUT, LayerLink, Layout, layout_of
from weightspace.module import SpecModule, to_module
from weightspace.spec import POSITIVELY_HOMOGENEOUS_ACTIVATIONS, NetworkSpec

__all__ = [
    "SYMMETRIES",
    "SymmetryError",
    "permute",
    "rescale",
    "flip_signs",
    "permute_group",
    "random_permutation",
    "random_rescale",
    "random_sign_flip",
    "random_symmetry",
    "random_broken_permutation",
    "canonicalize_scale",
    "canonicalize_sign",
    "canonicalize",
    "canonical_overflow",
    "first_canonical_overflow",
    "spec_and_state_dict",
    "transform_module",
    "transform_graph",
    "permute_graph",
    "random_symmetry_graph",
    "canonicalize_graph",
]

StateDict = dict[str, Tensor]
GroupTensors = dict[int, Tensor]

#: Names of the random symmetry transforms, in the order :func:`random_symmetry` applies them.
SYMMETRIES: tuple[str, ...] = ("sign_flip", "rescale", "permutation")


# ---------------------------------------------------------------------------------------------
# core
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# random transforms
# ---------------------------------------------------------------------------------------------
def _generator_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _randperm(n: int, generator: torch.Generator | None) -> Tensor:
    return torch.randperm(n, generator=generator, device=_generator_device(generator)).cpu()


def random_permutation(
    spec: NetworkSpec,
    state_dict: Mapping[str, Tensor],
    generator: torch.Generator | None = None,
) -> tuple[StateDict, GroupTensors]:
    """Permute every permutable tie set by a uniformly random permutation (see :func:`permute`).

    Returns:
        ``(state_dict, perms)``; ``perms`` maps every group of every permutable tie set to its
        ``(size,)`` permutation (one tensor shared by the groups of a set). Input and output
        groups never appear.
    """
    layout = layout_of(spec)
    perms: GroupTensors = {}
    for members in layout.permutable_tie_sets():
        perm = _randperm(layout.groups[members[0]].size, generator)
        for g in members:
            perms[g] = perm
    return permute(spec, state_dict, perms), perms


def random_rescale(
    spec: NetworkSpec,
    state_dict: Mapping[str, Tensor],
    generator: torch.Generator | None = None,
    *,
    log_range: float = 1.0,
) -> tuple[StateDict, GroupTensors]:
    r"""Rescale every scalable group by :math:`c_i = e^{u_i}`, :math:`u_i \sim U[-r, r]`.

    Args:
        log_range: :math:`r`; factors lie in :math:`[e^{-r}, e^{r}]`.

    Returns:
        ``(state_dict, scales)``, scales as in :func:`rescale` (float64).
    """
    layout = layout_of(spec)
    scales: GroupTensors = {}
    for g in layout.scalable_groups():
        u = torch.rand(
            layout.groups[g].size,
            generator=generator,
            dtype=torch.float64,
            device=_generator_device(generator),
        )
        scales[g] = torch.exp((2 * u - 1) * log_range).cpu()
    return rescale(spec, state_dict, scales), scales


def random_sign_flip(
    spec: NetworkSpec,
    state_dict: Mapping[str, Tensor],
    generator: torch.Generator | None = None,
) -> tuple[StateDict, GroupTensors]:
    """Flip each neuron of every sign-flippable group with probability 1/2.

    Returns:
        ``(state_dict, signs)``, signs as in :func:`flip_signs` (float64, ±1).
    """
    layout = layout_of(spec)
    signs: GroupTensors = {}
    for g in layout.sign_flippable_groups():
        bits = torch.randint(
            0, 2, (layout.groups[g].size,), generator=generator, device=_generator_device(generator)
        )
        signs[g] = (2 * bits - 1).to(torch.float64).cpu()
    return flip_signs(spec, state_dict, signs), signs


_RANDOM: dict[str, Callable[..., tuple[StateDict, GroupTensors]]] = {
    "sign_flip": random_sign_flip,
    "rescale": random_rescale,
    "permutation": random_permutation,
}


def random_symmetry(
    spec: NetworkSpec,
    state_dict: Mapping[str, Tensor],
    generator: torch.Generator | None = None,
    *,
    transforms: Sequence[str] = SYMMETRIES,
    log_range: float = 1.0,
) -> tuple[StateDict, dict[str, GroupTensors]]:
    """Compose random sign flips, rescalings and permutations (in that order), as applicable.

    Args:
        transforms: a subset of :data:`SYMMETRIES`; always applied in :data:`SYMMETRIES` order.
        log_range: passed to :func:`random_rescale`.

    Returns:
        ``(state_dict, draws)``, ``draws[name]`` being what the named random transform returned.
    """
    unknown = [t for t in transforms if t not in _RANDOM]
    if unknown:
        raise SymmetryError(f"unknown symmetry transforms {unknown}; valid: {list(SYMMETRIES)}")
    state: Mapping[str, Tensor] = state_dict
    draws: dict[str, GroupTensors] = {}
    for name in SYMMETRIES:
        if name not in transforms:
            continue
        if name == "rescale":
            state, draws[name] = random_rescale(spec, state, generator, log_range=log_range)
        else:
            state, draws[name] = _RANDOM[name](spec, state, generator)
    return _copy_checked(spec, state), draws


def random_broken_permutation(
    spec: NetworkSpec,
    state_dict: Mapping[str, Tensor],
    generator: torch.Generator | None = None,
    *,
    kind: str = "unmatched",
) -> tuple[StateDict, GroupTensors]:
    """A permutation that is *not* a symmetry, for negative controls (never the identity).

    Args:
        kind: ``"unmatched"`` permutes the rows of the first hidden group with at least two
            neurons without the matching change to its readers; ``"input"`` permutes the input
            neurons (channels), i.e. the first layer's input columns.

    Returns:
        ``(state_dict, {group: perm})``.

    Raises:
        SymmetryError: no group of the requested kind has two or more neurons.
    """
    layout = layout_of(spec)
    if kind == "unmatched":
        candidates = [
            g.index for g in layout.groups if g.role != ROLE_INPUT and g.readers and g.size > 1
        ]
        if not candidates:
            raise SymmetryError("the network has no hidden group with two or more neurons")
        group, readers = candidates[0], False
    elif kind == "input":
        if layout.groups[0].size < 2:
            raise SymmetryError(
                f"the input has {layout.groups[0].size} neuron/channel; nothing to permute"
            )
        group, readers = 0, True
    else:
        raise SymmetryError(f"kind must be 'unmatched' or 'input', got {kind!r}")
    perm = _randperm(layout.groups[group].size, generator)
    if torch.equal(perm, torch.arange(perm.numel())):
        perm = perm.roll(1)
    state = permute_group(spec, state_dict, group, perm, rows=True, readers=readers)
    return state, {group: perm}


# ---------------------------------------------------------------------------------------------
# canonical forms
# ---------------------------------------------------------------------------------------------
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


def canonical_overflow(spec: NetworkSpec, state_dict: Mapping[str, Tensor]) -> str | None:
    r"""Why the canonical form of a model with finite weights is not finite, or ``None``.

    :func:`canonicalize_scale` moves each hidden neuron's scale :math:`c` into the next layer
    (:math:`W_{l+1} \leftarrow W_{l+1}\,\mathrm{diag}(c)`), so weights near the float32 limit
    (about :math:`3.4 \times 10^{38}`) can overflow to Inf there, although every weight of the
    file is finite; no graph (and no embedding) can be built from such a model. Weights that
    are not finite already are left to the callers' own checks (``None`` here).
    """
    tensors = {name: torch.as_tensor(value) for name, value in state_dict.items()}
    floating = [t for t in tensors.values() if t.is_floating_point() and t.numel()]
    if not all(bool(torch.isfinite(t).all()) for t in floating):
        return None
    try:
        canonical = canonicalize(spec, tensors)
    except (WeightspaceError, RuntimeError):  # not canonicalisable: another problem
        return None
    for name, tensor in canonical.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            largest = max(float(t.abs().max()) for t in floating)
            return (
                f"its canonical form is not finite: rescaling to it overflows "
                f"{str(tensor.dtype).removeprefix('torch.')} "
                f"in tensor {name!r} (the largest weight is {largest:.3g}); such a model cannot "
                "be embedded"
            )
    return None


def first_canonical_overflow(
    models: Iterable[tuple[str, NetworkSpec, Mapping[str, Tensor]]],
) -> NonFiniteWeightsError | None:
    """For a batch that failed to embed: the one-line error of its first model (``(source,
    spec, state_dict)``) whose canonical form overflows (:func:`canonical_overflow`), naming
    its source, or ``None`` when no model of the batch overflows."""
    for source, spec, state_dict in models:
        problem = canonical_overflow(spec, state_dict)
        if problem is not None:
            return NonFiniteWeightsError(f"{source}: {problem}")
    return None


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


# ---------------------------------------------------------------------------------------------
# modules and graphs
# ---------------------------------------------------------------------------------------------
def spec_and_state_dict(
    module: nn.Module, example_input: Tensor | None = None
) -> tuple[NetworkSpec, StateDict]:
    """The ``(spec, state_dict)`` of a module: read off a :class:`SpecModule`, else traced.

    Any other module goes through :func:`weightspace.ingest.from_module` (``torch.fx`` trace,
    BatchNorm folded), which needs ``example_input``.
    """
    if isinstance(module, SpecModule):
        return module.spec, {k: v.detach() for k, v in module.state_dict().items()}
    if example_input is None:
        raise SymmetryError(
            f"{type(module).__name__} is not a SpecModule; pass example_input=... so that it can "
            "be traced into a NetworkSpec"
        )
    from weightspace.ingest import from_module  # ingest imports torch.fx machinery: load lazily

    spec, state = from_module(module, example_input)
    return spec, dict(state)


def _swap_state(result: Any, wrap: Callable[[StateDict], Any]) -> Any:
    if isinstance(result, tuple):
        return (wrap(result[0]), *result[1:])
    return wrap(result)


def transform_module(
    module: nn.Module,
    fn: Callable[..., Any],
    *args: Any,
    example_input: Tensor | None = None,
    **kwargs: Any,
) -> Any:
    """Apply a state-dict transform ``fn(spec, state_dict, *args, **kwargs)`` to a module.

    Returns what ``fn`` returns with the state dict replaced by a new :class:`SpecModule` (in eval
    mode, the weights' dtype and device): ``transform_module(m, random_permutation, gen)`` gives
    ``(module, perms)``, ``transform_module(m, canonicalize)`` a module. The input module is not
    modified; a non-:class:`SpecModule` is traced first (:func:`spec_and_state_dict`), with its
    BatchNorm folded, so the result computes its eval-mode function.
    """
    spec, state = spec_and_state_dict(module, example_input)
    return _swap_state(fn(spec, state, *args, **kwargs), lambda sd: to_module(spec, sd))


def transform_graph(graph: NeuralGraph, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Apply a state-dict transform ``fn(spec, state_dict, *args, **kwargs)`` to a graph.

    ``graph → to_state_dict → fn → to_graph`` with the same spec, dtype and edge feature width.
    Returns what ``fn`` returns with the state dict replaced by the new :class:`NeuralGraph`.
    Only the attributes :func:`~weightspace.graph.to_graph` makes are kept; attach labels again.
    """
    spec = graph.spec
    state = to_state_dict(graph)

    def wrap(sd: StateDict) -> NeuralGraph:
        return to_graph(spec, sd, edge_features=graph.edge_features, check=False)

    return _swap_state(fn(spec, state, *args, **kwargs), wrap)


def permute_graph(graph: NeuralGraph, perms: Mapping[int, Tensor]) -> NeuralGraph:
    """:func:`permute` on a graph: nodes of each permuted group are reordered, edges follow."""
    return transform_graph(graph, permute, perms)


def random_symmetry_graph(
    graph: NeuralGraph,
    generator: torch.Generator | None = None,
    *,
    transforms: Sequence[str] = SYMMETRIES,
    log_range: float = 1.0,
) -> tuple[NeuralGraph, dict[str, GroupTensors]]:
    """:func:`random_symmetry` on a graph."""
    return transform_graph(
        graph, random_symmetry, generator, transforms=transforms, log_range=log_range
    )


def canonicalize_graph(graph: NeuralGraph) -> NeuralGraph:
    """:func:`canonicalize` on a graph."""
    return transform_graph(graph, canonicalize)
