r"""Decoded networks as flat parameter vectors, run in batch; the distillation loss and schedule.

Shared by the decoder (:mod:`weightspace.synthesis.decoder_training`) and ensemble distillation
(:mod:`weightspace.synthesis.distill`). ``B`` networks of one
:class:`~weightspace.spec.NetworkSpec` are a ``(B, P)`` tensor of flat parameters, evaluated with
``torch.func.vmap`` over ``torch.func.functional_call`` of :func:`weightspace.module.to_module`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weightspace.module import to_module
from weightspace.spec import NetworkSpec
from weightspace.synthesis.common import StateDict, SynthesisError

__all__ = ["distillation_loss", "flatten", "functional_logits", "unflatten", "warmup_cosine"]


def unflatten(spec: NetworkSpec, flat: Tensor) -> StateDict:
    """A flat parameter vector ``(P,)`` (or ``(B, P)``) → state dict of ``spec`` (views)."""
    out: StateDict = {}
    offset = 0
    lead = tuple(flat.shape[:-1])
    for key, shape in spec.param_shapes().items():
        n = math.prod(shape)
        out[key] = flat[..., offset : offset + n].reshape(*lead, *shape)
        offset += n
    if offset != flat.shape[-1]:
        raise SynthesisError(
            f"flat vector has {flat.shape[-1]} entries but the spec needs {offset}"
        )
    return out


def flatten(spec: NetworkSpec, state_dict: Mapping[str, Tensor]) -> Tensor:
    """State dict of ``spec`` → flat ``(P,)`` vector in :meth:`NetworkSpec.param_shapes` order."""
    return torch.cat([state_dict[k].reshape(-1) for k in spec.param_shapes()])


@functools.lru_cache(maxsize=32)
def _template(spec: NetworkSpec, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """A module of ``spec`` whose own parameters are never used (functional_call replaces them)."""
    return to_module(spec).to(dtype=dtype, device=device)


def functional_logits(spec: NetworkSpec, flat: Tensor, x: Tensor) -> Tensor:
    """Run ``B`` networks of ``spec`` given as flat vectors on shared inputs.

    Shapes:
        ``flat (B, P)``, ``x (N, *input_shape)`` → ``(B, N, num_outputs)``; differentiable
        with respect to ``flat``.
    """
    from torch.func import functional_call, vmap

    module = _template(spec, flat.dtype, flat.device)
    params = unflatten(spec, flat)

    def run(p: dict[str, Tensor]) -> Tensor:
        return functional_call(module, p, (x,))

    return vmap(run)(params)


def distillation_loss(predicted: Tensor, target: Tensor, loss: str, temperature: float) -> Tensor:
    """Mean logit-distillation loss; shapes ``(B, N, C)``.

    The MSE compares logits centred over classes (:math:`f - \bar f`): a softmax classifier is
    unchanged by adding one number to all of an example's logits, so the decoder is not asked to
    reproduce that number.
    """
    if loss == "kl":
        log_p = F.log_softmax(predicted / temperature, dim=-1)
        log_q = F.log_softmax(target / temperature, dim=-1)
        return (log_q.exp() * (log_q - log_p)).sum(-1).mean() * temperature**2
    difference = predicted - target
    return (difference - difference.mean(-1, keepdim=True)).pow(2).mean()


def warmup_cosine(done: float, peak: float, total: int) -> float:
    r"""The learning rate at share ``done`` of training: a linear warm-up over the first 5 %
    (from one step's worth), then a cosine decay from ``peak`` to 5 % of it,

    .. math::
        \eta(t) = \eta_{\max}\,\big(0.05 + 0.95 \cdot \tfrac{1}{2}(1 + \cos \pi t')\big),
        \qquad t' = (t - 0.05) / 0.95.
    """
    warm = 0.05
    if done < warm:
        return peak * max(done, 1.0 / max(total, 1)) / warm
    t = (done - warm) / (1 - warm)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))
