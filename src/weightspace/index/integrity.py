"""Integrity of a model index: checksums of its vector file and of every committed batch.

An index (:mod:`weightspace.index`) records, in the same SQLite transaction that commits a
generation:

* the checksum of the generation's FAISS file: its size, a BLAKE2b-256 digest of its first
  :data:`HEAD_BYTES` bytes, one of :data:`SAMPLE_BLOCKS` blocks spread evenly over the rest, and
  one of the whole file (:func:`file_digest`);
* one row per committed batch in the ``batches`` table: the ids it added and digests of its
  vectors (float32 bytes, row order) and of its catalog rows (:func:`vectors_digest`,
  :func:`rows_digest`).

Every open runs :func:`check_file` in quick mode: size, header and sampled blocks, plus the whole
file when it is at most :data:`FULL_CHECK_ON_OPEN_BYTES` (reading the file to hash it costs about
what FAISS pays to load it). ``weightspace index info --verify`` checks everything: the whole
file, each batch's vectors as FAISS returns them and as the catalog stores them, each batch's
rows, and SQLite's own ``integrity_check``. A mismatch raises :class:`IndexCorruptError` naming
the file, and ``weightspace index repair`` rebuilds the vectors (:func:`weightspace.index.repair.repair_index`).

The checksums detect damage (flipped bits, truncation, a hand-edited catalog), not an attacker
who rewrites the catalog and the vector file together: they are not signatures.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from weightspace.index.errors import IndexCorruptError, IndexFormatError

__all__ = [
    "CHECKSUM_ALGORITHM",
    "FULL_CHECK_ON_OPEN_BYTES",
    "HEAD_BYTES",
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
]

CHECKSUM_ALGORITHM = "blake2b-256"
#: Bytes at the start of the vector file hashed on every open (FAISS keeps its header there).
HEAD_BYTES = 64 * 1024
#: Blocks of :data:`SAMPLE_BLOCK_BYTES` spread evenly over the rest of the file, hashed on open.
SAMPLE_BLOCKS = 64
SAMPLE_BLOCK_BYTES = 4096
#: Vector files up to this size are hashed whole on every open (about 60 ms on one core).
FULL_CHECK_ON_OPEN_BYTES = 64 * 2**20
_CHUNK = 2**20


def _one_line(items: Iterable[Any], limit: int = 300) -> str:
    """Messages from SQLite or FAISS as one line (they may span several)."""
    return " ".join("; ".join(str(item) for item in items).split())[:limit]


def _hasher() -> Any:
    return hashlib.blake2b(digest_size=32)


def _sample_offsets(size: int) -> list[int]:
    """Start offsets of the sampled blocks: evenly spaced after the header, deterministic."""
    rest = size - HEAD_BYTES
    if rest <= 0:
        return []
    if rest <= SAMPLE_BLOCKS * SAMPLE_BLOCK_BYTES:
        return list(range(HEAD_BYTES, size, SAMPLE_BLOCK_BYTES))
    step = (rest - SAMPLE_BLOCK_BYTES) / (SAMPLE_BLOCKS - 1)
    return [HEAD_BYTES + int(i * step) for i in range(SAMPLE_BLOCKS)]


def _quick_digests(handle: Any, size: int) -> tuple[str, str]:
    head = _hasher()
    handle.seek(0)
    head.update(handle.read(HEAD_BYTES))
    sample = _hasher()
    for offset in _sample_offsets(size):
        handle.seek(offset)
        sample.update(handle.read(SAMPLE_BLOCK_BYTES))
    return head.hexdigest(), sample.hexdigest()


def _full_digest(handle: Any) -> str:
    digest = _hasher()
    handle.seek(0)
    while chunk := handle.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def file_digest(path: Path) -> dict[str, Any]:
    """The checksum record of one file: ``{"algorithm", "size", "head", "sample", "full"}``."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        head, sample = _quick_digests(handle, size)
        full = _full_digest(handle)
    return {
        "algorithm": CHECKSUM_ALGORITHM,
        "size": size,
        "head": head,
        "sample": sample,
        "full": full,
    }


def _damaged(path: Path, what: str, repair_hint: str) -> IndexCorruptError:
    return IndexCorruptError(
        f"{path}: {what} does not match the checksum recorded in the index; the file is damaged "
        f"({repair_hint})"
    )


