"""Reading untrusted checkpoint files: tensors and metadata, never code, in bounded memory.

Every reader checks :mod:`weightspace.limits` against what the file *declares* before it
allocates:

* ``.safetensors``: the header (parsed by ``safetensors``' own ``safe_open``, which validates it
  against the file and maps nothing into memory) gives every tensor's shape, so the parameter
  count :math:`\\sum_t \\prod_i \\mathrm{shape}_t[i]` is known before a byte of data is read.
* ``.pt``/``.pth``/``.bin``/``.ckpt`` zip archives (``torch.save`` since PyTorch 1.6): the zip
  directory gives the decompressed size of every record, summed and checked against
  ``max_archive_bytes`` before ``torch.load`` touches the file; then a first ``torch.load`` onto the
  ``meta`` device (shapes only, no storage) counts the parameters; only then are tensors read.
* legacy (non-zip) ``torch.save`` files carry no directory: their size counts as the archive
  size and must fit ``max_params`` parameters of 8 bytes; the parameters are counted exactly
  after reading (memory is bounded by the file size).

``torch.load`` always runs with ``weights_only=True``, which refuses pickles that would import or
run code. Every failure is a :class:`~weightspace.errors.CheckpointError` (or
:class:`~weightspace.limits.ResourceLimitError`) naming the file.
"""

from __future__ import annotations

import math
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from weightspace.errors import CheckpointError, WeightspaceError
from weightspace.limits import Limits, ResourceLimitError, default_limits

__all__ = ["CHECKPOINT_SUFFIXES", "read_tensors", "count_parameters"]

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
_ZIP_MAGIC = b"PK\x03\x04"
_BYTES_PER_PARAMETER_MAX = 8  # float64 / int64: the widest element a checkpoint can declare


def count_parameters(shapes: Any) -> int:
    """:math:`\\sum_t \\prod_i s_{t,i}` over an iterable of shapes (exact Python integers)."""
    return sum(math.prod(int(s) for s in shape) for shape in shapes)


def read_tensors(
    path: Path, limits: Limits | None = None
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a checkpoint's tensors and (safetensors) metadata without executing code.

    Args:
        path: the checkpoint file.
        limits: resource limits (default: :func:`weightspace.limits.default_limits`).

    Returns:
        ``(tensors, metadata)``; ``metadata`` is empty for ``torch.save`` files.

    Raises:
        CheckpointError: missing, empty, unknown type, corrupted, or a code-running pickle.
        ResourceLimitError: the declared parameters or archive size exceed ``limits``.
    """
    limits = limits or default_limits()
    try:
        if not path.exists():
            raise CheckpointError(path, "no such file")
        if path.is_dir():
            raise CheckpointError(path, "is a directory, not a checkpoint file")
        if not path.is_file():
            raise CheckpointError(path, "is not a regular file")
        if path.stat().st_size == 0:
            raise CheckpointError(path, "the file is empty")
        if path.suffix == ".safetensors":
            return _read_safetensors(path, limits)
        if path.suffix not in CHECKPOINT_SUFFIXES:
            raise CheckpointError(
                path,
                f"unknown checkpoint type {path.suffix!r}; expected one of {CHECKPOINT_SUFFIXES}",
            )
        return _read_torch(path, limits), {}
    except OSError as exc:  # a symlink loop, no permission, a vanished file
        raise CheckpointError(path, f"cannot be read: {exc.strerror or exc}") from None


def _read_safetensors(path: Path, limits: Limits) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            keys = list(handle.keys())
            declared = count_parameters(handle.get_slice(key).get_shape() for key in keys)
            limits.check(path, "params", declared)  # before any tensor is read
            return {key: handle.get_tensor(key) for key in keys}, metadata
    except WeightspaceError:
        raise
    except Exception as exc:
        detail = " ".join(str(exc).split())[:300]
        raise CheckpointError(
            path, f"not a valid safetensors file (truncated or corrupted?): {detail}"
        ) from None


def _check_archive(path: Path, limits: Limits) -> bool:
    """Check a ``torch.save`` file's declared size; ``True`` if it is a zip archive."""
    with path.open("rb") as handle:
        is_zip = handle.read(4) == _ZIP_MAGIC
    if not is_zip:  # legacy format: no directory to read, so the file's own size is the bound
        size = path.stat().st_size
        limits.check(path, "archive_bytes", size)
        _check_tensor_bytes(path, size, limits, "legacy (non-zip) file size (bytes)")
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except Exception as exc:
        raise CheckpointError(
            path, f"not a readable PyTorch checkpoint (corrupted zip archive: {exc})"
        ) from None
    limits.check(path, "archive_bytes", sum(record.file_size for record in records))
    tensor_bytes = sum(r.file_size for r in records if "/data/" in f"/{r.filename}")
    _check_tensor_bytes(path, tensor_bytes, limits, "tensor data (bytes)")
    return True


def _check_tensor_bytes(path: Path, nbytes: int, limits: Limits, quantity: str) -> None:
    """Refuse ``nbytes`` of tensor data that cannot fit ``max_params`` parameters of 8 bytes."""
    bound = _BYTES_PER_PARAMETER_MAX * limits.max_params
    if limits.max_params and nbytes > bound:
        raise ResourceLimitError(
            path,
            quantity,
            nbytes,
            bound,
            f"that is more than {limits.max_params:,} parameters even at 8 bytes each; if you "
            "trust the file, raise it with `weightspace --max-params N COMMAND ...` or "
            "WEIGHTSPACE_MAX_PARAMS",
        )


def _torch_load(path: Path, map_location: str) -> Any:
    try:
        with warnings.catch_warnings():  # torch's advice about odd pickles is not for our users
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        detail = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), lines[0])
        detail = detail.split(" Please use")[0]  # never advise allow-listing untrusted globals
        raise CheckpointError(
            path,
            "refused: the file is a pickle that would import or run code "
            f"(torch.load with weights_only=True rejected it: {detail.strip()}). weightspace "
            "never unpickles arbitrary code; re-save the weights as safetensors in a trusted "
            "environment",
        ) from None
    except Exception as exc:
        detail = " ".join(str(exc).split())[:300]
        raise CheckpointError(
            path, f"not a readable PyTorch checkpoint (truncated or corrupted?): {detail}"
        ) from None


def _state_dict_of(path: Path, obj: Any) -> dict[str, Tensor]:
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise CheckpointError(path, f"holds a {type(obj).__name__}, not a state dict of tensors")
    tensors: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(path, f"entry {key!r} is a {type(value).__name__}, not a tensor")
        tensors[str(key)] = value
    if tensors and all(k.startswith("module.") for k in tensors):  # DataParallel wrapping
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def _read_torch(path: Path, limits: Limits) -> dict[str, Tensor]:
    if _check_archive(path, limits):
        # shapes without storage: the parameter count before any tensor data is read
        declared = _state_dict_of(path, _torch_load(path, "meta"))
        limits.check(path, "params", count_parameters(t.shape for t in declared.values()))
    tensors = _state_dict_of(path, _torch_load(path, "cpu"))
    limits.check(path, "params", count_parameters(t.shape for t in tensors.values()))
    return tensors
