r"""The vocabulary of a :class:`~weightspace.spec.NetworkSpec`: op kinds, activations, and
:class:`Op`, one operation with its attributes (tabled in :mod:`weightspace.spec`'s docstring).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from weightspace.errors import SpecError

__all__ = [
    "ACTIVATIONS",
    "ACTIVATION_IDS",
    "EMBEDDING_INDEXES",
    "NORM_MODES",
    "ODD_ACTIVATIONS",
    "OP_KINDS",
    "PARAMETRISED_KINDS",
    "POSITIVELY_HOMOGENEOUS_ACTIVATIONS",
    "SIREN_FIRST_W0",
    "SIREN_HIDDEN_W0",
    "SPEC_FORMAT_VERSION",
    "TOKEN_POOL_MODES",
    "Op",
]


SPEC_FORMAT_VERSION = 1

#: Elementwise activations a spec can hold; the index is the node feature ``node_activation``.
ACTIVATIONS: tuple[str, ...] = (
    "identity",
    "relu",
    "leaky_relu",
    "tanh",
    "gelu",
    "silu",
    "sigmoid",
    "sine",  # appended last: ids of the others (and trained encoders' tables) stay as they were
)
ACTIVATION_IDS: dict[str, int] = {name: i for i, name in enumerate(ACTIVATIONS)}
#: Activations with :math:`\sigma(-z) = -\sigma(z)`: their neurons admit sign flips.
ODD_ACTIVATIONS: frozenset[str] = frozenset({"identity", "tanh", "sine"})
#: Activations with :math:`\sigma(cz) = c\,\sigma(z)` for :math:`c > 0`: their neurons admit
#: positive rescaling (sine does not: :math:`\sin(w_0 c z) \ne c \sin(w_0 z)`).
POSITIVELY_HOMOGENEOUS_ACTIVATIONS: frozenset[str] = frozenset({"identity", "relu", "leaky_relu"})
#: SIREN's (Sitzmann et al. 2020) frequency scale after the first layer, and elsewhere.
SIREN_FIRST_W0 = 30.0
SIREN_HIDDEN_W0 = 1.0

PARAMETRISED_KINDS: frozenset[str] = frozenset({"linear", "conv1d", "conv2d"})
OP_KINDS: frozenset[str] = PARAMETRISED_KINDS | {
    "input",
    "activation",
    "add",
    "pool",
    "adaptive_pool",
    "global_pool",
    "flatten",
    "norm",
    "embedding",
    "attention",
    "token_pool",
}
#: ``index`` of an ``embedding`` op; ``mode`` of a ``token_pool`` op.
EMBEDDING_INDEXES: tuple[str, ...] = ("token", "position")
TOKEN_POOL_MODES: tuple[str, ...] = ("mean", "first")
#: ``mode`` of a ``norm`` op: LayerNorm (centre and scale) or RMSNorm (scale only).
NORM_MODES: tuple[str, ...] = ("layer", "rms")


def _freeze(value: Any) -> Any:
    """Lists become tuples, so that attrs compare equal after a JSON round trip."""
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class Op:
    """One operation of a :class:`NetworkSpec`.

    Args:
        name: unique name; for parametrised ops, the state-dict prefix (``"features.0"``).
        kind: one of :data:`OP_KINDS`.
        inputs: names of the ops whose outputs this op reads, in argument order.
        attrs: kind-specific attributes (see the module docstring); sequences are tuples.
    """

    name: str
    kind: str
    inputs: tuple[str, ...] = ()
    attrs: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.kind not in OP_KINDS:
            raise SpecError(
                f"op {self.name!r}: unknown kind {self.kind!r}; valid: {sorted(OP_KINDS)}"
            )
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "attrs", {k: _freeze(v) for k, v in self.attrs.items()})

    @property
    def is_parametrised(self) -> bool:
        return self.kind in PARAMETRISED_KINDS

    @property
    def in_size(self) -> int:
        """Input features (linear) or channels (conv)."""
        return int(self.attrs["in_features" if self.kind == "linear" else "in_channels"])

    @property
    def out_size(self) -> int:
        """Output features (linear) or channels (conv)."""
        return int(self.attrs["out_features" if self.kind == "linear" else "out_channels"])

    @property
    def kernel_numel(self) -> int:
        """Number of weights per (output, input) pair: 1 for linear, prod(kernel_size) for conv."""
        if self.kind == "linear":
            return 1
        n = 1
        for k in self.attrs["kernel_size"]:
            n *= int(k)
        return n

    def weight_shape(self) -> tuple[int, ...]:
        if self.kind == "linear":
            return (self.out_size, self.in_size)
        return (self.out_size, self.in_size, *(int(k) for k in self.attrs["kernel_size"]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "inputs": list(self.inputs),
            "attrs": {k: _thaw(v) for k, v in self.attrs.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Op:
        try:
            return cls(
                name=str(data["name"]),
                kind=str(data["kind"]),
                inputs=tuple(data.get("inputs", ())),
                attrs=dict(data.get("attrs", {})),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise SpecError(f"malformed op record {data!r}: {exc}") from None
