r"""Function-preserving widening (Net2WiderNet): a derivative with a *different* architecture.

Net2Net (Chen, Goodfellow & Shlens, 2016) widens a hidden layer without changing the function:
new neurons copy existing ones, and every layer reading the group splits the outgoing weights of
a copied neuron evenly among its copies. For a group of :math:`n` neurons widened to
:math:`n + k` by the map :math:`m : \{1..n+k\} \to \{1..n\}` (:math:`m(j) = j` for the first
:math:`n`, random old neurons for the rest) with copy counts :math:`c_i = |m^{-1}(i)|`,

.. math::
    W'_{\mathrm{prod}}[j] = W_{\mathrm{prod}}[m(j)], \quad b'_{\mathrm{prod}}[j] = b[m(j)],
    \qquad W'_{\mathrm{read}}[:, j] = W_{\mathrm{read}}[:, m(j)] / c_{m(j)} .

Each copy computes the same pre-activation, so the same activation (any elementwise function,
and per-channel pooling, act on copies alike), and the reader sums :math:`c_i` copies of
:math:`W[:, i]\,h_i / c_i`: exactly the original sum. Columns of a reader are taken as in
:mod:`weightspace.symmetry` (``weight.reshape(out, C, -1)[:, i]``: a conv kernel, or the spatial
entries of a linear layer reading a flattened ``(C, *spatial)`` tensor).

Only *free* hidden groups are widened (:meth:`weightspace.layout.Layout.is_free`): a group tied
to others by a residual add would need the same copies in every tied group.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from weightspace.errors import WeightspaceError
from weightspace.layout import layout_of
from weightspace.spec import NetworkSpec, Op

__all__ = ["WideningError", "net2net_widen", "widenable_groups"]


class WideningError(WeightspaceError, ValueError):
    """The architecture has no hidden layer that can be widened, or a bad setting."""


def widenable_groups(spec: NetworkSpec) -> list[int]:
    """Indices (into :func:`~weightspace.layout.layout_of` groups) of the free hidden groups."""
    layout = layout_of(spec)
    return [g.index for g in layout.groups if layout.is_free(g.index)]


def _widened_spec(spec: NetworkSpec, added: Mapping[int, int]) -> NetworkSpec:
    """``spec`` with ``added[g]`` more neurons in each group ``g`` (producers and readers)."""
    layout = layout_of(spec)
    out_extra: dict[str, int] = {}
    in_extra: dict[str, int] = {}
    for group, k in added.items():
        g = layout.groups[group]
        out_extra[str(g.producer)] = k
        for reader in g.readers:
            in_extra[reader] = k * layout.link(reader).spatial
    ops = []
    for op in spec.ops:
        if op.name not in out_extra and op.name not in in_extra:
            ops.append(op)
            continue
        attrs = dict(op.attrs)
        out_key, in_key = (
            ("out_features", "in_features")
            if op.kind == "linear"
            else ("out_channels", "in_channels")
        )
        attrs[out_key] = int(attrs[out_key]) + out_extra.get(op.name, 0)
        attrs[in_key] = int(attrs[in_key]) + in_extra.get(op.name, 0)
        ops.append(Op(op.name, op.kind, op.inputs, attrs))
    return NetworkSpec(tuple(ops))


def net2net_widen(
    spec: NetworkSpec,
    state_dict: Mapping[str, Tensor],
    fraction: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[NetworkSpec, dict[str, Tensor]]:
    r"""Widen every free hidden group by :math:`k = \max(1, \mathrm{round}(\text{fraction}\cdot
    n))` copied neurons, preserving the function exactly.

    Args:
        spec: the architecture.
        state_dict: its tensors (not modified).
        fraction: added neurons per group, as a share of its size (``> 0``).
        generator: draws which neurons are copied (with replacement, as in Net2Net).

    Returns:
        ``(wider_spec, state_dict)``: the new architecture and its tensors.

    Raises:
        WideningError: ``fraction <= 0``, or no hidden group can be widened (every hidden group
            is tied to another by a residual add, or there is no hidden layer).
    """
    if not fraction > 0:
        raise WideningError(f"the widening fraction must be > 0, got {fraction}")
    groups = widenable_groups(spec)
    if not groups:
        raise WideningError(
            f"architecture {spec.summary()} has no hidden layer that can be widened on its own "
            "(none, or all tied by residual adds)"
        )
    layout = layout_of(spec)
    state = {key: state_dict[key].detach().clone() for key in spec.param_shapes()}
    added: dict[int, int] = {}
    for group in groups:
        g = layout.groups[group]
        n = g.size
        k = max(1, round(fraction * n))
        copied = torch.randint(n, (k,), generator=generator)  # (k,) old neuron of each new one
        source = torch.cat([torch.arange(n), copied])  # (n + k,) the map m
        counts = torch.bincount(source, minlength=n)  # (n,) copies c_i of each old neuron
        for key in (f"{g.producer}.weight", f"{g.producer}.bias"):
            if key in state:
                state[key] = state[key][source]
        for reader in g.readers:
            key = f"{reader}.weight"
            w = state[key]
            cols = w.reshape(w.shape[0], n, -1)[:, source]  # (out, n + k, S * kernel)
            cols = cols / counts[source].to(w).view(1, -1, 1)
            state[key] = cols.reshape(w.shape[0], -1, *w.shape[2:])
        added[group] = k
    wider = _widened_spec(spec, added)
    for key, shape in wider.param_shapes().items():  # the rewrite and the spec must agree
        if tuple(state[key].shape) != shape:  # pragma: no cover - a bug, not bad input
            raise AssertionError(f"widened {key} has shape {tuple(state[key].shape)} != {shape}")
    return wider, state
