"""The ``weightspace`` command-line interface (Typer + Rich).

Each concept registers its commands on :data:`weightspace.cli.app.app` from its own module;
:func:`main` imports them all and turns :class:`~weightspace.errors.WeightspaceError` into a
one-line message on stderr and exit code 1, never a traceback.
"""

from __future__ import annotations

import importlib
import sys

from weightspace.cli.app import app

__all__ = ["app", "main"]

_COMMAND_MODULES = ("inspect", "zoo", "train", "index", "bench", "synth")


def _register() -> None:
    for name in _COMMAND_MODULES:
        try:
            importlib.import_module(f"weightspace.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"weightspace.cli.{name}":
                raise


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``weightspace`` console script."""
    from rich.console import Console

    from weightspace.errors import WeightspaceError

    _register()
    try:
        app(args=argv, standalone_mode=False)
    except WeightspaceError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        Console(stderr=True).print("[yellow]interrupted[/]")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click usage errors etc.
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        raise
