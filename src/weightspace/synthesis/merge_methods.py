r"""The built-in merge methods (``average``, ``rebasin``, ``ensemble``, ``embedding``), each
registered on import with :func:`~weightspace.synthesis.merge_registry.register_merge_method`;
their math is in :mod:`weightspace.synthesis.merge`'s docstring."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from weightspace.spec import NetworkSpec
from weightspace.synthesis.common import StateDict
from weightspace.synthesis.ensemble_network import ensemble
from weightspace.synthesis.merge_registry import MergeResult, register_merge_method
from weightspace.synthesis.rebasin import align, interpolate, rebasin_interpolate

if TYPE_CHECKING:
    from weightspace.synthesis.decoder import Synthesizer

__all__: list[str] = []  # the methods are reached through the registry


def _weighted_average(
    spec: NetworkSpec, states: list[StateDict], weights: list[float]
) -> StateDict:
    r""":math:`\sum_m w_m \theta_m`; for two models with :math:`w_1 + w_2 = 1`, exactly
    :func:`~weightspace.synthesis.rebasin.interpolate` at :math:`\alpha = w_2` (so 0 and 1
    return the endpoints bit for bit)."""
    if len(states) == 2 and math.isclose(weights[0] + weights[1], 1.0, abs_tol=1e-12):
        return interpolate(spec, states[0], states[1], weights[1])
    ref = states[0]
    return {
        key: sum(w * s[key].to(ref[key]) for w, s in zip(weights, states, strict=True))
        for key in spec.param_shapes()
    }


@register_merge_method("average", "naive weight averaging Σ w_m·θ_m ((1-α)·θ_A + α·θ_B)")
def _merge_average(
    spec: NetworkSpec, states: list[StateDict], weights: list[float], **_: Any
) -> MergeResult:
    return MergeResult(spec, _weighted_average(spec, states, weights))


@register_merge_method(
    "rebasin",
    "weight matching (Git Re-Basin, tanh signs and ReLU scales aligned too) of every model onto "
    "the first, then averaging",
)
def _merge_rebasin(
    spec: NetworkSpec,
    states: list[StateDict],
    weights: list[float],
    *,
    seed: int = 0,
    **_: Any,
) -> MergeResult:
    if len(states) == 2 and math.isclose(weights[0] + weights[1], 1.0, abs_tol=1e-12):
        merged = rebasin_interpolate(spec, states[0], states[1], weights[1], seed=seed)
        return MergeResult(spec, merged)
    aligned = [states[0], *(align(spec, states[0], s, seed=seed) for s in states[1:])]
    return MergeResult(spec, _weighted_average(spec, aligned, weights))


@register_merge_method(
    "ensemble",
    "output ensembling Σ w_m·f_m ((1-α)·f_A + α·f_B) as one wider network (an ensemble spec)",
    same_spec=False,
)
def _merge_ensemble(
    spec: NetworkSpec, states: list[StateDict], weights: list[float], **_: Any
) -> MergeResult:
    return ensemble(spec, states, weights)


@register_merge_method(
    "embedding",
    "average the encoder's embeddings and decode (needs a trained decoder)",
    needs_synthesizer=True,
    uses_data=True,  # the decoder is trained on task data
)
def _merge_embedding(
    spec: NetworkSpec,
    states: list[StateDict],
    weights: list[float],
    *,
    synthesizer: Synthesizer,
    specs: list[NetworkSpec] | None = None,
    target_spec: NetworkSpec | None = None,
    **_: Any,
) -> MergeResult:
    target = target_spec or spec
    specs = specs or [spec] * len(states)
    z = synthesizer.embed(list(zip(specs, states, strict=True)))  # (K, d)
    if len(states) == 2 and math.isclose(weights[0] + weights[1], 1.0, abs_tol=1e-12):
        mid = torch.lerp(z[0], z[1], weights[1]).unsqueeze(0)  # (1, d)
    else:
        mid = (torch.tensor(weights, dtype=z.dtype).unsqueeze(1) * z).sum(0, keepdim=True)
    (state,) = synthesizer.decode(mid, target)
    return MergeResult(target, state, {"decoder": synthesizer.decoder.fingerprint[:16]})
