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

import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

from weightspace.errors import WeightspaceError
from weightspace.graph import NeuralGraph, to_graph, to_state_dict
from weightspace.layout import layout_of
from weightspace.models import ModelInput, ModelInputError, as_spec_and_state
from weightspace.nn.batch import (
    DENSE_MIN_MODELS,
    GraphBank,
    GraphBatch,
    dense_groups,
    inference_chunks,
)
from weightspace.nn.features import EdgeEmbedding, NodeEmbedding, ScalarFeatures
from weightspace.nn.layers import DensePlan, EdgeNodeConv, degree_inverses, dense_plan
from weightspace.nn.pooling import TransformerPooling
from weightspace.nn.probe_init import ProbeInitError, check_probe_init
from weightspace.nn.probes import (
    ProbeEncoder,
    ProbeError,
    ProbeGenerator,
    probe_forward,
)
from weightspace.spec import NetworkSpec

__all__ = [
    "ENCODER_FORMAT_VERSION",
    "EncoderConfig",
    "Encoder",
    "EncoderError",
    "ModelLike",
]

ENCODER_FORMAT_VERSION = 1
WEIGHTS_FILE = "encoder.safetensors"
CONFIG_FILE = "config.json"
_FORMAT_NAME = "weightspace-encoder"

#: What :meth:`Encoder.embed` accepts per model: a checkpoint path, an ``nn.Module`` (traced),
#: a graph, a ``(spec, state_dict)`` pair or a :class:`~weightspace.module.SpecModule`; all are
#: normalised by :func:`weightspace.models.as_spec_and_state`.
ModelLike = ModelInput


class EncoderError(WeightspaceError):
    """An encoder directory is missing, corrupt or incompatible, or cannot serve a request."""


