"""Atomic file writes: a temporary file beside the target, then ``os.replace``.

A reader never sees a half-written file, and a writer killed midway leaves the previous file
intact; its leftover temporary carries :data:`TEMP_MARK` in its name so it can be swept away.

The temporary is created with mode ``0o666`` filtered by the process umask, as ``open(path,
"w")`` would create the target itself (usually ``0644``), not with :func:`tempfile.mkstemp`'s
private ``0600``: ``os.replace`` keeps the temporary's mode, so that mode is the output's. A
writer that swaps in a file of its own mode (safetensors writes through a private temporary) is
put back to that mode before the replace.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

__all__ = ["FILE_MODE", "TEMP_MARK", "atomic_write", "atomic_write_bytes", "create_temporary"]

TEMP_MARK = ".tmp-"

#: Mode asked for when creating an output; the kernel removes the umask's bits from it.
FILE_MODE = 0o666


def create_temporary(path: str | Path) -> Path:
    """Create an empty, unique temporary file beside ``path`` and return its path.

    Its name is ``.NAME.tmp-XXXXXXXXXXXX``; it is created exclusively (``O_EXCL``, so never
    another process's file) with mode :data:`FILE_MODE` minus the umask.
    """
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        candidate = path.parent / f".{path.name}{TEMP_MARK}{secrets.token_hex(6)}"
        try:
            fd = os.open(candidate, flags, FILE_MODE)
        except FileExistsError:  # pragma: no cover - 48 random bits collided
            continue
        os.close(fd)
        return candidate


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then ``os.replace`` it into place.

    The temporary name contains ``.tmp-`` so leftovers of a killed process can be swept away;
    the file ends with mode ``0o666 & ~umask`` (``0644`` under the usual umask ``022``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = create_temporary(path)
    mode = stat.S_IMODE(tmp.stat().st_mode)  # FILE_MODE minus the umask, set by the kernel
    try:
        write(tmp)
        if stat.S_IMODE(tmp.stat().st_mode) != mode:
            # some writers (safetensors >= 0.7) replace the file with their own 0600 temporary
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))
