r"""Exact, label-preserving views of coordinate-domain models (INRs): shifts and zooms.

A SIREN's first layer computes :math:`\sin(w_0 (W x + b))` on a coordinate :math:`x`. The same
network read at a transformed coordinate :math:`s x + \delta` is

.. math::
    f(s x + \delta) = f'(x), \qquad W' = s W, \quad b' = b + W \delta,

a network of the same architecture whose weights differ only in the first layer: the image the
INR represents, zoomed by :math:`1/s` about the origin and translated by :math:`-\delta`. A
translated or slightly zoomed digit is the same digit, so this is a label-preserving
augmentation for the class objective (``TrainConfig.coord_shift`` / ``coord_zoom``,
``weightspace train --coord-shift D --coord-zoom S``), exact in weight space (no refit).

Per graph, :math:`\delta \sim U[-D, D]^d` (``d`` coordinates, ``D`` in coordinate units: the
inr-digits grid spans :math:`[-1, 1]` with spacing :math:`h = 2/7 \approx 0.286`) and
:math:`s \sim U[1 - S, 1 + S]`. ``D = S = 0`` (the defaults) leaves every view unchanged.
With a step :math:`q > 0` (``coord_shift_step``) each component of :math:`\delta` is instead
:math:`k q`, :math:`k` uniform in :math:`\{-K, \dots, K\}`, :math:`K = \lfloor D / q \rfloor`:
with :math:`q = h` whole-pixel shifts, which move the grid onto itself. That matters for INRs
fitted on a grid only: between grid points a SIREN (``w0 = 30``) is not the image (on
inr-digits, at half a pixel off the grid its values differ from the pixels by about as much as
the pixels' own magnitude), so a sub-pixel shift reads noise, a whole-pixel shift reads the
translated image except for the one row / column that enters from outside the grid.

Only models whose input is a coordinate vector qualify (:func:`is_coordinate_model`: a flat
input read by a linear layer followed by a sine activation, the SIREN layout of
:func:`weightspace.spec_builders.siren_spec`); any other model is refused with
:class:`CoordViewError`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from weightspace.spec import NetworkSpec
from weightspace.training.config import TrainError

__all__ = [
    "CoordViewError",
    "check_coord_view",
    "check_coordinate_zoo",
    "coord_view",
    "is_coordinate_model",
    "transform_coordinates",
]


class CoordViewError(TrainError):
    """A coordinate view (``--coord-shift`` / ``--coord-zoom``) asked of a model that does not
    read coordinates, or with a value out of range."""


def check_coord_view(shift: float, zoom: float, step: float = 0.0) -> None:
    """Refuse a shift bound that is negative or not finite, a zoom bound outside ``[0, 1)``, or
    a step that is negative, not finite, or larger than the shift bound.

    Raises:
        CoordViewError: a value out of range.
    """
    if not (math.isfinite(step) and step >= 0) or (step > 0 and step > shift):
        raise CoordViewError(
            f"coord_shift_step must be >= 0 and at most coord_shift ({shift}), got {step}"
        )
    if not (math.isfinite(shift) and shift >= 0):
        raise CoordViewError(f"coord_shift must be a finite number >= 0, got {shift}")
    if not (math.isfinite(zoom) and 0 <= zoom < 1):
        raise CoordViewError(f"coord_zoom must be in [0, 1), got {zoom}")


@lru_cache(maxsize=256)
def is_coordinate_model(spec: NetworkSpec) -> bool:
    """Whether ``spec`` reads a flat coordinate vector: input shape ``(d,)``, first layer linear,
    first activation a sine (a SIREN)."""
    ops = [op for op in spec.ops if op.kind != "input"]
    if len(spec.input_shape) != 1 or len(ops) < 2:
        return False
    return (
        ops[0].kind == "linear"
        and ops[1].kind == "activation"
        and (ops[1].attrs.get("function") == "sine")
    )


def check_coordinate_zoo(where: object, specs: Iterable[str | NetworkSpec]) -> None:
    """Refuse coordinate views for a zoo (``where``) with a spec (JSON text or
    :class:`~weightspace.spec.NetworkSpec`) that is not a coordinate model.

    Raises:
        CoordViewError: naming the zoo and the first such architecture.
    """
    for spec in specs:
        spec = NetworkSpec.from_json(spec) if isinstance(spec, str) else spec
        if not is_coordinate_model(spec):
            raise CoordViewError(
                f"{where}: --coord-shift / --coord-zoom need models whose input is coordinates "
                f"(a SIREN: linear then sine on a flat input); this zoo has {spec.summary()}"
            )


def _specs(batch: Any) -> tuple[NetworkSpec, ...]:
    specs = tuple(getattr(batch, "spec_table", ()) or ())
    spec = getattr(batch, "spec", None)
    return specs + ((spec,) if spec is not None else ())


def transform_coordinates(batch: Any, delta: Tensor, scale: Tensor) -> Any:
    r"""``batch`` with graph ``g``'s first layer rewritten to read :math:`s_g x + \delta_g`:
    :math:`W' = s_g W`, :math:`b' = b + W \delta_g` (``delta`` ``(B, d)``, ``scale`` ``(B,)``).

    First-layer weights are the weight edges (``edge_kind`` 0) leaving input neurons
    (``node_role`` 0); an input neuron's ``node_position`` is its coordinate index.
    """
    src, dst = batch.edge_index
    first = (batch.node_role[src] == 0) & (batch.edge_kind == 0)
    graph = batch.edge_batch[first]
    coordinate = batch.node_position[src[first]]
    weight = batch.edge_attr[first, 0]
    delta = delta.to(batch.x)
    scale = scale.to(batch.x)
    x = batch.x.index_add(0, dst[first], (weight * delta[graph, coordinate]).unsqueeze(-1))
    edge_attr = batch.edge_attr.clone()
    edge_attr[first, 0] = weight * scale[graph]
    return replace(batch, x=x, edge_attr=edge_attr)


def coord_view(
    batch: Any, shift: float, zoom: float, generator: torch.Generator, step: float = 0.0
) -> Any:
    """A random shift in ``[-shift, shift]`` per coordinate (multiples of ``step`` when
    ``step > 0``) and zoom in ``[1 - zoom, 1 + zoom]`` per graph, applied exactly
    (:func:`transform_coordinates`); ``batch`` itself (same object) when both are 0.

    Raises:
        CoordViewError: a value out of range, or a model in ``batch`` that is not a coordinate
            model (:func:`is_coordinate_model`).
    """
    check_coord_view(shift, zoom, step)
    if shift == 0 and zoom == 0:
        return batch
    specs = _specs(batch)
    bad = [s for s in specs if not is_coordinate_model(s)]
    if bad or not specs:
        named = bad[0].summary() if bad else "unknown"
        raise CoordViewError(
            f"--coord-shift / --coord-zoom need models whose input is coordinates (a SIREN: "
            f"linear then sine on a flat input); this zoo has {named}"
        )
    dims = max(int(s.input_shape[0]) for s in specs)
    count = batch.num_graphs
    if step > 0:
        most = int(math.floor(shift / step + 1e-9))
        delta = torch.randint(-most, most + 1, (count, dims), generator=generator) * step
    else:
        delta = (torch.rand(count, dims, generator=generator) * 2 - 1) * shift
    scale = 1 + (torch.rand(count, generator=generator) * 2 - 1) * zoom
    return transform_coordinates(batch, delta, scale)
