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
    from rich.markup import escape

    from weightspace.errors import WeightspaceError

    _register()
    try:
        app(args=argv)  # standalone mode: Typer handles usage errors and --help itself
    except WeightspaceError as exc:
        Console(stderr=True).print(
            f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        sys.exit(1)
    except OSError as exc:  # unreadable paths, full disks: a message, not a traceback
        Console(stderr=True).print(
            f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        sys.exit(1)
    except MemoryError:
        Console(stderr=True).print(
            "[bold red]error:[/] out of memory; lower --max-params / --max-edges to refuse such "
            "models up front, or use a machine with more memory",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)
