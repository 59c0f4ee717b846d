r"""The probe forward of many models of one architecture as batched matrix products.

:func:`torch.func.vmap` of ``functional_call`` turns a batch of ``G`` convolutions into one
grouped convolution with ``G`` groups of a few channels each, which oneDNN runs far below the
machine's matmul rate (the probe branch of a 1.3k-parameter CNN spent ~60 % of its time there).
:func:`stacked_forward` interprets the spec itself, with every model's weights stacked along a
leading model axis ``G``, and runs each layer as *one* batched product for all models:

* a convolution writes its input once into a zero-gapped grid and sums one ``baddbmm`` per
  kernel entry over shifted views of it (:mod:`weightspace.nn.probe_conv`, which has the math
  and the grid's geometry);
* a linear layer is :math:`Y_g = X_g W_g^\top + b_g`, again one ``baddbmm``;
* while a value does not depend on the model yet (the probes themselves, and anything computed
  from them alone) it is kept once, without the model axis: the first layer is then one plain
  matrix product ``(G C_out, C_in k) @ (C_in k, P L)`` on the probes' columns, computed once.

Activations are stored per model as ``(G, C, P, *spatial)`` (channels before probes, the
layout the products write), or ``(G, P, F)`` after a flatten or a global pool. Models are taken
in chunks of about ``_CHUNK_BYTES`` of im2col-sized work (16 MB measured best on this CPU, of
1-1024 MB), so a chunk's activations stay in cache from layer to layer. Elementwise ops,
residual adds and pools are applied on views; the result equals the ``vmap`` forward up to
floating-point rounding (summation order).

Specs with an op this module does not run (norms, embeddings, attention, token pooling, grouped
or ``"same"``-padded convolutions) get ``False`` from :func:`supports`, and the caller falls back
to ``vmap``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from weightspace.module import apply_activation
from weightspace.nn.probe_conv import (
    activate_and_clear_gaps,
    cell_mask,
    grid_buffer,
    grid_conv,
    grid_geometry,
    out_spatial,
    pair,
    shared_conv,
    shared_conv_into,
)
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
    (:func:`~weightspace.nn.probe_conv.grid_conv`), with ``tensor == full[valid]``: an
    elementwise activation then runs on ``full`` (contiguous, far faster than on the strided
    slice; the extra windows are finite and dropped), and a global average pool is one
    matrix-vector product on it (:func:`_grid_mean`)."""

    tensor: Tensor
    layout: str  # "cp" or "pf"
    shared: bool
    full: Tensor | None = None
    valid: tuple[object, ...] = ()  # an index of full: Ellipsis, then slices
    grid_of: str | None = None  # the convolution whose grid ``full`` is (see _chains)

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


def _conv_geometry(op: Op) -> tuple[int, tuple[int, ...], ...]:
    """``(dims, kernel, stride, padding, dilation)`` of a convolution op."""
    dims = 1 if op.kind == "conv1d" else 2
    a = op.attrs
    return (
        dims,
        pair(a["kernel_size"], dims),
        pair(a.get("stride", 1), dims),
        pair(a.get("padding", 0), dims),
        pair(a.get("dilation", 1), dims),
    )


def _conv(
    op: Op,
    x: _Value,
    weight: Tensor,
    bias: Tensor | None,
    g: int,
    buffers: dict[str, Tensor] | None = None,
    feeds: Op | None = None,
) -> _Value:
    """One convolution for all models: on shared inputs (the probes)
    :func:`~weightspace.nn.probe_conv.shared_conv`, per model
    :func:`~weightspace.nn.probe_conv.grid_conv` (``buffers``: reusable scratch, by op name).

    ``feeds`` (inference, with ``buffers``): the convolution that reads this one's output
    through one activation (:func:`_chains`). When this output's cells can be that
    convolution's grid cells (a shared input, or equal blocks at stride 1), the product is
    written straight into its grid (the value's ``grid_of``), saving the copy there."""
    dims, kernel, stride, padding, dilation = _conv_geometry(op)
    t = x.tensor
    if x.layout != "cp":
        raise ValueError(f"conv {op.name!r} reads a flattened value")
    size = tuple(t.shape[-dims:])
    out_size = out_spatial(size, kernel, stride, padding, dilation)
    into, block = None, ()
    if feeds is not None and buffers is not None and not torch.is_grad_enabled():
        _, *next_geometry = _conv_geometry(feeds)
        block, _ = grid_geometry(out_size, *next_geometry)
        if x.shared or (
            block == grid_geometry(size, kernel, stride, padding, dilation)[0]
            and all(s == 1 for s in stride)
        ):
            p = t.shape[1 if x.shared else 2]
            shape = (g, weight.shape[1], p, *out_size)
            into = grid_buffer(shape, *next_geometry, t, buffers, feeds.name)[1]
    grid_of = None if into is None else feeds.name
    if not x.shared:  # (G, C, P, *S): shifted views of a gapped grid, one baddbmm per entry
        prefilled = x.grid_of == op.name
        full, valid = grid_conv(
            t, weight, bias, stride, padding, dilation, buffers, op.name, into, prefilled
        )
        return _Value(full[valid], "cp", False, full, valid, grid_of)
    lift = (lambda v, pad: v) if dims == 2 else (lambda v, pad: (pad, *v))
    images = t if dims == 2 else t.unsqueeze(2)  # a 1-D convolution is a 2-D one of height 1
    geometry = (lift(kernel, 1), lift(stride, 1), lift(padding, 0), lift(dilation, 1))
    if into is not None:
        full = shared_conv_into(images, weight, bias, *geometry, out_size, block, into)
        valid = (Ellipsis, *(slice(0, s) for s in out_size))
        return _Value(full[valid], "cp", False, full, valid, grid_of)
    out = shared_conv(images, weight, bias, *geometry, buffers, op.name)  # (G C_out, P L)
    out = out.view(g, weight.shape[1], -1, *out_size)
    return _Value(out, "cp", False, out, (Ellipsis,))