def check_file(
    path: Path, recorded: Mapping[str, Any], *, full: bool = False, repair_hint: str = ""
) -> None:
    """Raise :class:`IndexCorruptError` unless ``path`` matches its checksum record.

    Quick mode compares the size, the header digest and the sampled-blocks digest, and the whole
    file's digest when it is at most :data:`FULL_CHECK_ON_OPEN_BYTES`; ``full=True`` always
    hashes the whole file.
    """
    hint = repair_hint or "run `weightspace index repair` on the index"
    if not isinstance(recorded, Mapping) or recorded.get("algorithm") != CHECKSUM_ALGORITHM:
        raise IndexCorruptError(f"{path}: the index records no valid checksum for it ({hint})")
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size != recorded.get("size"):
                raise _damaged(
                    path,
                    f"its size ({size} bytes, recorded {str(recorded.get('size'))[:40]!r})",
                    hint,
                )
            head, sample = _quick_digests(handle, size)
            if head != recorded.get("head"):
                raise _damaged(path, "its header", hint)
            if sample != recorded.get("sample"):
                raise _damaged(path, "a sampled block", hint)
            if (full or size <= FULL_CHECK_ON_OPEN_BYTES) and _full_digest(handle) != recorded.get(
                "full"
            ):
                raise _damaged(path, "its content", hint)
    except OSError as exc:
        raise IndexCorruptError(f"{path}: cannot read the vector file ({exc}) ({hint})") from None


