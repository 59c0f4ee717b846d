"""Optional dependencies: what each extra installs, and one clear error when one is missing.

``pip install weightspace`` pulls only what embedding, search, prediction and merging need.
Features beyond that live in extras (``pyproject.toml``)::

    pip install "weightspace[serve]"    # weightspace serve: fastapi, uvicorn, python-multipart
    pip install "weightspace[bench]"    # weightspace bench, report figures, the mnist1d task

Code that needs an extra imports it through :func:`require`, so a missing package is a
one-line :class:`MissingExtraError` naming the extra to install, never a bare traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from weightspace.errors import WeightspaceError

__all__ = [
    "EXTRAS",
    "MissingExtraError",
    "require",
    "require_extra",
    "missing_extra_error",
    "missing_modules",
]

#: extra → the importable modules it provides (the packages are named in ``pyproject.toml``).
EXTRAS: dict[str, tuple[str, ...]] = {
    "serve": ("fastapi", "uvicorn", "python_multipart"),
    "bench": ("matplotlib", "mnist1d"),
}


class MissingExtraError(WeightspaceError, ImportError):
    """A feature needs a package of an optional extra that is not installed."""


def _install_hint(extra: str) -> str:
    return f'pip install "weightspace[{extra}]"'


def require(module: str, extra: str, *, feature: str | None = None) -> ModuleType:
    """Import ``module``; if it (or a package it needs) is missing, raise
    :class:`MissingExtraError` naming ``extra``.

    Args:
        module: the module to import (``"fastapi"``, ``"matplotlib.pyplot"``).
        extra: the extra that installs it (a key of :data:`EXTRAS`).
        feature: what needs it, for the message (default: the module).
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise missing_extra_error(exc, extra, feature=feature or module) from None


def missing_extra_error(exc: ModuleNotFoundError, extra: str, *, feature: str) -> MissingExtraError:
    """The one-line error for ``exc`` (a failed import of a package of ``extra``)."""
    return MissingExtraError(
        f"{feature} needs the optional package {exc.name or 'unknown'!r}, which is not "
        f"installed; install the {extra!r} extra: {_install_hint(extra)}"
    )


def missing_modules(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported (``[]`` when all can)."""
    missing = []
    for module in EXTRAS[extra]:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError:
            missing.append(module)
    return missing


def require_extra(extra: str, *, feature: str) -> None:
    """Raise :class:`MissingExtraError` unless every module of ``extra`` imports."""
    missing = missing_modules(extra)
    if missing:
        raise MissingExtraError(
            f"{feature} needs the {extra!r} extra ({', '.join(missing)} not installed): "
            f"{_install_hint(extra)}"
        )
