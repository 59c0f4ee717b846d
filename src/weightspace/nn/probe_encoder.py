"""The output encoder of the probe branch: probe outputs → one vector per model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["ProbeEncoder"]


class ProbeEncoder(nn.Module):
    r"""Probe outputs → one vector per model, per input domain.

    .. math::
        z_{\mathrm{probe}} = \mathrm{MLP}_D\Big(\big[\,m \odot p,\ m \odot
        \max(\log p, -30)/10\,\big]_{\text{flattened}}\Big)

    with :math:`p = \operatorname{softmax}` outputs ``(P, C)`` and :math:`m` the class mask.
    Probe order and class order are fixed (neither is a symmetry of the model), so flattening
    loses nothing; the clamp keeps confident models' :math:`-\infty`-ward log-probabilities
    in range.

    Shapes:
        - input: ``log_probs (B, P, C)``, ``class_mask (B, C)``, ``domain_index (B,)``
        - output: ``(B, dim)``
    """

    def __init__(
        self, domains: Sequence[str], probes: int, classes: int, hidden: int, dim: int
    ) -> None:
        super().__init__()
        self.domains = tuple(domains)
        self.dim = dim
        self.mlps = nn.ModuleDict(
            {
                key: nn.Sequential(
                    nn.Linear(2 * probes * classes, hidden), nn.SiLU(), nn.Linear(hidden, dim)
                )
                for key in self.domains
            }
        )

    def forward(self, log_probs: Tensor, class_mask: Tensor, domain_index: Tensor) -> Tensor:
        mask = class_mask.unsqueeze(1).to(log_probs.dtype)  # (B, 1, C)
        features = torch.cat(
            [log_probs.exp() * mask, log_probs.clamp(min=-30.0) / 10.0 * mask], dim=-1
        ).flatten(1)  # (B, 2 P C)
        out = log_probs.new_zeros(log_probs.shape[0], self.dim)
        for i, key in enumerate(self.domains):
            rows = torch.nonzero(domain_index == i).flatten()
            if rows.numel():
                out = out.index_put((rows,), self.mlps[key](features[rows]))
        return out
