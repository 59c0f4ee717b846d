"""Checks on a spec and its tensors that need no graph: sizes from the layout alone, and the
state dict's keys, shapes, dtypes and finiteness.

Kept apart from :mod:`weightspace.graph` (which re-exports these names) so that reading and
converting a checkpoint does not import torch_geometric.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from weightspace.errors import NonFiniteWeightsError, ShapeMismatchError, WeightDtypeError
from weightspace.layout import layout_of
from weightspace.limits import Limits, default_limits
from weightspace.spec import NetworkSpec

__all__ = ["WEIGHT_DTYPES", "check_graph_size", "check_state_dict", "graph_size"]

#: Element types a weight may have; integers, booleans, complex and 8-bit floats are refused.
WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_NONFINITE_HINT = "pass allow_nonfinite=True (CLI: --allow-nonfinite) to accept them"


def graph_size(spec: NetworkSpec) -> tuple[int, int]:
    """``(nodes, edges)`` of the neural graph of ``spec``, from its layout alone (no tensors).

    .. math::
        N = \\sum_g |g|, \\qquad
        E = \\sum_{\\text{layers } s \\to t} |s|\\,|t| + \\sum_{\\text{residuals } s \\to t} |s|
          + \\sum_{\\text{norms } s \\to t} |s|
    """
    layout = layout_of(spec)
    edges = sum(layout.groups[k.source].size * layout.groups[k.target].size for k in layout.links)
    edges += sum(layout.groups[skip].size for skip, _ in layout.residuals)
    edges += sum(layout.groups[norm.source].size for norm in layout.norms)
    edges += sum(layout.groups[query].size for query, _ in layout.pairings)
    return layout.num_nodes, edges


def check_graph_size(
    spec: NetworkSpec, *, source: str = "model", limits: Limits | None = None
) -> None:
    """Raise :class:`~weightspace.limits.ResourceLimitError` if the parameters, nodes or edges
    ``spec`` declares exceed ``limits`` (default: the process-wide limits). Allocates nothing."""
    limits = limits or default_limits()
    limits.check(source, "params", spec.num_parameters)
    nodes, edges = graph_size(spec)
    limits.check(source, "nodes", nodes)
    limits.check(source, "edges", edges)


def check_state_dict(
    spec: NetworkSpec,
    state_dict: Mapping[str, Tensor],
    *,
    source: str = "state dict",
    allow_nonfinite: bool = False,
    nonfinite_hint: str = _NONFINITE_HINT,
) -> None:
    """Raise if ``state_dict`` does not hold exactly the tensors ``spec`` needs, real and finite.

    Args:
        nonfinite_hint: what the NaN/Inf error tells the user to do.

    Raises:
        ShapeMismatchError: a key is missing, unexpected, or has the wrong shape.
        WeightDtypeError: a tensor is not floating point (integer, bool, complex, 8-bit float).
        NonFiniteWeightsError: a tensor holds NaN or Inf (unless ``allow_nonfinite``).
    """
    expected = spec.param_shapes()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        raise ShapeMismatchError(
            f"{source}: tensors do not match the architecture ({'; '.join(parts)}); "
            f"the architecture expects {list(expected)[:6]}{' ...' if len(expected) > 6 else ''}"
        )
    for key, shape in expected.items():
        got = tuple(state_dict[key].shape)
        if got != shape:
            raise ShapeMismatchError(
                f"{source}: tensor {key!r} has shape {list(got)} but the architecture needs "
                f"{list(shape)}"
            )
        dtype = state_dict[key].dtype
        if dtype not in WEIGHT_DTYPES:
            raise WeightDtypeError(
                f"{source}: tensor {key!r} has dtype {str(dtype).removeprefix('torch.')}; "
                "weights must be float16, bfloat16, float32 or float64 (a quantised checkpoint "
                "needs its scales: dequantise it, or convert it with .float() if the numbers are "
                "the weights)"
            )
        if not allow_nonfinite and not bool(torch.isfinite(state_dict[key]).all()):
            raise NonFiniteWeightsError(
                f"{source}: tensor {key!r} holds NaN or Inf values; {nonfinite_hint}"
            )
