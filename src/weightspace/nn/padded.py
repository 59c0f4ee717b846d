r"""Architectures that differ only in hidden widths, run as one padded architecture.

The probe branch runs each model through its own forward, vectorised with ``vmap`` over models
of one architecture. A zoo of many architectures (a hub: depth 1–3, widths 16–64, four
activations is already 176 of them) would then pay one ``vmap`` call, one weight gather and one
autograd node per architecture. Most of those architectures differ only in their hidden widths,
and zero-padding a hidden width preserves the function exactly: a padded neuron has zero
incoming weights and bias, so its pre-activation is 0, and zero outgoing weights, so whatever
:math:`\sigma(0)` is, it adds :math:`0 \cdot \sigma(0) = 0` to every reader:

.. math::
    W'_{l+1}\,\sigma(W'_l x + b'_l) = W_{l+1}\,\sigma(W_l x + b_l), \qquad
    W'_l = \begin{bmatrix} W_l \\ 0 \end{bmatrix},\ b'_l = \begin{bmatrix} b_l \\ 0
    \end{bmatrix},\ W'_{l+1} = \begin{bmatrix} W_{l+1} & 0 \end{bmatrix}.

So architectures with one *skeleton* (:func:`skeleton`: the spec with its free hidden widths
erased) are run as their elementwise-widest member (:func:`padding_plan`), one ``vmap`` per
skeleton bucket instead of one per architecture, with each model's weights gathered from the
graph tensors straight into the padded shapes (:func:`gather_padded_state`, one vectorised
gather per layer for all architectures of the bucket).

A width is *free* when padding it cannot change what any op computes: only linear and
convolution layers, elementwise activations, residual adds and pools read it (no flatten of a
spatial map, no norm, no attention), it is not the network's output, and no residual add ties it
to the input. Every padded architecture is also checked numerically once against each member
(random weights, float64); a member that disagrees is run on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from weightspace.layout import layout_of
from weightspace.nn.batch import GraphBatch, _ranges
from weightspace.spec import PARAMETRISED_KINDS, NetworkSpec, Op

__all__ = ["PaddedBucket", "PaddingPlan", "free_widths", "gather_padded_state", "padding_plan"]

# Kinds whose forward is unchanged by extra zero channels on their inputs (elementwise or
# per-channel), and the ones a spec may contain at all to be padded.
_WIDTH_PRESERVING = frozenset({"activation", "add", "pool", "adaptive_pool", "global_pool"})
_PADDABLE = PARAMETRISED_KINDS | _WIDTH_PRESERVING | {"input", "flatten"}
_IN_KEY = {"linear": "in_features", "conv1d": "in_channels", "conv2d": "in_channels"}
_OUT_KEY = {"linear": "out_features", "conv1d": "out_channels", "conv2d": "out_channels"}
#: A bucket may pad its members up to this many times their own parameter count (or up to
#: ``_PAD_FLOOR`` parameters, whichever is larger): padding costs compute, buckets cost calls.
_PAD_RATIO = 4
_PAD_FLOOR = 65_536


def _producers(spec: NetworkSpec) -> dict[str, str]:
    """Op name -> the parametrised op (or ``"input"``) whose width its output carries."""
    origin: dict[str, str] = {}
    for op in spec.ops:
        if op.kind == "input" or op.is_parametrised:
            origin[op.name] = op.name if op.is_parametrised else "input"
        else:
            origin[op.name] = origin[op.inputs[0]] if op.inputs else "input"
    return origin


@lru_cache(maxsize=4096)
def free_widths(spec: NetworkSpec) -> frozenset[str]:
    """Names of the parametrised ops of ``spec`` whose output width may be zero-padded (see
    the module docstring); empty when the spec has an op that padding could change."""
    if any(op.kind not in _PADDABLE for op in spec.ops):
        return frozenset()
    readers: dict[str, list[Op]] = {op.name: [] for op in spec.ops}
    for op in spec.ops:
        for name in op.inputs:
            readers[name].append(op)
    origin = _producers(spec)

    def padding_safe(name: str) -> bool:
        if not readers[name]:  # a network output: its width is the model's output
            return False
        for reader in readers[name]:
            if reader.kind == "flatten":
                # A flattened spatial map interleaves channels with positions.
                return False
            if reader.kind == "add" and any(origin[i] == "input" for i in reader.inputs):
                return False
            if reader.kind in _WIDTH_PRESERVING and not padding_safe(reader.name):
                return False
        return True

    free = {op.name for op in spec.ops if op.is_parametrised and padding_safe(op.name)}
    # Values added together must be padded together.
    for op in spec.ops:
        if op.kind == "add":
            tied = {origin[i] for i in op.inputs}
            if not tied <= free:
                free -= tied
    return frozenset(free)


def skeleton(spec: NetworkSpec) -> tuple:
    """``spec`` with its free widths erased: architectures with equal skeletons pad into one."""
    free = free_widths(spec)
    origin = _producers(spec)
    parts = [spec.input_shape]
    for op in spec.ops:
        attrs = dict(op.attrs)
        if op.name in free:
            attrs.pop(_OUT_KEY[op.kind])
        if op.is_parametrised and op.inputs and origin[op.inputs[0]] in free:
            attrs.pop(_IN_KEY[op.kind])
        parts.append((op.name, op.kind, op.inputs, tuple(sorted(attrs.items()))))
    return tuple(parts)


def _widest(specs: Sequence[NetworkSpec]) -> NetworkSpec:
    """The spec whose every width is the largest of ``specs`` (one skeleton)."""
    ops = []
    for position, op in enumerate(specs[0].ops):
        if not op.is_parametrised:
            ops.append(op)
            continue
        attrs = dict(op.attrs)
        for key in (_IN_KEY[op.kind], _OUT_KEY[op.kind]):
            attrs[key] = max(int(s.ops[position].attrs[key]) for s in specs)
        ops.append(Op(op.name, op.kind, op.inputs, attrs))
    return NetworkSpec(tuple(ops))


def _pad_state(state: dict[str, Tensor], shapes: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        padded = value.new_zeros(shapes[key])
        padded[tuple(slice(0, s) for s in value.shape)] = value
        out[key] = padded
    return out


def _pads_exactly(spec: NetworkSpec, padded: NetworkSpec) -> bool:
    """Whether ``padded`` computes ``spec``'s function on zero-padded weights (float64)."""
    from weightspace.module import to_module

    if spec == padded:
        return True
    try:
        generator = torch.Generator().manual_seed(0)
        state = {
            k: torch.randn(s, generator=generator, dtype=torch.float64)
            for k, s in spec.param_shapes().items()
        }
        x = torch.randn(3, *spec.input_shape, generator=generator, dtype=torch.float64)
        with torch.no_grad():
            want = to_module(spec, state).double()(x)
            wide = to_module(padded, _pad_state(state, padded.param_shapes())).double()
            got = wide(x)
    except Exception:  # noqa: BLE001 - any failure: this member is not padded
        return False
    return got.shape == want.shape and bool(torch.allclose(got, want, rtol=1e-9, atol=1e-9))