@dataclass
class EncoderConfig:
    """Architecture of an :class:`Encoder` and the label metadata of its heads."""

    hidden: int = 64  # width of node states
    edge_hidden: int = 32  # width of edge states and messages
    num_layers: int = 4  # message-passing rounds
    aggregators: tuple[str, ...] = ("mean", "max")  # per direction, concatenated
    directions: tuple[str, ...] = ("forward", "backward")  # incoming and/or outgoing edges
    activation: str = "silu"  # nonlinearity of the message-passing layers
    features: str = "signlog"  # scalar feature map of weights and biases: signlog | fourier
    feature_scales: tuple[float, ...] = (0.01, 0.1, 1.0)  # signlog scales / fourier range
    num_frequencies: int = 4  # fourier only
    max_depth: int = 32  # deeper layers share the last depth embedding
    max_positions: int = 1024  # input/output position tables (positions taken modulo this)
    max_edge_features: int = 64  # widest edge (kernel entries) accepted
    pool_heads: int = 4  # attention heads of the pooling transformer
    pool_layers: int = 1  # transformer blocks before the attention readout
    pool_seeds: int = 2  # seed queries of the attention readout
    embedding_dim: int = 64  # width of the model embedding z
    projection_dim: int = 64  # width of the contrastive projection
    head_hidden: int = 64  # hidden width of every head
    targets: tuple[str, ...] = ("test_accuracy", "generalization_gap")  # regression outputs
    target_mean: tuple[float, ...] = (0.0, 0.0)  # targets are predicted standardised ...
    target_std: tuple[float, ...] = (1.0, 1.0)  # ... and mapped back with these
    tasks: tuple[str, ...] = ()  # class names of the task head (empty: no task head)
    canonicalize: bool = True  # canonical scale/sign form before encoding (exact invariance)
    function_probes: int = 0  # probe inputs of the function head (0: no function head)
    function_classes: int = 0  # classes per probe (the zoo's largest class count; padded)
    function_seed: int = 0  # seeds the choice of probe inputs in each task's training split
    branches: tuple[str, ...] = ("graph",)  # graph and/or probe (the learned-probe branch)
    probes: int = 32  # probe branch: learned probe inputs per input domain (P)
    probe_domains: tuple[str, ...] = ()  # probe branch: accepted input shapes ("64", "1x8x8")
    probe_classes: int = 0  # probe branch: outputs read per probe (largest class count; padded)
    probe_latent: int = 16  # probe branch: width k of the probes' latent codes
    probe_hidden: int = 64  # probe branch: width of the generator and of the output encoder
    probe_dim: int = 64  # probe branch: width of z_probe before the fusion
    probe_init: str = "gauss"  # probe branch: where the probes start: gauss | task
    #   (weightspace.nn.probe_init: the task's training inputs, an INR's coordinate grid)
    probe_sources: tuple[str, ...] = ()  # probe_init "task": the start of each probe domain
    classes: tuple[str, ...] = ()  # class names of the class head (a class-target zoo's labels,
    #   `train --objective class`; empty: no class head)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                setattr(self, f.name, tuple(value))
        if len(self.target_mean) != len(self.targets) or len(self.target_std) != len(self.targets):
            raise EncoderError(
                f"encoder config: {len(self.targets)} targets but {len(self.target_mean)} means "
                f"and {len(self.target_std)} standard deviations"
            )
        if self.function_probes < 0 or self.function_classes < 0:
            raise EncoderError("encoder config: function_probes and function_classes must be >= 0")
        if bool(self.function_probes) != bool(self.function_classes):
            raise EncoderError(
                "encoder config: function_probes and function_classes must both be 0 (no "
                f"function head) or both > 0, got {self.function_probes} and "
                f"{self.function_classes}"
            )
        unknown = sorted(set(self.branches) - set(BRANCHES))
        if not self.branches or unknown or len(set(self.branches)) != len(self.branches):
            raise EncoderError(
                f"encoder config: branches must be distinct names from {list(BRANCHES)}, got "
                f"{list(self.branches)}"
            )
        if "probe" in self.branches and (
            self.probes < 1 or self.probe_classes < 1 or not self.probe_domains
        ):
            raise EncoderError(
                "encoder config: the probe branch needs probes >= 1, probe_classes >= 1 and at "
                f"least one probe domain, got {self.probes}, {self.probe_classes} and "
                f"{list(self.probe_domains)}"
            )
        try:
            check_probe_init(self.probe_init)
        except ProbeInitError as exc:
            raise EncoderError(f"encoder config: {exc}") from None
        if self.probe_init == "task" and len(self.probe_sources) != len(self.probe_domains):
            raise EncoderError(
                f"encoder config: probe_init 'task' needs one probe source per probe domain, "
                f"got {list(self.probe_sources)} for {list(self.probe_domains)}"
            )
        if self.hidden % self.pool_heads:
            raise EncoderError(
                f"encoder config: hidden={self.hidden} must be divisible by "
                f"pool_heads={self.pool_heads}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def identity(self) -> dict[str, Any]:
        """:meth:`to_dict` without the probe fields when there is no probe branch, so a
        graph-only encoder's fingerprint is the one it had before the probe branch existed."""
        data = self.to_dict()
        if "probe" not in self.branches:
            for name in _PROBE_FIELDS:
                data.pop(name)
        if self.probe_init == "gauss" and not self.probe_sources:
            data.pop("probe_init", None)  # Gaussian-start encoders keep their fingerprint
            data.pop("probe_sources", None)
        if not self.classes:  # encoders without a class head keep their fingerprint
            data.pop("classes")
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EncoderConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise EncoderError(
                f"encoder config has unknown fields {unknown}; it was written by a newer "
                "weightspace — upgrade weightspace"
            )
        try:
            return cls(**dict(data))
        except TypeError as exc:
            raise EncoderError(f"encoder config is malformed: {exc}") from None


#: The encoder's branches: the graph network and the learned probes.
BRANCHES = ("graph", "probe")
_PROBE_FIELDS = (
    "branches",
    "probes",
    "probe_domains",
    "probe_classes",
    "probe_latent",
    "probe_hidden",
    "probe_dim",
    "probe_init",
    "probe_sources",
)


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.SiLU(), nn.Linear(hidden, outputs))


