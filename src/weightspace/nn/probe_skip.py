r"""The probe branch's raw-output skip (``EncoderConfig.probe_skip``): the embedding also carries
each model's own outputs on the probes, standardised, beside the learned features.

.. math::
    z = \Big[\ \mathrm{MLP}\big([z_{\mathrm{graph}}, z_{\mathrm{probe}}]\big)\ ,\
    \frac{s - \mu}{\sqrt{\sigma^2 + \epsilon}}\ \Big],
    \qquad s = \big(m \odot \max(y, -30)\big)_{\text{flattened}} \in \mathbb{R}^{P C}

with :math:`y` the model's outputs on its ``P`` probes (log-probabilities, or the raw output of
a one-output model such as an INR), :math:`m` the class mask, and :math:`\mu, \sigma^2` the
mean and variance of every output over all training rows seen (updated in training mode, fixed in
eval mode; saved with the weights). The MLP's width shrinks by :math:`PC`, so
``embedding_dim`` stays the embedding's total width. Any linear head on :math:`z` can read at
least what a linear head on the raw probe outputs reads (``probing-coords`` when the probes sit on
an INR's grid), plus the learned features. :math:`s` is a function of the model's outputs only,
so it keeps every invariance of the probe branch; in eval mode it is a fixed affine map of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from weightspace.nn.encoder_config import EncoderConfig

__all__ = ["ProbeSkipFusion", "probe_fusion", "probe_skip_features", "probe_skip_width"]


def probe_skip_width(config: EncoderConfig) -> int:
    """Width :math:`PC` of the skip block (0 when ``probe_skip`` is off)."""
    if not config.probe_skip or "probe" not in config.branches:
        return 0
    return int(config.probes) * int(config.probe_classes)


def probe_skip_features(log_probs: Tensor, class_mask: Tensor, runnable: Tensor) -> Tensor:
    """The raw skip block :math:`s`: ``(B, P C)``, zero for models that could not run.

    Shapes:
        - input: ``log_probs (B, P, C)``, ``class_mask (B, C)``, ``runnable (B,)``
        - output: ``(B, P C)``
    """
    mask = class_mask.unsqueeze(1).to(log_probs.dtype)  # (B, 1, C)
    s = (log_probs.clamp(min=-30.0) * mask).flatten(1)  # (B, P C)
    return torch.where(runnable.unsqueeze(-1), s, torch.zeros_like(s))


class ProbeSkipFusion(nn.Module):
    r"""The fusion MLP with the skip block appended (module docstring).

    Args:
        fuse_width: width of the fused branch vectors ``[z_graph, z_probe]``.
        skip_width: width :math:`PC` of the raw skip block that follows them in the input.
        mlp: the fusion MLP, ``fuse_width → embedding_dim - skip_width``.

    Shapes:
        - input: ``(B, fuse_width + skip_width)``
        - output: ``(B, embedding_dim)``
    """

    def __init__(self, fuse_width: int, skip_width: int, mlp: nn.Module, eps: float = 1e-5) -> None:
        super().__init__()
        self.fuse_width = fuse_width
        self.skip_width = skip_width
        self.eps = eps
        self.mlp = mlp
        # Float buffers only (a long counter would stop load_encoder's one-dtype cast).
        self.register_buffer("running_mean", torch.zeros(skip_width))
        self.register_buffer("running_var", torch.ones(skip_width))
        self.register_buffer("count", torch.zeros(()))

    @torch.no_grad()
    def _update(self, raw: Tensor) -> None:
        """Merge a batch into the running statistics (the cumulative mean and variance of
        every training row seen: Chan et al.'s pairwise update)."""
        n = float(raw.shape[0])
        seen = float(self.count)
        mean = raw.mean(0)
        var = raw.var(0, unbiased=False)
        total = seen + n
        delta = mean - self.running_mean
        if seen == 0:
            self.running_mean.copy_(mean)
            self.running_var.copy_(var)
        else:
            self.running_mean.add_(delta * (n / total))
            self.running_var.copy_(
                (seen * self.running_var + n * var + delta.pow(2) * (seen * n / total)) / total
            )
        self.count.fill_(total)

    def forward(self, x: Tensor) -> Tensor:
        learned = self.mlp(x[:, : self.fuse_width])  # (B, embedding_dim - P C)
        raw = x[:, self.fuse_width :]  # (B, P C)
        if self.training and raw.shape[0]:
            self._update(raw.detach())
        scale = torch.rsqrt(self.running_var.to(raw.dtype) + self.eps)
        return torch.cat([learned, (raw - self.running_mean.to(raw.dtype)) * scale], dim=-1)

    def extra_repr(self) -> str:
        return f"fuse_width={self.fuse_width}, skip_width={self.skip_width}"


def probe_fusion(
    config: EncoderConfig, fuse_width: int, mlp: Callable[[int, int, int], nn.Module]
) -> nn.Module:
    """The encoder's ``fuse`` module: ``mlp(fuse_width, head_hidden, embedding_dim)`` as before
    without the skip (same parameter names, so old encoders load), a
    :class:`ProbeSkipFusion` with it."""
    hidden, dim = config.head_hidden, config.embedding_dim
    skip = probe_skip_width(config)
    if not skip:
        return mlp(fuse_width, hidden, dim)
    return ProbeSkipFusion(fuse_width, skip, mlp(fuse_width, hidden, dim - skip))
