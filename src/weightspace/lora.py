r"""LoRA adapters (the ``peft`` file layout): reading, their ``GL(r)`` symmetry, applying them.

The adapter types and the reading and writing of its files are in :mod:`weightspace.lora_adapter`
(re-exported here); this module holds the symmetry and what an adapter does to a base model.

An adapter directory holds ``adapter_config.json`` (``r``, ``lora_alpha``, ``target_modules``,
``base_model_name_or_path``, optionally ``use_rslora``, ``rank_pattern``, ``alpha_pattern``,
``fan_in_fan_out``) and ``adapter_model.safetensors`` with, per adapted linear module ``m``,
``base_model.model.<m>.lora_A.weight`` of shape ``(r, in)`` and
``base_model.model.<m>.lora_B.weight`` of shape ``(out, r)``. The module's weight becomes

.. math::
    W' = W + \Delta W, \qquad \Delta W = s\,B A, \qquad
    s = \alpha / r \ \ (\text{or } \alpha / \sqrt{r} \text{ with rsLoRA}).

**Symmetry.** For any invertible :math:`G \in GL(r)`, :math:`(A, B) \mapsto (G A,\ B G^{-1})`
leaves :math:`\Delta W` unchanged, so an adapter's factors are only defined up to ``GL(r)`` — far
more than the permutations, scalings and sign flips a neural graph's encoder or canonical form
handles. :func:`canonical_factors` removes it exactly: with thin QR factorisations
:math:`sB = Q_B R_B`, :math:`A^\top = Q_A R_A` and the SVD of the small core
:math:`R_B R_A^\top = U_c \Sigma V_c^\top`,

.. math::
    \Delta W = (Q_B U_c)\,\Sigma\,(Q_A V_c)^\top = U \Sigma V^\top, \qquad
    B^\star = U \Sigma, \quad A^\star = V^\top,

in :math:`O((\mathrm{in} + \mathrm{out})\,r^2)` without forming :math:`\Delta W`; each component's
sign is fixed so that :math:`\sum_i U_{ik}^3 > 0`. :math:`(A^\star, B^\star)` depends on
:math:`\Delta W` only (when its nonzero singular values are distinct), so it is the same for
every :math:`G`. :func:`adapter_models` turns each module's canonical factors into a two-layer
linear network ``in → r → out``, which the encoder embeds like any other model; the encoder's
remaining hidden-neuron symmetries (permutation, scaling, sign) are a subgroup of ``GL(r)``.
:mod:`weightspace.nn.adapter_features` embeds an adapter without training, from
:math:`\Delta W` alone (the singular-value-weighted row space per module).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import torch
from torch import Tensor

from weightspace.lora_adapter import (  # noqa: F401 (re-exported: weightspace.lora)
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LoraAdapter,
    LoraError,
    LoraFactors,
    load_adapter,
    save_adapter,
)
from weightspace.spec import NetworkSpec, mlp_spec

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "LoraError",
    "LoraFactors",
    "LoraAdapter",
    "load_adapter",
    "save_adapter",
    "gl_transform",
    "random_gl",
    "canonical_factors",
    "canonicalize_adapter",
    "apply_adapter",
    "adapter_models",
]


# ------------------------------------------------------------------------------ GL(r) symmetry
def gl_transform(adapter: LoraAdapter, matrices: Mapping[str, Tensor]) -> LoraAdapter:
    r""":math:`A \mapsto G A`, :math:`B \mapsto B G^{-1}` per named module (others unchanged).

    Raises:
        LoraError: a module is unknown, or :math:`G` is not an invertible ``(r, r)`` matrix.
    """
    modules = dict(adapter.modules)
    for name, g in matrices.items():
        if name not in modules:
            raise LoraError(f"{adapter.source}: no module {name!r} in this adapter")
        f = modules[name]
        if tuple(g.shape) != (f.rank, f.rank):
            raise LoraError(f"module {name!r}: G must be ({f.rank}, {f.rank}), got {list(g.shape)}")
        g = g.to(f.A)
        try:
            inverse = torch.linalg.inv(g)
        except RuntimeError:
            raise LoraError(f"module {name!r}: G is singular") from None
        modules[name] = LoraFactors(g @ f.A, f.B @ inverse, f.scaling)
    return replace(adapter, modules=modules)


def random_gl(
    adapter: LoraAdapter, generator: torch.Generator | None = None, *, log_range: float = 1.0
) -> tuple[LoraAdapter, dict[str, Tensor]]:
    r"""A random :func:`gl_transform`: :math:`G = Q_1\,\mathrm{diag}(e^{u})\,Q_2`, with
    :math:`Q_i` random orthogonal and :math:`u_k \sim U[-r, r]` (condition number
    :math:`\le e^{2r}`), drawn in float64."""
    matrices = {}
    for name, f in adapter.modules.items():
        k = f.rank
        q1, _ = torch.linalg.qr(torch.randn(k, k, generator=generator, dtype=torch.float64))
        q2, _ = torch.linalg.qr(torch.randn(k, k, generator=generator, dtype=torch.float64))
        u = (2 * torch.rand(k, generator=generator, dtype=torch.float64) - 1) * log_range
        matrices[name] = q1 @ torch.diag(torch.exp(u)) @ q2
    return gl_transform(adapter, matrices), matrices


def canonical_factors(factors: LoraFactors) -> LoraFactors:
    r"""The ``GL(r)``-invariant factors :math:`(A^\star = V^\top,\ B^\star = U\Sigma)` of
    :math:`\Delta W = sBA` (module docstring), scale folded in (``scaling = 1``).

    Computed in float64 and returned in the factors' dtype. Shapes: ``A* (r, in)``,
    ``B* (out, r)``; components beyond ``min(in, out)`` are zero.
    """
    a = factors.A.to(torch.float64)
    b = factors.B.to(torch.float64) * factors.scaling
    r = factors.rank
    q_b, r_b = torch.linalg.qr(b)  # (out, k_b), (k_b, r)
    q_a, r_a = torch.linalg.qr(a.T)  # (in, k_a), (k_a, r)
    u_c, sigma, vh_c = torch.linalg.svd(r_b @ r_a.T, full_matrices=False)  # k = min(k_b, k_a)
    u, v = q_b @ u_c, q_a @ vh_c.T  # (out, k), (in, k)
    sign = torch.sign(u.pow(3).sum(dim=0))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    u, v = u * sign, v * sign
    k = sigma.numel()
    a_star = a.new_zeros(r, a.shape[1])
    b_star = b.new_zeros(b.shape[0], r)
    a_star[:k], b_star[:, :k] = v.T, u * sigma
    dtype = factors.A.dtype
    return LoraFactors(a_star.to(dtype), b_star.to(dtype), 1.0)


def canonicalize_adapter(adapter: LoraAdapter) -> LoraAdapter:
    """:func:`canonical_factors` of every module: one representative per ``GL(r)`` orbit."""
    return replace(
        adapter, modules={name: canonical_factors(f) for name, f in adapter.modules.items()}
    )


# ------------------------------------------------------------------------------ with a base model
def apply_adapter(
    spec: NetworkSpec,
    state_dict: Mapping[str, Tensor],
    adapter: LoraAdapter,
    *,
    base_name: str | None = None,
) -> dict[str, Tensor]:
    r"""The merged state dict :math:`W_m + \Delta W_m` for every adapted module ``m``.

    Args:
        spec, state_dict: the base model (not modified).
        adapter: the adapter; its modules must be ``linear`` layers of ``spec``.
        base_name: the base model's name; when given and the adapter records another
            ``base_model_name_or_path``, the adapter is refused.

    Raises:
        LoraError: naming the adapter and the base: another base model, a module the base does
            not have or that is not a linear layer, or a shape that does not match.
    """
    if base_name is not None and adapter.base_model not in (None, base_name):
        raise LoraError(
            f"{adapter.source}: adapter was trained on base model {adapter.base_model!r}, "
            f"not on {base_name!r}"
        )
    base = base_name or "the base model"
    merged = dict(state_dict)
    layers = {op.name: op for op in spec.layers}
    for key, delta in adapter.delta_state_dict().items():
        module = key.removesuffix(".weight")
        if module not in layers or layers[module].kind != "linear":
            raise LoraError(
                f"{adapter.source}: module {module!r} is not a linear layer of {base} "
                f"({spec.summary()}); its linear layers are {sorted(layers)[:8]}"
            )
        weight = state_dict[key]
        if tuple(delta.shape) != tuple(weight.shape):
            raise LoraError(
                f"{adapter.source}: module {module!r}: the adapter's update is "
                f"{list(delta.shape)} but {base} has {list(weight.shape)}"
            )
        merged[key] = weight + delta.to(weight)
    return merged


def adapter_models(
    adapter: LoraAdapter, *, canonical: bool = True
) -> dict[str, tuple[NetworkSpec, dict[str, Tensor]]]:
    r"""Each module's update as a model the encoder embeds: ``x ↦ B^\star (A^\star x)``.

    A two-layer, bias-free linear network ``in → r → out`` (identity activation) whose weights
    are the canonical factors (``canonical=True``, invariant to ``GL(r)``) or the raw factors
    with the scale folded into ``B``.
    """
    out = {}
    for name, f in adapter.modules.items():
        f = canonical_factors(f) if canonical else LoraFactors(f.A, f.B * f.scaling)
        spec = mlp_spec([int(f.A.shape[1]), f.rank, int(f.B.shape[0])], "identity", bias=False)
        out[name] = (spec, {"0.weight": f.A, "2.weight": f.B})
    return out
