r"""The weight-space encoder: neural graph → one vector per model, plus its heads.

.. code-block:: text

    (spec, state dict) ──canonicalize──► NeuralGraph ──► NodeEmbedding / EdgeEmbedding
        ──► EdgeNodeConv × L ──► TransformerPooling ──► z ∈ R^d   (Encoder.embed)
                                                         ├─► projection head (contrastive)
                                                         ├─► property head (accuracy, gap)
                                                         ├─► task head (classification)
                                                         └─► function head (outputs on probes)

With ``EncoderConfig.branches = ("graph", "probe")`` a second branch runs each model on ``P``
learned probe inputs of its input domain through its own forward
(:mod:`weightspace.nn.probes`) and encodes the outputs; the two pooled vectors are fused,
:math:`z = \mathrm{MLP}([z_{\mathrm{graph}}, z_{\mathrm{probe}}])`, into the one embedding every
head and :meth:`Encoder.embed` use. ``("probe",)`` alone skips the graph network. The probe
outputs are invariant to every function-preserving transform by construction, so the fused
embedding keeps all the graph branch's exact invariances. A model whose forward cannot run
(its spec cannot be interpreted, the forward raises, or its outputs are not finite) gets a
learned ``probe_missing`` vector instead of :math:`z_{\mathrm{probe}}`; :attr:`Encoder.last_fallback`
flags it and a warning names it once.

The function head predicts the model's output distribution on ``function_probes`` fixed inputs
of its task's training split (classes padded to ``function_classes``); it reads only ``z``, so
it keeps every invariance of the embedding, and training it makes ``z`` carry what the model
computes, not only how well (:func:`weightspace.train.function_targets`).

Exact invariance: permutations of hidden neurons by construction (equivariant layers, invariant
pooling); positive rescaling and sign flips by :func:`weightspace.symmetry.canonicalize`, applied
in :meth:`Encoder.prepare` before encoding (``EncoderConfig.canonicalize``).

An encoder directory holds ``encoder.safetensors`` (weights) and ``config.json``
(``{"format": "weightspace-encoder", "format_version": 1, "encoder": {...}}``);
:meth:`Encoder.save` / :meth:`Encoder.load` write and read it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

from weightspace.graph import NeuralGraph, to_graph, to_state_dict
from weightspace.layout import layout_of
from weightspace.models import ModelInput, ModelInputError, as_spec_and_state
from weightspace.nn.batch import GraphBank, GraphBatch, dense_groups
from weightspace.nn.encoder_config import (  # noqa: F401 (re-exported: weightspace.nn.encoder)
    _FORMAT_NAME,
    _PROBE_FIELDS,
    BRANCHES,
    CONFIG_FILE,
    ENCODER_FORMAT_VERSION,
    WEIGHTS_FILE,
    EncoderConfig,
    EncoderError,
)
from weightspace.nn.encoder_dense import (  # noqa: F401 (looked up here: tests patch them)
    _compiled_encode_dense,
    encode_dense,
)
from weightspace.nn.encoder_inference import EncoderInference
from weightspace.nn.encoder_persistence import EncoderPersistence
from weightspace.nn.encoder_probe_branch import EncoderProbeBranch
from weightspace.nn.features import EdgeEmbedding, NodeEmbedding, ScalarFeatures
from weightspace.nn.layers import EdgeNodeConv, degree_inverses, dense_plan
from weightspace.nn.pooling import TransformerPooling
from weightspace.nn.probe_skip import probe_fusion
from weightspace.nn.probes import ProbeEncoder, ProbeGenerator
from weightspace.spec import NetworkSpec

__all__ = [
    "ENCODER_FORMAT_VERSION",
    "EncoderConfig",
    "Encoder",
    "EncoderError",
    "ModelLike",
]

#: What :meth:`Encoder.embed` accepts per model: a checkpoint path, an ``nn.Module`` (traced),
#: a graph, a ``(spec, state_dict)`` pair or a :class:`~weightspace.module.SpecModule`; all are
#: normalised by :func:`weightspace.models.as_spec_and_state`.
ModelLike = ModelInput


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.SiLU(), nn.Linear(hidden, outputs))


class Encoder(EncoderProbeBranch, EncoderInference, EncoderPersistence, nn.Module):
    r"""Symmetry-aware encoder of neural-network weights.

    .. math::
        z = \mathrm{Pool}\big(\mathrm{Conv}_L \circ \dots \circ \mathrm{Conv}_1
        (h^{(0)}, e^{(0)})\big)

    with :class:`~weightspace.nn.features.NodeEmbedding` /
    :class:`~weightspace.nn.features.EdgeEmbedding` for :math:`h^{(0)}, e^{(0)}`,
    :class:`~weightspace.nn.layers.EdgeNodeConv` layers and
    :class:`~weightspace.nn.pooling.TransformerPooling`.

    Args:
        config: the architecture (defaults: :class:`EncoderConfig`).

    Shapes:
        - input: a :class:`~weightspace.nn.batch.GraphBatch` or PyG ``Batch`` of ``B`` graphs
        - output: ``(B, embedding_dim)``
    """

    def __init__(self, config: EncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or EncoderConfig()
        features = ScalarFeatures(config.features, config.feature_scales, config.num_frequencies)
        self.node_embedding = NodeEmbedding(
            config.hidden, features, config.max_depth, config.max_positions
        )
        self.edge_embedding = EdgeEmbedding(config.edge_hidden, features, config.max_edge_features)
        self.convs = nn.ModuleList(
            EdgeNodeConv(
                config.hidden,
                config.edge_hidden,
                config.aggregators,
                config.directions,
                config.activation,
            )
            for _ in range(config.num_layers)
        )
        self.pool = TransformerPooling(
            config.hidden,
            config.embedding_dim,
            heads=config.pool_heads,
            num_layers=config.pool_layers,
            num_seeds=config.pool_seeds,
        )
        self.last_fallback: np.ndarray | None = None
        self._warned_fallback = False
        if "probe" in config.branches:
            self.probe_generator = ProbeGenerator(
                config.probe_domains,
                config.probes,
                config.probe_latent,
                config.probe_hidden,
                init=config.probe_init,
                sources=config.probe_sources,
                seed=config.function_seed,
            )
            self.probe_encoder = ProbeEncoder(
                config.probe_domains,
                config.probes,
                config.probe_classes,
                config.probe_hidden,
                config.probe_dim,
            )
            self.probe_missing = nn.Parameter(0.1 * torch.randn(config.probe_dim))
            width = config.probe_dim + (config.embedding_dim if "graph" in config.branches else 0)
            self.fuse = probe_fusion(config, width, _mlp)  # _mlp, or with the raw skip
        self.projection_head = _mlp(config.embedding_dim, config.head_hidden, config.projection_dim)
        self.property_head = (
            _mlp(config.embedding_dim, config.head_hidden, len(config.targets))
            if config.targets
            else None
        )
        self.task_head = (
            _mlp(config.embedding_dim, config.head_hidden, len(config.tasks))
            if config.tasks
            else None
        )
        self.class_head = (
            _mlp(config.embedding_dim, config.head_hidden, len(config.classes))
            if config.classes
            else None
        )
        self.function_head = (
            _mlp(
                config.embedding_dim,
                config.head_hidden,
                config.function_probes * config.function_classes,
            )
            if config.function_probes
            else None
        )

    # ------------------------------------------------------------------ forward
    @property
    def dim(self) -> int:
        """Width of the embedding :meth:`embed` returns."""
        return self.config.embedding_dim

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def forward(self, batch: GraphBatch | Any, *, compile: bool = False) -> Tensor:
        """Embed a batch of (already canonicalised) graphs: ``(B, embedding_dim)``.

        With the probe branch the graph branch's vector and the probe branch's are fused
        (module docstring); :attr:`last_fallback` then flags, per graph, the models whose probe
        vector was replaced by the learned ``probe_missing`` one.

        A :class:`~weightspace.nn.batch.GraphBatch` of one architecture (``batch.spec`` set)
        runs the dense path (:func:`encode_dense`); any other batch runs message passing over
        ``edge_index``. Both compute the same function.

        Args:
            batch: the graphs.
            compile: run the dense path through ``torch.compile`` (inductor; static shapes, so
                one compilation per architecture, batch size, dtype and device, reused
                afterwards). Batches without a ``spec`` always run eagerly.

        Raises:
            EncoderError: with the probe branch, a model of an input shape the encoder was not
                trained on, or with more outputs than it reads.
        """
        branches = self.config.branches
        if "probe" not in branches:
            return self._graph_forward(batch, compile)
        return self._fused(
            self._graph_forward(batch, compile) if "graph" in branches else None, batch
        )

    def _graph_forward_grouped(self, bank: GraphBank, index: Tensor) -> Tensor:
        """The graph branch on the models ``index`` of ``bank`` (any architectures): each
        architecture with enough edges as a dense sub-batch, the others together by message
        passing (:func:`~weightspace.nn.batch.dense_groups`); rows in ``index`` order."""
        groups = dense_groups(bank.spec_index[index], bank.edge_counts[index])
        z: Tensor | None = None
        for positions, _ in groups:
            part = self._graph_forward(
                bank.select(index[positions]).to(self.device, self.dtype), False
            )
            if z is None:
                z = part.new_empty(len(index), part.shape[1])
            z[positions.to(z.device)] = part
        assert z is not None
        return z

    def _graph_forward(self, batch: GraphBatch | Any, compile: bool) -> Tensor:
        """The graph branch: ``(B, embedding_dim)`` (see :meth:`forward`)."""
        num_graphs = int(batch.num_graphs)
        dtype = self.dtype
        plan = None
        spec = getattr(batch, "spec", None)
        if isinstance(spec, NetworkSpec):
            plan = dense_plan(spec)
            if (
                plan.num_nodes * num_graphs != batch.x.shape[0]
                or plan.num_edges * num_graphs != batch.edge_attr.shape[0]
            ):
                plan = None
        if plan is not None:
            run = _compiled_encode_dense() if compile else encode_dense
            # The bank pads edges to its widest architecture's; this one reads only its own.
            width = max(layout_of(spec).max_edge_features, 1)
            return run(
                self,
                plan,
                num_graphs,
                batch.x.to(dtype),
                batch.edge_attr[:, :width].to(dtype),
                batch.node_depth,
                batch.node_role,
                batch.node_activation,
                batch.node_position,
                batch.edge_kind,
            )
        node_batch = batch.batch
        depth = batch.node_depth
        graph_depth = scatter(depth, node_batch, dim=0, dim_size=num_graphs, reduce="max")
        h = self.node_embedding(
            batch.x.to(dtype),
            depth,
            graph_depth[node_batch] - depth,
            batch.node_role,
            batch.node_activation,
            batch.node_position,
        )  # (N, hidden)
        e = self._embed_edges(batch, dtype)  # (E, edge_hidden)
        edge_index = batch.edge_index
        reverse = edge_index.flip(0)
        inverse_degree = degree_inverses(edge_index, h.shape[0], h.dtype)
        for i, conv in enumerate(self.convs):
            last = i == len(self.convs) - 1
            h, e = conv(h, edge_index, e, reverse, inverse_degree, update_edges=not last)
        max_num_nodes = getattr(batch, "max_num_nodes", None)
        return self.pool(h, node_batch, num_graphs, max_num_nodes)

    def _embed_edges(self, batch: GraphBatch | Any, dtype: torch.dtype) -> Tensor:
        r"""Initial edge states ``(E, edge_hidden)`` of a batch of any architectures.

        A bank pads every edge to its widest (a 3x3 kernel: 9 entries), so a batch mixing MLPs
        and CNNs would pay nine columns of features for every scalar weight. Edges are grouped
        by their real width instead (``edge_width``: a few distinct values) and each group is
        embedded at that width, which is exact since :math:`\phi(0) = 0`."""
        attr = batch.edge_attr.to(dtype)
        widths = getattr(batch, "edge_width", None)
        if widths is None or attr.shape[1] == 1 or not attr.shape[0]:
            return self.edge_embedding(attr, batch.edge_kind)
        distinct = torch.unique(widths).tolist()
        if len(distinct) == 1:
            weights = self.edge_embedding.embed_weights(attr[:, : max(distinct[0], 1)])
        else:
            weights = attr.new_zeros(attr.shape[0], self.edge_embedding.hidden)
            for width in distinct:
                rows = torch.nonzero(widths == width).flatten()
                block = self.edge_embedding.embed_weights(attr[rows, : max(width, 1)])
                weights = weights.index_put((rows,), block)
        return weights + self.edge_embedding.attributes(batch.edge_kind)

    def heads(self, z: Tensor) -> dict[str, Tensor]:
        """Raw head outputs for embeddings ``z``: ``projection``, ``properties`` (standardised
        targets), ``task_logits`` when the encoder has a task head, ``class_logits`` when it has
        a class head (``--objective class``), and ``function_logits``
        ``(B, function_probes, function_classes)`` when it has a function head (padded classes
        included: mask them with the task's class count)."""
        out = {"projection": self.projection_head(z)}
        if self.property_head is not None:
            out["properties"] = self.property_head(z)
        else:
            out["properties"] = z.new_zeros(z.shape[0], 0)
        if self.task_head is not None:
            out["task_logits"] = self.task_head(z)
        if self.class_head is not None:
            out["class_logits"] = self.class_head(z)
        if self.function_head is not None:
            out["function_logits"] = self.function_head(z).view(
                z.shape[0], self.config.function_probes, self.config.function_classes
            )
        return out

    # ------------------------------------------------------------------ preparation
    def prepare(self, models: Iterable[ModelLike]) -> list[NeuralGraph]:
        """Canonicalise (if configured) and convert models to graphs in the encoder's dtype.

        Raises:
            EncoderError: a model is of no accepted form (see :data:`ModelLike`), ``models`` is
                one model instead of a collection, or a model has an edge wider than the encoder
                accepts.
        """
        if isinstance(models, str | os.PathLike | nn.Module | NeuralGraph) or (
            isinstance(models, tuple) and len(models) == 2 and isinstance(models[0], NetworkSpec)
        ):
            raise EncoderError(
                f"expected a collection of models, got one {type(models).__name__}; wrap it in a "
                "list: embed([model])"
            )
        graphs = []
        for i, model in enumerate(models):
            graphs.append(prepare_graph(model, self.config, index=i))
        return graphs

    def bank(self, models: Iterable[ModelLike]) -> GraphBank:
        """:meth:`prepare` the models and concatenate them for fast batching."""
        graphs = self.prepare(models)
        if not graphs:
            raise EncoderError("no models given to embed")
        return GraphBank(graphs)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, parameters={sum(p.numel() for p in self.parameters())}"


def prepare_graph(model: ModelLike, config: EncoderConfig, *, index: int = 0) -> NeuralGraph:
    """One model as the graph the encoder reads: canonicalised if ``config.canonicalize``."""
    if isinstance(model, NeuralGraph):
        spec = model.spec
        state = to_state_dict(model) if config.canonicalize else None
        graph = model
    else:
        try:
            spec, state = as_spec_and_state(model, index=index)
        except ModelInputError as exc:
            raise EncoderError(str(exc)) from None
        graph = None
    if config.canonicalize:
        from weightspace.symmetry import canonicalize

        state = canonicalize(spec, state)
        graph = to_graph(spec, state)
    elif graph is None:
        graph = to_graph(spec, state)
    width = int(graph.edge_attr.shape[1])
    if width > config.max_edge_features:
        widest = max(
            (op for op in spec.layers),
            key=lambda op: op.kernel_numel,
        )
        raise EncoderError(
            f"model #{index} ({spec.summary()}): its edges carry {width} weights (e.g. layer "
            f"{widest.name!r}, a kernel or flattened feature map), more than the "
            f"{config.max_edge_features} this encoder accepts; retrain the encoder with a larger "
            "max_edge_features"
        )
    return graph
