r"""BatchNorm folding: an eval-mode BatchNorm merged into the Linear/Conv layer before it.

With the layer's rows :math:`W` (``(out, in, *kernel)``) and bias :math:`b` (zero if absent) and
the BatchNorm's running statistics :math:`\mu, \sigma^2`, affine :math:`\gamma, \beta` (one
and zero if absent) and :math:`\epsilon`, folding is exact up to rounding:

.. math::
    W' = W \cdot \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}}, \qquad
    b' = (b - \mu) \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}} + \beta

(the factor scales row :math:`i` of :math:`W`). Used by :func:`weightspace.ingest.from_module`
and :func:`weightspace.ingest.spec_from_activation`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from weightspace.errors import UnsupportedLayerError

__all__ = ["fold_batchnorm"]


def fold_batchnorm(
    weight: Tensor, bias: Tensor | None, bn: nn.modules.batchnorm._BatchNorm, where: str
) -> tuple[Tensor, Tensor]:
    """Fold the eval-mode ``bn`` into the layer ``(weight, bias)`` before it (see the module
    docstring for the math).

    Args:
        weight: ``(out, in, *kernel)`` rows of the Linear/Conv layer.
        bias: ``(out,)``, or ``None`` for a bias-free layer.
        bn: the BatchNorm that reads the layer's output; its running statistics are used.
        where: the BatchNorm's name, for the error.

    Returns:
        ``(weight', bias')`` in ``weight``'s dtype; the folded layer always has a bias.

    Raises:
        UnsupportedLayerError: ``bn`` keeps no running statistics.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise UnsupportedLayerError(
            f"BatchNorm {where!r} has no running statistics (track_running_stats=False); "
            "it cannot be folded into the layer before it"
        )
    scale = torch.rsqrt(bn.running_var.to(weight.dtype) + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.to(weight.dtype)
    shift = -bn.running_mean.to(weight.dtype) * scale
    if bias is not None:
        shift = shift + bias * scale
    if bn.bias is not None:
        shift = shift + bn.bias.to(weight.dtype)
    weight = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    return weight, shift
