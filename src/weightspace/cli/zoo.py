"""``weightspace zoo``: generate, import and describe model zoos."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from weightspace.cli.app import app

zoo_app = typer.Typer(
    help="Model zoos: train one from a preset (generate), bring your own sweep (import), "
    "summarise one (info), list the presets (presets).",
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
    preset: str = typer.Option(
        ...,
        "--preset",
        help="tiny, small, medium, large, wild-park-small, inr-digits, inr-digits-shared, "
        "vit-digits or lora (`weightspace zoo presets` lists what each holds).",
    ),
    out: str = typer.Option(
        ...,
        "--out",
        help="Zoo directory, or a pyarrow.fs URI (file:///..., s3://...; with --ray each node "
        "uploads its own shards); an unfinished zoo resumes.",
    ),
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
    ray: bool = typer.Option(
        False,
        "--ray",
        help="Train shards as Ray tasks (pip install 'weightspace[distributed]'); OUT must be "
        "shared by every node.",
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Ray cluster to join with --ray (default: a local one)."
    ),
) -> None:
    """Train a zoo of small networks; interrupted, the same command resumes."""
    from rich.console import Console

    from weightspace.distributed.storage import is_uri
    from weightspace.zoo.generate import generate_zoo
    from weightspace.zoo.presets import get_preset

    console = Console(stderr=True)
    recipe = get_preset(preset).with_overrides(
        tasks=_split_names(tasks), archs=_split_names(archs), runs=runs, epochs=epochs
    )
    uri = out if is_uri(out) else None
    options = {
        "seed": seed,
        "device": device,
        "workers": workers,
        "threads": threads,
        "show_progress": True,
        "console": console,
        "shard_runner": _ray_runner(ray_address, workers, threads, uri) if ray else None,
    }
    if uri is not None:  # weightspace.distributed.storage: through a local mirror
        from weightspace.distributed.ray_zoo import generate_to_uri

        info = generate_to_uri(uri, recipe, **options)
    else:
        zoo = generate_zoo(Path(out), recipe, **options)
        info = {**zoo.info(), "skipped": len(zoo.manifest.get("skipped", []))}
    console.print(
        f"[green]zoo ready[/] {out}: {info['runs']} runs, {info['checkpoints']} checkpoints, "
        f"{info['skipped']} skipped (diverged)"
    )


def _ray_runner(address: str | None, workers: int, threads: int, uri: str | None) -> object:
    from weightspace.distributed.ray_zoo import ray_shard_runner

    return ray_shard_runner(address, num_workers=workers, threads=threads, uri=uri)


#: CLI option → keyword of the release importers (each format takes the ones it names).
_FORMAT_OPTIONS = {
    "--split-file": "split_file",
    "--all-steps": "final_step",
    "--drop-nonfinite": "drop_nonfinite",
    "--activation": "activation",
    "--image-size": "image_size",
    "--w0": "w0",
    "--num-classes": "num_classes",
    "--accuracy-key": "accuracy_key",
    "--task-name": "task",
}


def _release_options(release_format: str, given: dict[str, object]) -> dict[str, object]:
    """The importer's keyword arguments from the options given, refusing those it lacks."""
    import inspect

    from weightspace.errors import WeightspaceError
    from weightspace.zoo.formats import _importer

    accepted = inspect.signature(_importer(release_format)).parameters
    options: dict[str, object] = {}
    for flag, value in given.items():
        keyword = _FORMAT_OPTIONS[flag]
        if keyword not in accepted:
            raise WeightspaceError(f"{flag} does not apply to --format {release_format}")
        options[keyword] = None if flag == "--all-steps" else value
    return options


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
        "(Unterthiner et al. 2020: weights.npy, metrics.csv.gz, layout.csv), model-zoo "
        "(Schürholt et al. 2022: a folder per model with params.json, result.json, "
        "checkpoint_*/checkpoints), inr (DWSNets/NFN/Neural Graphs SIRENs: "
        "*_{split}_{label}_{i}/checkpoints/*.pth), wild-park (Neural Graphs' CNN Wild Park: "
        "cifar10_zooV2/*/*/checkpoint.pt).",
    ),
    split_file: Path | None = typer.Option(
        None,
        "--split-file",
        help="The published split, so train/val/test match the published figures: "
        "small-cnn-zoo: NFN's *_split.csv shuffle order; inr: mnist_splits.json / "
        "fmnist_splits.json; wild-park: cnn_park_splits.json.",
    ),
    all_steps: bool = typer.Option(
        False, "--all-steps", help="small-cnn-zoo: keep every checkpoint, not only step 86."
    ),
    drop_nonfinite: bool = typer.Option(
        False, "--drop-nonfinite", help="--format: leave out NaN/Inf models instead of failing."
    ),
    image_size: int | None = typer.Option(
        None, "--image-size", min=1, help="small-cnn-zoo, model-zoo, wild-park: input side."
    ),
    w0: float | None = typer.Option(
        None, "--w0", help="inr: the SIRENs' sine frequency (default 30, as DWSNets)."
    ),
    num_classes: int | None = typer.Option(
        None, "--num-classes", min=2, help="inr: declared image classes (default 10)."
    ),
    accuracy_key: str | None = typer.Option(
        None, "--accuracy-key", help="model-zoo: result.json field of test accuracy (test_acc)."
    ),
    task_name: str | None = typer.Option(
        None,
        "--task-name",
        help="Name of the zoo's task (default: the release's dataset or directory name; "
        "'unknown' for a sweep without a task column).",
    ),
    task_data: Path | None = typer.Option(
        None,
        "--task-data",
        help="DATA.npz with x_train, y_train, x_test, y_test (+ x_val, y_val, num_classes): the "
        "task's data, stored in the zoo so chance levels, probes, L/F retrieval and the "
        "function head work as for built-in tasks. Read without pickle; nothing is executed.",
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
    (--format NAME SOURCE), into a zoo.

    Every row is checked before anything is written: accuracies in [0, 1], whole epochs >= 0,
    files inside --checkpoints, no file twice, readable checkpoints.
    Bad rows are listed with their line and nothing is written, unless --skip-bad-rows.
    A malformed release is refused with one line naming the file and the field.
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from weightspace.errors import WeightspaceError
    from weightspace.zoo.importer import import_zoo, parse_mapping
    from weightspace.zoo.task_data import read_task_data

    console = Console(stderr=True)
    data = read_task_data(task_data) if task_data is not None else None
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

        given = {
            "--split-file": split_file,
            "--all-steps": all_steps or None,
            "--drop-nonfinite": drop_nonfinite or None,
            "--activation": activation,
            "--image-size": image_size,
            "--w0": w0,
            "--num-classes": num_classes,
            "--accuracy-key": accuracy_key,
            "--task-name": task_name,
        }
        options = _release_options(
            release_format, {k: v for k, v in given.items() if v is not None}
        )
        zoo = import_release(release_format, source, out, task_data=data, **options)
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
    format_only = {
        "--split-file": split_file,
        "--all-steps": all_steps,
        "--drop-nonfinite": drop_nonfinite,
        "--image-size": image_size,
        "--w0": w0,
        "--num-classes": num_classes,
        "--accuracy-key": accuracy_key,
    }
    used = [flag for flag, value in format_only.items() if value]
    if used:
        raise WeightspaceError(f"{', '.join(used)} need --format")
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
        task=task_name,
        task_data=data,
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


@zoo_app.command("presets")
def presets() -> None:
    """The zoo presets `zoo generate --preset` knows: name, runs and what each holds."""
    from rich.console import Console
    from rich.table import Table

    from weightspace.zoo.presets import PRESETS

    table = Table("preset", "tasks", "architectures", "runs each", "contents")
    for name, preset in PRESETS.items():
        table.add_row(
            name, str(len(preset.tasks)), str(len(preset.archs)), str(preset.runs),
            preset.description,
        )  # fmt: skip
    Console().print(table)
