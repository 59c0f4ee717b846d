"""``weightspace index build|add``, ``weightspace search`` and ``weightspace serve``."""

from __future__ import annotations

import functools
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

index_app = typer.Typer(
    help="Build and extend a persistent vector index of checkpoints (FAISS + SQLite).",
    no_args_is_help=True,
)
app.add_typer(index_app, name="index")

Inputs = Annotated[
    list[Path],
    typer.Argument(help="Model zoo directories, checkpoint files, or directories of checkpoints."),
]
IndexPath = Annotated[Path, typer.Argument(help="The index directory.")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Models embedded at once.")]


def _loader(activation: str | None, spec: Path | None, model: str | None, allow: bool) -> Any:
    from weightspace.index import load_model_file

    return functools.partial(load_model_file, **architecture_kwargs(activation, spec, model, allow))


def _progress_printer() -> Any:
    from rich.console import Console

    console = Console(stderr=True)

    def report(stage: str, done: int, total: int) -> None:
        if not console.is_terminal:
            return
        if stage == "embed":
            console.print(f"embedded {done} models", end="\r", highlight=False)
        elif done == total:
            console.print(f"wrote {total} new models          ", highlight=False)

    return report


def _summary(index: Any, report: Any) -> str:
    store = index.store
    recall = (
        "exact search"
        if store.recall_at_10 is None
        else f"{store.active_kind} index, measured recall@10 {store.recall_at_10:.3f}"
    )
    return (
        f"{len(report.added)} added, {len(report.duplicates)} already stored; "
        f"{len(index)} models in {index.path} ({recall})"
    )


@index_app.command("build")
def build(
    inputs: Inputs,
    encoder: Annotated[
        str,
        typer.Option(
            "--encoder",
            help="Encoder directory (from `weightspace train`) or an importable 'module:attr'.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Index directory to create.")],
    kind: Annotated[
        str,
        typer.Option(
            "--kind",
            help="auto: exact below --approximate-threshold vectors, IVF above; or flat, ivf, "
            "hnsw.",
        ),
    ] = "auto",
    approximate_threshold: Annotated[
        int, typer.Option("--approximate-threshold", min=1, help="Where 'auto' turns to IVF.")
    ] = 20_000,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace an existing index once the new one is built."),
    ] = False,
    batch_size: BatchSize = 64,
    activation: Activation = None,
    spec: SpecFile = None,
    model: ModelFactory = None,
    allow_nonfinite: AllowNonfinite = False,
) -> None:
    """Embed checkpoints and store them as a new index; a failed build leaves any previous
    index at OUT untouched."""
    from weightspace.index import ModelIndex, iter_inputs, load_embedder

    if kind not in ("auto", "flat", "ivf", "hnsw"):
        raise typer.BadParameter(f"unknown kind {kind!r}; use auto, flat, ivf or hnsw")
    embedder = load_embedder(encoder)
    encoder_ref = str(Path(encoder).resolve()) if Path(encoder).exists() else encoder
    models = iter_inputs(inputs, loader=_loader(activation, spec, model, allow_nonfinite))
    index, report = ModelIndex.build(
        out,
        models,
        embedder,
        encoder=encoder_ref,
        kind=kind,  # type: ignore[arg-type]
        approximate_threshold=approximate_threshold,
        overwrite=overwrite,
        batch_size=batch_size,
        on_progress=_progress_printer(),
    )
    typer.echo(_summary(index, report))


@index_app.command("add")
def add(
    index_path: IndexPath,
    inputs: Inputs,
    encoder: Annotated[
        str | None,
        typer.Option("--encoder", help="Override the encoder recorded in the index."),
    ] = None,
    batch_size: BatchSize = 64,
    activation: Activation = None,
    spec: SpecFile = None,
    model: ModelFactory = None,
    allow_nonfinite: AllowNonfinite = False,
) -> None:
    """Embed checkpoints and add those not stored yet (same content hash) to an index."""
    from weightspace.index import ModelIndex, iter_inputs

    index = ModelIndex.open(index_path)
    embedder = _index_embedder(index, encoder)
    models = iter_inputs(inputs, loader=_loader(activation, spec, model, allow_nonfinite))
    report = index.add(models, embedder, batch_size=batch_size, on_progress=_progress_printer())
    typer.echo(_summary(index, report))


@index_app.command("info")
def info(index_path: IndexPath) -> None:
    """Print an index's manifest: size, encoder, FAISS kind and measured recall, as JSON."""
    from weightspace.index import ModelIndex

    typer.echo(json.dumps(ModelIndex.open(index_path).info(), indent=2))


def _index_embedder(index: Any, encoder: str | None) -> Any:
    """The encoder recorded in the index (or ``encoder``), checked against its fingerprint."""
    from weightspace.errors import WeightspaceError
    from weightspace.index import load_embedder

    reference = encoder or index.encoder
    if reference is None:
        raise WeightspaceError(f"{index.path}: records no encoder; give one with --encoder")
    embedder = load_embedder(reference)
    index.check_embedder(embedder)
    return embedder


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@app.command()
def search(
    index_path: IndexPath,
    query: Annotated[Path, typer.Argument(help="The query checkpoint file.")],
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Neighbours to return.")] = 10,
    filters: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            help="Keep only models whose metadata has key=value (task=digits, epoch=10, "
            "path=..., arch_summary=...); repeatable.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    encoder: Annotated[
        str | None, typer.Option("--encoder", help="Override the encoder recorded in the index.")
    ] = None,
    activation: Activation = None,
    spec: SpecFile = None,
    model: ModelFactory = None,
    allow_nonfinite: AllowNonfinite = False,
) -> None:
    """The stored models nearest to a checkpoint, with cosine score and metadata."""
    from weightspace.index import ModelIndex

    index = ModelIndex.open(index_path)
    embedder = _index_embedder(index, encoder)
    loaded = _loader(activation, spec, model, allow_nonfinite)(query, None)
    [hits] = index.search_models([loaded], embedder, k=k, filters=filters)
    if as_json:
        typer.echo(json.dumps([hit.to_dict() for hit in hits], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    metric_keys = ["task", "run", "epoch", "test_accuracy"]
    shown = [key for key in metric_keys if any(key in hit.record.metrics for hit in hits)]
    table = Table(title=f"{len(hits)} nearest of {len(index)} models to {query}")
    for column in ["rank", "score", "id", "path", "arch", *shown]:
        table.add_column(column, justify="right" if column in ("rank", "score", "id") else "left")
    for hit in hits:
        record = hit.record
        table.add_row(
            str(hit.rank),
            f"{hit.score:.4f}",
            str(record.id),
            record.path,
            record.spec_summary,
            *(_cell(record.metrics.get(key)) for key in shown),
        )
    Console(width=200).print(table)


@app.command()
def serve(
    index_path: IndexPath,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8000,
    encoder: Annotated[
        str | None, typer.Option("--encoder", help="Override the encoder recorded in the index.")
    ] = None,
    max_upload_mb: Annotated[
        float, typer.Option("--max-upload-mb", min=0.001, help="Largest accepted upload.")
    ] = 64.0,
) -> None:
    """Serve the index over HTTP: POST /search, POST /predict, GET /models/{id}, GET /health;
    OpenAPI docs at /docs."""
    import uvicorn

    from weightspace.index import ModelIndex
    from weightspace.serve import create_app

    index = ModelIndex.open(index_path)
    embedder = _index_embedder(index, encoder)
    application = create_app(index, embedder, max_upload_bytes=int(max_upload_mb * 2**20))
    uvicorn.run(application, host=host, port=port, log_level="info")
