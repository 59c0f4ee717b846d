r"""The probe forward of many models of one architecture as batched matrix products.

:func:`torch.func.vmap` of ``functional_call`` turns a batch of ``G`` convolutions into one
grouped convolution with ``G`` groups of a few channels each, which oneDNN runs far below the
machine's matmul rate (the probe branch of a 1.3k-parameter CNN spent ~60 % of its time there).
:func:`stacked_forward` interprets the spec itself, with every model's weights stacked along a
leading model axis ``G``, and runs each layer as *one* batched product for all models:

* a convolution writes its input once into a zero-padded grid and sums one ``baddbmm`` per
  kernel entry :math:`\kappa` over shifted views of it (:func:`_grid_conv`):

  .. math::
      Y_g = b_g + \sum_{\kappa} W_{g,\kappa}\, \mathrm{shift}_{\kappa}(X_g), \qquad
      W_{g,\kappa} \in \mathbb{R}^{C_\mathrm{out} \times C_\mathrm{in}}

  (no im2col copy: a shifted view of the flattened grid is a plain strided matrix);
* a linear layer is :math:`Y_g = X_g W_g^\top + b_g`, again one ``baddbmm``;
* while a value does not depend on the model yet (the probes themselves, and anything computed
  from them alone) it is kept once, without the model axis: the first layer is then one plain
  matrix product ``(G C_out, C_in k) @ (C_in k, P L)`` on the probes' columns, computed once.

Activations are stored per model as ``(G, C, P, *spatial)`` (channels before probes, the
layout the products write), or ``(G, P, F)`` after a flatten or a global pool. Models are taken
in chunks of about ``_CHUNK_BYTES`` of im2col-sized work (16 MB measured best on this CPU, of
1-1024 MB), so a chunk's activations stay in cache from layer to layer. Elementwise ops, residual adds and pools are applied on
views; the result equals the ``vmap`` forward up to floating-point rounding (summation order).

Specs with an op this module does not run (norms, embeddings, attention, token pooling, grouped
or ``"same"``-padded convolutions) get ``None`` from :func:`supports`, and the caller falls back
to ``vmap``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from weightspace.module import apply_activation
from weightspace.spec import NetworkSpec, Op

__all__ = ["stacked_forward", "supports"]

_SUPPORTED = frozenset(
    {
        "input",
        "linear",
        "conv1d",
        "conv2d",
        "activation",
        "add",
        "flatten",
        "global_pool",
        "pool",
        "adaptive_pool",
    }
)
#: Bytes of im2col-sized work per chunk of models (activations stay in cache between layers).
_CHUNK_BYTES = 16 * 2**20


def _pair(value: object, dims: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * dims
    return tuple(int(v) for v in value)  # type: ignore[union-attr]


@lru_cache(maxsize=1024)
def supports(spec: NetworkSpec) -> bool:
    """Whether :func:`stacked_forward` runs ``spec`` (else use the ``vmap`` forward)."""
    if spec.is_tokens:
        return False
    for op in spec.ops:
        if op.kind not in _SUPPORTED:
            return False
        if op.kind in ("conv1d", "conv2d"):
            if isinstance(op.attrs.get("padding", 0), str) or int(op.attrs.get("groups", 1)) != 1:
                return False
    return len(spec.input_shape) in (1, 2, 3)


@dataclass
class _Value:
    """An activation: ``tensor`` is ``(G, C, P, *S)`` (layout ``"cp"``) or ``(G, P, F)``
    (layout ``"pf"``) per model, or without the ``G`` axis when ``shared`` (the same for all
    models).

    A convolution's output may keep ``full``, the contiguous grid of every window position
    (:func:`_grid_conv`), with ``tensor == full[valid]``: an elementwise activation then runs
    on ``full`` (contiguous, far faster than on the strided slice; the extra windows are
    finite and dropped)."""

    tensor: Tensor
    layout: str  # "cp" or "pf"
    shared: bool
    full: Tensor | None = None
    valid: tuple[object, ...] = ()  # an index of full: Ellipsis, then slices

    def as_pf(self) -> Tensor:
        """``(G?, P, F)``: channels (and positions) after the probe axis."""
        t = self.tensor
        if self.layout == "pf":
            return t
        lead = 0 if self.shared else 1
        t = t.movedim(lead + 1, lead)  # (G?, P, C, *S)
        return t.flatten(lead + 1)


def _samples(value: _Value) -> tuple[Tensor, tuple[int, ...]]:
    """The activation as ``(N, 1, *S)`` single-channel samples (for per-channel pools), and
    the leading shape to restore."""
    t = value.tensor
    spatial = t.dim() - (2 if value.shared else 3)
    lead = tuple(t.shape[: t.dim() - spatial])
    return t.reshape(-1, 1, *t.shape[t.dim() - spatial :]), lead


def _conv(
    op: Op,
    x: _Value,
    weight: Tensor,
    bias: Tensor | None,
    g: int,
    grids: dict[str, Tensor] | None = None,
) -> _Value:
    """One convolution for all models: on shared inputs (the probes) im2col and one matrix
    product for every model's weights at once; per model, :func:`_grid_conv` (``grids``: its
    reusable padded buffers, by op name, see :func:`_grid_conv`)."""
    dims = 1 if op.kind == "conv1d" else 2
    a = op.attrs
    kernel = _pair(a["kernel_size"], dims)
    stride = _pair(a.get("stride", 1), dims)
    padding = _pair(a.get("padding", 0), dims)
    dilation = _pair(a.get("dilation", 1), dims)
    if dims == 1:  # a 1-D convolution is a 2-D one of height 1
        kernel, stride, padding, dilation = (
            (1, *kernel),
            (1, *stride),
            (0, *padding),
            (1, *dilation),
        )
    t = x.tensor
    if x.layout != "cp":
        raise ValueError(f"conv {op.name!r} reads a flattened value")
    if x.shared:  # (C, P, *S) -> (P, C, H, W)
        c, p = t.shape[0], t.shape[1]
        images = t.movedim(0, 1).reshape(p, c, *([1] if dims == 1 else []), *t.shape[2:])
        cols = F.unfold(images, kernel, dilation, padding, stride)  # (P, C k, L)
        length = cols.shape[-1]
        cols = cols.transpose(0, 1).reshape(cols.shape[1], p * length)  # (C k, P L)
        w = weight.reshape(g * weight.shape[1], -1)  # (G C_out, C k)
        inplace = not torch.is_grad_enabled()
        out = _scratch(grids if inplace else None, f"{op.name}/out", (len(w), cols.shape[1]), t)
        out = torch.mm(w, cols) if out is None else torch.mm(w, cols, out=out)  # (G C_out, P L)
        if bias is not None:  # a contiguous broadcast add (addmm's expanded input is copied)
            out = out.add_(bias.reshape(-1, 1)) if inplace else out + bias.reshape(-1, 1)
    else:  # (G, C, P, *S): columns on a padded grid, then one baddbmm
        full, valid = _grid_conv(
            t,
            weight,
            bias,
            stride[-dims:],
            padding[-dims:],
            dilation[-dims:],
            grids,
            op.name,
        )
        return _Value(full[valid], "cp", False, full, valid)
    spatial = _out_spatial(
        x.tensor.shape[-dims:], kernel[-dims:], stride[-dims:], padding[-dims:], dilation[-dims:]
    )
    out = out.view(g, weight.shape[1], -1, *spatial)
    return _Value(out, "cp", False, out, (Ellipsis,))


def _grid_conv(
    t: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    grids: dict[str, Tensor] | None = None,
    key: str = "",
) -> tuple[Tensor, tuple[object, ...]]:
    r"""A convolution of ``(G, C, P, *S)`` per model: ``(G, C_out, P, *S_out)``, returned as
    the contiguous grid of all window positions ``(G, C_out, P, *S_p)`` and the index of the
    valid ones in it.

    The input is written once into a zero-padded grid ``(G, C, P \prod S_p + m)`` (``S_p``
    the padded spatial size, ``m`` a zero margin). On the flattened grid, kernel entry
    :math:`\kappa` reads position :math:`n + o_\kappa` for the window whose corner is at
    :math:`n` (:math:`o_\kappa` the entry's flat offset), so its operand is the strided view
    ``buffer[:, :, o:o+N]`` (a plain ``(G, C, N)`` matrix, no copy), and ``k`` accumulating
    ``baddbmm`` compute every window position of the grid; the valid outputs are a strided
    slice of it
    (the others, windows that wrap a row, are computed and dropped: :math:`\prod S_p / \prod
    S` more work, a cheap price for contiguous memory).
    """
    g, c, p = t.shape[:3]
    size = t.shape[3:]
    kernel = weight.shape[3:]
    grid = tuple(n + 2 * pad for n, pad in zip(size, padding, strict=True))
    grid_strides = [math.prod(grid[i + 1 :]) for i in range(len(grid))]
    offsets = [d * st for d, st in zip(dilation, grid_strides, strict=True)]
    margin = sum((k - 1) * o for k, o in zip(kernel, offsets, strict=True))
    n = p * math.prod(grid)
    inplace = not torch.is_grad_enabled()
    # Border and margin of a reused grid are still zero: only the interior is ever written.
    buffer = _scratch(grids if inplace else None, key, (g, c, n + margin), t, zero=True)
    inner = buffer[:, :, :n].view(g, c, p, *grid)
    inner[(..., *(slice(pad, pad + s) for pad, s in zip(padding, size, strict=True)))] = t
    # One product per kernel entry on a shifted view of the grid (no im2col copy).
    flat_offsets = [
        sum(i * o for i, o in zip(entry, offsets, strict=True))
        for entry in itertools.product(*(range(k) for k in kernel))
    ]
    w = weight.flatten(3).permute(3, 0, 1, 2).contiguous()  # (k, G, C_out, C)
    first = buffer[:, :, flat_offsets[0] : flat_offsets[0] + n]
    out = _scratch(grids if inplace else None, f"{key}/out", (g, weight.shape[1], n), t)
    out = torch.bmm(w[0], first) if out is None else torch.bmm(w[0], first, out=out)
    for w_k, offset in zip(w[1:], flat_offsets[1:], strict=True):
        view = buffer[:, :, offset : offset + n]
        out = out.baddbmm_(w_k, view) if inplace else torch.baddbmm(out, w_k, view)
    if bias is not None:  # a contiguous broadcast add (baddbmm's expanded input is copied)
        out = out.add_(bias.unsqueeze(-1)) if inplace else out + bias.unsqueeze(-1)
    out_size = _out_spatial(size, kernel, stride, padding, dilation)
    valid = (Ellipsis, *(slice(0, o * st, st) for o, st in zip(out_size, stride, strict=True)))
    return out.view(g, weight.shape[1], p, *grid), valid


def _scratch(
    grids: dict[str, Tensor] | None,
    key: str,
    shape: tuple[int, ...],
    like: Tensor,
    zero: bool = False,
) -> Tensor | None:
    """A buffer of ``shape`` kept in ``grids[key]`` for the next chunk of models (its first
    ``shape[0]`` rows; a fresh one, zero-filled if ``zero``, when none fits). Without
    ``grids``: a fresh zero-filled buffer if ``zero``, else ``None``. Reuse saves the grid's
    zero fill and the first writes to fresh memory (a product into a fresh output measured
    several times slower than into a reused one on a 1.3k-parameter CNN's probe batch)."""
    cached = None if grids is None else grids.get(key)
    if cached is not None and cached.shape[1:] == shape[1:] and cached.shape[0] >= shape[0]:
        return cached[: shape[0]]
    if grids is None and not zero:
        return None
    buffer = like.new_zeros(shape) if zero else like.new_empty(shape)
    if grids is not None:
        grids[key] = buffer
    return buffer


def _out_spatial(size, kernel, stride, padding, dilation) -> tuple[int, ...]:
    return tuple(
        (n + 2 * pad - dil * (k - 1) - 1) // s + 1
        for n, k, s, pad, dil in zip(size, kernel, stride, padding, dilation, strict=True)
    )


def _linear(x: _Value, weight: Tensor, bias: Tensor | None, g: int) -> _Value:
    t = x.as_pf()  # (G?, P, F)
    if x.shared:
        p = t.shape[0]
        out = (weight.reshape(-1, weight.shape[-1]) @ t.t()).view(g, weight.shape[1], p)
        out = out.transpose(1, 2)  # (G, P, out)
        if bias is not None:
            out = out + bias.unsqueeze(1)
        return _Value(out, "pf", False)
    if bias is not None:
        out = torch.baddbmm(bias.unsqueeze(1), t, weight.transpose(1, 2))
    else:
        out = torch.bmm(t, weight.transpose(1, 2))
    return _Value(out, "pf", False)


def _pool(op: Op, x: _Value) -> _Value:
    a = op.attrs
    if x.layout != "cp":
        raise ValueError(f"pool {op.name!r} reads a flattened value")
    samples, lead = _samples(x)
    dims = int(a["dims"])
    if op.kind == "pool":
        fn = {
            ("avg", 1): F.avg_pool1d,
            ("max", 1): F.max_pool1d,
            ("avg", 2): F.avg_pool2d,
            ("max", 2): F.max_pool2d,
        }[(a["mode"], dims)]
        y = fn(samples, a["kernel_size"], a["stride"], a.get("padding", 0))
    else:
        fn = {
            ("avg", 1): F.adaptive_avg_pool1d,
            ("max", 1): F.adaptive_max_pool1d,
            ("avg", 2): F.adaptive_avg_pool2d,
            ("max", 2): F.adaptive_max_pool2d,
        }[(a["mode"], dims)]
        y = fn(samples, a["output_size"])
    return _Value(y.reshape(*lead, *y.shape[-dims:]), "cp", x.shared)


def stacked_forward(spec: NetworkSpec, state: dict[str, Tensor], probes: Tensor) -> Tensor:
    r"""``spec``'s forward for ``G`` models on shared probes: ``(G, P, outputs)``.

    Equals ``vmap(lambda s: functional_call(to_module(spec), s, (probes,)))(state)`` up to
    rounding (see the module docstring); differentiable in ``probes`` and ``state``.

    Args:
        spec: an architecture :func:`supports` accepts.
        state: ``{key: (G, *shape)}`` stacked weights.
        probes: ``(P, *input_shape)``.
    """
    g = next(iter(state.values())).shape[0]
    cols_per_model = _columns_per_model(spec, probes.shape[0]) * probes.element_size()
    chunk = max(1, _CHUNK_BYTES // max(cols_per_model, 1))
    if chunk >= g:
        return _forward(spec, state, probes, g)
    grids: dict[str, Tensor] = {}  # conv buffers, reused chunk after chunk
    parts = []
    for start in range(0, g, chunk):
        part = _forward(
            spec, {k: v[start : start + chunk] for k, v in state.items()}, probes, None, grids
        )
        reused = {b.untyped_storage().data_ptr() for b in grids.values()}
        # The next chunk overwrites the buffers: keep no view of them.
        parts.append(part.clone() if part.untyped_storage().data_ptr() in reused else part)
    return torch.cat(parts)


@lru_cache(maxsize=1024)
def _consumers(spec: NetworkSpec) -> dict[str, int]:
    """How many ops read each op's value."""
    counts = dict.fromkeys((op.name for op in spec.ops), 0)
    for op in spec.ops:
        for name in op.inputs:
            counts[name] += 1
    return counts


def _activation(op: Op, x: _Value, only_reader: bool) -> _Value:
    """An elementwise activation; on a convolution's whole contiguous grid when it has one,
    in place for ReLU when nothing else reads ``x`` and no gradient is needed."""
    if x.full is None:
        return _Value(apply_activation(x.tensor, op.attrs), x.layout, x.shared)
    if op.attrs["function"] == "relu" and only_reader and not torch.is_grad_enabled():
        full = x.full.relu_()
    else:
        full = apply_activation(x.full, op.attrs)
    return _Value(full[x.valid], x.layout, x.shared, full, x.valid)


@lru_cache(maxsize=1024)
def _columns_per_model(spec: NetworkSpec, p: int) -> int:
    """An upper bound on one model's im2col entries in any layer: the widest ``C_in k`` times
    the probes' positions."""
    widest = 0
    for op in spec.ops:
        if op.kind in ("conv1d", "conv2d"):
            k = math.prod(_pair(op.attrs["kernel_size"], 1 if op.kind == "conv1d" else 2))
            widest = max(widest, op.in_size * k)
    return widest * p * math.prod(spec.input_shape[1:])


def _forward(
    spec: NetworkSpec,
    state: dict[str, Tensor],
    probes: Tensor,
    g: int | None,
    grids: dict[str, Tensor] | None = None,
) -> Tensor:
    g = next(iter(state.values())).shape[0] if g is None else g
    values: dict[str, _Value] = {}
    consumers = _consumers(spec)
    for op in spec.ops:
        if op.kind == "input":
            if len(spec.input_shape) == 1:  # (P, F): a flat input
                values[op.name] = _Value(probes, "pf", True)
            else:  # (P, C, *S) -> (C, P, *S)
                values[op.name] = _Value(probes.movedim(1, 0), "cp", True)
            continue
        args = [values[name] for name in op.inputs]
        if op.kind in ("conv1d", "conv2d", "linear"):
            weight = state[f"{op.name}.weight"]
            bias = state.get(f"{op.name}.bias")
            if op.kind == "linear":
                y = _linear(args[0], weight, bias, g)
            else:
                y = _conv(op, args[0], weight, bias, g, grids)
        elif op.kind == "activation":
            y = _activation(op, args[0], consumers[op.inputs[0]] == 1)
        elif op.kind == "add":
            shared = all(v.shared for v in args)
            layout = args[0].layout if len({v.layout for v in args}) == 1 else "pf"
            # Shared values broadcast against per-model ones (no model axis in front).
            tensors = [v.tensor if layout == v.layout else v.as_pf() for v in args]
            total = tensors[0]
            for other in tensors[1:]:
                total = total + other
            y = _Value(total, layout, shared)
        elif op.kind == "flatten":
            y = _Value(args[0].as_pf(), "pf", args[0].shared)
        elif op.kind == "global_pool":
            v = args[0]
            if v.layout != "cp":
                raise ValueError(f"global pool {op.name!r} reads a flattened value")
            lead = 2 if v.shared else 3
            dims = tuple(range(lead, v.tensor.dim()))
            t = v.tensor.mean(dims) if op.attrs["mode"] == "avg" else v.tensor.amax(dims)
            y = _Value(t, "cp", v.shared)  # (G?, C, P): a "cp" value with no spatial axes
        else:  # pool, adaptive_pool
            y = _pool(op, args[0])
        values[op.name] = y
    out = values[spec.output.name]
    return out.as_pf() if not out.shared else out.as_pf().expand(g, -1, -1)