@dataclass(frozen=True)
class PaddedBucket:
    """Architectures run as one padded architecture, and where each layer's block of each
    member sits in its graph (rows: members, in ``members`` order; columns: layers)."""

    spec: NetworkSpec  # the padded architecture
    members: tuple[int, ...]  # indices into the spec table
    edge_start: Tensor  # (R, L) first edge of the layer within the graph
    source_offset: Tensor  # (R, L) first node of the layer's input group
    target_offset: Tensor  # (R, L) first node of the layer's output group
    source_size: Tensor  # (R, L)
    target_size: Tensor  # (R, L)


@dataclass(frozen=True)
class PaddingPlan:
    """The buckets of a spec table: ``bucket_of[i]`` is the bucket of table entry ``i``."""

    buckets: tuple[PaddedBucket, ...]
    bucket_of: Tensor  # (len(table),) long
    row_of: Tensor  # (len(table),) long: the entry's row in its bucket


def _bucket(table: Sequence[NetworkSpec], members: list[int], spec: NetworkSpec) -> PaddedBucket:
    names = [link.name for link in layout_of(spec).links]
    rows = []
    for i in members:
        layout = layout_of(table[i])
        where, start = {}, 0
        for link in layout.links:
            source, target = layout.groups[link.source], layout.groups[link.target]
            where[link.name] = (
                start,
                layout.offsets[link.source],
                layout.offsets[link.target],
                source.size,
                target.size,
            )
            start += source.size * target.size
        rows.append([where[name] for name in names])
    table_ = torch.tensor(rows, dtype=torch.long).view(len(members), len(names), 5)
    return PaddedBucket(spec, tuple(members), *table_.unbind(-1))


