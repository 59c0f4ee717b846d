"""Convolutions of the vectorised trainer: each conv's geometry, im2col patches and their
adjoint (col2im), and the kernel as a matrix over patches."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from weightspace.zoo.architectures import ArchConfig

__all__ = [
    "DENSE_CONV_MAX_EXPANSION",
    "ConvGeometry",
    "conv_geometry",
    "extract_patches",
    "fold_patches",
    "kernel_matrix",
]


@dataclass(frozen=True)
class ConvGeometry:
    """One conv layer (kernel ``kernel``, default 3, padding ``kernel // 2``) on channels-last
    activations ``(M, B, *S, C)``.

    A conv runs one of two ways, both batched matmuls over the models:

    * im2col (``dense is None``): patches ``(M, B·|S_out|, k·C_in)`` (entries ordered
      ``(*kernel offset, c)``; ``k = kernel^dims``) times the kernel permuted to ``(M, k·C_in, C_out)``.
      The first conv always runs this way, on patches of the data computed once.
    * dense (small inputs): the conv as a ``(|S_out|·C_out, |S_in|·C_in)`` matrix per model,
      gathered from the kernel by ``dense`` (index ``C_out·C_in·k`` is an appended zero). The
      kernel's gradient gathers the dense gradient's ``|S_out|`` entries of every kernel entry
      (``grad_index``, with ``grad_mask`` zero where the kernel meets the padding).
    """

    in_spatial: tuple[int, ...]
    out_spatial: tuple[int, ...]
    in_channels: int
    out_channels: int
    stride: int
    dense: Tensor | None = None  # (|S_out|·C_out·|S_in|·C_in,) long
    grad_index: Tensor | None = None  # (C_out·C_in·k·|S_out|,) long
    grad_mask: Tensor | None = None  # (C_out·C_in·k, |S_out|) float
    kernel: int = 3  # kernel side (odd); padding kernel // 2 keeps |S_out| = ceil(|S_in| / stride)

    @property
    def dims(self) -> int:
        return len(self.in_spatial)

    @property
    def kernel_size(self) -> int:
        return self.kernel**self.dims

    @property
    def pad(self) -> int:
        return self.kernel // 2

    @property
    def patch_size(self) -> int:
        return self.in_channels * self.kernel_size

    @property
    def out_positions(self) -> int:
        return math.prod(self.out_spatial)

    @property
    def in_features(self) -> int:
        return math.prod(self.in_spatial) * self.in_channels

    def to(self, device: torch.device) -> ConvGeometry:
        if self.dense is None:
            return self
        assert self.grad_index is not None and self.grad_mask is not None
        return dataclasses.replace(
            self,
            dense=self.dense.to(device),
            grad_index=self.grad_index.to(device),
            grad_mask=self.grad_mask.to(device),
        )


#: Run a conv (after the first) as a dense matmul when that costs at most this many times the
#: conv's own multiply-adds, i.e. when ``|S_in| ≤ DENSE_CONV_MAX_EXPANSION · 3^dims``.
DENSE_CONV_MAX_EXPANSION = 4.0


def _dense_tables(geometry: ConvGeometry) -> ConvGeometry:
    """``geometry`` with the index tables of its dense form (see :class:`ConvGeometry`)."""
    out_c, in_c, k = geometry.out_channels, geometry.in_channels, geometry.kernel_size
    s_in, s_out = math.prod(geometry.in_spatial), geometry.out_positions
    zero = out_c * in_c * k
    dense = torch.full((s_out, out_c, s_in, in_c), zero, dtype=torch.long)
    grad_index = torch.zeros(out_c, in_c, k, s_out, dtype=torch.long)
    grad_mask = torch.zeros(out_c, in_c, k, s_out)
    kernel = torch.arange(out_c).view(-1, 1) * (in_c * k) + torch.arange(in_c).view(1, -1) * k
    rows = torch.arange(out_c).view(-1, 1) * (s_in * in_c)
    cols = torch.arange(in_c).view(1, -1)
    outputs = itertools.product(*(range(n) for n in geometry.out_spatial))
    for row, position in enumerate(outputs):
        for j, offset in enumerate(itertools.product(range(geometry.kernel), repeat=geometry.dims)):
            source = [
                geometry.stride * p + o - geometry.pad
                for p, o in zip(position, offset, strict=True)
            ]
            if not all(0 <= q < n for q, n in zip(source, geometry.in_spatial, strict=True)):
                continue
            p = 0
            for q, n in zip(source, geometry.in_spatial, strict=True):
                p = p * n + q
            dense[row, :, p, :] = kernel + j
            grad_index[:, :, j, row] = row * out_c * s_in * in_c + rows + p * in_c + cols
            grad_mask[:, :, j, row] = 1.0
    return dataclasses.replace(
        geometry,
        dense=dense.view(-1),
        grad_index=grad_index.view(-1),
        grad_mask=grad_mask.view(out_c * in_c * k, s_out),
    )


def conv_geometry(arch: ArchConfig, input_shape: Sequence[int]) -> list[ConvGeometry]:
    channels, spatial = int(input_shape[0]), tuple(int(s) for s in input_shape[1:])
    plans = []
    for i in range(arch.depth):
        stride = arch.stride(i)
        out = tuple((n - 1) // stride + 1 for n in spatial)  # (n + 2·(k // 2) − k) // stride + 1
        kernel = getattr(arch, "kernel", 3)
        geometry = ConvGeometry(spatial, out, channels, arch.width, stride, kernel=kernel)
        if i > 0 and math.prod(spatial) <= DENSE_CONV_MAX_EXPANSION * geometry.kernel_size:
            geometry = _dense_tables(geometry)
        plans.append(geometry)
        channels, spatial = arch.width, out
    return plans


def extract_patches(
    h: Tensor, geometry: ConvGeometry, padded: Tensor | None = None, out: Tensor | None = None
) -> Tensor:
    """im2col of channels-last ``h (L, B, *S_in, C)`` → ``(L, B·|S_out|, k·C)`` (a copy).

    ``padded``: optional buffer ``(L, B, *(S_in + 2), C)`` whose border is zero, to pad ``h`` in;
    ``out``: optional buffer ``(L, B·|S_out|, k·C)`` for the result (on CPU a fresh multi-megabyte
    result costs more in page faults than the copy itself).
    """
    lead, batch, dims = h.shape[0], h.shape[1], geometry.dims
    if padded is None:
        pad = geometry.pad
        padded = F.pad(h, (0, 0) + (pad, pad) * dims)  # zero padding on every spatial side
    else:
        inner = tuple(slice(geometry.pad, n + geometry.pad) for n in geometry.in_spatial)
        padded[(slice(None), slice(None), *inner)] = h
    strides = padded.stride()
    spatial_strides = strides[2 : 2 + dims]
    view = padded.as_strided(
        (lead, batch, *geometry.out_spatial, *([geometry.kernel] * dims), geometry.in_channels),
        (
            strides[0],
            strides[1],
            *(geometry.stride * s for s in spatial_strides),
            *spatial_strides,
            strides[-1],
        ),
    )
    if out is not None:
        out.view(view.shape).copy_(view)
        return out
    return view.reshape(lead, batch * geometry.out_positions, geometry.patch_size)


def fold_patches(grad_patches: Tensor, geometry: ConvGeometry, padded: Tensor) -> Tensor:
    """col2im, the adjoint of :func:`extract_patches`: ``(M, B·|S_out|, k·C)`` → ``(M, B, *S_in, C)``,
    summed in the buffer ``padded (M, B, *(S_in + 2), C)``."""
    models, dims, stride = grad_patches.shape[0], geometry.dims, geometry.stride
    batch = grad_patches.shape[1] // geometry.out_positions
    kernel = [geometry.kernel] * dims
    g = grad_patches.view(models, batch, *geometry.out_spatial, *kernel, geometry.in_channels)
    padded.zero_()
    for offset in itertools.product(range(geometry.kernel), repeat=dims):
        where = tuple(
            slice(o, o + stride * (n - 1) + 1, stride)
            for o, n in zip(offset, geometry.out_spatial, strict=True)
        )
        padded[(slice(None), slice(None), *where)] += g[(..., *offset, slice(None))]
    inner = tuple(slice(geometry.pad, n + geometry.pad) for n in geometry.in_spatial)
    return padded[(slice(None), slice(None), *inner)]


def kernel_matrix(kernel: Tensor) -> Tensor:
    """Conv kernel ``(M, O, C, *k)`` → ``(M, O, k·C)`` in the patch order ``(*offset, c)``."""
    return kernel.flatten(3).transpose(2, 3).reshape(kernel.shape[0], kernel.shape[1], -1)
