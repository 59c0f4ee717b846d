"""Resource limits on untrusted checkpoints, set in one place and overridable.

A checkpoint is untrusted input: a small file can ask for a large allocation (a zip archive that
expands a thousandfold, a header that declares 200M parameters). Every reader checks these limits
*before* it allocates, from what the file declares (a safetensors header, a zip directory), and
refuses with :class:`ResourceLimitError` naming the file, the quantity and the limit.

Defaults fit the models weightspace is built for (zoos of small and mid-size networks, up to a
ResNet-50) on a laptop; raise them per call (``Limits(max_params=...)``), per process
(:func:`set_default_limits`), from the CLI (``--max-params``) or with the environment variables
``WEIGHTSPACE_MAX_PARAMS``, ``WEIGHTSPACE_MAX_NODES``, ``WEIGHTSPACE_MAX_EDGES`` and
``WEIGHTSPACE_MAX_ARCHIVE_BYTES``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from weightspace.errors import WeightspaceError

__all__ = [
    "Limits",
    "ResourceLimitError",
    "default_limits",
    "set_default_limits",
]


class ResourceLimitError(WeightspaceError):
    """A model or file exceeds a resource limit; nothing was allocated for it."""

    def __init__(
        self, source: str | Path, quantity: str, value: int, limit: int, hint: str
    ) -> None:
        self.source = str(source)
        self.quantity = quantity
        self.value = int(value)
        self.limit = int(limit)
        super().__init__(
            f"{self.source}: {quantity} {self.value:,} exceeds the limit of {self.limit:,}; {hint}"
        )


@dataclass(frozen=True)
class Limits:
    """Upper bounds checked before any large allocation. ``0`` disables one bound."""

    max_params: int = 50_000_000  # parameters (tensor elements) per model
    max_nodes: int = 2_000_000  # neural-graph nodes (neurons / channels) per model
    max_edges: int = 60_000_000  # neural-graph edges (weights / kernels) per model
    max_archive_bytes: int = 1 << 30  # decompressed size of a ``.pt`` zip archive, in bytes

    def check(self, source: str | Path, quantity: str, value: int) -> None:
        """Raise :class:`ResourceLimitError` if ``value`` exceeds the bound named ``quantity``.

        Args:
            source: the file or model the value belongs to (named in the error).
            quantity: one of ``"params"``, ``"nodes"``, ``"edges"``, ``"archive_bytes"``.
            value: the declared or counted amount.
        """
        limit = getattr(self, f"max_{quantity}")
        if limit and value > limit:
            flag = "--max-" + quantity.replace("_", "-")
            env = "WEIGHTSPACE_MAX_" + quantity.upper()
            label = {
                "params": "parameter count",
                "nodes": "neural-graph node count",
                "edges": "neural-graph edge count",
                "archive_bytes": "decompressed archive size (bytes)",
            }[quantity]
            raise ResourceLimitError(
                source,
                label,
                value,
                limit,
                f"if you trust the file, raise it with `weightspace {flag} N COMMAND ...` or {env}",
            )

    def with_overrides(self, **overrides: int | None) -> Limits:
        """A copy with the given bounds replaced (``None`` values are ignored)."""
        return replace(self, **{k: int(v) for k, v in overrides.items() if v is not None})


def limits_from_environment() -> Limits:
    """The built-in defaults, overridden by the ``WEIGHTSPACE_MAX_*`` environment variables."""
    values: dict[str, int] = {}
    for field in ("max_params", "max_nodes", "max_edges", "max_archive_bytes"):
        raw = os.environ.get("WEIGHTSPACE_" + field.upper())
        if raw is None:
            continue
        try:
            values[field] = int(raw.replace("_", ""))
        except ValueError:
            values[field] = -1
        if values[field] < 0:
            raise WeightspaceError(
                f"environment variable WEIGHTSPACE_{field.upper()}={raw!r} is not a "
                "non-negative integer (0 disables the limit)"
            )
    return Limits(**values)


_default: Limits | None = None


def default_limits() -> Limits:
    """The process-wide limits (environment variables over the built-in defaults)."""
    global _default
    if _default is None:
        _default = limits_from_environment()
    return _default


def set_default_limits(limits: Limits) -> None:
    """Replace the process-wide limits (the CLI calls this for ``--max-params`` and friends)."""
    global _default
    _default = limits
