"""Exceptions raised by weightspace.

Every error a user can cause derives from :class:`WeightspaceError`; the CLI turns those into a
one-line message on stderr and a non-zero exit code, never a traceback. Messages name the file,
the layer and the problem, and say what to do.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "WeightspaceError",
    "CheckpointError",
    "SpecError",
    "UnsupportedLayerError",
    "ShapeMismatchError",
    "NonFiniteWeightsError",
    "WeightDtypeError",
    "MissingArchitectureError",
    "SymmetryError",
]


class WeightspaceError(Exception):
    """Base class of every user-facing weightspace error."""


class CheckpointError(WeightspaceError):
    """A checkpoint file could not be read (empty, truncated, corrupted, unsafe)."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class SpecError(WeightspaceError):
    """A NetworkSpec is malformed or inconsistent."""


class UnsupportedLayerError(WeightspaceError):
    """A module contains a layer or operation weightspace cannot represent as a neural graph."""


class ShapeMismatchError(WeightspaceError):
    """Tensors do not have the shapes the architecture requires."""


class NonFiniteWeightsError(WeightspaceError):
    """A checkpoint holds NaN or Inf values."""


class WeightDtypeError(WeightspaceError):
    """A weight tensor is not floating point (integer, bool, complex or 8-bit float)."""


class MissingArchitectureError(WeightspaceError):
    """A plain state dict was given without anything that describes its architecture."""


class SymmetryError(WeightspaceError, ValueError):
    """A transform was asked of a neuron group that does not admit it, or with bad parameters."""
