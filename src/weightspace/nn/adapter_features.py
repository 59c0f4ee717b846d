r"""Adapter features: a training-free, exactly ``GL(r)``-invariant embedding of LoRA adapters.

An adapter changes module :math:`m` of a shared base by :math:`\Delta W_m = s B_m A_m`
(:mod:`weightspace.lora`). A graph encoder fed the *merged* weights :math:`W_m + \Delta W_m` sees
mostly the base, which every adapter of that base shares; these features see the update alone.
Per adapted module, with :math:`\Delta W = U \Sigma V^\top` (thin SVD),

.. math::
    \phi_\mathrm{input}(\Delta W) = \frac{V \Sigma V^\top}{\lVert \Sigma \rVert_F}
        = \frac{(\Delta W^\top \Delta W)^{1/2}}{\lVert \Delta W \rVert_F}, \qquad
    \phi_\mathrm{output}(\Delta W) = \frac{U \Sigma U^\top}{\lVert \Sigma \rVert_F}, \qquad
    \phi_\mathrm{delta}(\Delta W) = \frac{\Delta W}{\lVert \Delta W \rVert_F},

flattened (``input``: ``in × in``, ``output``: ``out × out``, ``delta``: ``out × in``) and
concatenated over the modules in name order: :math:`z = [\phi(\Delta W_{m_1}), \dots]`, one unit
vector per module (a zero update gives zeros). Each depends on :math:`\Delta W` only, so it is
invariant to :math:`(A, B) \mapsto (G A, B G^{-1})` for every invertible :math:`G`, to the
adapter's scale convention (``alpha``, rsLoRA) and to its rank; computed from the factors through
:func:`weightspace.lora.canonical_factors` (:math:`O((\mathrm{in}+\mathrm{out}) r^2)`, no
:math:`\Delta W` formed) or from a merged checkpoint minus its base (:func:`merged_delta`).

``input`` (the row space weighted by the singular values, the default) is the measured best on
the ``lora`` preset: docs/RESULTS.md, *LoRA adapters*. All three live in the base's coordinates:
an adapter and its base permuted together give other features wherever the permuted neurons
are on the chosen side (``input`` of ``2.linear1`` and the head reads the residual stream, which
the FFN-neuron permutation leaves alone; ``2.linear2``'s input is those neurons).

**Bases.** A merged checkpoint carries no record of its base; :func:`register_base` names one
(``weightspace.zoo.lora_zoo.register_lora_tasks`` registers a lora zoo's, rebuilt from its seed),
and :func:`find_base` finds the registered base of a spec.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from weightspace.lora import LoraAdapter, LoraError, LoraFactors, canonical_factors
from weightspace.spec import NetworkSpec

__all__ = [
    "FEATURE_KINDS",
    "AdapterBase",
    "adapter_features",
    "delta_features",
    "factor_features",
    "find_base",
    "graph_features",
    "merged_delta",
    "register_base",
]

#: The per-module feature maps (module docstring).
FEATURE_KINDS = ("input", "output", "delta")


@dataclass(frozen=True)
class AdapterBase:
    """A base model that adapters are applied to.

    Attributes:
        name: how errors name it (``base_model_name_or_path``, or a zoo's ``lora-seq-base``).
        spec, state: the base's architecture and weights.
        modules: the adapted linear modules, in the order their features are concatenated.
    """

    name: str
    spec: NetworkSpec
    state: Mapping[str, Tensor]
    modules: tuple[str, ...]


_BASES: dict[str, AdapterBase] = {}


def register_base(base: AdapterBase) -> None:
    """Make ``base`` the base of every model of its spec (:func:`find_base`); replaces any
    earlier one of that spec."""
    for module in base.modules:
        if f"{module}.weight" not in base.state:
            raise LoraError(f"base {base.name!r}: no weight for adapted module {module!r}")
    _BASES[base.spec.to_json()] = base


def find_base(spec: NetworkSpec) -> AdapterBase:
    """The registered base of ``spec``.

    Raises:
        LoraError: none is registered for this architecture.
    """
    base = _BASES.get(spec.to_json())
    if base is None:
        raise LoraError(
            f"no adapter base is registered for {spec.summary()}; register its base with "
            "weightspace.nn.adapter_features.register_base (a lora zoo registers its own)"
        )
    return base


def _unit(x: Tensor) -> Tensor:
    norm = torch.linalg.vector_norm(x)
    return x / norm if norm > 0 else x


def _svd_feature(u: Tensor, sigma: Tensor, vh: Tensor, kind: str) -> Tensor:
    """:math:`\\phi` of :math:`U \\Sigma V^\\top` (module docstring), flattened, float64."""
    if kind == "input":
        return _unit((vh.T * sigma) @ vh).flatten()
    if kind == "output":
        return _unit((u * sigma) @ u.T).flatten()
    if kind == "delta":
        return _unit((u * sigma) @ vh).flatten()
    raise LoraError(f"unknown adapter feature kind {kind!r}; valid: {', '.join(FEATURE_KINDS)}")


def delta_features(deltas: Sequence[Tensor], kind: str = "input") -> np.ndarray:
    r"""The features of updates :math:`\Delta W_m` ``(out, in)``, concatenated in the given order.

    Returns:
        ``(D,)`` float64, :math:`D = \sum_m \mathrm{in}_m^2` for ``input``.
    """
    parts = []
    for delta in deltas:
        u, sigma, vh = torch.linalg.svd(delta.detach().to(torch.float64), full_matrices=False)
        parts.append(_svd_feature(u, sigma, vh, kind))
    return torch.cat(parts).numpy()


def factor_features(factors: LoraFactors, kind: str = "input") -> Tensor:
    r""":math:`\phi(sBA)` of one module from its factors, through the canonical factors
    :math:`(A^\star = V^\top, B^\star = U\Sigma)`: exactly ``GL(r)``-invariant, flattened,
    float64."""
    canonical = canonical_factors(
        LoraFactors(factors.A.to(torch.float64), factors.B.to(torch.float64), factors.scaling)
    )
    sigma = torch.linalg.vector_norm(canonical.B, dim=0)  # (r,) the singular values
    u = canonical.B / torch.where(sigma > 0, sigma, torch.ones_like(sigma))
    return _svd_feature(u, sigma, canonical.A, kind)


def adapter_features(
    adapter: LoraAdapter, kind: str = "input", modules: Sequence[str] | None = None
) -> np.ndarray:
    """The features of a LoRA adapter read from its factors (``peft`` file or
    :class:`~weightspace.lora.LoraAdapter`), modules in name order (or ``modules``; a module
    the adapter does not adapt contributes zeros only when listed, so give ``modules`` to
    compare adapters of different targets).

    Raises:
        LoraError: ``modules`` names a module the adapter lacks; unknown ``kind``.
    """
    names = sorted(adapter.modules) if modules is None else list(modules)
    parts = []
    for name in names:
        if name not in adapter.modules:
            raise LoraError(f"{adapter.source}: no module {name!r} in this adapter")
        factors = adapter.modules[name]
        if adapter.fan_in_fan_out:  # the base stores W transposed: ΔW^T = s A^T B^T
            factors = LoraFactors(factors.B.T, factors.A.T, factors.scaling)
        parts.append(factor_features(factors, kind))
    return torch.cat(parts).numpy()


def merged_delta(
    spec: NetworkSpec, state: Mapping[str, Tensor], base: AdapterBase, *, check: bool = True
) -> dict[str, Tensor]:
    r"""The updates :math:`\Delta W_m = W'_m - W_m` of a merged checkpoint over ``base``.

    Args:
        spec, state: the merged model.
        base: its base (:func:`find_base`).
        check: refuse a model whose other tensors differ from the base's (relative tolerance
            1e-5): it was not made by merging an adapter into this base.

    Raises:
        LoraError: another architecture, or (``check``) another base, naming both.
    """
    if spec.to_json() != base.spec.to_json():
        raise LoraError(f"model {spec.summary()} is not of base {base.name!r}'s architecture")
    adapted = {f"{m}.weight" for m in base.modules}
    if check:
        for key, value in base.state.items():
            if key in adapted or key not in state:
                continue
            other = state[key].to(value)
            if not torch.allclose(other, value, rtol=1e-5, atol=1e-5 * float(value.abs().max())):
                raise LoraError(
                    f"model {spec.summary()}: tensor {key!r} differs from base {base.name!r}'s, "
                    "so it is not an adapter merged into that base"
                )
    return {
        m: state[f"{m}.weight"].to(torch.float64) - base.state[f"{m}.weight"].to(torch.float64)
        for m in base.modules
    }


def graph_features(
    graphs: Sequence[Any], kind: str = "input", *, check: bool = False
) -> np.ndarray:
    """:func:`delta_features` of merged checkpoints given as neural graphs (their registered
    base subtracted): ``(n, D)``."""
    from weightspace.graph import to_state_dict

    rows = []
    for graph in graphs:
        base = find_base(graph.spec)
        deltas = merged_delta(graph.spec, to_state_dict(graph), base, check=check)
        rows.append(delta_features([deltas[m] for m in base.modules], kind))
    return np.stack(rows) if rows else np.zeros((0, 0))
