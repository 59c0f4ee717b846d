r"""Augmented views of a batch of neural graphs, for contrastive training.

Every transform works on a whole :class:`~weightspace.nn.batch.GraphBatch` at once (no Python
loop over graphs) and draws its randomness per graph from an explicit ``torch.Generator``, so a
view is a deterministic function of the batch and the generator state.

Function-preserving symmetries (the encoder should be exactly invariant to them):

* :func:`permute_hidden` — relabel the neurons of each free hidden group;
* :func:`rescale` — :math:`W_{\mathrm{in}}[i] \times c_i,\ b_i \times c_i,\
  W_{\mathrm{out}}[:, i] / c_i` on positively homogeneous groups;
* :func:`flip_signs` — the same with :math:`c_i = \pm 1` on odd groups.

Small perturbations (the encoder should learn to be nearly invariant to them), each on weight
entries of real layers only (never the zero padding, never residual identity edges):

* :func:`add_noise` — Gaussian noise scaled to each layer's RMS weight (and each layer's RMS
  bias);
* :func:`prune` — zero the smallest-magnitude fraction of each layer's weights;
* :func:`quantize` — symmetric per-layer 8-bit quantisation.

When the encoder canonicalises its inputs, :func:`rescale` and :func:`flip_signs` are exact
no-ops after canonicalisation, so :func:`augment` skips them (``AugmentConfig.symmetries``
decides).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import Tensor

from weightspace.nn.batch import GraphBatch

__all__ = [
    "AugmentConfig",
    "augment",
    "permute_hidden",
    "rescale",
    "flip_signs",
    "add_noise",
    "prune",
    "quantize",
]


@dataclass
class AugmentConfig:
    """Strengths and probabilities of the augmentations of one view."""

    permute: bool = True  # relabel hidden neurons (exact symmetry)
    symmetries: bool = False  # random rescaling and sign flips (exact; skipped if canonicalised)
    log_scale_range: float = 1.0  # rescaling factors c = exp(U(-r, r))
    noise_probability: float = 0.8  # chance a graph gets Gaussian noise
    noise_max: float = 0.1  # noise std is U(0, noise_max) x the layer's RMS weight
    prune_probability: float = 0.5  # chance a graph gets magnitude pruning
    prune_max: float = 0.3  # pruned fraction is U(0, prune_max) per graph
    quantize_probability: float = 0.3  # chance a graph gets 8-bit quantisation
    quantize_bits: int = 8  # bits of the symmetric quantiser

    def to_dict(self) -> dict[str, float | bool | int]:
        return asdict(self)


def _uniform(n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(n, generator=generator, device=generator.device).to(device)


def _weight_mask(batch: GraphBatch) -> Tensor:
    """``(E, K)`` True on real weights of layer edges (not padding, not residual edges)."""
    columns = torch.arange(batch.edge_attr.shape[1], device=batch.edge_attr.device)
    mask = columns.unsqueeze(0) < batch.edge_width.unsqueeze(1)
    return mask & (batch.edge_kind == 0).unsqueeze(1)


def _layer_keys(batch: GraphBatch) -> tuple[Tensor, int, int]:
    """One integer per edge naming its (graph, layer) pair, the number of keys, and the keys
    per graph (residual edges, layer -1, get a key of their own)."""
    layers = int(batch.edge_layer.max()) + 2 if batch.edge_layer.numel() else 1
    keys = batch.edge_batch * layers + (batch.edge_layer + 1)
    return keys, batch.num_graphs * layers, layers


def _segment_rms(values: Tensor, mask: Tensor, keys: Tensor, num_keys: int) -> Tensor:
    """RMS of the masked entries of ``values (M, K)`` per row key, computed as
    ``peak * rms(values / peak)`` so that huge canonical weights (1e20) do not overflow."""
    dtype, device = values.dtype, values.device
    magnitude = values.abs() * mask
    peak = torch.zeros(num_keys, dtype=dtype, device=device).scatter_reduce_(
        0, keys, magnitude.amax(1), "amax", include_self=False
    )
    scale = peak.clamp(min=torch.finfo(dtype).tiny)
    squares = ((magnitude / scale[keys].unsqueeze(1)) ** 2).sum(1)
    totals = torch.zeros(num_keys, dtype=dtype, device=device).index_add_(0, keys, squares)
    counts = torch.zeros(num_keys, dtype=dtype, device=device).index_add_(
        0, keys, mask.sum(1).to(dtype)
    )
    return peak * (totals / counts.clamp(min=1)).sqrt()


def permute_hidden(batch: GraphBatch, generator: torch.Generator) -> GraphBatch:
    """Randomly permute the neurons of every free hidden group of every graph.

    Node tensors are reordered and ``edge_index`` relabelled; edges keep their order. The
    result is the same network (an isomorphic graph).
    """
    device = batch.x.device
    n = batch.num_nodes
    # Nodes of one (graph, group) are contiguous and groups are in order, so a stable sort by
    # group id + a random offset in [0, 1) on permutable nodes shuffles within groups only.
    group_id = batch.batch.to(torch.float64) * (int(batch.node_group.max()) + 1 if n else 1)
    group_id = group_id + batch.node_group.to(torch.float64)
    offset = _uniform(n, generator, device).to(torch.float64) * batch.node_permutable
    order = torch.sort(group_id + offset * 0.5, stable=True).indices  # new -> old
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(n, device=device)  # old -> new
    return replace(
        batch,
        x=batch.x[order],
        edge_index=inverse[batch.edge_index],
        node_depth=batch.node_depth[order],
        node_role=batch.node_role[order],
        node_activation=batch.node_activation[order],
        node_position=batch.node_position[order],
        node_group=batch.node_group[order],
        node_scalable=batch.node_scalable[order],
        node_flippable=batch.node_flippable[order],
        node_permutable=batch.node_permutable[order],
        spec=None,  # nodes are no longer in to_graph order
    )


def _scale_nodes(batch: GraphBatch, factor: Tensor) -> GraphBatch:
    """Multiply each node's incoming weights and bias by ``factor``, outgoing weights by
    ``1 / factor`` (``factor`` is 1 on nodes that admit no such transform)."""
    source, target = batch.edge_index
    edge_factor = (factor[target] / factor[source]).unsqueeze(-1)  # (E, 1)
    return replace(batch, x=batch.x * factor.unsqueeze(-1), edge_attr=batch.edge_attr * edge_factor)


def rescale(batch: GraphBatch, generator: torch.Generator, log_range: float = 1.0) -> GraphBatch:
    r"""Positive rescaling :math:`c_i = e^{u_i}`, :math:`u_i \sim U(-r, r)`, of scalable neurons."""
    device = batch.x.device
    u = (_uniform(batch.num_nodes, generator, device) * 2 - 1) * log_range
    factor = torch.where(batch.node_scalable, u.exp(), torch.ones_like(u)).to(batch.x.dtype)
    return _scale_nodes(batch, factor)


def flip_signs(batch: GraphBatch, generator: torch.Generator) -> GraphBatch:
    """Random sign flips of sign-flippable neurons."""
    device = batch.x.device
    flip = (_uniform(batch.num_nodes, generator, device) < 0.5) & batch.node_flippable
    factor = torch.where(flip, -1.0, 1.0).to(batch.x.dtype)
    return _scale_nodes(batch, factor)


def add_noise(
    batch: GraphBatch, generator: torch.Generator, strength: Tensor | float
) -> GraphBatch:
    r"""Add :math:`\epsilon_g\,\sigma_{g,l}\,\mathcal{N}(0, 1)` to each real weight, with
    :math:`\sigma_{g,l}` the RMS weight of layer ``l`` of graph ``g`` and :math:`\epsilon_g`
    the graph's ``strength`` (a scalar or a ``(B,)`` tensor); biases likewise per layer."""
    device, dtype = batch.edge_attr.device, batch.edge_attr.dtype
    strength = torch.as_tensor(strength, dtype=dtype, device=device).expand(batch.num_graphs)
    mask = _weight_mask(batch)
    keys, num_keys, _ = _layer_keys(batch)
    rms = _segment_rms(batch.edge_attr, mask, keys, num_keys)  # (keys,)
    noise = torch.randn(batch.edge_attr.shape, generator=generator, device=generator.device)
    scale = (rms[keys] * strength[batch.edge_batch]).unsqueeze(-1)
    edge_attr = batch.edge_attr + noise.to(device, dtype) * scale * mask

    # Biases: per (graph, depth) RMS, on nodes written by a layer (depth > 0).
    depth_count = int(batch.node_depth.max()) + 1
    node_keys = batch.batch * depth_count + batch.node_depth
    bias = batch.x[:, 0]
    real = (batch.node_depth > 0).to(dtype)
    n_keys = batch.num_graphs * depth_count
    bias_rms = _segment_rms(
        bias.unsqueeze(1), (batch.node_depth > 0).unsqueeze(1), node_keys, n_keys
    )
    bias_noise = torch.randn(bias.shape, generator=generator, device=generator.device)
    bias = bias + bias_noise.to(device, dtype) * bias_rms[node_keys] * strength[batch.batch] * real
    return replace(batch, x=bias.unsqueeze(-1), edge_attr=edge_attr)


