"""``weightspace convert``: a checkpoint that describes itself (its spec in the file's metadata)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from weightspace.cli.app import app
from weightspace.cli.options import (
    Activation,
    AllowNonfinite,
    ModelFactory,
    SpecFile,
    architecture_kwargs,
)
from weightspace.errors import WeightspaceError

#: The spec format, as the ``convert`` and ``inspect`` help texts state it.
SPEC_FORMAT_HELP = (
    'Spec format: a JSON object {"format_version": 1, "ops": [...]}; each op has a name, a '
    "kind (input, linear, conv1d, conv2d, activation, add, pool, adaptive_pool, global_pool, "
    "flatten), the names of the ops it reads ('inputs') and its attributes ('attrs'), in "
    "topological order from the single input op to the output. A linear or conv op is named by "
    "its state-dict prefix. `weightspace inspect --json FILE` prints it as its 'spec' member, "
    "and --spec reads that whole output or the bare object. Full reference: the docstring of "
    "weightspace.spec.NetworkSpec.to_json."
)


class ConvertError(WeightspaceError):
    """The output of ``convert`` cannot be written as asked."""


_HELP = (
    "Write FILE as a safetensors checkpoint whose metadata holds its architecture (spec).\n\n"
    "Give the architecture once, with one of --activation (a plain Sequential chain of "
    "Linear/Conv layers), --spec or --model; every later command (inspect, embed, index build, "
    "search, predict, merge) then reads it from the file and needs no flag. With --model, "
    "BatchNorm layers are folded into the layer before them, so OUT holds the folded weights of "
    "the same function."
)


@app.command(help=_HELP, epilog=SPEC_FORMAT_HELP)
def convert(
    file: Annotated[Path, typer.Argument(help="Checkpoint: .safetensors, .pt, .pth, .bin, .ckpt.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Where to write the self-describing .safetensors.")
    ],
    activation: Activation = None,
    spec: SpecFile = None,
    model: ModelFactory = None,
    allow_nonfinite: AllowNonfinite = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace OUT if it exists (written atomically).")
    ] = False,
) -> None:
    """Write ``file`` to ``out`` as safetensors with its spec in the metadata (see ``_HELP``)."""
    from weightspace.ingest import load_checkpoint, save_checkpoint

    if out.suffix != ".safetensors":
        raise ConvertError(
            f"{out}: the output must be a .safetensors file (the spec lives in its metadata)"
        )
    if out.exists() and not overwrite:
        raise ConvertError(f"{out}: already exists; pass --overwrite to replace it")
    network, state = load_checkpoint(
        file, **architecture_kwargs(activation, spec, model, allow_nonfinite)
    )
    save_checkpoint(out, network, state)
    typer.echo(
        f"wrote {out}: {network.summary()}, {network.num_parameters:,} parameters, spec stored "
        "in its metadata"
    )