def vectors_digest(vectors: np.ndarray) -> str:
    """BLAKE2b-256 of float32 vectors ``(n, d)`` in row order (C-contiguous bytes)."""
    digest = _hasher()
    digest.update(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
    return digest.hexdigest()


#: The catalog columns a batch's rows digest covers, in order.
CATALOG_COLUMNS = ("id", "path", "content_hash", "spec_summary", "spec_json", "metrics", "added_at")


def catalog_row(values: Sequence[Any]) -> list[Any]:
    """One catalog row as the JSON-safe list that :func:`rows_digest` hashes."""
    return [v if isinstance(v, int | str) or v is None else repr(v) for v in values]


def rows_digest(rows: Iterable[Sequence[Any]]) -> str:
    """BLAKE2b-256 of catalog rows (:data:`CATALOG_COLUMNS` values, ``metrics`` as stored text)."""
    digest = _hasher()
    for row in rows:
        digest.update(json.dumps(catalog_row(row), separators=(",", ":")).encode())
        digest.update(b"\n")
    return digest.hexdigest()


# ---------------------------------------------------------------------------------- open checks
def validate_manifest(
    path: Path,
    rows: Sequence[tuple[Any, Any]],
    tables: set[str],
    *,
    models: int | None,
    batched: int | None,
    readable: Sequence[int],
    current: int,
) -> dict[str, Any]:
    """The manifest from its ``(key, JSON text)`` rows, checked against the catalog read in the
    same transaction: a readable format version, every required field of the right type, the
    ``models`` (and, format 2, ``batches``) tables present and adding up to its ``count``."""
    meta = path / "meta.sqlite"
    try:
        manifest = {str(key): json.loads(value) for key, value in rows}
    except (TypeError, ValueError) as exc:
        raise IndexCorruptError(f"{meta}: a manifest value is not JSON ({exc})") from None
    version = manifest.get("format_version")
    if isinstance(version, bool) or version not in readable:
        raise IndexFormatError(
            f"{path}: index format version "
            f"{version if isinstance(version, int) else repr(str(version)[:40])}, but this "
            f"weightspace reads version {current}; rebuild it with `weightspace index build "
            f"--overwrite`"
        )
    required = {"fingerprint": str, "dim": int, "generation": int, "count": int, "store": dict}
    if version >= 2:
        required["vectors_checksum"] = dict
    for key, kind in required.items():
        value = manifest.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise IndexCorruptError(
                f"{meta}: manifest lacks a valid {key!r} ({str(value)[:80]!r}); rebuild the index"
            )
    if manifest["dim"] < 1 or manifest["generation"] < 1 or manifest["count"] < 0:
        raise IndexCorruptError(f"{meta}: manifest holds impossible values; rebuild the index")
    missing = {"models", "batches"} - tables if version >= 2 else {"models"} - tables
    if missing:
        raise IndexCorruptError(
            f"{meta}: the catalog lacks its {' and '.join(sorted(missing))} table; the index "
            f"is damaged: rebuild it with `weightspace index build --overwrite`"
        )
    if models != manifest["count"] or (version >= 2 and batched != manifest["count"]):
        raise IndexCorruptError(
            f"{meta}: the catalog holds {models} models and its batches {batched}, but the "
            f"manifest lists {manifest['count']}; the index is damaged: run `weightspace "
            f"index info --verify` and rebuild it"
        )
    return manifest


def check_catalog(index: Any) -> None:
    """SQLite's ``quick_check`` and every row's metrics and spec parse as JSON; raise
    :class:`IndexCorruptError` naming the row. Reads the whole catalog once (fast in SQL)."""
    meta = Path(index.path) / "meta.sqlite"
    problems = [row[0] for row in index.query_catalog("PRAGMA quick_check(5)")]
    if problems != ["ok"]:
        raise IndexCorruptError(
            f"{meta}: SQLite reports damage ({_one_line(problems)}); rebuild it"
        )
    columns = {row[1] for row in index.query_catalog("PRAGMA table_info(models)")}
    wanted = set(CATALOG_COLUMNS) | ({"embedding"} if index.format_version >= 2 else set())
    if not wanted <= columns:
        raise IndexCorruptError(
            f"{meta}: the models table lacks column(s) {', '.join(sorted(wanted - columns))}; the "
            f"catalog is damaged: rebuild the index"
        )
    bad = index.query_catalog(
        "SELECT id FROM models WHERE json_valid(metrics) = 0 "
        "OR (spec_json != '' AND json_valid(spec_json) = 0) LIMIT 1"
    )
    if bad:
        raise IndexCorruptError(
            f"{meta}: catalog row {bad[0][0]} holds metrics or a spec that is not valid JSON; "
            f"the catalog is damaged: rebuild the index"
        )


# ---------------------------------------------------------------------------------- full check
_VERIFY_CHUNK = 10_000


def _batches(index: Any) -> list[tuple[int, int, int, str, str]]:
    return [
        tuple(row)
        for row in index.query_catalog(
            "SELECT generation, first_id, count, vectors_digest, rows_digest FROM batches "
            "ORDER BY first_id"
        )
    ]


def verify_index(index: Any) -> dict[str, Any]:
    """Check a :class:`~weightspace.index.ModelIndex` fully; raise :class:`IndexCorruptError`
    naming the first damaged file or rows, else return what was checked.

    Checks the whole vector file's digest, SQLite's ``integrity_check``, that the batches cover
    ids ``0..n-1`` exactly, and per batch the digest of its vectors as FAISS returns them, of
    its embeddings as the catalog stores them, and of its catalog rows.
    """
    path = Path(index.path)
    meta = path / "meta.sqlite"
    if index.format_version < 2:
        raise IndexCorruptError(
            f"{path}: index format {index.format_version} records no checksums; add them with "
            f"`weightspace index repair {path}`"
        )
    vectors_file = path / f"vectors-{index.generation}.faiss"
    hint = f"run `weightspace index repair {path}`"
    check_file(vectors_file, index.manifest["vectors_checksum"], full=True, repair_hint=hint)
    problems = [row[0] for row in index.query_catalog("PRAGMA integrity_check(5)")]
    if problems != ["ok"]:
        raise IndexCorruptError(
            f"{meta}: SQLite reports damage ({_one_line(problems)}); rebuild it"
        )
    check_catalog(index)
    expected_first = 0
    batches = _batches(index)
    for generation, first, count, vectors_sum, rows_sum in batches:
        if first != expected_first or count < 1:
            raise IndexCorruptError(
                f"{meta}: the batch of generation {generation} starts at id {first}, expected "
                f"{expected_first}; the catalog is damaged: rebuild the index"
            )
        expected_first = first + count
        stored, catalog, rows = _hasher(), _hasher(), _hasher()
        for start in range(first, first + count, _VERIFY_CHUNK):
            stop = min(start + _VERIFY_CHUNK, first + count)
            stored.update(index.store.reconstruct(range(start, stop)).tobytes())
            records = index.query_catalog(
                "SELECT id, path, content_hash, spec_summary, spec_json, metrics, added_at, "
                "embedding FROM models WHERE id >= ? AND id < ? ORDER BY id",
                (start, stop),
            )
            if len(records) != stop - start:
                raise IndexCorruptError(
                    f"{meta}: catalog rows {start}..{stop - 1} are incomplete; rebuild the index"
                )
            for record in records:
                blob = record[7]
                catalog.update(blob if isinstance(blob, bytes) else b"")
                rows.update(json.dumps(catalog_row(record[:7]), separators=(",", ":")).encode())
                rows.update(b"\n")
        span = f"models {first}..{first + count - 1}"
        if stored.hexdigest() != vectors_sum:
            raise IndexCorruptError(
                f"{vectors_file}: the vectors of {span} do not match their checksum; {hint}"
            )
        if catalog.hexdigest() != vectors_sum:
            raise IndexCorruptError(
                f"{meta}: the stored embeddings of {span} do not match their checksum; the "
                f"catalog is damaged: rebuild the index"
            )
        if rows.hexdigest() != rows_sum:
            raise IndexCorruptError(
                f"{meta}: the catalog rows of {span} do not match their checksum; the catalog "
                f"is damaged: rebuild the index"
            )
    if expected_first != len(index):
        raise IndexCorruptError(
            f"{meta}: committed batches cover {expected_first} models, the index holds "
            f"{len(index)}; rebuild the index"
        )
    return {"status": "ok", "checked": "full", "models": len(index), "batches": len(batches)}


def hasher_of(data: bytes) -> str:
    """BLAKE2b-256 (hex) of ``data``, the digest every checksum here uses."""
    digest = _hasher()
    digest.update(data)
    return digest.hexdigest()
