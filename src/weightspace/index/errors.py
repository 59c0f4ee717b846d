"""The errors of a model index, each a one-line :class:`~weightspace.errors.WeightspaceError`."""

from __future__ import annotations

from weightspace.errors import WeightspaceError

__all__ = ["IndexFormatError", "IndexCorruptError", "EncoderMismatchError", "IndexBusyError"]


class IndexFormatError(WeightspaceError):
    """A path is not a weightspace index, or one of another format version, or corrupted."""


class IndexCorruptError(IndexFormatError):
    """An index file does not match its recorded checksum, or its catalog is damaged."""


class EncoderMismatchError(WeightspaceError):
    """An index was built with another encoder than the one used to query or extend it."""


class IndexBusyError(WeightspaceError):
    """Another process holds the index's write lock."""
