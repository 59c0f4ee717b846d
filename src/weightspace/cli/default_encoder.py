"""The encoder a command uses when ``--encoder`` is omitted: the bundled ``pretrained:small``.

A newcomer can then run ``weightspace index build models/ --out idx`` or ``weightspace predict
model.pt`` with no encoder of their own. Without a bundle in this installation the command
stops at once, saying to pass ``--encoder``.
"""

from __future__ import annotations

from pathlib import Path

from weightspace.errors import WeightspaceError

#: The bundled encoder that commands fall back on.
DEFAULT_PRETRAINED = "small"

#: One sentence for each ``--encoder`` help text.
DEFAULT_HELP = f"Default: the bundled pretrained:{DEFAULT_PRETRAINED}."


class NoEncoderError(WeightspaceError):
    """No ``--encoder`` was given and no bundled default encoder is installed."""


def default_encoder_available() -> bool:
    """Whether the bundled default encoder is installed."""
    from weightspace.pretrained import list_pretrained

    return DEFAULT_PRETRAINED in list_pretrained()


def encoder_or_default(encoder: str | Path | None, command: str) -> str | Path:
    """``encoder`` if given, else ``pretrained:small`` when it is installed.

    Raises:
        NoEncoderError: neither; the message says to pass ``--encoder``.
    """
    if encoder is not None:
        return encoder
    from weightspace.pretrained import PREFIX

    if default_encoder_available():
        return PREFIX + DEFAULT_PRETRAINED
    raise NoEncoderError(
        f"weightspace {command}: no --encoder given and this installation bundles no "
        f"pretrained:{DEFAULT_PRETRAINED}; pass --encoder DIR (an encoder from "
        "`weightspace train`) or --encoder pretrained:NAME"
    )
