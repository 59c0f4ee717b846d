"""``weightspace bench``: every method on every protocol, one report."""

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


@app.command()
def bench(
    zoo: Annotated[Path, typer.Option("--zoo", help="Zoo directory.")],
    out: Annotated[Path, typer.Option("--out", help="Results directory.")],
    encoder: Annotated[
        Path | None,
        typer.Option(
            "--encoder", help="A trained encoder directory (default: train one per seed)."
        ),
    ] = None,
    train: Annotated[
        bool,
        typer.Option("--train", help="Train the encoder per seed (the default without --encoder)."),
    ] = False,
    seeds: Annotated[
        int, typer.Option("--seeds", min=1, help="Repetitions; figures are mean ± std.")
    ] = 3,
    methods: Annotated[
        str | None,
        typer.Option(
            "--methods", help="Comma-separated methods (default: ours and every baseline)."
        ),
    ] = None,
    time_limit: Annotated[
        float, typer.Option("--time-limit", help="Seconds per encoder training (0: none).")
    ] = 150.0,
    epochs: Annotated[int, typer.Option("--epochs", help="Maximum encoder epochs.")] = 40,
    max_gallery: Annotated[int, typer.Option("--max-gallery", help="Retrieval gallery cap.")] = 300,
    queries: Annotated[
        int, typer.Option("--queries", help="Retrieval queries per protocol.")
    ] = 150,
    held_out: Annotated[
        str,
        typer.Option("--held-out", help="Extra prediction protocols: architectures,tasks or ''."),
    ] = "architectures,tasks",
    held_out_time_limit: Annotated[
        float, typer.Option("--held-out-time-limit", help="Seconds per held-out encoder training.")
    ] = 60.0,
    nfn_epochs: Annotated[
        int, typer.Option("--nfn-epochs", help="NFN epochs per architecture.")
    ] = 15,
    synthesis: Annotated[bool, typer.Option("--synthesis/--no-synthesis")] = True,
    decoder_steps: Annotated[int, typer.Option("--decoder-steps", help="Decoder steps.")] = 1500,
    device: Annotated[str, typer.Option("--device", help="cpu | cuda")] = "cpu",
) -> None:
    """Run our encoder and every baseline on every protocol; write results.json, report.md and
    plots to OUT."""
    from rich.console import Console

    from weightspace.bench import DEFAULT_METHODS, BenchConfig, run_bench

    console = Console(stderr=True)
    if encoder is not None and train:
        raise typer.BadParameter("give either --encoder or --train, not both")
    config = BenchConfig(
        zoo=str(zoo),
        out=str(out),
        encoder=str(encoder) if encoder else None,
        seeds=seeds,
        methods=tuple(m.strip() for m in methods.split(",")) if methods else DEFAULT_METHODS,
        train_epochs=epochs,
        train_time_limit=time_limit,
        held_out_time_limit=held_out_time_limit,
        nfn_epochs=nfn_epochs,
        decoder_steps=decoder_steps,
        held_out=tuple(h for h in (s.strip() for s in held_out.split(",")) if h),
        max_gallery=max_gallery,
        num_queries=queries,
        synthesis=synthesis,
        device=device,
    )
    run_bench(config, log=lambda message: console.print(message, highlight=False))
    console.print(f"[green]report:[/] {out / 'report.md'}")


@app.command()
def predict(
    file: Annotated[Path, typer.Argument(help="Checkpoint: .safetensors, .pt or .pth.")],
    encoder: Annotated[
        Path, typer.Option("--encoder", help="Encoder directory (weightspace train).")
    ],
    activation: Activation = None,
    spec: SpecFile = None,
    model: ModelFactory = None,
    allow_nonfinite: AllowNonfinite = False,
    k: Annotated[int, typer.Option("-k", "--neighbours", help="Nearest zoo models to list.")] = 5,
    coverage: Annotated[
        float, typer.Option("--coverage", help="Conformal interval coverage.")
    ] = 0.9,
    device: Annotated[str, typer.Option("--device", help="cpu | cuda")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Predict a checkpoint's test accuracy from its weights alone, with a split-conformal
    interval (calibrated on the encoder's validation runs) and the nearest zoo models."""
    import json

    from weightspace.predict import predict_checkpoint

    result = predict_checkpoint(
        file,
        encoder,
        k=k,
        coverage=coverage,
        device=device,
        **architecture_kwargs(activation, spec, model, allow_nonfinite),
    )
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    interval = (
        f" ({coverage:.0%} interval {result.interval[0]:.3f}–{result.interval[1]:.3f}, "
        f"calibrated on {result.calibration_size} validation checkpoints)"
        if result.interval
        else " (no calibration data: the encoder's zoo is not reachable)"
    )
    console.print(f"{file}: predicted test accuracy [bold]{result.test_accuracy:.3f}[/]{interval}")
    if result.neighbours:
        table = Table(title="nearest zoo models", title_justify="left")
        for column in result.neighbours[0]:
            table.add_column(column)
        for row in result.neighbours:
            table.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()))
        console.print(table)
