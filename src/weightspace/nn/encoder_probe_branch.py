"""The probe branch of :class:`~weightspace.nn.encoder.Encoder` and its fusion with the graph
branch (a mixin of :class:`~weightspace.nn.encoder.Encoder`; the module docstring of
:mod:`weightspace.nn.encoder` has the math)."""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from weightspace.nn.batch import GraphBank, GraphBatch
from weightspace.nn.encoder_config import EncoderError
from weightspace.nn.probe_skip import probe_skip_features
from weightspace.nn.probes import ProbeError, probe_forward

__all__ = ["EncoderProbeBranch"]


class EncoderProbeBranch:
    """:class:`~weightspace.nn.encoder.Encoder`'s probe branch and fusion (a mixin: it reads
    the encoder's ``config``, ``probe_generator``, ``probe_encoder``, ``probe_missing`` and
    ``fuse``)."""

    def _fused(self, z_graph: Tensor | None, batch: GraphBatch | Any) -> Tensor:
        """The fused embedding from the graph branch's ``z_graph`` (``None`` without a graph
        branch) and the probe branch run on ``batch`` (``z_graph`` itself without one)."""
        if "probe" not in self.config.branches:
            assert z_graph is not None  # EncoderConfig requires at least one branch
            return z_graph
        parts = [] if z_graph is None else [z_graph]
        parts.append(self._probe_forward(batch))
        return self.fuse(torch.cat(parts, dim=-1))

    def _probe_forward(self, batch: GraphBatch | Any) -> Tensor:
        """The probe branch: ``(B, probe_dim)``, ``probe_missing`` where a model cannot run;
        with ``probe_skip`` the raw probe outputs follow, ``(B, probe_dim + P C)``."""
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
        if config.probe_skip:  # the raw outputs ride along to the fusion (nn.probe_skip)
            z = torch.cat([z, probe_skip_features(out.log_probs, out.class_mask, out.runnable)], -1)
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
