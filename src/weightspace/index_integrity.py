"""Moved: checksums and checks to :mod:`weightspace.index.integrity`, ``repair_index`` to
:mod:`weightspace.index.repair`. This module re-exports their names for existing imports."""

from __future__ import annotations

from weightspace.index.errors import IndexCorruptError, IndexFormatError
from weightspace.index.integrity import (
    CATALOG_COLUMNS,
    CHECKSUM_ALGORITHM,
    FULL_CHECK_ON_OPEN_BYTES,
    HEAD_BYTES,
    SAMPLE_BLOCK_BYTES,
    SAMPLE_BLOCKS,
    catalog_row,
    check_catalog,
    check_file,
    file_digest,
    rows_digest,
    validate_manifest,
    vectors_digest,
    verify_index,
)
from weightspace.index.repair import repair_index

__all__ = [
    "CATALOG_COLUMNS",
    "CHECKSUM_ALGORITHM",
    "FULL_CHECK_ON_OPEN_BYTES",
    "HEAD_BYTES",
    "SAMPLE_BLOCK_BYTES",
    "SAMPLE_BLOCKS",
    "IndexFormatError",
    "IndexCorruptError",
    "file_digest",
    "check_file",
    "vectors_digest",
    "rows_digest",
    "catalog_row",
    "validate_manifest",
    "check_catalog",
    "verify_index",
    "repair_index",
]
