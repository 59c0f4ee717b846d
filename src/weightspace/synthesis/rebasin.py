r"""Weight matching (Git Re-Basin) and linear interpolation of weights.

Two independently trained networks of one architecture compute similar functions with their
hidden neurons in unrelated orders, so averaging their weights entry by entry mixes unrelated
neurons. *Weight matching* (Ainsworth, Hayase & Srinivasa, 2022, "Git Re-Basin", algorithm 2)
first permutes model B's hidden neurons to line up with model A's by maximising the summed inner
product of all weights,

.. math::
    \max_{\{P_\ell\}} \sum_{\text{layers } \ell}
        \big\langle W^A_\ell,\; P_{\mathrm{out}(\ell)}\, W^B_\ell\, P_{\mathrm{in}(\ell)}^\top
        \big\rangle_F + \big\langle b^A_\ell,\; P_{\mathrm{out}(\ell)}\, b^B_\ell \big\rangle,

by coordinate descent from a forward initialisation (tie sets in topological order, each
matched on its incoming weights alone, given its inputs' permutations): each step fixes every permutation but one and solves the remaining linear
assignment problem exactly (``scipy.optimize.linear_sum_assignment``) on

.. math::
    C_{ij} = \sum_{\ell:\,\mathrm{out}(\ell) = g} \langle W^A_\ell[i], W^{B'}_\ell[j] \rangle
           + b^A_\ell[i]\, b^{B'}_\ell[j]
           + \sum_{\ell:\,\mathrm{in}(\ell) = g} \langle W^A_\ell[:, i], W^{B'}_\ell[:, j] \rangle,

where :math:`B'` is B under the current permutations. Steps sweep the permutable tie sets of
:func:`weightspace.layout.layout_of` in a random (seeded) order until a sweep changes nothing.
A tie set (groups joined by residual adds) shares one permutation, so its cost sums over all
its groups: residual CNNs and MLPs are handled like chains. Conv kernels and the spatial
positions of a flattened conv output are part of each (neuron, neuron) edge's feature vector.

**Sign flips and positive scales.** Permutations are not the only symmetry: a tanh neuron may
have its sign flipped and a ReLU neuron its scale changed (in × c, out × 1/c) without changing the
function, and weight matching alone cannot undo either. :func:`align` therefore also matches in
the project's exact canonical form (:func:`weightspace.symmetry.canonicalize`: unit incoming norm
per scalable neuron, positive bias per odd neuron). With :math:`T_A` the diagonal transform that
canonicalises A, :math:`C_A = T_A(A)`, and :math:`\pi` the matching of :math:`C_B` onto
:math:`C_A`, B in A's gauge is

.. math::
    B' = T_A^{-1}\big(\pi(C_B)\big),

which computes B's function; :math:`T_A` is linear in the weights, so interpolating A with
:math:`B'` is :math:`T_A^{-1}` of interpolating :math:`C_A` with :math:`\pi(C_B)` — the same
functions — and ``alpha = 0`` still gives A's own tensors. :func:`align` returns whichever of
the two candidates (plain matching, or canonical matching) lies closer to A in :math:`L_2`, so it
is never further from A than plain weight matching; a model matched against any random symmetry
transform of itself comes back as itself (up to rounding).

Everything here is a pure function of ``(spec, state_dict)`` pairs; inputs are never modified.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from weightspace.layout import Layout, layout_of
from weightspace.spec import NetworkSpec
from weightspace.symmetry import canonicalize, flip_signs, permute, rescale
from weightspace.synthesis.common import StateDict, check_alpha, check_mergeable

__all__ = [
    "interpolate",
    "match_weights",
    "align",
    "canonical_factors",
    "from_canonical",
    "rebasin_interpolate",
    "weight_inner_product",
]


def interpolate(
    spec: NetworkSpec,
    state_a: Mapping[str, Tensor],
    state_b: Mapping[str, Tensor],
    alpha: float,
) -> StateDict:
    r"""Naive weight interpolation :math:`\theta = (1 - \alpha)\,\theta_A + \alpha\,\theta_B`.

    ``alpha = 0`` returns A's tensors, ``alpha = 1`` B's (exactly, not up to rounding).
    """
    alpha = check_alpha(alpha)
    out: StateDict = {}
    for key in spec.param_shapes():
        a, b = state_a[key], state_b[key].to(state_a[key])
        if alpha == 0.0:
            out[key] = a.clone()
        elif alpha == 1.0:
            out[key] = b.clone()
        else:
            out[key] = torch.lerp(a, b, alpha)
    return out


def weight_inner_product(
    spec: NetworkSpec, state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor]
) -> float:
    r"""The matching objective :math:`\sum_k \langle \theta^A_k, \theta^B_k \rangle` (float64)."""
    return float(
        sum((state_a[k].double() * state_b[k].double()).sum() for k in spec.param_shapes())
    )


def _source(layout: Layout, group: int) -> int | None:
    """The group read by ``group``'s producer (a layer or a norm); ``None`` for the input."""
    producer = layout.groups[group].producer
    if producer is None:
        return None
    for norm in layout.norms:
        if norm.name == producer:
            return norm.source
    return layout.link(producer).source


