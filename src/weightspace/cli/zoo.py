"""``weightspace zoo``: generate, import and describe model zoos."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from weightspace.cli.app import app

zoo_app = typer.Typer(
    help="Model zoos: train one from a preset (generate), bring your own sweep (import), "
    "summarise one (info).",
    no_args_is_help=True,
)
app.add_typer(zoo_app, name="zoo")


def _split_names(values: list[str] | None) -> tuple[str, ...] | None:
    """``--tasks a,b --tasks c`` → ``("a", "b", "c")``; None when not given."""
    if not values:
        return None
    names = tuple(n.strip() for v in values for n in v.split(",") if n.strip())
    return names or None


@zoo_app.command("generate")
def generate(
    preset: str = typer.Option(..., "--preset", help="tiny, small, medium or large."),
    out: Path = typer.Option(..., "--out", help="Zoo directory (an unfinished one resumes)."),
    tasks: list[str] | None = typer.Option(
        None, "--tasks", help="Tasks instead of the preset's (comma-separated or repeated)."
    ),
    archs: list[str] | None = typer.Option(
        None, "--archs", help="Architectures instead of the preset's, e.g. mlp-w32-d2-relu."
    ),
    runs: int | None = typer.Option(None, "--runs", min=1, help="Runs per (task, arch) pair."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs per run."),
    seed: int = typer.Option(0, "--seed", help="Zoo seed: same seed, same zoo."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    workers: int = typer.Option(
        1, "--workers", min=1, help="Processes training shards in parallel."
    ),
    threads: int = typer.Option(
        1, "--threads", min=1, help="Torch threads per worker (1 is fastest on a busy machine)."
    ),
) -> None:
    """Train a zoo of small networks; interrupted, the same command resumes."""
    from rich.console import Console

    from weightspace.zoo.generate import generate_zoo
    from weightspace.zoo.presets import get_preset

    console = Console(stderr=True)
    recipe = get_preset(preset).with_overrides(
        tasks=_split_names(tasks), archs=_split_names(archs), runs=runs, epochs=epochs
    )
    zoo = generate_zoo(
        out,
        recipe,
        seed=seed,
        device=device,
        workers=workers,
        threads=threads,
        show_progress=True,
        console=console,
    )
    info = zoo.info()
    console.print(
        f"[green]zoo ready[/] {out}: {info['runs']} runs, {info['checkpoints']} checkpoints, "
        f"{len(zoo.manifest.get('skipped', []))} skipped (diverged)"
    )


@zoo_app.command("import")
def import_(
    source: Path | None = typer.Argument(
        None, help="With --format: the published release's directory (e.g. cifar10/)."
    ),
    checkpoints: Path | None = typer.Option(
        None, "--checkpoints", help="Directory of checkpoint files (your own sweep)."
    ),
    metrics: Path | None = typer.Option(
        None, "--metrics", help="Table (.csv/.parquet) with columns file, test_accuracy, …"
    ),
    out: Path = typer.Option(..., "--out", help="New zoo directory."),
    release_format: str | None = typer.Option(
        None,
        "--format",
        help="Import a published release instead of your own sweep: small-cnn-zoo "
        "(Unterthiner et al. 2020: weights.npy, metrics.csv.gz, layout.csv).",
    ),
    split_file: Path | None = typer.Option(
        None,
        "--split-file",
        help="small-cnn-zoo: the published shuffle order (NFN's *_split.csv), so train/val/test "
        "match the published figures.",
    ),
    all_steps: bool = typer.Option(
        False, "--all-steps", help="small-cnn-zoo: keep every checkpoint, not only step 86."
    ),
    drop_nonfinite: bool = typer.Option(
        False, "--drop-nonfinite", help="small-cnn-zoo: leave out NaN/Inf rows instead of failing."
    ),
    activation: str | None = typer.Option(
        None, "--activation", help="Activation between layers of plain Sequential checkpoints."
    ),
    spec: Path | None = typer.Option(None, "--spec", help="NetworkSpec JSON of every checkpoint."),
    model: str | None = typer.Option(
        None, "--model", help="Factory 'package.module:function' building the nn.Module."
    ),
    mapping: list[str] | None = typer.Option(
        None, "--map", help="Rename a column: NEW=OLD, e.g. test_accuracy=acc (repeatable)."
    ),
    skip_bad_rows: bool = typer.Option(
        False,
        "--skip-bad-rows",
        help="Import the good rows and list the bad ones (also in the zoo's manifest.json, "
        "'failed'), instead of refusing the whole table.",
    ),
) -> None:
    """Turn your own sweep (checkpoint files + metrics table), or a published release
    (--format small-cnn-zoo SOURCE), into a zoo.

    Every row is checked before anything is written: accuracies in [0, 1], whole epochs >= 0,
    files inside --checkpoints, no file twice, readable checkpoints.
    Bad rows are listed with their line and nothing is written, unless --skip-bad-rows.
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from weightspace.errors import WeightspaceError
    from weightspace.zoo.importer import import_zoo, parse_mapping

    console = Console(stderr=True)
    if release_format is not None:
        if source is None or checkpoints is not None or metrics is not None:
            raise WeightspaceError(
                "--format takes the release directory as SOURCE, without --checkpoints/--metrics"
            )
        if spec is not None or model is not None or mapping or skip_bad_rows:
            raise WeightspaceError(
                "--spec, --model, --map and --skip-bad-rows apply to your own sweep, not to "
                "--format (the release's layout gives the architecture)"
            )
        from weightspace.zoo.formats import import_release

        options: dict = {"split_file": split_file, "drop_nonfinite": drop_nonfinite}
        if all_steps:
            options["final_step"] = None
        if activation is not None:
            options["activation"] = activation
        zoo = import_release(release_format, source, out, **options)
        splits = zoo.manifest.get("splits", {})
        console.print(
            Text.assemble(
                ("imported", "green"),
                f" {len(zoo)} checkpoints of {release_format} into {out} ("
                + ", ".join(f"{k} {v}" for k, v in splits.items())
                + (
                    ""
                    if zoo.manifest.get("published_split")
                    else "; no --split-file: not the published split"
                )
                + ")",
            )
        )
        return
    if source is not None or checkpoints is None or metrics is None:
        raise WeightspaceError(
            "zoo import needs --checkpoints DIR --metrics TABLE (your own sweep), or "
            "--format NAME SOURCE (a published release)"
        )
    if split_file is not None or all_steps or drop_nonfinite:
        raise WeightspaceError("--split-file, --all-steps and --drop-nonfinite need --format")
    zoo, skipped = import_zoo(
        checkpoints,
        metrics,
        out,
        activation=activation,
        spec=spec,
        model=model,
        rename=parse_mapping(mapping),
        skip_bad_rows=skip_bad_rows,
        console=console,
    )
    console.print(Text.assemble(("imported", "green"), f" {len(zoo)} checkpoints into {out}"))
    if skipped:
        table = Table(
            title=Text(f"{len(skipped)} bad rows skipped (listed in {out}/manifest.json, 'failed')")
        )
        table.add_column("line" if skipped[0]["line"] is not None else "row", justify="right")
        table.add_column("file", overflow="fold")
        table.add_column("problem", overflow="fold")
        for item in skipped:
            where = item["line"] if item["line"] is not None else item["row"] + 1
            table.add_row(str(where), Text(item["file"]), Text(item["problem"]))
        console.print(table)


@zoo_app.command("info")
def info(
    directory: Path = typer.Argument(..., help="Zoo directory."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Runs, checkpoints, tasks, architectures, accuracy quantiles and size of a zoo."""
    from weightspace.zoo.store import Zoo

    summary = Zoo.open(directory).info()
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"zoo {directory}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("kind", f"{summary['kind']} (format {summary['format_version']})")
    table.add_row("runs", str(summary["runs"]))
    table.add_row("checkpoints", str(summary["checkpoints"]))
    table.add_row("epochs", ", ".join(map(str, summary["epochs"])) or "—")
    table.add_row("tasks", ", ".join(f"{k} ({v})" for k, v in summary["tasks"].items()))
    table.add_row(
        "architectures", "\n".join(f"{k} ({v})" for k, v in summary["architectures"].items())
    )
    quantiles = summary["test_accuracy_quantiles"]
    table.add_row(
        "test accuracy",
        "  ".join(f"{k}={v:.3f}" for k, v in quantiles.items() if v is not None) or "—",
    )
    table.add_row("failed / skipped rows", f"{summary['failed']} / {summary['skipped']}")
    table.add_row("size on disk", f"{summary['size_bytes'] / 2**20:.1f} MiB")
    Console().print(table)
