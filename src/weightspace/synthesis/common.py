"""Shared pieces of the synthesis package: its error type, argument checks and figure I/O."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from weightspace.errors import WeightspaceError
from weightspace.graph import check_state_dict
from weightspace.spec import NetworkSpec

__all__ = [
    "StateDict",
    "SynthesisError",
    "check_mergeable",
    "check_alpha",
    "pyplot",
    "save_figure",
]

StateDict = dict[str, Tensor]


class SynthesisError(WeightspaceError, ValueError):
    """Models cannot be merged, decoded or sampled as asked; the message says why and what to do."""


def _first_difference(spec_a: NetworkSpec, spec_b: NetworkSpec) -> str:
    if spec_a.input_shape != spec_b.input_shape:
        return f"input shapes {list(spec_a.input_shape)} vs {list(spec_b.input_shape)}"
    layers_a, layers_b = spec_a.layers, spec_b.layers
    if len(layers_a) != len(layers_b):
        return f"{len(layers_a)} vs {len(layers_b)} layers"
    for op_a, op_b in zip(layers_a, layers_b, strict=True):
        if op_a != op_b or dict(op_a.attrs) != dict(op_b.attrs):
            return (
                f"layer {op_a.name!r} {op_a.weight_shape()} vs {op_b.name!r} {op_b.weight_shape()}"
            )
    return f"{spec_a.summary()} vs {spec_b.summary()}"


def check_mergeable(
    spec_a: NetworkSpec,
    state_a: Mapping[str, Tensor],
    spec_b: NetworkSpec,
    state_b: Mapping[str, Tensor],
    *,
    task_a: str | None = None,
    task_b: str | None = None,
    names: tuple[str, str] = ("A", "B"),
) -> None:
    """Refuse to merge models of different architectures or tasks.

    Raises:
        SynthesisError: the specs differ (naming the first difference), the tasks differ, or a
            state dict does not fit its spec.
    """
    if spec_a != spec_b:
        raise SynthesisError(
            f"cannot merge {names[0]} and {names[1]}: their architectures differ "
            f"({_first_difference(spec_a, spec_b)}); merging needs two models of one architecture "
            "(for --method embedding you may pass a target architecture with --target-spec)"
        )
    if task_a is not None and task_b is not None and task_a != task_b:
        raise SynthesisError(
            f"cannot merge {names[0]} (task {task_a!r}) and {names[1]} (task {task_b!r}): "
            "models of different tasks share no function to merge"
        )
    check_state_dict(spec_a, state_a, source=names[0], allow_nonfinite=False)
    check_state_dict(spec_b, state_b, source=names[1], allow_nonfinite=False)


def check_alpha(alpha: float) -> float:
    """``alpha`` as a float in ``[0, 1]``."""
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise SynthesisError(f"alpha must lie in [0, 1] (0 gives model A, 1 model B), got {alpha}")
    return alpha


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (figures go to files)."""
    from weightspace.extras import require

    matplotlib = require("matplotlib", "bench", feature="synthesis figures")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` (parent folders created) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path