def _is_norm_output(layout: Layout, group: int) -> bool:
    return any(norm.target == group for norm in layout.norms)


def _neuron_features(
    state: Mapping[str, Tensor], layout: Layout, group: int, *, readers: bool = True
) -> Tensor:
    r"""Every weight touching the neurons of ``group``, one row per neuron: ``(n, F)`` float64.

    Rows are the producer's incoming weights and bias (for a norm: :math:`\gamma_i, \beta_i`,
    whichever it has; none without an affine part); then (if ``readers``), for each reader,
    its columns (``weight.reshape(out, n, -1)[:, i]`` flattened).
    """
    g = layout.groups[group]
    parts: list[Tensor] = [torch.zeros(g.size, 0, dtype=torch.float64)]
    if g.producer is not None:
        for key in (f"{g.producer}.weight", f"{g.producer}.bias"):
            if key in state:  # a norm's gamma and beta are (n,): one column each
                parts.append(state[key].reshape(g.size, -1).double())  # (n, in * kernel)
    for reader in g.readers if readers else ():
        w = state[f"{reader}.weight"]
        cols = w.reshape(w.shape[0], g.size, -1).transpose(0, 1)  # (n, out, S * kernel)
        parts.append(cols.reshape(g.size, -1).double())
    return torch.cat(parts, dim=1)


