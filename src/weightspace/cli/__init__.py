"""The ``weightspace`` command-line interface (Typer + Rich).

Each concept registers its commands on :data:`weightspace.cli.app.app` from its own module;
:func:`main` imports only the module that owns the command being run (all of them for the
top-level ``--help``), answers ``--version`` before building any command, and turns
:class:`~weightspace.errors.WeightspaceError` into a one-line message on stderr and exit code 1,
never a traceback. Command modules import nothing heavy at module level, so start-up costs
Typer's own import and no torch (``benchmarks/bench_startup.py``).
"""

from __future__ import annotations

import importlib
import sys

from weightspace.cli.app import app

__all__ = ["app", "main"]

#: command modules: each imports only Typer and its option types at module level and defers
#: the implementation (torch, PyG, FAISS, ...) to the command body, so ``--help`` and
#: ``--version`` never load torch
_COMMAND_MODULES = (
    "inspect",
    "convert",
    "zoo",
    "train",
    "embed",
    "index",
    "search",
    "bench",
    "predict",
    "merge",
    "synth",
)

#: command (or command group) name → the module that registers it, so ``weightspace NAME ...``
#: builds only that module's commands; a name missing here falls back to registering them all
#: (``tests/test_startup.py`` checks this table against what the modules register)
_COMMAND_OWNERS: dict[str, str] = {
    "inspect": "inspect",
    "convert": "convert",
    "zoo": "zoo",
    "train": "train",
    "embed": "embed",
    "index": "index",
    "search": "search",
    "serve": "search",
    "bench": "bench",
    "predict": "predict",
    "merge": "merge",
    "sample": "synth",
    "train-decoder": "synth",
}
#: root options that take a value (``--max-params 1000 inspect ...``)
_ROOT_VALUE_OPTIONS = frozenset(
    {"--max-params", "--max-nodes", "--max-edges", "--max-archive-bytes"}
)


def _import_command_module(name: str) -> None:
    try:
        importlib.import_module(f"weightspace.cli.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"weightspace.cli.{name}":
            raise


def _register(modules: tuple[str, ...] = _COMMAND_MODULES) -> None:
    """Import the command modules (each registers its commands on :data:`app`)."""
    for name in modules:
        _import_command_module(name)


def _command_name(args: list[str]) -> str | None:
    """The command word in ``args`` (the first argument that is not a root option or its value)."""
    expects_value = False
    for arg in args:
        if expects_value:
            expects_value = False
        elif arg in _ROOT_VALUE_OPTIONS:
            expects_value = True
        elif not arg.startswith("-"):
            return arg
    return None


def _fail(message: str) -> None:
    """Print ``error: message`` on stderr (rich loads only here, not on every start) and exit 1."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(
        f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True
    )
    sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``weightspace`` console script."""
    from weightspace.errors import WeightspaceError

    args = sys.argv[1:] if argv is None else list(argv)
    command = _command_name(args)
    if command is None and "--version" in args and "--help" not in args:
        from weightspace.cli.app import version_line

        print(version_line())  # no command needs building for this
        return
    owner = _COMMAND_OWNERS.get(command or "")
    _register((owner,) if owner is not None else _COMMAND_MODULES)
    try:
        app(args=args)  # standalone mode: Typer handles usage errors and --help itself
    except WeightspaceError as exc:
        _fail(str(exc))
    except OSError as exc:  # unreadable paths, full disks: a message, not a traceback
        _fail(str(exc))
    except MemoryError:
        _fail(
            "out of memory; lower --max-params / --max-edges to refuse such models up front, or "
            "use a machine with more memory"
        )
