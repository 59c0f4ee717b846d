"""Encoders that ship inside the package, so a newcomer can embed, search and predict at once.

.. code-block:: python

    import weightspace as ws

    encoder = ws.from_pretrained("small")          # or ws.Encoder.load("pretrained:small")
    z = encoder.embed([my_module, "other.safetensors"])

On the command line every ``--encoder`` also takes ``pretrained:NAME``.

Each bundled encoder is the output of one command anyone can rerun (``make pretrained``), which
trains on a zoo generated from a preset; its directory holds the usual ``encoder.safetensors``
and ``config.json`` plus ``provenance.json`` (the command, the zoo's fingerprint, the
weightspace version). What an encoder has seen bounds what it knows: ``small`` was trained on
the ``small`` preset's tasks (digits, wine, breast-cancer, mnist1d, a synthetic family) and
architectures (small MLPs and CNNs); ``weightspace predict`` warns when a model is far from
that zoo.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from weightspace.errors import WeightspaceError

__all__ = [
    "PREFIX",
    "PretrainedError",
    "from_pretrained",
    "list_pretrained",
    "pretrained_directory",
    "resolve_encoder_reference",
]

#: How a CLI ``--encoder`` or ``Encoder.load`` names a bundled encoder: ``pretrained:small``.
PREFIX = "pretrained:"


class PretrainedError(WeightspaceError):
    """A bundled encoder name is unknown, or its files are missing from this installation."""


def _root() -> Path:
    return Path(str(resources.files("weightspace.pretrained")))


def list_pretrained() -> list[str]:
    """Names of the encoders bundled with this installation (directories with a config)."""
    root = _root()
    return sorted(p.name for p in root.iterdir() if (p / "config.json").is_file())


def pretrained_directory(name: str) -> Path:
    """The directory of the bundled encoder ``name``.

    Raises:
        PretrainedError: no bundled encoder has that name (the message lists the known ones).
    """
    name = name.removeprefix(PREFIX)
    known = list_pretrained()
    if name not in known:
        hint = ", ".join(known) if known else "none in this installation (run `make pretrained`)"
        raise PretrainedError(f"no bundled encoder named {name!r}; bundled: {hint}")
    return _root() / name


def resolve_encoder_reference(reference: str | Path) -> Path:
    """``pretrained:NAME`` → the bundled directory; anything else → ``Path(reference)``."""
    text = str(reference)
    if text.startswith(PREFIX):
        return pretrained_directory(text)
    return Path(reference)


def provenance(name: str) -> dict[str, Any]:
    """The ``provenance.json`` of a bundled encoder (how it was made), or ``{}``."""
    path = pretrained_directory(name) / "provenance.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def from_pretrained(name: str = "small", *, device: Any = None) -> Any:
    """Load the bundled encoder ``name`` (an :class:`~weightspace.nn.Encoder`, eval mode)."""
    from weightspace.nn import Encoder

    return Encoder.load(pretrained_directory(name), device=device)