def match_weights(
    spec: NetworkSpec,
    state_a: Mapping[str, Tensor],
    state_b: Mapping[str, Tensor],
    *,
    max_sweeps: int = 100,
    seed: int = 0,
) -> dict[int, Tensor]:
    r"""Permutations of B's hidden neurons that best match A's (weight matching).

    Args:
        spec: the shared architecture.
        state_a: the reference model (kept as is).
        state_b: the model to permute.
        max_sweeps: upper bound on coordinate-descent sweeps over the tie sets.
        seed: seeds the order in which tie sets are visited.

    Returns:
        Group index → ``(n,)`` long permutation, one entry per group of every permutable tie set,
        in :func:`weightspace.symmetry.permute`'s convention (new neuron ``i`` of B is old neuron
        ``perm[i]``), so ``permute(spec, state_b, perms)`` is B aligned to A.
    """
    from scipy.optimize import linear_sum_assignment

    layout = layout_of(spec)
    tie_sets = layout.permutable_tie_sets()
    perms: dict[int, Tensor] = {
        members[0]: torch.arange(layout.groups[members[0]].size) for members in tie_sets
    }
    if not tie_sets:
        return {}
    rng = np.random.default_rng(seed)
    set_of = {g: members[0] for members in tie_sets for g in members}
    # Forward initialisation: visit tie sets in topological order and match only the incoming
    # rows whose inputs are already matched (or fixed: the input). Starting from this instead of
    # the identity makes the result independent of the order B's neurons happen to be stored in.
    solved: set[int] = set()
    for members in sorted(tie_sets, key=min):
        head = members[0]
        current = permute(spec, state_b, perms)
        cost = None
        for g in members:
            source = _source(layout, g)
            if source is None or (source in set_of and set_of[source] not in solved):
                continue
            term = (
                _neuron_features(state_a, layout, g, readers=False)
                @ _neuron_features(current, layout, g, readers=False).T
            )
            cost = term if cost is None else cost + term
        if cost is not None:
            _, sigma = linear_sum_assignment(cost.numpy(), maximize=True)
            perms[head] = perms[head][torch.from_numpy(sigma).long()]
        solved.add(head)
    features_a = {g: _neuron_features(state_a, layout, g) for members in tie_sets for g in members}
    for _ in range(max_sweeps):
        changed = False
        for index in rng.permutation(len(tie_sets)):
            members = tie_sets[int(index)]
            head = members[0]
            current = permute(spec, state_b, perms)
            cost = sum(
                features_a[g] @ _neuron_features(current, layout, g).T for g in members
            )  # (n, n): similarity of A's neuron i with current B's neuron j
            cost_np = cost.numpy()
            _, sigma = linear_sum_assignment(cost_np, maximize=True)
            gain = cost_np[np.arange(len(sigma)), sigma].sum() - np.trace(cost_np)
            if gain > 1e-12 * max(1.0, abs(float(np.trace(cost_np)))):
                perms[head] = perms[head][torch.from_numpy(sigma).long()]
                changed = True
        if not changed:
            break
    return {g: perms[members[0]] for members in tie_sets for g in members}


def _incoming_rows(
    state: Mapping[str, Tensor],
    producer: str,
    n: int,
    n_in: int,
    undo: Tensor | None,
    *,
    norm: bool = False,
) -> Tensor:
    r"""The producer's rows and bias, ``(n, F)`` float64; ``undo`` multiplies the input columns.

    A norm's rows are its :math:`\gamma_i, \beta_i`: the group it reads is normalised, so never
    rescaled, and ``undo`` does not apply.
    """
    if norm:
        keys = (f"{producer}.weight", f"{producer}.bias")
        return torch.cat([state[k].double().reshape(n, 1) for k in keys if k in state], dim=1)
    w = state[f"{producer}.weight"].double().reshape(n, n_in, -1)  # (n, C_in, S * kernel)
    if undo is not None:
        w = w * undo.view(1, -1, 1)
    parts = [w.reshape(n, -1)]
    if f"{producer}.bias" in state:
        parts.append(state[f"{producer}.bias"].double().reshape(n, 1))
    return torch.cat(parts, dim=1)


def canonical_factors(
    spec: NetworkSpec,
    state: Mapping[str, Tensor],
    canonical: Mapping[str, Tensor] | None = None,
) -> dict[int, Tensor]:
    r"""The per-neuron factors :math:`d` of the diagonal transform that canonicalises ``state``.

    :func:`weightspace.symmetry.canonicalize` rescales and flips neurons: for each scalable or
    sign-flippable group, :math:`W'[i] = d_i\, W[i] / d_{\mathrm{in}}` (the source group's
    factors divide the columns) and :math:`b'_i = d_i b_i`. Visiting the groups in creation order
    (sources first), with :math:`a_i` the original row and bias of neuron ``i`` and :math:`u_i`
    the canonical one with the source factors multiplied back in,

    .. math::
        d_i = \langle u_i, a_i \rangle / \lVert a_i \rVert^2 \qquad (1 \text{ for a zero row}),

    exact up to rounding, since :math:`u_i = d_i a_i`.

    Args:
        spec: the architecture.
        state: the model.
        canonical: ``canonicalize(spec, state)``, when already computed.

    Returns:
        Group index → ``(n,)`` float64 factors (positive on scalable groups, ±1 on odd ones).
    """
    layout = layout_of(spec)
    canonical = canonicalize(spec, state) if canonical is None else canonical
    groups = sorted(set(layout.scalable_groups()) | set(layout.sign_flippable_groups()))
    factors: dict[int, Tensor] = {}
    for g in groups:
        group = layout.groups[g]
        producer = group.producer
        source = _source(layout, g)
        assert producer is not None and source is not None  # written by a layer or a norm
        n_in = layout.groups[source].size
        norm = _is_norm_output(layout, g)
        a = _incoming_rows(state, producer, group.size, n_in, None, norm=norm)
        u = _incoming_rows(canonical, producer, group.size, n_in, factors.get(source), norm=norm)
        norm = a.pow(2).sum(1)
        d = torch.where(norm > 0, (u * a).sum(1) / norm.clamp_min(1e-300), torch.ones_like(norm))
        factors[g] = torch.where(d == 0, torch.ones_like(d), d)
    return factors