@lru_cache(maxsize=64)
def padding_plan(table: tuple[NetworkSpec, ...]) -> PaddingPlan:
    """Group a spec table into padded buckets (cached per table).

    Architectures of one :func:`skeleton` are sorted by parameter count and filled greedily
    into buckets whose widest member has at most ``4x`` the parameters of the smallest (or at
    most 65,536 parameters); members the numerical check rejects get buckets of their own.
    """
    with torch.inference_mode(False):
        by_skeleton: dict[tuple, list[int]] = {}
        for i, spec in enumerate(table):
            key = skeleton(spec) if free_widths(spec) else ("exact", i)
            by_skeleton.setdefault(key, []).append(i)
        groups: list[tuple[NetworkSpec, list[int]]] = []
        for members in by_skeleton.values():
            members = sorted(members, key=lambda i: table[i].num_parameters)
            current: list[int] = []
            for i in members:
                trial = current + [i]
                widest = _widest([table[j] for j in trial])
                limit = max(_PAD_RATIO * table[trial[0]].num_parameters, _PAD_FLOOR)
                if current and widest.num_parameters > limit:
                    groups.append((_widest([table[j] for j in current]), current))
                    trial = [i]
                current = trial
            if current:
                groups.append((_widest([table[j] for j in current]), current))
        buckets: list[PaddedBucket] = []
        for widest, members in groups:
            exact = [i for i in members if _pads_exactly(table[i], widest)]
            if len(exact) > 1:
                buckets.append(_bucket(table, exact, _widest([table[i] for i in exact])))
            else:
                exact = []
            buckets += [_bucket(table, [i], table[i]) for i in members if i not in exact]
        bucket_of = torch.zeros(len(table), dtype=torch.long)
        row_of = torch.zeros(len(table), dtype=torch.long)
        for b, bucket in enumerate(buckets):
            for row, i in enumerate(bucket.members):
                bucket_of[i], row_of[i] = b, row
        return PaddingPlan(tuple(buckets), bucket_of, row_of)


def gather_padded_state(
    batch: GraphBatch,
    graphs: Tensor,
    rows: Tensor,
    bucket: PaddedBucket,
    node_ptr: Tensor,
    edge_ptr: Tensor,
) -> dict[str, Tensor]:
    r"""The state dicts of the graphs ``graphs`` of ``batch`` (bucket rows ``rows``), each
    zero-padded to the bucket's architecture and stacked: ``{key: (G, *shape)}``.

    Each graph's nodes and edges are contiguous, edges in :func:`~weightspace.graph.to_graph`
    order (true of :meth:`GraphBank.select` and every augmentation: they relabel nodes, never
    reorder edges). Layer ``l``'s edge :math:`i \to o` of graph ``g`` sits among its
    ``out_g x in_g`` edges from ``edge_ptr[g] + edge_start[g, l]``; its endpoints, read from
    ``edge_index``, place its features at :math:`W_g[o, i]` of the padded ``(G, out, in, K)``
    block, so permuted views give the correspondingly permuted weights. One gather per layer
    for every architecture of the bucket.

    Raises:
        ValueError: the batch's edges are not in ``to_graph`` order within each graph.
    """
    device = batch.edge_attr.device
    spec = bucket.spec
    layout = layout_of(spec)
    g = graphs.numel()
    nodes0, edges0 = node_ptr[graphs], edge_ptr[graphs]  # (G,)
    rows = rows.to(device)
    state: dict[str, Tensor] = {}
    for column, link in enumerate(layout.links):
        src, dst = layout.groups[link.source], layout.groups[link.target]
        source_size = bucket.source_size.to(device)[rows, column]  # (G,)
        target_size = bucket.target_size.to(device)[rows, column]
        source_offset = bucket.source_offset.to(device)[rows, column]
        target_offset = bucket.target_offset.to(device)[rows, column]
        count = source_size * target_size
        flat = _ranges(edges0 + bucket.edge_start.to(device)[rows, column], count)
        if not bool((batch.edge_layer[flat] == link.index).all()):
            raise ValueError(
                f"layer {link.name!r}: the batch's edges are not in to_graph order within each "
                "graph; build batches with GraphBank.select and augment them without reordering "
                "edges"
            )
        owner = torch.repeat_interleave(
            torch.arange(g, device=device), count, output_size=flat.numel()
        )
        ends = batch.edge_index[:, flat]  # (2, M)
        source = ends[0] - nodes0[owner] - source_offset[owner]
        target = ends[1] - nodes0[owner] - target_offset[owner]
        w = batch.edge_attr.new_zeros(g, dst.size, src.size, link.edge_features)
        w[owner, target, source] = batch.edge_attr[flat, : link.edge_features]
        op = spec[link.name]
        state[f"{link.name}.weight"] = w.reshape(g, *op.weight_shape())
        if op.attrs.get("bias", True):
            column_ids = torch.arange(dst.size, device=device)
            real = column_ids < target_size[:, None]  # (G, out)
            nodes = nodes0[:, None] + target_offset[:, None] + column_ids
            nodes = torch.where(real, nodes, nodes0[:, None])
            bias = batch.x[nodes, 0]
            state[f"{link.name}.bias"] = torch.where(real, bias, torch.zeros_like(bias))
    return state
