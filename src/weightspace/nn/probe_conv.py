r"""Convolutions of many models at once on a gapped grid: the kernels of
:mod:`weightspace.nn.probe_ops`.

Per model (weights stacked on a leading axis ``G``) a convolution is written as one ``baddbmm``
per kernel entry :math:`\kappa` over shifted views of the input, laid out once in a flat grid
(:func:`grid_conv`):

.. math::
    Y_g = b_g + \sum_{\kappa} W_{g,\kappa}\, \mathrm{shift}_{\kappa}(X_g), \qquad
    W_{g,\kappa} \in \mathbb{R}^{C_\mathrm{out} \times C_\mathrm{in}}

(no im2col copy: a shifted view of the flattened grid is a plain strided matrix). On shared
inputs (the probes themselves) :func:`shared_conv` is one ``im2col`` and one matrix product for
every model's weights at once.

**The gapped grid.** Each probe's image sits in a block of :math:`\prod_i (S_i + g_i)` cells:
its :math:`S_i` data positions followed by :math:`g_i` zero cells per spatial axis, blocks one
after the other. A read that falls left of a row (or above an image) lands in the *previous*
row's (image's) zero gap, one that falls right (below) in its own, so one gap of
:math:`g_i = \max(\text{padding}_i, \text{right reach}_i)` does the work of both paddings,
where a zero-padded grid needs :math:`2\,\text{padding}_i`. Every product computes one output
per cell, valid or not, so for the 1.3k-parameter CNN's 3x3 convs on 8x8 probes
(padding 1) that is :math:`9^2 = 81` cells per probe instead of :math:`10^2 = 100`
(64 valid): 1.27x the valid FLOPs instead of 1.56x. Computing only valid cells would need a
masked copy of the input per kernel column (or an im2col): by our estimate for that CNN, two
copies of ~83 KB per model and layer (read and written) against ~0.33 MFLOP saved (81 -> 72
cells), no gain at this CPU's ~10-30 GB/s and ~30 GFLOP/s.

**No copies between convolutions.** In a chain convolution -> activation -> convolution
(each value read once) whose first output cells can be the second's grid cells (an input
shared by all models, or equal blocks at stride 1), the first writes its product straight into
the second's grid (:func:`shared_conv_into`, ``grid_conv(into=...)``), and the activation runs
in place there and zeroes the gap cells (:func:`activate_and_clear_gaps`; ReLU fused into one
``clamp``), so the second reads its input where it lies (``grid_conv(prefilled=True)``).
The shared first convolution then computes its gap cells too (81 instead of 64 per 8x8 probe,
~0.08 MFLOP per model for that CNN) to save a copy of its output.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "activate_and_clear_gaps",
    "cell_mask",
    "grid_buffer",
    "grid_conv",
    "grid_geometry",
    "out_spatial",
    "pair",
    "scratch",
    "shared_conv",
]


def pair(value: object, dims: int) -> tuple[int, ...]:
    """``value`` as a ``dims``-tuple of ints (an int is repeated)."""
    if isinstance(value, int):
        return (value,) * dims
    return tuple(int(v) for v in value)  # type: ignore[union-attr]


def out_spatial(size, kernel, stride, padding, dilation) -> tuple[int, ...]:
    """Output size per spatial axis: :math:`\\lfloor (S + 2p - d(k-1) - 1)/s \\rfloor + 1`."""
    return tuple(
        (n + 2 * pad - dil * (k - 1) - 1) // s + 1
        for n, k, s, pad, dil in zip(size, kernel, stride, padding, dilation, strict=True)
    )


def grid_geometry(
    size: tuple[int, ...],
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    r"""The gapped grid's block ``S_i + g_i`` per spatial axis, and the output size.

    Along axis :math:`i`, output :math:`y` reads input positions
    :math:`y s - p + j d,\ j < k`: at least :math:`-p` (the previous block's gap must hold
    :math:`p` zeros) and at most :math:`r = (O-1)s - p + d(k-1)` (the own gap must reach it);
    output corners :math:`y s` must stay inside the block. So
    :math:`g = \max(p,\ r - S + 1,\ (O-1)s - S + 1,\ 0)`.
    """
    out = out_spatial(size, kernel, stride, padding, dilation)
    block = []
    for n, k, s, pad, dil, o in zip(size, kernel, stride, padding, dilation, out, strict=True):
        reach = (o - 1) * s - pad + dil * (k - 1)
        block.append(n + max(pad, reach - n + 1, (o - 1) * s - n + 1, 0))
    return tuple(block), out


def scratch(
    buffers: dict[str, Tensor] | None,
    key: str,
    shape: tuple[int, ...],
    like: Tensor,
    zero: bool = False,
) -> Tensor | None:
    """A buffer of ``shape`` kept in ``buffers[key]`` for the next chunk of models (its first
    ``shape[0]`` rows; a fresh one, zero-filled if ``zero``, when none fits). Without
    ``buffers``: a fresh zero-filled buffer if ``zero``, else ``None``. Reuse saves the grid's
    zero fill and the first writes to fresh memory (a product into a fresh output measured
    several times slower than into a reused one on a 1.3k-parameter CNN's probe batch)."""
    cached = None if buffers is None else buffers.get(key)
    if cached is not None and cached.shape[1:] == shape[1:] and cached.shape[0] >= shape[0]:
        return cached[: shape[0]]
    if buffers is None and not zero:
        return None
    buffer = like.new_zeros(shape) if zero else like.new_empty(shape)
    if buffers is not None:
        buffers[key] = buffer
    return buffer


def _probe_columns(
    t: Tensor,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
) -> Tensor:
    """``im2col`` of the shared input ``t (C, P, H, W)``: ``(P, C k, L)``, one column per
    output position of each probe."""
    c, p = t.shape[0], t.shape[1]
    images = t.movedim(0, 1).reshape(p, c, *t.shape[2:])
    return F.unfold(images, kernel, dilation, padding, stride)


def shared_conv(
    t: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    buffers: dict[str, Tensor] | None = None,
    key: str = "",
) -> Tensor:
    """Every model's convolution of the same input ``t (C, P, H, W)`` (a 1-D input as height
    1; ``kernel`` etc. 2-tuples): ``(G C_out, P L)`` from one ``im2col`` and one matrix
    product ``(G C_out, C k) @ (C k, P L)``; ``weight (G, C_out, C, *k)``."""
    cols = _probe_columns(t, kernel, stride, padding, dilation)  # (P, C k, L)
    p, length = cols.shape[0], cols.shape[-1]
    cols = cols.transpose(0, 1).reshape(cols.shape[1], p * length)  # (C k, P L)
    w = weight.reshape(weight.shape[0] * weight.shape[1], -1)  # (G C_out, C k)
    inplace = not torch.is_grad_enabled()
    out = scratch(buffers if inplace else None, f"{key}/out", (len(w), cols.shape[1]), t)
    out = torch.mm(w, cols) if out is None else torch.mm(w, cols, out=out)  # (G C_out, P L)
    if bias is not None:  # a contiguous broadcast add (addmm's expanded input is copied)
        out = out.add_(bias.reshape(-1, 1)) if inplace else out + bias.reshape(-1, 1)
    return out


def grid_buffer(
    t_shape: tuple[int, ...],
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    like: Tensor,
    buffers: dict[str, Tensor] | None = None,
    key: str = "",
) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """The zero-gapped grid of a convolution's input of shape ``t_shape = (G, C, P, *S)``
    (:func:`grid_conv`): ``(grid, data, block)``, ``grid`` flat and ``data`` its contiguous
    ``(G, C, P prod(B))`` view whose cells ``[..., :S]`` (per block) hold the input, the
    others zero."""
    g, c, p = t_shape[:3]
    block, _ = grid_geometry(tuple(t_shape[3:]), kernel, stride, padding, dilation)
    strides = [math.prod(block[i + 1 :]) for i in range(len(block))]
    front = sum(pad * st for pad, st in zip(padding, strides, strict=True))
    reach = sum((k - 1) * d * st for k, d, st in zip(kernel, dilation, strides, strict=True))
    n = p * math.prod(block)
    inplace = not torch.is_grad_enabled()
    # One flat buffer, row (g, c) after row: a read past a row's last image lands in the next
    # row's first gap cells and a read before its first image in the previous row's last
    # ones, exactly as between two images of a row; so every shifted view is contiguous.
    # The front is never written; the cells after the data (a reused, larger buffer's) are
    # zeroed here; gaps inside the data stay zero (only data cells are written, or a
    # producer that writes every cell zeroes them after, see probe_ops).
    size = g * c * n
    grid = scratch(buffers if inplace else None, key, (size + 2 * max(front, reach),), like, True)
    assert grid is not None
    grid[front + size :].zero_()
    return grid, grid[front : front + size].view(g, c, n), block


def grid_conv(
    t: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    buffers: dict[str, Tensor] | None = None,
    key: str = "",
    into: Tensor | None = None,
    prefilled: bool = False,
) -> tuple[Tensor, tuple[object, ...]]:
    r"""A convolution of ``(G, C, P, *S)`` per model: ``(G, C_out, P, *S_out)``, returned as
    the contiguous grid of all cells ``(G, C_out, P, *B)`` (``B`` the gapped block,
    :func:`grid_geometry`) and the index of the valid outputs in it.

    The input is written once into a flat zero-gapped grid of ``f + G C P \prod B + m``
    cells (:func:`grid_buffer`; ``f`` leading zeros for reads above/left of the first image,
    ``m`` a trailing margin). On the flattened grid, kernel entry :math:`\kappa` of the window
    whose output cell is :math:`n` reads :math:`n + o_\kappa` (:math:`o_\kappa` the entry's
    flat offset, the data starting at :math:`f`), so its operand is ``grid[o : o + G C N]``
    viewed as ``(G, C, N)`` (a contiguous batch of matrices, no copy), and ``k`` accumulating
    ``baddbmm`` compute every cell; the valid outputs are a strided slice of them (the gap
    cells are computed and dropped: finite, since they read only zeros and data).

    ``buffers`` (inference only) keeps the grid and the output for the next chunk of models
    under ``key`` (:func:`scratch`); the grid's gaps are never written, so they stay zero.
    ``into`` (inference only), a ``(G, C_out, P \prod B)`` view, receives the product instead
    (the next convolution's :func:`grid_buffer` data, when the geometries agree); with
    ``prefilled`` the input is already in this convolution's grid (``buffers[key]``), its
    gaps zeroed, and is not copied.
    """
    g, c, p = t.shape[:3]
    size = t.shape[3:]
    kernel = tuple(weight.shape[3:])
    block, out_size = grid_geometry(tuple(size), kernel, stride, padding, dilation)
    grid, data, _ = grid_buffer(tuple(t.shape), kernel, stride, padding, dilation, t, buffers, key)
    if not prefilled:
        data.view(g, c, p, *block)[(..., *(slice(0, s) for s in size))] = t
    n = data.shape[-1]
    offsets = [d * math.prod(block[i + 1 :]) for i, d in enumerate(dilation)]
    flat_offsets = [
        sum(i * o for i, o in zip(entry, offsets, strict=True))
        for entry in itertools.product(*(range(k) for k in kernel))
    ]
    w = weight.flatten(3).permute(3, 0, 1, 2).contiguous()  # (k, G, C_out, C)
    size = data.numel()
    first = grid[flat_offsets[0] : flat_offsets[0] + size].view(g, c, n)
    inplace = not torch.is_grad_enabled()
    out = into
    if out is None:
        out = scratch(buffers if inplace else None, f"{key}/out", (g, weight.shape[1], n), t)
    out = torch.bmm(w[0], first) if out is None else torch.bmm(w[0], first, out=out)
    for w_k, offset in zip(w[1:], flat_offsets[1:], strict=True):
        view = grid[offset : offset + size].view(g, c, n)
        out = out.baddbmm_(w_k, view) if inplace else torch.baddbmm(out, w_k, view)
    if bias is not None:  # a contiguous broadcast add (baddbmm's expanded input is copied)
        out = out.add_(bias.unsqueeze(-1)) if inplace else out + bias.unsqueeze(-1)
    valid = (Ellipsis, *(slice(0, o * st, st) for o, st in zip(out_size, stride, strict=True)))
    return out.view(g, weight.shape[1], p, *block), valid


def shared_conv_into(
    t: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    out_size: tuple[int, ...],
    block: tuple[int, ...],
    into: Tensor,
) -> Tensor:
    """:func:`shared_conv` written straight into the next convolution's grid data ``into``
    ``(G, C_out, P prod(B))``: the probes' columns are laid out on the next grid's blocks
    (zero on gap cells, whose outputs are then just the bias, zeroed after the activation),
    so the product lands in place. Arguments as :func:`shared_conv`; ``out_size`` the
    output's spatial size (the next grid's data cells), ``block`` the next grid's block."""
    cols = _probe_columns(t, kernel, stride, padding, dilation)  # (P, C k, L)
    p, width = cols.shape[0], cols.shape[1]
    gapped = cols.new_zeros(width, p, *block)
    data = (slice(None), slice(None), *(slice(0, s) for s in out_size))
    gapped[data] = cols.view(p, width, *out_size).transpose(0, 1)
    g, c_out, n = into.shape
    torch.mm(weight.reshape(g * c_out, -1), gapped.view(width, n), out=into.view(g * c_out, n))
    if bias is not None:
        into.add_(bias.unsqueeze(-1))
    return into.view(g, c_out, p, *block)


def activate_and_clear_gaps(full: Tensor, data_size: tuple[int, ...], function, relu: bool):
    """Apply an activation in place to ``full (G, C, P, *B)`` (a grid's data, every cell
    computed) and zero its gap cells (those at or past ``data_size`` on some axis), so the
    grid is ready for its convolution. ReLU is one fused ``clamp`` (upper bound 0 on gaps)."""
    mask = cell_mask(tuple(full.shape[3:]), data_size, full.dtype, full.device)
    if relu:
        upper = torch.where(mask > 0, math.inf, 0.0).to(full.dtype)
        return torch.clamp(full, min=torch.zeros((), dtype=full.dtype), max=upper, out=full)
    return torch.mul(function(full), mask, out=full)


@lru_cache(maxsize=256)
def cell_mask(
    block: tuple[int, ...],
    valid: tuple[int | tuple[int, int, int], ...],
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor:
    """``(*block)``: 1 on a block's data cells, 0 on the others. ``valid``: per axis the data
    extent (cells ``[0, size)``) or ``(start, stop, step)``."""
    mask = torch.ones((), dtype=dtype, device=device)
    for axis, (extent, cells) in enumerate(zip(block, valid, strict=True)):
        cells = slice(*cells) if isinstance(cells, tuple) else slice(0, cells)
        line = torch.zeros(extent, dtype=dtype, device=device)
        line[cells] = 1
        shape = [1] * len(block)
        shape[axis] = extent
        mask = mask * line.view(shape)
    return mask
