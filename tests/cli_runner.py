"""Run the ``weightspace`` command line in the test process, as a user would call it."""

from __future__ import annotations

import os

import pytest


def run_cli(
    capsys: pytest.CaptureFixture[str], *args: str | os.PathLike[str]
) -> tuple[int, str, str]:
    """Call the ``weightspace`` entry point with ``args``: (exit code, stdout, stderr).

    A ``SystemExit`` (click's way of ending) becomes its exit code; any other exception escapes
    and fails the test, so a traceback where the CLI should print a one-line error is caught.
    """
    from weightspace.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
