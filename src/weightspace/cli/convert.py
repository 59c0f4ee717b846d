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
from weightspace.cli.skipping import SkipErrors, SkipLog
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
    "Write each FILE as a safetensors checkpoint whose metadata holds its architecture (spec).\n\n"
    "Give the architecture once, with one of --activation (a plain Sequential chain of "
    "Linear/Conv layers), --spec or --model; every later command (inspect, embed, index build, "
    "search, predict, merge) then reads it from the file and needs no flag. With --model, "
    "BatchNorm layers are folded into the layer before them, so OUT holds the folded weights of "
    "the same function.\n\n"
    "One FILE goes to --out OUT.safetensors; any number go to --out-dir DIR as "
    "DIR/<stem>.safetensors, in one process. With --out-dir every file is tried: each failure is "
    "listed on stderr by name and reason, and the command exits 1 if any failed (with "
    "--skip-errors, only if all failed)."
)


@app.command(help=_HELP, epilog=SPEC_FORMAT_HELP)
def convert(
    files: Annotated[
        list[Path],
        typer.Argument(help="Checkpoints: .safetensors, .pt, .pth, .bin, .ckpt."),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Where to write the self-describing .safetensors (one FILE)."
        ),
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out-dir",
            help="Folder to write DIR/<stem>.safetensors for each FILE (created if missing).",
        ),
    ] = None,
    activation: Activation = None,
    spec: SpecFile = None,
    model: ModelFactory = None,
    allow_nonfinite: AllowNonfinite = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace outputs that exist (written atomically).")
    ] = False,
    skip_errors: SkipErrors = False,
) -> None:
    """Write each of ``files`` as safetensors with its spec in the metadata (see ``_HELP``)."""
    if (out is None) == (out_dir is None):
        raise ConvertError("give exactly one of --out (one FILE) and --out-dir (any number)")
    if out is not None and len(files) != 1:
        raise ConvertError(
            f"--out names one output but {len(files)} files were given; use --out-dir DIR"
        )
    kwargs = architecture_kwargs(activation, spec, model, allow_nonfinite)
    if out is not None:
        _convert_one(files[0], out, kwargs, overwrite=overwrite)
        return
    assert out_dir is not None
    files = _without_twins(files)
    targets = output_paths(files, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    failures = SkipLog(enabled=True)
    done = 0
    for file, target in zip(files, targets, strict=True):
        try:
            _convert_one(file, target, kwargs, overwrite=overwrite)
            done += 1
        except (WeightspaceError, OSError) as exc:
            failures.record(file, exc)
    failures.report()
    if skip_errors:
        failures.check_some(done)
    elif failures.skipped:
        raise ConvertError(
            f"{len(failures.skipped)} of {len(files)} files failed to convert (listed above); "
            f"the other {done} were written"
        )
    typer.echo(f"converted {done} of {len(files)} files into {out_dir}")


def _without_twins(files: list[Path]) -> list[Path]:
    """``files`` with later twins of the same weights left out (said on stderr): ``a.pt`` and
    ``a.safetensors`` would both be written to ``DIR/a.safetensors``. Twins whose weights differ
    stay, and :func:`output_paths` refuses them."""
    from weightspace.twins import find_twins, report_twins

    groups = [group for group in find_twins(files) if group.same]
    report_twins(groups, lambda group: f"converted once, from {group.files[0]}")
    dropped = {file for group in groups for file in group.files[1:]}
    return [file for file in files if file not in dropped]


def output_paths(files: list[Path], out_dir: Path) -> list[Path]:
    """``out_dir/<stem>.safetensors`` for each file.

    Raises:
        ConvertError: two inputs share a stem (``a.pt`` and ``a.safetensors``), so one output
            would overwrite the other; nothing is converted.
    """
    targets = [out_dir / f"{file.stem}.safetensors" for file in files]
    seen: dict[Path, Path] = {}
    for file, target in zip(files, targets, strict=True):
        if target in seen:
            raise ConvertError(
                f"{seen[target]} and {file} would both be written to {target}; rename one or "
                "convert them into different folders"
            )
        seen[target] = file
    return targets


def _convert_one(file: Path, out: Path, kwargs: dict, *, overwrite: bool) -> None:
    """Convert ``file`` to ``out`` (a one-line error naming the file or output otherwise)."""
    from weightspace.ingest import load_checkpoint, save_checkpoint

    if out.suffix != ".safetensors":
        raise ConvertError(
            f"{out}: the output must be a .safetensors file (the spec lives in its metadata)"
        )
    if out.exists() and not overwrite:
        raise ConvertError(f"{out}: already exists; pass --overwrite to replace it")
    network, state = load_checkpoint(file, **kwargs)
    save_checkpoint(out, network, state)
    typer.echo(
        f"wrote {out}: {network.summary()}, {network.num_parameters:,} parameters, spec stored "
        "in its metadata"
    )