def from_canonical(
    spec: NetworkSpec, state: Mapping[str, Tensor], factors: Mapping[int, Tensor]
) -> StateDict:
    r"""Undo the transform of :func:`canonical_factors` ``factors`` on ``state``.

    Given ``state`` in the canonical gauge of some model ``A`` (``factors`` from A), returns it
    in A's own gauge: flip by :math:`\operatorname{sign} d`, then rescale by :math:`1/|d|`.
    """
    layout = layout_of(spec)
    scalable, odd = set(layout.scalable_groups()), set(layout.sign_flippable_groups())
    signs = {g: torch.sign(d) for g, d in factors.items() if g in odd}
    scales = {g: 1.0 / d.abs() for g, d in factors.items() if g in scalable}
    return rescale(spec, flip_signs(spec, state, signs), scales)


def _squared_distance(
    spec: NetworkSpec, state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor]
) -> float:
    return float(
        sum((state_a[k].double() - state_b[k].double()).pow(2).sum() for k in spec.param_shapes())
    )


def align(
    spec: NetworkSpec,
    state_a: Mapping[str, Tensor],
    state_b: Mapping[str, Tensor],
    *,
    canonical: bool = True,
    max_sweeps: int = 100,
    seed: int = 0,
) -> StateDict:
    """B with its hidden neurons permuted (and, with ``canonical``, flipped and rescaled) to
    match A; same function as B.

    Args:
        canonical: also match in the canonical form and keep whichever of the two candidates
            lies closer to A (see the module docstring); ``False``: plain weight matching.
    """
    plain = permute(
        spec, state_b, match_weights(spec, state_a, state_b, max_sweeps=max_sweeps, seed=seed)
    )
    layout = layout_of(spec)
    if not canonical or not (layout.scalable_groups() or layout.sign_flippable_groups()):
        return plain
    canon_a, canon_b = canonicalize(spec, state_a), canonicalize(spec, state_b)
    perms = match_weights(spec, canon_a, canon_b, max_sweeps=max_sweeps, seed=seed)
    gauged = from_canonical(
        spec, permute(spec, canon_b, perms), canonical_factors(spec, state_a, canon_a)
    )
    gauged = {k: v.to(state_b[k].dtype) for k, v in gauged.items()}
    if _squared_distance(spec, state_a, gauged) < _squared_distance(spec, state_a, plain):
        return gauged
    return plain


def rebasin_interpolate(
    spec: NetworkSpec,
    state_a: Mapping[str, Tensor],
    state_b: Mapping[str, Tensor],
    alpha: float,
    *,
    canonical: bool = True,
    max_sweeps: int = 100,
    seed: int = 0,
) -> StateDict:
    r"""Weight matching, then interpolation: :math:`(1-\alpha)\,\theta_A + \alpha\,\pi(\theta_B)`.

    ``canonical``: as in :func:`align` (signs and scales matched too).

    Raises:
        SynthesisError: the state dicts do not fit ``spec``.
    """
    alpha = check_alpha(alpha)
    check_mergeable(spec, state_a, spec, state_b)
    aligned = align(spec, state_a, state_b, canonical=canonical, max_sweeps=max_sweeps, seed=seed)
    return interpolate(spec, state_a, aligned, alpha)
