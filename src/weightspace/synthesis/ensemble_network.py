r"""Ensemble networks: ``K`` models of one architecture as one wider network computing the
weighted mean of their outputs (the ``ensemble`` merge method).

The ensemble network stacks the hidden neurons of the ``K`` members side by side: every hidden
tie set of :func:`weightspace.layout.layout_of` is widened ``K`` times, a layer between two
hidden groups becomes block diagonal, a layer reading the input stacks its rows, and a layer
writing the output concatenates its input columns scaled by the member weights :math:`w_m`:

.. math::
    W = \begin{bmatrix} W_1 & & \\ & \ddots & \\ & & W_K \end{bmatrix}, \qquad
    W_{\mathrm{out}} = \begin{bmatrix} w_1 W_{\mathrm{out},1} & \cdots & w_K W_{\mathrm{out},K}
    \end{bmatrix}, \qquad b_{\mathrm{out}} = \textstyle\sum_m w_m b_{\mathrm{out},m},

so :math:`f_{\mathrm{ens}}(x) = \sum_m w_m f_m(x)` exactly (the logits are averaged).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from weightspace.layout import ROLE_INPUT, Layout, layout_of
from weightspace.spec import NetworkSpec, Op
from weightspace.synthesis.common import StateDict, SynthesisError

if TYPE_CHECKING:
    from weightspace.synthesis.merge import MergeResult

__all__ = ["ensemble", "ensemble_spec"]


def _widened_groups(layout: Layout, spec: NetworkSpec) -> set[int]:
    """Groups that the ensemble stacks ``K`` times; raise where stacking cannot be exact."""
    widened: set[int] = set()
    permutable = {g for members in layout.permutable_tie_sets() for g in members}
    for members in layout.tie_sets().values():
        if all(g in permutable for g in members):
            widened.update(members)
            continue
        if any(layout.groups[g].role == ROLE_INPUT for g in members):
            others = [g for g in members if layout.groups[g].role != ROLE_INPUT]
            if others:
                names = [layout.groups[g].producer for g in others]
                raise SynthesisError(
                    f"cannot build an ensemble network of {spec.summary()}: layers {names} are "
                    "added to the input by a residual connection, so their neurons cannot be "
                    "stacked side by side; ensemble the models' outputs outside one network"
                )
            continue
        # the output tie set: it must be an affine function of the last hidden neurons
        for g in members:
            group = layout.groups[g]
            nonlinear = (group.activations - {"identity"}) or (group.pools & {"max"})
            if nonlinear or group.readers:
                raise SynthesisError(
                    f"cannot build an ensemble network of {spec.summary()}: the output of layer "
                    f"{group.producer!r} goes through {sorted(nonlinear) or group.readers} after "
                    "its last layer, so averaging that layer's weights does not average outputs"
                )
    return widened


def ensemble_spec(spec: NetworkSpec, members: int = 2) -> NetworkSpec:
    """The spec of the ensemble network of ``members`` models of ``spec`` (see module doc).

    Hidden layers are ``members`` times wider; layer names, the input and the output stay.

    Raises:
        SynthesisError: the spec has a residual add onto the input, or a nonlinearity after
            its output layer, where stacking is not exact.
    """
    if members < 1:
        raise SynthesisError(f"an ensemble needs at least one member, got {members}")
    layout = layout_of(spec)
    widened = _widened_groups(layout, spec)
    ops: list[Op] = []
    for op in spec.ops:
        if not op.is_parametrised:
            ops.append(op)
            continue
        link = layout.link(op.name)
        attrs = dict(op.attrs)
        in_key, out_key = (
            ("in_features", "out_features")
            if op.kind == "linear"
            else ("in_channels", "out_channels")
        )
        if link.source in widened:
            attrs[in_key] = op.in_size * members
        if link.target in widened:
            attrs[out_key] = op.out_size * members
        ops.append(Op(op.name, op.kind, op.inputs, attrs))
    return NetworkSpec(tuple(ops))


def ensemble(
    spec: NetworkSpec,
    states: Sequence[Mapping[str, Tensor]],
    weights: Sequence[float] | None = None,
) -> MergeResult:
    r"""One network computing :math:`\sum_m w_m f_m(x)` for models ``states`` of ``spec``.

    Args:
        spec: the members' shared architecture.
        states: ``K`` state dicts of ``spec``.
        weights: ``K`` output weights (default: ``1/K`` each); they need not sum to one.

    Returns:
        A :class:`MergeResult` with :func:`ensemble_spec` ``(spec, K)``.
    """
    k = len(states)
    weights = [1.0 / k] * k if weights is None else [float(w) for w in weights]
    if len(weights) != k:
        raise SynthesisError(f"{k} ensemble members but {len(weights)} weights")
    layout = layout_of(spec)
    widened = _widened_groups(layout, spec)
    out: StateDict = {}
    for op in spec.layers:
        link = layout.link(op.name)
        n_in = layout.groups[link.source].size
        rest = tuple(op.weight_shape()[2:])
        blocks = [s[f"{op.name}.weight"] for s in states]
        ref = blocks[0]
        views = [b.reshape(op.out_size, n_in, -1) for b in blocks]  # (out, n_in, S * kernel)
        wide_in, wide_out = link.source in widened, link.target in widened
        if wide_in and wide_out:
            w = ref.new_zeros(k * op.out_size, k * n_in, views[0].shape[2])
            for m, view in enumerate(views):
                w[m * op.out_size : (m + 1) * op.out_size, m * n_in : (m + 1) * n_in] = view
        elif wide_out:
            w = torch.cat(views, dim=0)
        elif wide_in:
            w = torch.cat([wm * v for wm, v in zip(weights, views, strict=True)], dim=1)
        else:
            w = sum(wm * v for wm, v in zip(weights, views, strict=True))
        out_rows = w.shape[0]
        out[f"{op.name}.weight"] = (
            w.reshape(out_rows, -1, *rest) if rest else w.reshape(out_rows, -1)
        )
        if f"{op.name}.bias" in states[0]:
            biases = [s[f"{op.name}.bias"] for s in states]
            if wide_out:
                out[f"{op.name}.bias"] = torch.cat(biases)
            else:
                out[f"{op.name}.bias"] = sum(wm * b for wm, b in zip(weights, biases, strict=True))
    wide = ensemble_spec(spec, k)
    for key, shape in wide.param_shapes().items():
        if tuple(out[key].shape) != shape:  # pragma: no cover - construction invariant
            raise AssertionError(f"ensemble tensor {key} has shape {tuple(out[key].shape)}")
    from weightspace.synthesis.merge import MergeResult  # merge.py imports this module

    return MergeResult(wide, out, {"members": k, "output_weights": weights})
