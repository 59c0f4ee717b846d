"""Twin checkpoints: ``a.pt`` and ``a.safetensors`` side by side, the same model saved twice.

A user who converts a folder of ``torch.save`` state dicts in place (``weightspace convert
models/*.pt --out-dir models``) ends up with each model twice, as ``NAME.pt`` and as
``NAME.safetensors``. Every command that reads checkpoints names such *twins* — files in one
folder with one stem and two checkpoint suffixes — and says what it does with them, rather than
merging them silently (an index stores a model once, so ``10 added, 10 already stored`` would
otherwise be all a user saw).

Two twins hold *the same weights* when their tensors are equal as a multiset of
``(shape, dtype, bytes)`` (the state-dict keys may differ): :func:`same_weights`.

Importing this module is cheap (no torch); reading tensors imports it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from weightspace.errors import WeightspaceError

__all__ = [
    "TwinGroup",
    "checkpoint_files_of",
    "each_read",
    "report_input_twins",
    "find_twins",
    "report_twins",
    "same_weights",
    "twin_of",
]


@dataclass(frozen=True)
class TwinGroup:
    """Checkpoint files of one folder and one stem, in the order they were given.

    Attributes:
        files: two or more paths (``models/a.pt``, ``models/a.safetensors``).
        same: whether all hold the same weights (:func:`same_weights`); ``None`` when one of
            them could not be read (the command's own error says why).
    """

    files: tuple[Path, ...]
    same: bool | None

    @property
    def stem(self) -> str:
        return self.files[0].stem

    def describe(self) -> str:
        """``a.pt and a.safetensors are twins (same stem, same weights)``."""
        names = " and ".join(str(f) for f in self.files)
        weights = {True: "same weights", False: "different weights", None: "unreadable"}[self.same]
        return f"{names} are twins (same stem, {weights})"


def _suffixes() -> tuple[str, ...]:
    from weightspace.checkpoint_files import CHECKPOINT_SUFFIXES

    return CHECKPOINT_SUFFIXES


def checkpoint_files_of(inputs: Iterable[str | Path]) -> list[Path]:
    """The checkpoint files that ``inputs`` name, as :func:`weightspace.sources.iter_inputs`
    reads them: a file as it is, a plain folder's checkpoint files (sorted), nothing of a zoo
    (its rows are not files) or of a missing path (the command reports it)."""
    from weightspace.sources import checkpoint_files_in, is_zoo

    suffixes = _suffixes()
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            if not is_zoo(path):
                found += checkpoint_files_in(path)
        elif path.is_file() and path.suffix in suffixes:
            found.append(path)
    return found


def _key(path: Path) -> tuple[Path, str]:
    return _absolute(path).parent, path.stem


def _absolute(path: Path) -> Path:
    try:
        return path.resolve(strict=True)
    except (OSError, RuntimeError):
        return path.absolute()


def _fingerprint(path: Path) -> list[str]:
    """Sorted digests of each tensor's shape, dtype and bytes (keys ignored)."""
    import torch

    from weightspace.checkpoint_files import read_tensors

    tensors, _ = read_tensors(path)
    digests = []
    for tensor in tensors.values():
        data = tensor.detach().cpu().contiguous()
        digest = hashlib.sha256(f"{tuple(data.shape)}|{data.dtype}|".encode())
        digest.update(data.view(-1).view(torch.uint8).numpy().tobytes())
        digests.append(digest.hexdigest())
    return sorted(digests)


def same_weights(files: Sequence[Path]) -> bool | None:
    """Whether every file holds the same tensors (module docstring); ``None`` if one cannot be
    read (a bad file is the command's to report, with its own error)."""
    try:
        prints = [_fingerprint(f) for f in files]
    except (WeightspaceError, OSError, RuntimeError, ValueError):
        return None
    return all(p == prints[0] for p in prints[1:])


def find_twins(files: Iterable[str | Path]) -> list[TwinGroup]:
    """Groups of ``files`` (each read once, in order) that share a folder and a stem but not a
    path, with checkpoint suffixes; each group's weights are compared (:func:`same_weights`)."""
    suffixes = _suffixes()
    groups: dict[tuple[Path, str], list[Path]] = {}
    seen: set[Path] = set()
    for item in files:
        path = Path(item)
        if path.suffix not in suffixes or _absolute(path) in seen:
            continue
        seen.add(_absolute(path))
        groups.setdefault(_key(path), []).append(path)
    return [
        TwinGroup(tuple(members), same_weights(members))
        for members in groups.values()
        if len(members) > 1
    ]


def twin_of(path: str | Path, others: Iterable[str | Path]) -> Path | None:
    """The first of ``others`` that is a twin of ``path`` (same folder and stem, another file)."""
    path = Path(path)
    for other in others:
        other = Path(other)
        if other.suffix in _suffixes() and _key(other) == _key(path):
            if _absolute(other) != _absolute(path):
                return other
    return None


def report_twins(
    groups: Sequence[TwinGroup],
    consequence: Callable[[TwinGroup], str],
    *,
    say: Callable[[str], None] | None = None,
) -> list[str]:
    """One line per twin group: what it is and what the command did with it.

    Args:
        consequence: the command's words for a group (``"stored once"``, ``"both embedded"``).
        say: prints each line (default: ``note: LINE`` on stderr).

    Returns:
        The lines, for the caller's tests and JSON output.
    """
    if say is None:
        import typer

        def say(line: str) -> None:
            typer.echo(f"note: {line}", err=True)

    lines = [f"{group.describe()}: {consequence(group)}" for group in groups]
    for line in lines:
        say(line)
    return lines


def report_input_twins(
    inputs: Iterable[str | Path],
    consequence: Callable[[TwinGroup], str],
    *,
    say: Callable[[str], None] | None = None,
) -> list[TwinGroup]:
    """:func:`report_twins` for the checkpoint files that a command's ``inputs`` name
    (:func:`checkpoint_files_of`); returns the groups."""
    groups = find_twins(checkpoint_files_of(inputs))
    report_twins(groups, consequence, say=say)
    return groups


def each_read(verb: str) -> Callable[[TwinGroup], str]:
    """The consequence for a command that handles each file on its own: ``each embedded (the
    same result twice)`` for same weights."""

    def consequence(group: TwinGroup) -> str:
        twice = " (the same result twice)" if group.same else ""
        return f"each {verb}{twice}"

    return consequence
