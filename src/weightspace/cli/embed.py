"""``weightspace embed``: checkpoints (files, zoos) to embedding vectors, on one machine or Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from weightspace.cli.app import app
from weightspace.cli.default_encoder import DEFAULT_HELP, encoder_or_default
from weightspace.cli.options import (
    Activation,
    AllowNonfinite,
    ModelFactory,
    SpecFile,
    architecture_kwargs,
)
from weightspace.cli.skipping import SkipErrors, SkipLog


def _collect_models(
    inputs: list[Path], kwargs: dict, skips: SkipLog | None = None
) -> tuple[list, list[dict]]:
    """Models and their row metadata, in input order (a zoo contributes its table order).

    With ``skips`` enabled (``--skip-errors``), an input that cannot be read is recorded there
    and left out instead of stopping the command.
    """
    from weightspace.errors import CheckpointError, WeightspaceError
    from weightspace.ingest import load_checkpoint
    from weightspace.zoo import Zoo

    models, rows = [], []
    for path in inputs:
        found, found_rows = [], []
        try:
            if path.is_dir():
                zoo = Zoo.open(path)
                for checkpoint_id in zoo.ids:
                    found.append((zoo.spec(checkpoint_id), zoo.state_dict(checkpoint_id)))
                    found_rows.append({"source": str(path), "id": str(checkpoint_id)})
            elif path.is_file():
                found.append(load_checkpoint(path, **kwargs))
                found_rows.append({"source": str(path), "id": path.stem})
            else:
                raise CheckpointError(path, "no such file or zoo directory")
        except (WeightspaceError, OSError) as exc:
            if skips is None or not skips.enabled:
                raise
            skips.record(path, exc)
            continue
        models += found
        rows += found_rows
    return models, rows


@app.command()
def embed(
    inputs: Annotated[list[Path], typer.Argument(help="Zoo directories and/or checkpoint files.")],
    out: Annotated[Path, typer.Option("--out", help="Output file: .npy or .parquet.")],
    encoder: Annotated[
        Path | None,
        typer.Option(
            "--encoder",
            help=f"Encoder directory (train --out) or pretrained:NAME. {DEFAULT_HELP}",
            show_default=False,
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    batch_size: Annotated[int, typer.Option(help="Models per forward pass.")] = 512,
    activation: Activation = None,
    spec: SpecFile = None,
    model: ModelFactory = None,
    allow_nonfinite: AllowNonfinite = False,
    skip_errors: SkipErrors = False,
    compile: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="torch.compile the encoder (pays a compilation per architecture; for large "
            "collections, mainly on GPUs).",
        ),
    ] = False,
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Embed on Ray (pip install 'weightspace[distributed]'): OUT is a directory of "
            "Parquet shards; rerunning resumes.",
        ),
    ] = False,
    ray_address: Annotated[
        str | None,
        typer.Option(help="Ray cluster to join with --ray (default: start a local one)."),
    ] = None,
    ray_workers: Annotated[
        int, typer.Option(min=1, help="Embedding actors with --ray (a GPU each if any).")
    ] = 2,
) -> None:
    """Embed checkpoints with a trained encoder. ``.npy`` rows follow the order of INPUTS (a zoo
    in its table order); ``.parquet`` adds ``source`` and ``id`` columns and one ``z`` list
    column."""
    import numpy as np
    from rich.console import Console

    from weightspace.nn.encoder import Encoder, EncoderError
    from weightspace.pretrained import resolve_encoder_reference
    from weightspace.symmetry_overflow import overflow_named_by_file

    # pretrained:NAME → the bundled directory
    encoder = resolve_encoder_reference(encoder_or_default(encoder, "embed"))
    if ray:
        from weightspace.distributed.ray_embed import embed_on_ray_cli

        kwargs = architecture_kwargs(activation, spec, model, allow_nonfinite, "embedding")
        embed_on_ray_cli(inputs, encoder, out, ray_address, ray_workers, batch_size, kwargs)
        from weightspace.twins import each_read, report_input_twins

        report_input_twins(inputs, each_read("embedded"))  # .pt/.safetensors twins, named
        return

    suffix = out.suffix.lower()
    if suffix not in (".npy", ".parquet"):
        raise EncoderError(f"{out}: the output must end in .npy or .parquet")
    model_encoder = Encoder.load(encoder, device=device)
    skips = SkipLog(skip_errors)
    models, rows = _collect_models(
        inputs, architecture_kwargs(activation, spec, model, allow_nonfinite, "embedding"), skips
    )
    skips.finish(done=len(models))  # lists what was skipped; fails here if nothing is left
    from weightspace.input_domains import check_input_domains, cli_warning
    from weightspace.twins import each_read, report_input_twins

    report_input_twins(inputs, each_read("embedded"))  # .pt/.safetensors twins, named
    specs, sources = [m[0] for m in models], [r["source"] for r in rows]
    check_input_domains(specs, sources, model_encoder, say=cli_warning)  # free input sizes
    with overflow_named_by_file(zip(sources, specs, (m[1] for m in models), strict=True)):
        embeddings = model_encoder.embed(
            models, batch_size=batch_size, device=device, compile=compile
        )
    fallback = model_encoder.last_fallback
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        np.save(out, embeddings)
    else:
        import pandas as pd

        table = pd.DataFrame(rows)
        table["z"] = list(embeddings)
        # models the probe branch could not run, embedded by the graph branch only (flagged)
        table["graph_only"] = [bool(f) for f in fallback] if fallback is not None else False
        table.attrs["encoder_fingerprint"] = model_encoder.fingerprint
        table.to_parquet(out, index=False)
    Console().print(
        f"[green]{len(models)} embeddings[/] of width {model_encoder.dim} written to {out}",
        highlight=False,
    )
    if fallback is not None and bool(fallback.any()):
        named = [sources[i] for i in np.flatnonzero(fallback)]
        shown = ", ".join(named[:5]) + (f" and {len(named) - 5} more" if len(named) > 5 else "")
        Console(stderr=True, soft_wrap=True).print(
            f"warning: {len(named)} model(s) embedded by the graph branch only (their forward "
            f"failed on the probes; column graph_only in .parquet): {shown}",
            highlight=False,
        )
