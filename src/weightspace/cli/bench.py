"""``weightspace bench``: every method on every protocol, one report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from weightspace.cli.app import app


@app.command()
def bench(
    zoo: Annotated[Path, typer.Option("--zoo", help="Zoo directory.")],
    out: Annotated[Path, typer.Option("--out", help="Results directory.")],
    encoder: Annotated[
        list[str] | None,
        typer.Option(
            "--encoder",
            help="Trained encoder directory (default: train one per seed). Repeat it, or give "
            "several comma-separated, for one encoder per seed (e.g. 3 encoder seeds): rows are "
            "then mean ± std over them. With one encoder the split is fixed and ± is a "
            "bootstrap over the test runs (--bootstrap).",
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
            "--methods",
            help="Comma-separated methods (default: ours, the reference rows metadata, "
            "probing-gauss, probing-task, and every baseline; any baseline also as <name>+canon).",
        ),
    ] = None,
    epochs: Annotated[
        int, typer.Option("--epochs", min=1, help="Encoder training epochs (the bound).")
    ] = 12,
    held_out_epochs: Annotated[
        int,
        typer.Option("--held-out-epochs", min=1, help="Encoder epochs for held-out arch/task."),
    ] = 12,
    time_limit: Annotated[
        float,
        typer.Option("--time-limit", help="Safety cap in seconds per encoder training (0: none)."),
    ] = 0.0,
    bootstrap: Annotated[
        int,
        typer.Option(
            "--bootstrap", min=0, help="Resamples of test runs for the ± of one given encoder."
        ),
    ] = 200,
    retrieval: Annotated[
        str,
        typer.Option(
            "--retrieval",
            help="Retrieval protocols, comma-separated, or '': S (same model), L (lineage), "
            "F (function), T (same task, other runs).",
        ),
    ] = "S,L,F",
    max_gallery: Annotated[int, typer.Option("--max-gallery", help="Retrieval gallery cap.")] = 300,
    queries: Annotated[
        int, typer.Option("--queries", help="Retrieval queries per protocol.")
    ] = 150,
    held_out: Annotated[
        str,
        typer.Option("--held-out", help="Extra prediction protocols: architectures,tasks or ''."),
    ] = "architectures,tasks",
    held_out_time_limit: Annotated[
        float,
        typer.Option(
            "--held-out-time-limit", help="Safety cap per held-out encoder training (0: none)."
        ),
    ] = 0.0,
    held_out_seeds: Annotated[
        int,
        typer.Option(
            "--held-out-seeds",
            min=1,
            help="Seeds for the held-out architecture/task protocols (at most --seeds).",
        ),
    ] = 1,
    probe_init: Annotated[
        str,
        typer.Option(
            "--probe-init",
            help="Where the probes of the encoders bench trains start: auto, task or gauss "
            "(as train --probe-init).",
        ),
    ] = "auto",
    nfn_epochs: Annotated[
        int | None,
        typer.Option("--nfn-epochs", help="NFN epochs per architecture (default: its reference)."),
    ] = None,
    tune: Annotated[
        bool,
        typer.Option(
            "--tune/--no-tune", help="Tune baseline heads by run-grouped CV on training runs."
        ),
    ] = True,
    synthesis: Annotated[
        bool,
        typer.Option(
            "--synthesis/--no-synthesis",
            help="Merging, reconstruction and sampling on every task (one architecture each).",
        ),
    ] = True,
    only: Annotated[
        str | None,
        typer.Option(
            "--only",
            help="Comma-separated sections to run: runs (prediction + retrieval on held-out "
            "runs), held-out (architectures / tasks), synthesis. A previous results.json in OUT "
            "is updated: the sections run replace theirs. `--only synthesis` needs a trained "
            "encoder: --encoder, or OUT/encoders/seed-0 from an earlier bench.",
        ),
    ] = None,
    synthesis_tasks: Annotated[
        str | None,
        typer.Option("--synthesis-tasks", help="Comma-separated tasks (default: every task)."),
    ] = None,
    synthesis_archs: Annotated[
        str | None,
        typer.Option(
            "--synthesis-archs",
            help="Comma-separated task=arch choices (default per task: the mergeable "
            "architecture with the most held-out models above the accuracy threshold).",
        ),
    ] = None,
    synthesis_pairs: Annotated[
        int, typer.Option("--synthesis-pairs", min=1, help="Merge pairs per task.")
    ] = 50,
    synthesis_samples: Annotated[
        int, typer.Option("--synthesis-samples", min=1, help="Sampled models per task.")
    ] = 100,
    synthesis_min_accuracy: Annotated[
        float | None,
        typer.Option(
            "--synthesis-min-accuracy",
            help="Only merge / reconstruct models at least this accurate (default per task: "
            "halfway from chance to the best model).",
        ),
    ] = None,
    decoder_steps: Annotated[
        int, typer.Option("--decoder-steps", help="Decoder steps per task (at most).")
    ] = 1500,
    decoder_time_limit: Annotated[
        float,
        typer.Option(
            "--decoder-time-limit",
            help="Safety cap in seconds per task's decoder training (0: none); the step count "
            "is the bound, so figures do not depend on the machine's load.",
        ),
    ] = 0.0,
    device: Annotated[str, typer.Option("--device", help="cpu | cuda")] = "cpu",
) -> None:
    """Run our encoder and every baseline on every protocol; write results.json, report.md and
    plots to OUT."""
    from rich.console import Console

    from weightspace.bench import DEFAULT_METHODS, BenchConfig, run_bench

    console = Console(stderr=True)
    if encoder and train:
        raise typer.BadParameter("give either --encoder or --train, not both")
    from weightspace.nn.probe_init import ProbeInitError, check_train_probe_init

    try:
        check_train_probe_init(probe_init)
    except ProbeInitError as exc:
        raise typer.BadParameter(str(exc), param_hint="--probe-init") from None
    config = BenchConfig(
        zoo=str(zoo),
        out=str(out),
        encoder=",".join(_items(",".join(encoder or []))) or None,
        seeds=seeds,
        methods=tuple(m.strip() for m in methods.split(",")) if methods else DEFAULT_METHODS,
        train_epochs=epochs,
        held_out_epochs=held_out_epochs,
        train_time_limit=time_limit,
        bootstrap=bootstrap,
        tune=tune,
        held_out_time_limit=held_out_time_limit,
        held_out_seeds=held_out_seeds,
        probe_init=probe_init,
        nfn_epochs=nfn_epochs,
        decoder_steps=decoder_steps,
        decoder_time_limit=decoder_time_limit,
        only=_items(only),
        synthesis_tasks=_items(synthesis_tasks),
        synthesis_archs=_items(synthesis_archs),
        synthesis_pairs=synthesis_pairs,
        synthesis_samples=synthesis_samples,
        synthesis_min_accuracy=synthesis_min_accuracy,
        held_out=tuple(h for h in (s.strip() for s in held_out.split(",")) if h),
        retrieval=_items(retrieval),
        max_gallery=max_gallery,
        num_queries=queries,
        synthesis=synthesis,
        device=device,
    )
    run_bench(config, log=lambda message: console.print(message, highlight=False))
    console.print(f"[green]report:[/] {out / 'report.md'}")


def _items(text: str | None) -> tuple[str, ...]:
    return tuple(i for i in (s.strip() for s in (text or "").split(",")) if i)