@lru_cache(maxsize=1024)
def _chains(spec: NetworkSpec) -> dict[str, Op]:
    """Convolution -> activation -> convolution chains, each value read once: the first
    convolution's name -> the second convolution."""
    consumers = _consumers(spec)
    readers = {name: op for op in spec.ops for name in op.inputs}
    out = {}
    for op in spec.ops:
        if op.kind not in ("conv1d", "conv2d") or consumers[op.name] != 1:
            continue
        act = readers[op.name]
        if act.kind != "activation" or consumers[act.name] != 1:
            continue
        following = readers[act.name]
        if following.kind == op.kind and following.inputs[0] == act.name:
            out[op.name] = following
    return out


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
    # Conv scratch (inference), reused chunk after chunk; one chunk may keep views of it.
    buffers: dict[str, Tensor] | None = None if torch.is_grad_enabled() else {}
    if chunk >= g:
        return _forward(spec, state, probes, g, buffers)
    buffers = {} if buffers is None else buffers  # grids reused even with autograd on
    parts = []
    for start in range(0, g, chunk):
        part = _forward(
            spec, {k: v[start : start + chunk] for k, v in state.items()}, probes, None, buffers
        )
        reused = {b.untyped_storage().data_ptr() for b in buffers.values()}
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
    in place for ReLU when nothing else reads ``x`` and no gradient is needed; in place, gap
    cells zeroed, when that grid is the next convolution's (``grid_of``)."""
    if x.full is None:
        return _Value(apply_activation(x.tensor, op.attrs), x.layout, x.shared)
    if x.grid_of is not None:
        data_size = tuple(x.tensor.shape[3:])
        relu = op.attrs["function"] == "relu"
        full = activate_and_clear_gaps(
            x.full, data_size, lambda t: apply_activation(t, op.attrs), relu
        )
        return _Value(full[x.valid], x.layout, x.shared, full, x.valid, x.grid_of)
    if op.attrs["function"] == "relu" and only_reader and not torch.is_grad_enabled():
        full = x.full.relu_()
    else:
        full = apply_activation(x.full, op.attrs)
    return _Value(full[x.valid], x.layout, x.shared, full, x.valid)


def _grid_mean(v: _Value) -> Tensor:
    r"""The mean over the valid cells of a per-model value that keeps its grid: one
    matrix-vector product on the contiguous grid ``(G C P, prod(B)) @ (prod(B),)``, with
    weight :math:`1/|\text{valid}|` on valid cells and 0 elsewhere (a mean over the strided
    slice reads it row by row, several times slower)."""
    full = v.full
    lead = 2 if v.shared else 3
    block = tuple(full.shape[lead:])
    cells = [(c.start or 0, c.stop, c.step or 1) for c in v.valid[1:]]  # type: ignore[union-attr]
    cells = [(0, n, 1) for n in block[: len(block) - len(cells)]] + cells
    mask = cell_mask(block, tuple(cells), full.dtype, full.device)
    weights = mask.flatten() / math.prod(v.tensor.shape[lead:])
    return (full.reshape(-1, weights.numel()) @ weights).view(full.shape[:lead])


@lru_cache(maxsize=1024)
def _columns_per_model(spec: NetworkSpec, p: int) -> int:
    """An upper bound on one model's im2col entries in any layer: the widest ``C_in k`` times
    the probes' positions."""
    widest = 0
    for op in spec.ops:
        if op.kind in ("conv1d", "conv2d"):
            k = math.prod(pair(op.attrs["kernel_size"], 1 if op.kind == "conv1d" else 2))
            widest = max(widest, op.in_size * k)
    return widest * p * math.prod(spec.input_shape[1:])


def _forward(
    spec: NetworkSpec,
    state: dict[str, Tensor],
    probes: Tensor,
    g: int | None,
    buffers: dict[str, Tensor] | None = None,
) -> Tensor:
    g = next(iter(state.values())).shape[0] if g is None else g
    values: dict[str, _Value] = {}
    consumers = _consumers(spec)
    chains = _chains(spec)
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
                feeds = chains.get(op.name)
                y = _conv(op, args[0], weight, bias, g, buffers, feeds)
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
            if op.attrs["mode"] == "avg" and v.full is not None and v.full.is_contiguous():
                t = _grid_mean(v)
            else:
                t = v.tensor.mean(dims) if op.attrs["mode"] == "avg" else v.tensor.amax(dims)
            y = _Value(t, "cp", v.shared)  # (G?, C, P): a "cp" value with no spatial axes
        else:  # pool, adaptive_pool
            y = _pool(op, args[0])
        values[op.name] = y
    out = values[spec.output.name]
    return out.as_pf() if not out.shared else out.as_pf().expand(g, -1, -1)
