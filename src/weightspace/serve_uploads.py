"""What the HTTP service checks in an upload before it reads a tensor.

A safetensors file is an 8-byte little-endian header length, a JSON header, then the raw
tensors: :func:`check_safetensors_header` refuses anything else (pickles and zip archives by
name), :func:`declared_parameters` counts the parameters the header declares, and
:func:`check_declared_graph` checks the declared architecture's graph size, all before any
tensor is read. :func:`status_of` maps each error to its HTTP status. No FastAPI here.
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path

from weightspace.errors import (
    CheckpointError,
    MissingArchitectureError,
    NonFiniteWeightsError,
    ShapeMismatchError,
    SpecError,
    UnsupportedLayerError,
    WeightspaceError,
)
from weightspace.limits import Limits, ResourceLimitError

__all__ = [
    "UploadError",
    "check_declared_graph",
    "check_safetensors_header",
    "declared_parameters",
    "safe_name",
    "status_of",
]


class UploadError(WeightspaceError):
    """An upload is not a usable safetensors checkpoint; ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def check_safetensors_header(data: bytes, filename: str) -> None:
    """Raise :class:`UploadError` unless ``data`` starts like a safetensors file.

    A safetensors file is an 8-byte little-endian header length ``n``, then ``n`` bytes of JSON
    describing the tensors, then their raw bytes. Pickles and zip archives (``torch.save``) are
    named as such, so the client knows to convert them. A header length can itself begin with
    pickle's or zip's magic bytes (640 is ``80 02 00 ..``), so the magic only counts when the
    bytes after it are no safetensors header.
    """
    looks_like_pickle = data[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
    if (looks_like_pickle or data[:2] == b"PK") and not _has_json_header(data):
        raise UploadError(
            f"{filename}: looks like a torch.save/pickle file; only safetensors is accepted over "
            f"HTTP (convert with safetensors.torch.save_file)",
            415,
        )
    if len(data) < 10:
        raise UploadError(f"{filename}: {len(data)} bytes is too short for a safetensors file")
    (header_length,) = struct.unpack("<Q", data[:8])
    if header_length < 2 or 8 + header_length > len(data):
        raise UploadError(
            f"{filename}: not a safetensors file (header length {header_length} does not fit in "
            f"{len(data)} bytes; truncated or another format)"
        )
    header = data[8 : 8 + header_length]
    if not header.lstrip().startswith(b"{"):
        raise UploadError(f"{filename}: not a safetensors file (its header is not JSON)")
    try:
        json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UploadError(f"{filename}: corrupted safetensors header ({exc})") from None


def _has_json_header(data: bytes) -> bool:
    if len(data) < 10:
        return False
    (length,) = struct.unpack("<Q", data[:8])
    return 2 <= length and 8 + length <= len(data) and data[8:9] == b"{"


def declared_parameters(header: bytes) -> int:
    """Parameters a safetensors header declares: the sum over tensors of the product of their
    shapes, read before any tensor is (``__metadata__`` skipped; malformed entries count 0)."""
    try:
        entries = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return 0
    total = 0
    for name, entry in entries.items() if isinstance(entries, dict) else ():
        shape = entry.get("shape") if isinstance(entry, dict) and name != "__metadata__" else None
        if isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape):
            total += math.prod(shape)
    return total


def check_declared_graph(filename: str, spec: str | None, header: bytes, limits: Limits) -> None:
    """Refuse (413) a model whose declared architecture (the ``spec`` field, else the spec in
    the safetensors metadata) exceeds the node or edge caps, before any tensor is read. An
    unreadable spec is left to the loader, which names the problem."""
    from weightspace.graph import check_graph_size
    from weightspace.ingest import SPEC_METADATA_KEY
    from weightspace.spec import NetworkSpec

    text = spec
    if text is None:
        try:
            metadata = json.loads(header).get("__metadata__") or {}
            text = metadata.get(SPEC_METADATA_KEY) if isinstance(metadata, dict) else None
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            return
    if not isinstance(text, str):
        return
    try:
        declared = NetworkSpec.from_json(text)
    except (WeightspaceError, ValueError, TypeError, KeyError):
        return
    try:
        check_graph_size(declared, source=filename, limits=limits)
    except ResourceLimitError:
        raise
    except (WeightspaceError, ValueError, TypeError, KeyError):
        return


def status_of(exc: WeightspaceError) -> int:
    """The HTTP status of an error met while reading or embedding an upload."""
    from weightspace.index import IndexBusyError, IndexFormatError

    if isinstance(exc, UploadError):
        return exc.status
    if isinstance(exc, ResourceLimitError):
        return 413
    if isinstance(exc, IndexBusyError):
        return 503
    if isinstance(exc, IndexFormatError):
        return 503
    if isinstance(exc, CheckpointError):
        return 400
    if isinstance(
        exc,
        MissingArchitectureError
        | UnsupportedLayerError
        | SpecError
        | ShapeMismatchError
        | NonFiniteWeightsError,
    ):
        return 422
    return 400


def safe_name(filename: str | None) -> str:
    """The upload's file name without folders or unusual characters (for temporary files)."""
    name = Path(filename or "upload.safetensors").name
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100] or "upload.safetensors"
