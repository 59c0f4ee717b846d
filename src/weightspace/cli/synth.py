"""``weightspace sample`` and ``weightspace train-decoder`` (``weightspace merge`` is
:mod:`weightspace.cli.merge`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from weightspace.cli.app import app

EncoderDir = Annotated[
    Path | None,
    typer.Option(
        "--encoder",
        help="Encoder directory (from `weightspace train`) holding a decoder "
        "(from `weightspace train-decoder`), or pretrained:NAME.",
    ),
]


def synthesizer_for(encoder: Path | None, needed: bool) -> Any:
    """The encoder + decoder at ``encoder`` (a directory or pretrained:NAME); ``None`` when
    none is given and ``needed`` is false."""
    if encoder is None:
        if needed:
            from weightspace.synthesis import SynthesisError

            raise SynthesisError(
                "this needs --encoder DIR: an encoder directory with a trained decoder"
            )
        return None
    from weightspace.pretrained import resolve_encoder_reference
    from weightspace.synthesis.decoder import Synthesizer

    return Synthesizer.load(resolve_encoder_reference(encoder))


@app.command("sample")
def sample_command(
    zoo: Annotated[Path, typer.Option("--zoo", help="The zoo to sample near.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the sampled checkpoints.")],
    encoder: EncoderDir = None,
    n: Annotated[int, typer.Option("--n", min=1, help="Number of models to draw.")] = 100,
    task: Annotated[str | None, typer.Option("--task", help="Only this task's models.")] = None,
    arch: Annotated[
        str | None, typer.Option("--arch", help="Only this architecture's models.")
    ] = None,
    min_accuracy: Annotated[
        float | None,
        typer.Option(
            "--min-accuracy",
            help="Pool: final checkpoints at least this accurate (default: the top quartile "
            "of each task and architecture).",
        ),
    ] = None,
    bandwidth: Annotated[
        float,
        typer.Option(
            "--bandwidth",
            help="Kernel width in units of the pool's embedding spread: finite, >= 0 (0 decodes "
            "the pool's own embeddings).",
        ),
    ] = 0.5,
    seed: Annotated[int, typer.Option("--seed", help="Seeds anchors and noise.")] = 0,
) -> None:
    """Draw embeddings near high-accuracy zoo models (Gaussian KDE), decode them and write the
    checkpoints (plus samples.json)."""
    from weightspace.synthesis.sample import check_sampling_options, sample_models, write_samples
    from weightspace.zoo import Zoo

    check_sampling_options(n, bandwidth, min_accuracy)  # bad options fail before any work
    if out.exists() and not out.is_dir():
        from weightspace.synthesis import SynthesisError

        raise SynthesisError(f"{out}: exists and is not a directory; --out names a directory")
    synthesizer = synthesizer_for(encoder, True)
    samples = sample_models(
        synthesizer,
        Zoo.open(zoo),
        n,
        task=task,
        arch=arch,
        min_accuracy=min_accuracy,
        bandwidth=bandwidth,
        seed=seed,
    )
    paths = write_samples(samples, out)
    typer.echo(f"wrote {len(paths)} sampled checkpoints to {out}")
    refused = len(samples) - len(paths)
    if refused:
        typer.echo(
            f"{refused} samples decoded to NaN/Inf weights and were not written (listed in "
            f"{out / 'samples.json'} with file null); lower --bandwidth",
            err=True,
        )


@app.command("train-decoder")
def train_decoder_command(
    encoder: Annotated[Path, typer.Option("--encoder", help="Encoder directory to add to.")],
    zoo: Annotated[Path, typer.Option("--zoo", help="Zoo to fit the decoder on.")],
    steps: Annotated[int, typer.Option("--steps", min=0, help="Optimisation steps.")] = 3000,
    hidden: Annotated[int, typer.Option("--hidden", min=1, help="Hypernetwork width.")] = 256,
    split: Annotated[
        str,
        typer.Option(
            "--split", help="Use the encoder's runs of this split (train, val, test) or 'all'."
        ),
    ] = "train",
    epochs: Annotated[
        str,
        typer.Option(
            "--epochs",
            help="'final' (each run's last checkpoint), 'all', or epochs like '10,20'.",
        ),
    ] = "final",
    loss: Annotated[str, typer.Option("--loss", help="Logit distillation: kl or mse.")] = "kl",
    mix_fraction: Annotated[
        float,
        typer.Option(
            "--mix-fraction",
            min=0.0,
            max=1.0,
            help="Share of each batch teaching interpolated embeddings to decode to the "
            "endpoints' output ensemble.",
        ),
    ] = 0.5,
    weight_loss: Annotated[
        float, typer.Option("--weight-loss", min=0.0, help="Weight of the matched-weights loss.")
    ] = 0.0,
    validation_split: Annotated[
        str,
        typer.Option(
            "--validation-split",
            help="Keep the weights whose reconstructions of this split's models (final "
            "checkpoints) agree best with the originals (checked every 100 steps), or 'none'.",
        ),
    ] = "val",
    time_limit: Annotated[
        float,
        typer.Option(
            "--time-limit",
            min=0.0,
            help="Safety cap in seconds (0: none); it only stops training early, the step count "
            "sets the schedule.",
        ),
    ] = 0.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N.")] = "cpu",
    threads: Annotated[int, typer.Option("--threads", min=0, help="Torch CPU threads.")] = 0,
) -> None:
    """Fit the decoder (embedding → weights) of an encoder on a zoo; saved in the encoder
    directory as decoder.safetensors + decoder.json."""
    import torch

    from weightspace.synthesis.decoder import DecoderConfig, train_decoder

    chosen_epochs: str | list[int] = epochs
    if epochs not in ("final", "all"):
        try:
            chosen_epochs = [int(e) for e in epochs.split(",")]
        except ValueError:
            raise typer.BadParameter(
                "--epochs must be 'final', 'all' or a list like 10,20"
            ) from None
    if threads:
        torch.set_num_threads(threads)
    config = DecoderConfig(
        steps=steps,
        hidden=hidden,
        loss=loss,
        mix_fraction=mix_fraction,
        weight_loss=weight_loss,
        time_limit=time_limit,
        seed=seed,
    )

    def progress(step: int, row: dict[str, float]) -> None:
        agreement = row.get("val_agreement")
        note = "" if agreement is None else f", validation agreement {agreement:.3f}"
        typer.echo(f"step {step}: distill {row.get('distill', float('nan')):.4f}{note}", err=True)

    decoder = train_decoder(
        encoder,
        zoo,
        config,
        split=None if split == "all" else split,
        validation_split=None if validation_split == "none" else validation_split,
        epochs=chosen_epochs,
        device=device,
        progress=progress,
    )
    if not decoder.log:
        typer.echo(f"decoder saved in {encoder} (untrained: --steps 0)")
        return
    distill = next((r["distill"] for r in reversed(decoder.log) if "distill" in r), float("nan"))
    best = next((r for r in reversed(decoder.log) if "best_step" in r), None)
    kept = (
        f"; kept step {int(best['best_step'])}, validation agreement {best['val_agreement']:.3f}"
        if best
        else ""
    )
    typer.echo(
        f"decoder for {len(decoder.specs)} architecture(s) saved in {encoder} "
        f"(final distillation loss {distill:.4f}{kept})"
    )
