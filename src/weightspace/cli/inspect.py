"""``weightspace inspect``: a checkpoint's architecture and neural-graph size."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from weightspace.cli.app import app
from weightspace.cli.convert import SPEC_FORMAT_HELP
from weightspace.cli.options import (
    Activation,
    AllowNonfinite,
    ModelFactory,
    SpecFile,
    architecture_kwargs,
)


def describe(path: Path, **kwargs) -> dict:
    """Everything ``inspect`` reports about one checkpoint, as a JSON-ready dict."""
    from weightspace.graph import to_graph
    from weightspace.ingest import load_checkpoint, spec_summary

    spec, state = load_checkpoint(path, **kwargs)
    graph = to_graph(spec, state, check=False)
    summary = spec_summary(spec)
    return {
        "file": str(path),
        "architecture": spec.summary(),
        "input_shape": summary["input_shape"],
        "num_parameters": spec.num_parameters,
        "num_nodes": int(graph.num_nodes),
        "num_edges": int(graph.num_edges),
        "edge_features": int(graph.edge_attr.shape[1]),
        "activations": sorted(set(spec.activations)),
        "layers": summary["layers"],
        "spec": spec.to_dict(),
    }


_HELP = (
    "Print a checkpoint's architecture (layers, shapes, activations, parameter count) and the "
    "size of its neural graph (nodes, edges).\n\n"
    "With --json, the output's 'spec' member is the architecture in the spec format below; save "
    "the whole output and give it back to any command as --spec FILE."
)


@app.command(help=_HELP, epilog=SPEC_FORMAT_HELP)
def inspect(
    file: Annotated[Path, typer.Argument(help="Checkpoint: .safetensors, .pt or .pth.")],
    activation: Activation = None,
    spec: SpecFile = None,
    model: ModelFactory = None,
    allow_nonfinite: AllowNonfinite = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print one checkpoint's architecture and graph size (see ``_HELP``)."""
    info = describe(file, **architecture_kwargs(activation, spec, model, allow_nonfinite))
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{file.name}: {info['architecture']}", title_justify="left")
    for column in ("layer", "kind", "shape / attributes"):
        table.add_column(column)
    for layer in info["layers"]:
        if "weight_shape" in layer:
            detail = f"weight {layer['weight_shape']}" + (" + bias" if layer["bias"] else "")
        else:
            detail = ", ".join(f"{k}={v}" for k, v in layer.items() if k not in {"name", "kind"})
        table.add_row(layer["name"], layer["kind"], detail)
    console.print(table)
    console.print(
        f"input shape {info['input_shape']} · {info['num_parameters']:,} parameters · "
        f"graph: {info['num_nodes']:,} nodes, {info['num_edges']:,} edges "
        f"({info['edge_features']} features per edge)"
    )
