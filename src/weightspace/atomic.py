"""Atomic file writes: a temporary file beside the target, then ``os.replace``.

A reader never sees a half-written file, and a writer killed midway leaves the previous file
intact; its leftover temporary carries :data:`TEMP_MARK` in its name so it can be swept away.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["TEMP_MARK", "atomic_write", "atomic_write_bytes"]

TEMP_MARK = ".tmp-"


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then ``os.replace`` it into place.

    The temporary name contains ``.tmp-`` so leftovers of a killed process can be swept away.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARK}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))
