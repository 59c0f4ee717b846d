"""``--skip-errors``, one behaviour for every command that reads many checkpoints.

Without the flag the first unreadable input stops the command with its one-line error (exit 1).
With it, each input that fails to load is skipped and listed on stderr by name and reason once
the work is done; the command fails (exit 1) only when every input failed, and then writes
nothing.

Usage in a command::

    skips = SkipLog(skip_errors)
    models = skips.models(inputs, lambda paths: iter_inputs(paths, loader=skips.loader(load)))
    ...                       # consume ``models``
    skips.finish(done=count)  # lists what was skipped; raises if nothing loaded
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from weightspace.errors import CheckpointError, WeightspaceError

__all__ = ["AllInputsFailedError", "SkipErrors", "SkipLog", "Skipped"]

T = TypeVar("T")

SkipErrors = Annotated[
    bool,
    typer.Option(
        "--skip-errors",
        help="Skip inputs that cannot be read and go on; each skipped file is listed on stderr "
        "with the reason. Exit 1 only if every input failed.",
    ),
]


class AllInputsFailedError(WeightspaceError):
    """``--skip-errors`` skipped every input: there was nothing left to work on."""


@dataclass(frozen=True)
class Skipped:
    """One input left out: its name and why."""

    source: str
    reason: str


def _reason(source: str, exc: BaseException) -> str:
    """The error's message without a leading ``SOURCE: `` (the report names the source)."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, CheckpointError):
        return exc.problem
    return message.removeprefix(f"{source}: ")


@dataclass
class SkipLog:
    """Collects skipped inputs when ``enabled``; otherwise lets every error through."""

    enabled: bool
    skipped: list[Skipped] = field(default_factory=list)

    def record(self, source: str | Path, exc: BaseException) -> None:
        self.skipped.append(Skipped(str(source), _reason(str(source), exc)))

    def loader(self, load: Callable[..., T]) -> Callable[..., T | None]:
        """``load`` that returns ``None`` (and records why) for a file it cannot read."""
        if not self.enabled:
            return load

        def guarded(path: Path, *args: Any, **kwargs: Any) -> T | None:
            try:
                return load(path, *args, **kwargs)
            except (WeightspaceError, OSError) as exc:
                self.record(path, exc)
                return None

        return guarded

    def models(
        self,
        inputs: Sequence[Path],
        expand: Callable[[list[Path]], Iterable[T | None]],
    ) -> Iterator[T]:
        """What ``expand(paths)`` yields, ``None`` left out. Without the flag ``expand`` sees
        all inputs at once (its own errors stop the command); with it, one input at a time, and
        an input that fails as a whole (missing path, empty folder, broken zoo) is recorded."""
        if not self.enabled:
            yield from (item for item in expand(list(inputs)) if item is not None)
            return
        for source in inputs:
            try:
                for item in expand([source]):
                    if item is not None:
                        yield item
            except (WeightspaceError, OSError) as exc:
                self.record(source, exc)

    def nonempty(self, items: Iterator[T]) -> Iterator[T]:
        """``items``, after checking that there is a first one when inputs were skipped
        (:class:`AllInputsFailedError` otherwise, before any output is written)."""
        try:
            first = next(items)
        except StopIteration:
            self.finish(done=0)
            return iter(())
        return itertools.chain([first], items)

    def each(self, items: Iterable[T], work: Callable[[T], Any], name: Callable[[T], str]) -> list:
        """``work(item)`` for each item; with the flag, failures are recorded and left out."""
        results = []
        for item in items:
            try:
                results.append(work(item))
            except (WeightspaceError, OSError) as exc:
                if not self.enabled:
                    raise
                self.record(name(item), exc)
        return results

    def report(self) -> None:
        """List the skipped inputs on stderr (nothing when none were)."""
        if not self.skipped:
            return
        lines = [f"skipped {len(self.skipped)} input(s) that could not be read:"]
        lines += [f"  {item.source}: {item.reason}" for item in self.skipped]
        typer.echo("\n".join(lines), err=True)

    def check_some(self, done: int) -> None:
        """Raise :class:`AllInputsFailedError` when inputs were skipped and none was used."""
        if done == 0 and self.skipped:
            raise AllInputsFailedError(
                f"all {len(self.skipped)} inputs failed to load (listed above); nothing written"
            )

    def finish(self, done: int) -> None:
        """:meth:`report`, then :meth:`check_some`."""
        self.report()
        self.check_some(done)
