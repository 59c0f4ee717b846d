"""``weightspace search`` and ``weightspace serve``: an index's nearest models, from the command
line or over HTTP. Both load the encoder the index records (never code an index names) and
check its fingerprint (:func:`weightspace.cli.index.index_embedder`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from weightspace.cli.app import app
from weightspace.cli.index import (
    IndexPath,
    Schema,
    checkpoint_loader,
    domain_checked,
    index_embedder,
    open_index,
)
from weightspace.cli.options import (
    Activation,
    AllowNonfinite,
    EncoderOverride,
    ModelFactory,
    SpecFile,
)


def _report_query_twin(query: Path, hits: list[Any]) -> None:
    """Name a stored twin of the query (``a.safetensors`` for ``a.pt``) among the hits."""
    from weightspace.twins import find_twins, report_twins, twin_of

    other = twin_of(query, [hit.record.path for hit in hits])
    if other is None:
        return
    hit = next(h for h in hits if Path(h.record.path) == other)
    report_twins(
        find_twins([query, other]),
        lambda group: f"the index holds {other} as id {hit.record.id} (rank {hit.rank})",
    )


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
    encoder: EncoderOverride = None,
    activation: Activation = None,
    spec: SpecFile = None,
    model: ModelFactory = None,
    allow_nonfinite: AllowNonfinite = False,
    schema: Schema = "weightspace",
) -> None:
    """The stored models nearest to a checkpoint, with cosine score and metadata. A plain state
    dict the index has read before needs no architecture flags: its stored spec is used."""
    index = open_index(index_path, schema)
    embedder = index_embedder(index, encoder)
    base = index.file_loader(checkpoint_loader(activation, spec, model, allow_nonfinite))
    loaded = domain_checked(base, embedder)(query, None)
    [hits] = index.search_models([loaded], embedder, k=k, filters=filters)
    _report_query_twin(query, hits)
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
    encoder: EncoderOverride = None,
    max_upload_mb: Annotated[
        float, typer.Option("--max-upload-mb", min=0.001, help="Largest accepted upload.")
    ] = 64.0,
    max_concurrent_embeddings: Annotated[
        int,
        typer.Option(
            "--max-concurrent-embeddings",
            min=1,
            help="Uploads loaded and embedded at once; peak memory grows with it.",
        ),
    ] = 2,
    max_queued_uploads: Annotated[
        int,
        typer.Option(
            "--max-queued-uploads",
            min=0,
            help="Uploads waiting for an embedding slot; more get 429 before being read.",
        ),
    ] = 32,
    max_params: Annotated[
        int | None,
        typer.Option("--max-params", min=0, help="Parameters per uploaded model (0: no cap)."),
    ] = None,
    max_nodes: Annotated[
        int | None,
        typer.Option("--max-nodes", min=0, help="Neural-graph nodes per uploaded model."),
    ] = None,
    max_edges: Annotated[
        int | None,
        typer.Option(
            "--max-edges", min=0, help="Neural-graph edges per uploaded model (default 2M)."
        ),
    ] = None,
    schema: Schema = "weightspace",
) -> None:
    """Serve the index over HTTP: POST /search, POST /predict, GET /models/{id}, GET /health;
    OpenAPI docs at /docs. Caps default to weightspace.limits (WEIGHTSPACE_MAX_* variables),
    edges to 2M (about 1.5 GB per embedding with the default encoder)."""
    from weightspace.extras import require_extra

    require_extra("serve", feature="weightspace serve")
    import uvicorn

    from weightspace.serve import ServerSettings, create_app, server_limits

    index = open_index(index_path, schema)
    embedder = index_embedder(index, encoder)
    settings = ServerSettings(
        max_upload_bytes=int(max_upload_mb * 2**20),
        max_concurrent_embeddings=max_concurrent_embeddings,
        max_queued_uploads=max_queued_uploads,
        limits=server_limits().with_overrides(
            max_params=max_params, max_nodes=max_nodes, max_edges=max_edges
        ),
    )
    application = create_app(index, embedder, settings=settings)
    uvicorn.run(application, host=host, port=port, log_level="warning")