def prune(batch: GraphBatch, fraction: Tensor | float) -> GraphBatch:
    """Zero the ``fraction`` (scalar or ``(B,)`` per graph) smallest-magnitude weights of each
    layer of each graph."""
    device, dtype = batch.edge_attr.device, batch.edge_attr.dtype
    fraction = torch.as_tensor(fraction, dtype=dtype, device=device).expand(batch.num_graphs)
    mask = _weight_mask(batch)
    keys, num_keys, layers = _layer_keys(batch)
    entry_keys = keys.unsqueeze(1).expand_as(mask)[mask]  # (M,)
    magnitude = batch.edge_attr.abs()[mask]  # (M,)
    # Sort by magnitude, then stably by layer key: entries of one layer are contiguous and
    # ascending in magnitude, so an entry's rank in its layer is its position minus the
    # layer's start.
    by_magnitude = torch.sort(magnitude, stable=True).indices
    by_key = torch.sort(entry_keys[by_magnitude], stable=True).indices
    order = by_magnitude[by_key]
    counts = torch.zeros(num_keys, dtype=torch.long, device=device).index_add_(
        0, entry_keys, torch.ones_like(entry_keys)
    )
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=device) - starts[entry_keys[order]]
    cut = (fraction[entry_keys // layers] * counts[entry_keys].to(dtype)).floor()
    keep = rank.to(dtype) >= cut
    values = batch.edge_attr[mask] * keep
    edge_attr = batch.edge_attr.masked_scatter(mask, values)
    return replace(batch, edge_attr=edge_attr)


def quantize(batch: GraphBatch, selected: Tensor | bool = True, bits: int = 8) -> GraphBatch:
    r"""Symmetric per-layer quantisation of weights and biases to ``bits`` bits:
    :math:`w \mapsto \mathrm{round}(w / s)\, s`, :math:`s = \max|w| / (2^{bits-1} - 1)`, on the
    graphs where ``selected`` (scalar or ``(B,)`` bool) is true."""
    device, dtype = batch.edge_attr.device, batch.edge_attr.dtype
    selected = torch.as_tensor(selected, device=device).expand(batch.num_graphs)
    levels = 2 ** (bits - 1) - 1
    mask = _weight_mask(batch)
    keys, num_keys, _ = _layer_keys(batch)
    peak = (batch.edge_attr.abs() * mask).amax(1)
    step = torch.zeros(num_keys, dtype=dtype, device=device).scatter_reduce_(
        0, keys, peak, "amax", include_self=False
    )
    step = (step / levels).clamp(min=torch.finfo(dtype).tiny)[keys].unsqueeze(-1)  # (E, 1)
    quantized = torch.round(batch.edge_attr / step) * step
    use = mask & selected[batch.edge_batch].unsqueeze(-1)
    edge_attr = torch.where(use, quantized, batch.edge_attr)

    depth_count = int(batch.node_depth.max()) + 1
    node_keys = batch.batch * depth_count + batch.node_depth
    bias = batch.x[:, 0]
    bias_step = torch.zeros(batch.num_graphs * depth_count, dtype=dtype, device=device)
    bias_step = bias_step.scatter_reduce_(0, node_keys, bias.abs(), "amax", include_self=False)
    bias_step = (bias_step / levels).clamp(min=torch.finfo(dtype).tiny)[node_keys]
    bias_q = torch.round(bias / bias_step) * bias_step
    bias = torch.where(selected[batch.batch] & (batch.node_depth > 0), bias_q, bias)
    return replace(batch, x=bias.unsqueeze(-1), edge_attr=edge_attr)


def augment(batch: GraphBatch, config: AugmentConfig, generator: torch.Generator) -> GraphBatch:
    """One random view of ``batch``: each perturbation applied to each graph with its
    probability and a random strength, then the symmetries (see the module docstring)."""
    device, dtype = batch.edge_attr.device, batch.edge_attr.dtype
    b = batch.num_graphs

    def chosen(probability: float) -> Tensor:
        return _uniform(b, generator, device) < probability

    view = batch
    if config.prune_probability > 0 and config.prune_max > 0:
        fraction = _uniform(b, generator, device) * config.prune_max
        fraction = fraction * chosen(config.prune_probability)
        view = prune(view, fraction.to(dtype))
    if config.noise_probability > 0 and config.noise_max > 0:
        strength = _uniform(b, generator, device) * config.noise_max
        strength = strength * chosen(config.noise_probability)
        view = add_noise(view, generator, strength.to(dtype))
    if config.quantize_probability > 0:
        view = quantize(view, chosen(config.quantize_probability), config.quantize_bits)
    if config.symmetries:
        view = flip_signs(view, generator)
        view = rescale(view, generator, config.log_scale_range)
    if config.permute:
        view = permute_hidden(view, generator)
    return view
