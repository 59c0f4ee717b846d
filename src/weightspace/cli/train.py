"""``weightspace train``: fit the encoder on a zoo (``weightspace embed``: :mod:`.embed`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from weightspace.cli.app import app


def _encoder_config(probe_skip: bool, embedding_dim: int | None) -> Any:
    """The :class:`~weightspace.nn.encoder_config.EncoderConfig` the options ask for (the
    defaults otherwise)."""
    from dataclasses import replace

    from weightspace.nn.encoder_config import EncoderConfig

    changes: dict[str, object] = {"probe_skip": probe_skip}
    if embedding_dim is not None:
        changes["embedding_dim"] = embedding_dim
    return replace(EncoderConfig(), **changes)


@app.command()
def train(
    zoo: Annotated[Path, typer.Option("--zoo", help="Zoo directory to train on.")],
    out: Annotated[Path, typer.Option("--out", help="Encoder directory to write.")],
    epochs: Annotated[
        int, typer.Option(help="Maximum epochs (early stopping may end sooner).")
    ] = 12,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    objective: Annotated[
        str,
        typer.Option(
            help="contrastive, supervised (accuracy, gap, task heads), both, or class (a "
            "class-target zoo: cross-entropy on its label, trained on its own train split)."
        ),
    ] = "both",
    seed: Annotated[int, typer.Option(help="Seeds initialisation, split, batches, views.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Checkpoints per step.")] = 128,
    learning_rate: Annotated[float, typer.Option(help="Peak AdamW learning rate.")] = 2e-3,
    patience: Annotated[int, typer.Option(help="Epochs without improvement before stopping.")] = 8,
    max_checkpoints: Annotated[
        int, typer.Option(help="Use at most this many checkpoints (whole runs; 0: all).")
    ] = 0,
    time_limit: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Safety cap only: stop after this many seconds (0: none). Epochs bound a run; "
            "a capped run's figures depend on the machine's speed.",
        ),
    ] = 0.0,
    threads: Annotated[int, typer.Option(help="CPU threads for torch (0: default).")] = 0,
    probe_lr_scale: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Learning rate of the learned probes as a fraction of --learning-rate (0: "
            "probes stay at their initialisation).",
        ),
    ] = 1.0,
    exact_views: Annotated[
        bool,
        typer.Option(
            "--exact-views",
            help="Views by exact symmetries only (hidden-neuron permutations): no weight noise, "
            "pruning or quantisation, which change a SIREN's function off its grid.",
        ),
    ] = False,
    coord_shift: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="--objective class on coordinate models (INRs): each view reads its "
            "coordinates shifted by a uniform draw in [-D, D] per axis (coordinate units), "
            "exactly in weight space (first-layer bias b + W delta); 0: off.",
        ),
    ] = 0.0,
    coord_shift_step: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="With --coord-shift: shifts are whole multiples of this step (an INR's grid "
            "spacing, 0.286 on inr-digits: whole-pixel shifts); 0: continuous.",
        ),
    ] = 0.0,
    coord_zoom: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="The same, coordinates zoomed by s drawn in [1 - S, 1 + S] (first-layer "
            "weight s W); S in [0, 1), 0: off.",
        ),
    ] = 0.0,
    class_contrastive_weight: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="--objective class: weight of NT-Xent between two views beside the "
            "cross-entropy (0: cross-entropy alone).",
        ),
    ] = 0.0,
    finetune_views: Annotated[
        float,
        typer.Option(
            help="Chance that a contrastive view starts from its checkpoint after a few SGD "
            "steps on the checkpoint's own task (built-in tasks only; 0: off)."
        ),
    ] = 0.0,
    finetune_steps: Annotated[int, typer.Option(help="SGD steps of those views.")] = 4,
    batch_by_architecture: Annotated[
        bool,
        typer.Option(
            "--batch-by-architecture",
            help="One architecture per batch (the encoder's faster dense path). Off by default: "
            "an architecture fixes its task, and one-task batches leave the heads near chance.",
        ),
    ] = False,
    function_weight: Annotated[
        float | None,
        typer.Option(
            help="Weight of the function head's loss (KL to each checkpoint's outputs on fixed "
            "probe inputs of its task; needs built-in tasks). Default: the measured default "
            "when every task of the zoo is built-in, else 0 (off)."
        ),
    ] = None,
    function_probes: Annotated[
        int, typer.Option(help="Probe inputs per task of the function head.")
    ] = 32,
    branches: Annotated[
        str,
        typer.Option(
            help="Encoder branches: graph, probe (learned probe inputs run through each model's "
            "own forward) or graph,probe. Default auto: graph,probe when every architecture of "
            "the zoo can be run, else graph."
        ),
    ] = "auto",
    probes: Annotated[
        int, typer.Option(min=1, help="Learned probe inputs per input shape (probe branch).")
    ] = 32,
    probe_skip: Annotated[
        bool,
        typer.Option(
            "--probe-skip",
            help="Probe branch: the embedding also carries the model's own probe outputs, "
            "standardised (its last probes x classes entries), beside the learned features; "
            "needs --embedding-dim above probes x classes.",
        ),
    ] = False,
    embedding_dim: Annotated[
        int | None,
        typer.Option(min=1, help="Width of the embedding (default: the encoder's, 64)."),
    ] = None,
    probe_init: Annotated[
        str,
        typer.Option(
            help="Where the learned probes start: task (inputs from the zoo's task training "
            "split, or an INR zoo's coordinate grid; Gaussian where neither is known, said "
            "once), gauss (random Gaussian), or auto (task where known, else gauss).",
        ),
    ] = "auto",
) -> None:
    """Train the symmetry-aware encoder on a zoo (contrastive views + supervised heads); write
    weights, config, training log and the zoo's fingerprint to OUT. Rerunning the same command
    resumes an interrupted run.

    Data parallel: `torchrun --nproc_per_node N -m weightspace train ...` (gloo on CPU, NCCL with
    --device cuda, one GPU per rank): each rank encodes a shard of every global batch of
    --batch-size, gradients are summed over ranks, rank 0 validates and writes OUT; the result
    equals one process's up to float summation order."""
    from rich.console import Console

    from weightspace.cli.train_progress import TrainProgress
    from weightspace.nn.augment import AugmentConfig
    from weightspace.train import TrainConfig
    from weightspace.train import train as run_training
    from weightspace.training.distributed import init_from_environment

    config = TrainConfig(
        zoo=str(zoo),
        out=str(out),
        objective=objective,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        patience=patience,
        max_checkpoints=max_checkpoints,
        seed=seed,
        device=device,
        threads=threads,
        time_limit=time_limit,
        finetune_probability=finetune_views,
        finetune_steps=finetune_steps,
        function_weight=function_weight,
        function_probes=function_probes,
        branches=branches,
        probes=probes,
        probe_init=probe_init,
        batch_by_architecture=batch_by_architecture,
        class_contrastive_weight=class_contrastive_weight,
        probe_lr_scale=probe_lr_scale,
        coord_shift=coord_shift,
        coord_zoom=coord_zoom,
        coord_shift_step=coord_shift_step,
        encoder=_encoder_config(probe_skip, embedding_dim),
        augment=(
            AugmentConfig(noise_probability=0.0, prune_probability=0.0, quantize_probability=0.0)
            if exact_views
            else AugmentConfig()
        ),
    )
    ddp = init_from_environment(device)
    try:
        if ddp.is_main:
            with TrainProgress(epochs) as bar:
                result = run_training(
                    config, on_load=bar.on_load, on_step=bar.on_step, on_epoch=bar.on_epoch
                )
        else:
            result = run_training(config)
    finally:
        if ddp.world_size > 1:
            import torch.distributed

            torch.distributed.destroy_process_group()
    if not ddp.is_main:
        return
    console = Console()
    shown = ", ".join(
        f"{k.removeprefix('val_')} {v:.3f}"
        for k, v in result.best_metrics.items()
        if k
        in (
            "val_accuracy_tau",
            "val_accuracy_r2",
            "val_accuracy_mae",
            "val_view_top1",
            "val_class_top1",
        )
    )
    console.print(
        f"[green]encoder written to[/] {result.out} — best epoch {result.best_epoch} of "
        f"{result.epochs_run} ({result.seconds:.0f} s): {shown}",
        highlight=False,
    )
    if result.stopped_by == "time-limit":
        console.print(
            f"[yellow]warning:[/] the --time-limit of {time_limit:g} s cut training short "
            f"after {result.epochs_run} of {epochs} epochs (learning-rate schedule unfinished); "
            "these figures depend on the machine's speed",
            highlight=False,
        )
