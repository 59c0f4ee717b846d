"""Zoos on shared storage named by a URI: anything :func:`pyarrow.fs.FileSystem.from_uri`
resolves (``file:///shared/zoo``, ``s3://bucket/zoo``, ``gs://...``, ``hdfs://...``).

A zoo at a URI is generated through a local *mirror* directory (the driver's working copy):

```
download (resume): URI ──► MIRROR        every file already there
train, on Ray:     each task trains its shard into a node-local directory and uploads it:
                   weights/NAME.safetensors, parts/NAME.skipped.json, then parts/NAME.parquet
                   (the part table last: its presence marks the shard finished, as on disk);
                   the driver fetches the shard into MIRROR as each task ends
publish:           MIRROR ──► URI        the manifest and table (and whatever is missing there)
```

Every upload goes to a temporary name and is then moved into place, so a reader (or a resumed
job) never takes a half-written file for a finished one; on object stores a move is a copy,
but each object is written whole anyway. Nodes need no shared filesystem: only the URI.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from weightspace.errors import WeightspaceError

__all__ = [
    "StorageError",
    "is_uri",
    "resolve",
    "download",
    "upload",
    "missing_files",
    "mirror_directory",
    "remove_mirror",
]


class StorageError(WeightspaceError):
    """A URI cannot be resolved, read or written."""


def is_uri(text: str | Path) -> bool:
    """Whether ``text`` names storage by URI (``scheme://...``) rather than a local path."""
    return "://" in str(text)


def resolve(uri: str) -> tuple[Any, str]:
    """``(filesystem, path)`` of ``uri`` (:func:`pyarrow.fs.FileSystem.from_uri`).

    Raises:
        StorageError: pyarrow does not know the scheme, or the storage cannot be reached.
    """
    import pyarrow.fs

    try:
        filesystem, path = pyarrow.fs.FileSystem.from_uri(uri)
    except (ValueError, OSError, ImportError) as exc:
        raise StorageError(f"{uri}: cannot open this storage URI ({exc})") from None
    return filesystem, path.rstrip("/")


def _files_under(filesystem: Any, path: str) -> list[str]:
    """Paths of the files under ``path`` (none where it does not exist), relative to it."""
    import pyarrow.fs

    if filesystem.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        return []
    infos = filesystem.get_file_info(pyarrow.fs.FileSelector(path, recursive=True))
    return sorted(
        info.path[len(path) :].lstrip("/")
        for info in infos
        if info.type == pyarrow.fs.FileType.File and ".tmp-" not in info.base_name
    )


def download(uri: str, local: Path, names: Iterable[str] | None = None) -> list[str]:
    """Copy files of ``uri`` into the directory ``local`` (``names``, relative paths; default
    every finished file there); the names copied."""
    import pyarrow.fs

    filesystem, base = resolve(uri)
    wanted = _files_under(filesystem, base) if names is None else list(names)
    copied = []
    for name in wanted:
        target = local / name
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            pyarrow.fs.copy_files(
                f"{base}/{name}",
                str(temporary),
                source_filesystem=filesystem,
                destination_filesystem=pyarrow.fs.LocalFileSystem(),
            )
        except (OSError, ValueError) as exc:
            raise StorageError(f"{uri}/{name}: cannot download ({exc})") from None
        temporary.replace(target)
        copied.append(name)
    return copied


def missing_files(local: Path, uri: str) -> list[str]:
    """Files of the directory ``local`` (relative paths) that ``uri`` lacks, or holds with
    another size."""
    filesystem, base = resolve(uri)
    there = {
        n: filesystem.get_file_info(f"{base}/{n}").size for n in _files_under(filesystem, base)
    }
    return [
        str(p.relative_to(local))
        for p in sorted(local.rglob("*"))
        if p.is_file()
        and ".tmp-" not in p.name
        and there.get(str(p.relative_to(local))) != p.stat().st_size
    ]


def upload(local: Path, uri: str, names: Iterable[str] | None = None) -> list[str]:
    """Copy files of the directory ``local`` (``names``, relative paths, in that order; default
    :func:`missing_files`) to ``uri``, each under a temporary name then moved into place; the
    names copied."""
    import pyarrow.fs

    filesystem, base = resolve(uri)
    names = missing_files(local, uri) if names is None else list(names)
    copied = []
    for name in names:
        target = f"{base}/{name}"
        temporary = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            filesystem.create_dir(target.rpartition("/")[0], recursive=True)
            pyarrow.fs.copy_files(
                str(local / name),
                temporary,
                source_filesystem=pyarrow.fs.LocalFileSystem(),
                destination_filesystem=filesystem,
            )
            filesystem.move(temporary, target)
        except (OSError, ValueError) as exc:
            raise StorageError(f"{uri}/{name}: cannot upload ({exc})") from None
        copied.append(name)
    return copied


def mirror_directory(uri: str) -> Path:
    """A fresh local directory to mirror ``uri`` in (the caller removes it)."""
    resolve(uri)  # a URI pyarrow cannot open fails here, before anything is trained
    return Path(tempfile.mkdtemp(prefix="weightspace-zoo-mirror-"))


def remove_mirror(mirror: Path) -> None:
    """Remove a mirror made by :func:`mirror_directory`."""
    shutil.rmtree(mirror, ignore_errors=True)
