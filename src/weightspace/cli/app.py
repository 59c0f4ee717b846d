"""The Typer application every command module registers on."""

from __future__ import annotations

from typing import Annotated, Any

import typer

app = typer.Typer(
    name="weightspace",
    help="Symmetry-aware embeddings of neural-network checkpoints: inspect, build zoos, train, "
    "search, predict, merge and benchmark.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _limit_option(name: str, what: str) -> Any:
    from weightspace.limits import Limits

    field = name.replace("-", "_")
    return typer.Option(
        f"--max-{name}",
        min=0,
        help=f"Refuse models with more {what} (0: no limit; default "
        f"{getattr(Limits(), 'max_' + field):,} or WEIGHTSPACE_MAX_{field.upper()}). Give it "
        "before the command.",
    )


def version_line() -> str:
    """``weightspace X.Y.Z``: the installed distribution's version (``importlib.metadata``)."""
    import weightspace

    return f"weightspace {weightspace.__version__}"


def print_version(value: bool) -> None:
    """The eager ``--version`` option: print :func:`version_line` and exit."""
    if value:
        typer.echo(version_line())
        raise typer.Exit()


@app.callback()
def _root(
    max_params: Annotated[int | None, _limit_option("params", "parameters")] = None,
    max_nodes: Annotated[int | None, _limit_option("nodes", "neural-graph nodes")] = None,
    max_edges: Annotated[int | None, _limit_option("edges", "neural-graph edges")] = None,
    max_archive_bytes: Annotated[
        int | None, _limit_option("archive-bytes", "decompressed bytes in a .pt archive")
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=print_version,
            help="Print the installed weightspace version and exit.",
        ),
    ] = False,
) -> None:
    """Symmetry-aware embeddings of neural-network checkpoints."""
    from weightspace.limits import limits_from_environment, set_default_limits

    # every invocation starts from the environment, so one in-process call cannot leak into the
    # next (tests run many through one interpreter)
    set_default_limits(
        limits_from_environment().with_overrides(
            max_params=max_params,
            max_nodes=max_nodes,
            max_edges=max_edges,
            max_archive_bytes=max_archive_bytes,
        )
    )
