"""The Typer application every command module registers on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="weightspace",
    help="Symmetry-aware embeddings of neural-network checkpoints: inspect, build zoos, train, "
    "search, predict, merge and benchmark.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Symmetry-aware embeddings of neural-network checkpoints."""
