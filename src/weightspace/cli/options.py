"""Options shared by every command that reads checkpoint files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Activation = Annotated[
    str | None,
    typer.Option(
        "--activation",
        help="For a plain Sequential chain of Linear/Conv layers: the activation between layers "
        "(identity, relu, leaky_relu, tanh, gelu, silu, sigmoid).",
    ),
]
SpecFile = Annotated[
    Path | None,
    typer.Option("--spec", help="A NetworkSpec JSON file describing the architecture."),
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


def architecture_kwargs(
    activation: str | None,
    spec: Path | None,
    model: str | None,
    allow_nonfinite: bool = False,
    finite_for: str | None = None,
) -> dict:
    """The keyword arguments of :func:`weightspace.ingest.load_checkpoint` for these options.

    Args:
        finite_for: for commands whose work needs finite weights (``"embedding"``,
            ``"merging"``): NaN/Inf weights are refused at load time, even with
            ``--allow-nonfinite``, by an error that names the file and says why.
    """
    kwargs: dict = {
        "activation": activation,
        "spec": spec,
        "model": model,
        "allow_nonfinite": allow_nonfinite,
    }
    if finite_for is not None:
        kwargs["finite_for"] = finite_for
    return kwargs
