"""Helpers shared by the fuzz suites (``tests/test_fuzz_*.py``)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


@contextlib.contextmanager
def alarm(seconds: int, what: str = "the call") -> Iterator[None]:
    """Fail instead of hanging: raise :class:`TimeoutError` once ``seconds`` have passed."""

    def hung(_signum: int, _frame: object) -> None:
        raise TimeoutError(f"{what} ran for more than {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
