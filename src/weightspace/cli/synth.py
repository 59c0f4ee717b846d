"""``weightspace merge``, ``weightspace sample`` and ``weightspace train-decoder``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from weightspace.cli.app import app
from weightspace.cli.options import (
    Activation,
    AllowNonfinite,
    ModelFactory,
    SpecFile,
    architecture_kwargs,
)

EncoderDir = Annotated[
    Path | None,
    typer.Option(
        "--encoder",
        help="Encoder directory (from `weightspace train`) holding a decoder "
        "(from `weightspace train-decoder`).",
    ),
]


def _checkpoint_task(path: Path) -> str | None:
    """The ``task`` recorded in a safetensors checkpoint's metadata, if any."""
    if path.suffix != ".safetensors":
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception:  # unreadable files are reported by load_checkpoint
        return None
    return metadata.get("task")


#: ``merge --out`` suffixes and the format each names.
OUTPUT_FORMATS = {".safetensors": "safetensors", ".pt": "torch", ".pth": "torch"}


def _output_format(out: Path) -> str:
    """The format ``out``'s suffix names; refuses any other suffix before any work."""
    from weightspace.synthesis import SynthesisError

    chosen = OUTPUT_FORMATS.get(out.suffix.lower())
    if chosen is None:
        raise SynthesisError(
            f"{out}: unknown output type {out.suffix or '(no suffix)'!r}; use .safetensors "
            "(weights with the architecture in the metadata) or .pt/.pth (a plain state dict "
            "for torch.load, its architecture written beside it as .spec.json)"
        )
    if out.is_dir():
        raise SynthesisError(f"{out}: is a directory; --out names the file to write")
    return chosen


def spec_sidecar(path: Path) -> Path:
    """Where ``merge --out x.pt`` writes the architecture: ``x.spec.json``."""
    return path.with_suffix(".spec.json")


def save_merged(path: Path, spec: Any, state_dict: dict, metadata: dict[str, str]) -> list[Path]:
    """Write a merged model in the format ``path``'s suffix names; returns the files written.

    ``.safetensors``: :func:`~weightspace.ingest.save_checkpoint` (spec and ``metadata`` in the
    header). ``.pt``/``.pth``: a plain state dict with ``torch.save``, which
    ``torch.load(weights_only=True)`` reads back, and the spec beside it (:func:`spec_sidecar`)
    for ``--spec``; a ``.pt`` has no room for metadata. Both are written atomically.
    """
    import torch

    from weightspace.atomic import atomic_write
    from weightspace.graph import check_state_dict
    from weightspace.ingest import save_checkpoint

    if _output_format(path) == "safetensors":
        return [save_checkpoint(path, spec, state_dict, metadata)]
    check_state_dict(spec, state_dict, source=str(path), allow_nonfinite=True)
    plain = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    sidecar = spec_sidecar(path)
    text = spec.to_json()
    atomic_write(path, lambda tmp: torch.save(plain, tmp))
    atomic_write(sidecar, lambda tmp: tmp.write_text(text + "\n"))
    return [path, sidecar]


def _synthesizer(encoder: Path | None, needed: bool) -> Any:
    if encoder is None:
        if needed:
            from weightspace.synthesis import SynthesisError

            raise SynthesisError(
                "this needs --encoder DIR: an encoder directory with a trained decoder"
            )
        return None
    from weightspace.synthesis.decoder import Synthesizer

    return Synthesizer.load(encoder)


@app.command("merge")
def merge_command(
    model_a: Annotated[Path, typer.Argument(help="First checkpoint (alpha = 0).")],
    model_b: Annotated[Path, typer.Argument(help="Second checkpoint (alpha = 1).")],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="The merged checkpoint: .safetensors (architecture in the metadata) or .pt/.pth "
            "(a plain state dict; the architecture goes beside it as NAME.spec.json).",
        ),
    ],
    encoder: EncoderDir = None,
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="embedding (interpolate embeddings, decode; needs --encoder), average (naive "
            "weight averaging), rebasin (weight matching, then averaging), ensemble (output "
            "averaging as one wider network).",
        ),
    ] = "embedding",
    alpha: Annotated[
        float, typer.Option("--alpha", min=0.0, max=1.0, help="0 gives A, 1 gives B.")
    ] = 0.5,
    target_spec: Annotated[
        Path | None,
        typer.Option(
            "--target-spec",
            help="embedding only: decode into this architecture (a NetworkSpec JSON file), "
            "which lets A and B differ in architecture.",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seeds weight matching's sweep order.")] = 0,
    activation: Activation = None,
    spec: SpecFile = None,
    model: ModelFactory = None,
    allow_nonfinite: AllowNonfinite = False,
) -> None:
    """Merge two checkpoints of one architecture and task into one checkpoint (with its spec)."""
    from weightspace.ingest import load_checkpoint, load_spec
    from weightspace.synthesis.merge import get_merge_method, merge

    _output_format(out)  # an unknown suffix fails before any work
    chosen = get_merge_method(method)  # unknown methods fail before any file is read
    kwargs = architecture_kwargs(activation, spec, model, allow_nonfinite, "merging")
    spec_a, state_a = load_checkpoint(model_a, **kwargs)
    spec_b, state_b = load_checkpoint(model_b, **kwargs)
    synthesizer = _synthesizer(encoder, chosen.needs_synthesizer)
    result = merge(
        method,
        spec_a,
        state_a,
        spec_b,
        state_b,
        alpha,
        synthesizer=synthesizer,
        task_a=_checkpoint_task(model_a),
        task_b=_checkpoint_task(model_b),
        target_spec=load_spec(target_spec) if target_spec is not None else None,
        seed=seed,
    )
    meta = {
        "weightspace_synthesis": json.dumps(
            {**result.info, "a": str(model_a), "b": str(model_b)}, default=str
        )
    }
    task = _checkpoint_task(model_a)
    if task is not None:
        meta["task"] = task
    written = save_merged(out, result.spec, result.state_dict, meta)
    note = "" if chosen.same_spec else f" (a wider ensemble architecture: {result.spec.summary()})"
    typer.echo(f"wrote {out}: {method} merge at alpha={alpha:g}{note}")
    if len(written) > 1:
        typer.echo(
            f"its architecture is in {written[1]}: read it back with --spec {written[1]}",
            err=True,
        )


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
    synthesizer = _synthesizer(encoder, True)
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