class Encoder(nn.Module):
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
            self.fuse = _mlp(width, config.head_hidden, config.embedding_dim)
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

    def _fused(self, z_graph: Tensor | None, batch: GraphBatch | Any) -> Tensor:
        """The fused embedding from the graph branch's ``z_graph`` (``None`` without a graph
        branch) and the probe branch run on ``batch`` (``z_graph`` itself without one)."""
        if "probe" not in self.config.branches:
            assert z_graph is not None  # EncoderConfig requires at least one branch
            return z_graph
        parts = [] if z_graph is None else [z_graph]
        parts.append(self._probe_forward(batch))
        return self.fuse(torch.cat(parts, dim=-1))

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

    def _probe_forward(self, batch: GraphBatch | Any) -> Tensor:
        """The probe branch: ``(B, probe_dim)``, ``probe_missing`` where a model cannot run."""
        dtype = self.dtype
        if isinstance(batch, GraphBatch):
            batch = replace(batch, x=batch.x.to(dtype), edge_attr=batch.edge_attr.to(dtype))
        else:
            graphs = batch.to_data_list() if hasattr(batch, "to_data_list") else list(batch)
            batch = GraphBank(graphs).select(torch.arange(len(graphs))).to(self.device, dtype)
        config = self.config
        try:
            out = probe_forward(
                batch, self.probe_generator, config.probe_classes, domains=config.probe_domains
            )
        except ProbeError as exc:
            raise EncoderError(str(exc)) from None
        from weightspace.input_domains import resolve_domain  # free input sizes (global pooling)

        domains = config.probe_domains
        domain_of_spec = torch.tensor(
            [domains.index(resolve_domain(spec, domains)) for spec in batch.spec_table]
            if batch.spec_ids is not None
            else [domains.index(resolve_domain(batch.spec, domains))]
        )
        spec_ids = (
            batch.spec_ids.cpu()
            if batch.spec_ids is not None
            else torch.zeros(batch.num_graphs, dtype=torch.long)
        )
        domain_index = domain_of_spec[spec_ids].to(self.device)
        z = self.probe_encoder(out.log_probs, out.class_mask, domain_index)  # (B, probe_dim)
        runnable = out.runnable.unsqueeze(-1)
        z = torch.where(runnable, z, self.probe_missing.to(z.dtype).expand_as(z))
        fallback = ~out.runnable.cpu().numpy()
        self.last_fallback = fallback
        if fallback.any() and not self._warned_fallback:
            self._warned_fallback = True
            table = batch.spec_table or (batch.spec,)
            named = "; ".join(
                f"{table[i].summary()}: {reason}" for i, reason in sorted(out.reasons.items())
            )
            warnings.warn(
                f"{int(fallback.sum())} model(s) cannot be run on the probes and are embedded "
                f"by the graph branch only (a learned 'missing' vector, flagged in "
                f"Encoder.last_fallback): {named}",
                RuntimeWarning,
                stacklevel=3,
            )
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

    # ------------------------------------------------------------------ inference
    def _run(
        self,
        models: Iterable[ModelLike] | GraphBank,
        batch_size: int,
        device: torch.device | str | None,
        with_heads: bool,
        compile: bool = False,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if not isinstance(models, GraphBank):  # large models take the memory-lean path
            from weightspace.nn.large_graph import run_splitting_large

            return run_splitting_large(self, models, batch_size, device, with_heads, compile)
        bank = models
        if device is not None:
            self.to(device)
        was_training = self.training
        self.eval()
        # Architectures with many models run the dense fast path in batches of their own; the
        # rest share mixed batches: one probe call per padded bucket and the graph branch by
        # dense sub-batches where they pay, not one batch per architecture. Compiled runs keep
        # one batch per architecture (static shapes). Results go back in input order.
        chunks = inference_chunks(
            bank.spec_index,
            batch_size,
            bank.node_counts,
            dense_min=1 if compile else DENSE_MIN_MODELS,
        )
        # Compiled graphs have static shapes: pad every one-architecture batch to the largest
        # one (repeating its first model; the extra rows are dropped) so each architecture
        # compiles once. Mixed batches run eagerly (forward compiles only the dense path).
        uniform = [bool((bank.spec_index[i] == bank.spec_index[i[0]]).all()) for i in chunks]
        static = max(len(index) for index in chunks) if compile else 0
        embeddings: list[Tensor] = []
        outputs: dict[str, list[Tensor]] = {}
        fallbacks: list[np.ndarray] = []
        probing = "probe" in self.config.branches
        try:
            with torch.inference_mode():
                for number, index in enumerate(chunks):
                    count = len(index)
                    if count < static and uniform[number]:
                        index = torch.cat([index, index[:1].expand(static - count)])
                    batch = bank.select(index).to(self.device, self.dtype)
                    if uniform[number] or "graph" not in self.config.branches:
                        z = self(batch, compile=compile)[:count]
                    else:  # graph branch by dense sub-batches, probes on the whole batch
                        z = self._fused(self._graph_forward_grouped(bank, index), batch)
                    embeddings.append(z.cpu())
                    if probing:
                        fallbacks.append(self.last_fallback[:count])
                    if with_heads:
                        for key, value in self.heads(z).items():
                            outputs.setdefault(key, []).append(value.cpu())
        finally:
            self.train(was_training)
        order = torch.cat(chunks).argsort()
        self.last_fallback = np.concatenate(fallbacks)[order.numpy()] if probing else None
        return torch.cat(embeddings)[order], {k: torch.cat(v)[order] for k, v in outputs.items()}

    def embed(
        self,
        models: Iterable[ModelLike] | GraphBank,
        *,
        batch_size: int = 512,
        device: torch.device | str | None = None,
        compile: bool = False,
    ) -> np.ndarray:
        """Embeddings ``(n, dim)`` of the models, in input order (float32 or the encoder's
        float64). With the probe branch, :attr:`last_fallback` afterwards holds ``(n,)`` bools:
        the models that could not be run on the probes (embedded by the graph branch alone).

        Each model may be a checkpoint path (its spec stored in the file, see
        ``weightspace convert``), an ``nn.Module`` (traced with :func:`weightspace.from_module`;
        give ``(module, example_input)`` when its first layer is a convolution feeding a
        flatten), a ``(NetworkSpec, state_dict)`` pair, a :class:`~weightspace.NeuralGraph` or a
        :class:`~weightspace.SpecModule`: :func:`weightspace.models.as_spec_and_state`.

        ``compile=True`` runs batches through ``torch.compile`` (see :meth:`forward`): the first
        batch of each architecture pays the compilation (seconds to a minute), later ones run
        faster, so it pays off for large collections or repeated calls in one process."""
        z, _ = self._run(models, batch_size, device, with_heads=False, compile=compile)
        return z.numpy()

    def predict(
        self,
        models: Iterable[ModelLike] | GraphBank,
        *,
        batch_size: int = 512,
        device: torch.device | str | None = None,
        compile: bool = False,
    ) -> dict[str, np.ndarray]:
        """Predicted properties: one array per regression target (``test_accuracy``,
        ``generalization_gap``), plus ``task`` (class names) and ``task_probabilities``
        ``(n, num_tasks)`` when the encoder has a task head, and ``class`` / ``class_probabilities``
        when it has a class head. ``compile``: as in :meth:`embed`."""
        _, out = self._run(models, batch_size, device, with_heads=True, compile=compile)
        mean = torch.tensor(self.config.target_mean, dtype=out["properties"].dtype)
        std = torch.tensor(self.config.target_std, dtype=out["properties"].dtype)
        values = out["properties"] * std + mean
        result = {name: values[:, i].numpy() for i, name in enumerate(self.config.targets)}
        if "task_logits" in out:
            probabilities = out["task_logits"].softmax(-1)
            result["task_probabilities"] = probabilities.numpy()
            names = np.asarray(self.config.tasks, dtype=object)
            result["task"] = names[probabilities.argmax(-1).numpy()]
        if "class_logits" in out:
            probabilities = out["class_logits"].softmax(-1)
            result["class_probabilities"] = probabilities.numpy()
            names = np.asarray(self.config.classes, dtype=object)
            result["class"] = names[probabilities.argmax(-1).numpy()]
        return result

    def predict_accuracy(
        self, models: Iterable[ModelLike] | GraphBank, **kwargs: Any
    ) -> np.ndarray:
        """Predicted test accuracy ``(n,)``."""
        if "test_accuracy" not in self.config.targets:
            raise EncoderError(
                "this encoder has no test_accuracy head; train it with --objective "
                "supervised or both on a zoo with test accuracies"
            )
        return self.predict(models, **kwargs)["test_accuracy"]

    # ------------------------------------------------------------------ persistence
    @property
    def fingerprint(self) -> str:
        """SHA-256 (hex) of the config (branches and probe count included when the encoder has
        a probe branch) and the weights: equal fingerprints, equal encoders."""
        digest = hashlib.sha256()
        digest.update(json.dumps(self.config.identity(), sort_keys=True).encode())
        for key, tensor in sorted(self.state_dict().items()):
            digest.update(key.encode())
            digest.update(str(tensor.dtype).encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``encoder.safetensors`` and ``config.json`` into ``directory`` (atomically;
        :func:`weightspace.nn.encoder_files.save_encoder`)."""
        from weightspace.nn.encoder_files import save_encoder

        return save_encoder(self, directory)

    @classmethod
    def read_config(cls, directory: str | os.PathLike[str]) -> EncoderConfig:
        """The :class:`EncoderConfig` stored in an encoder directory (validated;
        :func:`weightspace.nn.encoder_files.read_encoder_config`)."""
        from weightspace.nn.encoder_files import read_encoder_config

        return read_encoder_config(directory)

    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> Path:
        """Hugging Face's name for :meth:`save`: ``config.json`` + ``encoder.safetensors`` in
        ``save_directory``, which :meth:`from_pretrained` (or ``--encoder DIR``) reads back."""
        return self.save(save_directory)

    @classmethod
    def from_pretrained(
        cls,
        name_or_directory: str | os.PathLike[str] = "small",
        *,
        device: torch.device | str | None = None,
    ) -> Encoder:
        """Load a bundled encoder (``"small"`` or ``"pretrained:small"``) or an encoder
        directory (from :meth:`save_pretrained` or ``weightspace train``), in eval mode.

        A bare name is a bundled encoder when one of that name is installed and no directory
        of that name exists here; anything else is read as a directory.

        Raises:
            EncoderError: the directory is missing, corrupt, or incompatible.
            PretrainedError: ``pretrained:NAME`` names no bundled encoder.
        """
        from weightspace.pretrained import PREFIX, list_pretrained

        text = os.fspath(name_or_directory)
        if not text.startswith(PREFIX) and not Path(text).exists() and text in list_pretrained():
            text = PREFIX + text
        return cls.load(text, device=device)

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], *, device: torch.device | str | None = None
    ) -> Encoder:
        """Load an encoder directory written by :meth:`save` (in eval mode); ``pretrained:NAME``
        loads the bundled encoder ``NAME`` (:func:`weightspace.nn.encoder_files.load_encoder`).

        Raises:
            EncoderError: the directory is missing, corrupt, or incompatible with this version.
            PretrainedError: ``pretrained:NAME`` names no bundled encoder.
        """
        from weightspace.nn.encoder_files import load_encoder

        return load_encoder(directory, device=device, cls=cls)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, parameters={sum(p.numel() for p in self.parameters())}"


def encode_dense(
    encoder: Encoder,
    plan: DensePlan,
    num_graphs: int,
    x: Tensor,
    edge_attr: Tensor,
    node_depth: Tensor,
    node_role: Tensor,
    node_activation: Tensor,
    node_position: Tensor,
    edge_kind: Tensor,
) -> Tensor:
    r""":meth:`Encoder.forward` for ``B = num_graphs`` graphs of the architecture of ``plan``,
    nodes and edges in :func:`~weightspace.graph.to_graph` order: ``(B, embedding_dim)``.

    The node attributes (depth, role, activation, position) and edge kinds are the same in every
    graph, so the table terms of the input embeddings are computed once, on the first graph's
    ``N`` nodes and ``E`` edges, and broadcast:

    .. math::
        h^{(0)}_{g,i} = W_b\,\phi(b_{g,i}) + T_i, \qquad
        e^{(0)}_{g,k} = W_e\,\phi(w_{g,k}) + b_e + E_{\mathrm{kind}}[k]

    with :math:`T = ` :meth:`~weightspace.nn.features.NodeEmbedding.attributes`, the reverse
    depth taken from the architecture's output depth. The layers then run
    :meth:`~weightspace.nn.layers.EdgeNodeConv._forward_dense` and the pooling sees a
    ``(B, N, hidden)`` view (no padding, no mask).

    The function reads only tensors and the plan's Python integers, so it is what
    ``torch.compile`` traces (``Encoder.forward(..., compile=True)``).

    Shapes:
        - input: ``x (B * N, 1)``, ``edge_attr (B * E, K)`` in the encoder's dtype; node
          attributes ``(B * N,)`` and ``edge_kind (B * E,)`` (only the first graph's are read)
        - output: ``(B, embedding_dim)``
    """
    n, e, b = plan.num_nodes, plan.num_edges, num_graphs
    depth = node_depth[:n]
    table = encoder.node_embedding.attributes(
        depth, depth.max() - depth, node_role[:n], node_activation[:n], node_position[:n]
    )  # (N, hidden)
    h = encoder.node_embedding.embed_bias(x).view(b, n, -1) + table
    edge_table = encoder.edge_embedding.attributes(edge_kind[:e])  # (E, edge_hidden)
    edges = encoder.edge_embedding.embed_weights(edge_attr).view(b, e, -1) + edge_table
    h, edges = h.view(b * n, -1), edges.view(b * e, -1)
    for i, conv in enumerate(encoder.convs):
        h, edges = conv._forward_dense(h, edges, plan, update_edges=i < len(encoder.convs) - 1)
    return encoder.pool(h, None, b, nodes_per_graph=n)


_COMPILED_ENCODE_DENSE: Any = None


def _compiled_encode_dense() -> Any:
    """:func:`encode_dense` under ``torch.compile(dynamic=False)``, created once per process
    (dynamo recompiles it per architecture, batch size, dtype and device)."""
    global _COMPILED_ENCODE_DENSE
    if _COMPILED_ENCODE_DENSE is None:
        _COMPILED_ENCODE_DENSE = torch.compile(encode_dense, dynamic=False)
    return _COMPILED_ENCODE_DENSE


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
