"""Options shared by every command that reads checkpoint files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from weightspace.errors import SpecError, WeightspaceError
from weightspace.spec import ACTIVATIONS

Activation = Annotated[
    str | None,
    typer.Option(
        "--activation",
        help="For a plain Sequential chain of Linear/Conv layers: the activation between layers "
        f"({', '.join(ACTIVATIONS)}; any case, so ReLU and LeakyReLU work too). Not together "
        "with --spec or --model.",
    ),
]
EncoderOverride = Annotated[
    str | None,
    typer.Option(
        "--encoder",
        help="Override the encoder recorded in the index (a directory or pretrained:NAME).",
    ),
]
SpecFile = Annotated[
    Path | None,
    typer.Option(
        "--spec",
        help="A spec JSON file describing the architecture: what `weightspace inspect --json` "
        'prints (its \'spec\' member is read) or a bare {"format_version": 1, "ops": [...]} '
        "object (see `weightspace convert --help`).",
    ),
]
ModelFactory = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="A model factory 'package.module:function' returning an nn.Module; the checkpoint "
        "is loaded into it and traced with torch.fx.",
    ),
]
AllowNonfinite = Annotated[
    bool,
    typer.Option(
        "--allow-nonfinite",
        help="Accept NaN/Inf weights instead of refusing the file (commands that embed or merge "
        "weights still refuse them, saying why).",
    ),
]


class ConflictingOptionsError(WeightspaceError):
    """Two options that each say what the architecture is were given together."""


def activation_name(name: str) -> str:
    """The canonical activation name for ``name``, ignoring case, ``-`` and ``_``
    (``ReLU`` → ``relu``, ``LeakyReLU`` → ``leaky_relu``).

    Raises:
        SpecError: no such activation; the message lists the valid names.
    """
    key = name.strip().lower().replace("-", "").replace("_", "")
    by_key = {valid.replace("_", ""): valid for valid in ACTIVATIONS}
    if key not in by_key:
        raise SpecError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")
    return by_key[key]


def architecture_kwargs(
    activation: str | None,
    spec: Path | None,
    model: str | None,
    allow_nonfinite: bool = False,
    finite_for: str | None = None,
) -> dict:
    """The keyword arguments of :func:`weightspace.ingest.load_checkpoint` for these options.

    ``--activation``, ``--spec`` and ``--model`` each say what the architecture is, so at most
    one may be given (an error otherwise, never a silent choice); the activation name is
    normalised by :func:`activation_name`.

    Args:
        finite_for: for commands whose work needs finite weights (``"embedding"``,
            ``"merging"``): NaN/Inf weights are refused at load time, even with
            ``--allow-nonfinite``, by an error that names the file and says why.

    Raises:
        ConflictingOptionsError: more than one of the three was given.
        SpecError: an unknown activation name.
    """
    given = [
        flag
        for flag, value in (("--activation", activation), ("--spec", spec), ("--model", model))
        if value is not None
    ]
    if len(given) > 1:
        raise ConflictingOptionsError(
            f"{' and '.join(given)} both describe the architecture; give only one of them"
        )
    kwargs: dict = {
        "activation": activation_name(activation) if activation is not None else None,
        "spec": spec,
        "model": model,
        "allow_nonfinite": allow_nonfinite,
    }
    if finite_for is not None:
        kwargs["finite_for"] = finite_for
    return kwargs
