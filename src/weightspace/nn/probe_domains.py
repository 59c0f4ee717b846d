"""Input domains of the probe branch: the key of a model's input shape, and the error of a model
the probes cannot serve."""

from __future__ import annotations

from weightspace.errors import WeightspaceError
from weightspace.spec import NetworkSpec

__all__ = ["ProbeError", "domain_key"]


class ProbeError(WeightspaceError):
    """A model cannot be probed by this encoder (another input domain, too many outputs)."""


def domain_key(spec: NetworkSpec) -> str:
    """The input domain of ``spec`` as a key: its input shape joined by ``x`` (``"64"``,
    ``"1x8x8"``). Models of one domain share one set of probes."""
    return "x".join(str(s) for s in spec.input_shape)


def _domain_shape(key: str) -> tuple[int, ...]:
    return tuple(int(s) for s in key.split("x"))
