"""TensorFlow-layout releases: flat weight rows plus a layout table, to PyTorch tensors.

A layout table (``layout.csv``) has one row per tensor: ``varname`` (TensorFlow name ending in
``kernel:0`` or ``bias:0``), ``start_idx``, ``end_idx`` (its slice of a flat row) and ``shape``
(TensorFlow layout). Kernels are ``(H, W, I, O)`` for a conv and ``(I, O)`` for a dense layer;
PyTorch wants ``(O, I, H, W)`` and ``(O, I)``.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from weightspace.zoo.formats.common import ReleaseError

__all__ = [
    "LayoutEntry",
    "layers_of",
    "layout_table",
    "load_flat_weights",
    "read_layout",
    "to_torch_layout",
]


@dataclass(frozen=True)
class LayoutEntry:
    """One row of ``layout.csv``: the slice ``[start, end)`` of a flat row is tensor ``varname``."""

    varname: str
    start: int
    end: int
    shape: tuple[int, ...]

    @property
    def layer(self) -> str:
        """The layer's TensorFlow scope (``sequential/conv2d_1``)."""
        return self.varname.rsplit("/", 1)[0] if "/" in self.varname else ""

    @property
    def role(self) -> str:
        """``kernel`` or ``bias``."""
        return "kernel" if self.varname.endswith("kernel:0") else "bias"


def layout_table(shapes: list[tuple[str, tuple[int, ...]]]) -> pd.DataFrame:
    """The ``layout.csv`` of consecutive tensors ``(varname, TensorFlow shape)``: the inverse of
    :func:`read_layout`, for writing a release (tests, benchmarks, re-exports)."""
    rows, position = [], 0
    for name, shape in shapes:
        size = math.prod(shape)
        rows.append(
            {
                "varname": name,
                "start_idx": position,
                "end_idx": position + size,
                "size": size,
                "shape": str(tuple(shape)),
            }
        )
        position += size
    return pd.DataFrame(rows)


def read_layout(path: Path, width: int) -> list[LayoutEntry]:
    """Read and check ``layout.csv`` against the flat width ``width`` of ``weights.npy``.

    The slices must tile ``[0, width)`` in order, and each must hold ``prod(shape)`` values.
    """
    if not path.is_file():
        raise ReleaseError(path, "missing")
    try:
        frame = pd.read_csv(path)
    except Exception as exc:
        raise ReleaseError(path, f"unreadable CSV ({exc})") from None
    missing = [c for c in ("varname", "start_idx", "end_idx", "shape") if c not in frame.columns]
    if missing:
        raise ReleaseError(path, f"missing columns {missing}")
    entries, position = [], 0
    for line, row in enumerate(frame.itertuples(index=False), start=2):
        varname = str(row.varname)
        if not varname.endswith(("kernel:0", "bias:0")):
            raise ReleaseError(
                path, f"line {line}: field varname {varname!r} is neither a kernel:0 nor a bias:0"
            )
        try:
            shape = tuple(int(s) for s in ast.literal_eval(str(row.shape)))
            start, end = int(row.start_idx), int(row.end_idx)
        except (ValueError, SyntaxError, TypeError):
            raise ReleaseError(
                path,
                f"line {line}: field shape/start_idx/end_idx of "
                f"{varname!r} is not a tuple of integers / an integer",
            ) from None
        if start != position:
            raise ReleaseError(
                path,
                f"line {line}: field start_idx of {varname!r} is {start}, "
                f"expected {position} (slices must tile the flat row in order)",
            )
        if end - start != math.prod(shape):
            raise ReleaseError(
                path,
                f"line {line}: field shape {shape} of {varname!r} holds "
                f"{math.prod(shape)} values but end_idx - start_idx = {end - start}",
            )
        entries.append(LayoutEntry(varname, start, end, shape))
        position = end
    if position != width:
        raise ReleaseError(
            path,
            f"field end_idx: the layout covers {position} values but weights.npy rows hold {width}",
        )
    return entries


def layers_of(
    entries: list[LayoutEntry], path: Path
) -> list[tuple[str, LayoutEntry, LayoutEntry | None]]:
    """``(scope, kernel, bias)`` per layer, in layout order, with the shapes checked."""
    kernels: dict[str, LayoutEntry] = {}
    biases: dict[str, LayoutEntry] = {}
    order: list[str] = []
    for entry in entries:
        table = kernels if entry.role == "kernel" else biases
        if entry.layer in table:
            raise ReleaseError(path, f"field varname: {entry.varname!r} appears twice")
        table[entry.layer] = entry
        if entry.layer not in order:
            order.append(entry.layer)
    layers = []
    for scope in order:
        if scope not in kernels:
            raise ReleaseError(path, f"field varname: layer {scope!r} has a bias but no kernel")
        kernel, bias = kernels[scope], biases.get(scope)
        if len(kernel.shape) not in (2, 4):
            raise ReleaseError(
                path,
                f"field shape: kernel {kernel.varname!r} has shape "
                f"{kernel.shape}; expected (H, W, I, O) or (I, O)",
            )
        if bias is not None and bias.shape != (kernel.shape[-1],):
            raise ReleaseError(
                path,
                f"field shape: bias {bias.varname!r} has shape {bias.shape}, "
                f"expected ({kernel.shape[-1]},) for kernel {kernel.shape}",
            )
        layers.append((scope, kernel, bias))
    return layers


def load_flat_weights(path: Path) -> np.ndarray:
    if not path.is_file():
        raise ReleaseError(path, "missing")
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise ReleaseError(path, f"unreadable .npy array ({exc})") from None
    if data.ndim != 2 or not np.issubdtype(data.dtype, np.floating):
        raise ReleaseError(
            path, f"expected a 2-D float array, got shape {data.shape} and dtype {data.dtype}"
        )
    return data


def to_torch_layout(
    block: np.ndarray, keys: list[tuple[str, LayoutEntry, str, LayoutEntry | None]]
) -> dict[str, torch.Tensor]:
    """Cut ``(m, P)`` flat rows into ``(m, *torch_shape)`` tensors (HWIO → OIHW, IO → OI)."""
    tensors: dict[str, torch.Tensor] = {}
    for weight_key, kernel, bias_key, bias in keys:
        k = block[:, kernel.start : kernel.end].reshape(len(block), *kernel.shape)
        k = k.transpose(0, 4, 3, 1, 2) if k.ndim == 5 else k.transpose(0, 2, 1)
        tensors[weight_key] = torch.from_numpy(np.ascontiguousarray(k))
        if bias is not None:
            tensors[bias_key] = torch.from_numpy(
                np.ascontiguousarray(block[:, bias.start : bias.end])
            )
    return tensors
