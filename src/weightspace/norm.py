r"""LayerNorm and RMSNorm: their ``norm`` spec op, graph form and symmetries.

For a hidden vector :math:`x \in \mathbb{R}^C` (one sample of a ``(B, C)`` tensor):

.. math::
    \mathrm{LN}(x) = \gamma \odot \frac{x - \mu(x)\mathbf{1}}{\sqrt{\sigma^2(x) + \varepsilon}}
    + \beta, \qquad
    \mathrm{RMS}(x) = \gamma \odot \frac{x}{\sqrt{\tfrac{1}{C}\lVert x \rVert^2 + \varepsilon}}

with :math:`\mu, \sigma^2` the mean and variance over the :math:`C` neurons.

**Graph form.** A norm writes a new group of :math:`C` *normalised* neurons. Neuron :math:`i` of
the group it reads is joined to normalised neuron :math:`i` by one edge carrying
:math:`\gamma_i` (edge kind 2 for LayerNorm, 3 for RMSNorm; 1 when there is no affine weight);
the normalised neuron's bias is :math:`\beta_i`. So the affine part sits exactly where a linear
layer's weight and bias would (edge and node features), the parameter-free normalisation is
named by the edge kind, and ``to_state_dict`` reads :math:`\gamma, \beta` back bit for bit. A
diagonal edge set (not a complete bipartite block) is what Graph Metanetworks (Lim et al., 2023)
use for per-neuron parameters, and it keeps the node feature width of every other graph.

**Symmetries.**

* Permutations: :math:`\mathrm{LN}(Px;\ \gamma, \beta) = P\,\mathrm{LN}(x;\ P^{-1}\gamma,\
  P^{-1}\beta)`, so the read group and the normalised group are permuted together (one tie set
  in :func:`weightspace.layout.layout_of`), and with them any residual stream they belong to.
* Per-neuron rescaling or sign flips of the *read* group are not symmetries:
  :math:`\mathrm{LN}(D x) \ne D\,\mathrm{LN}(x)` for a non-scalar diagonal :math:`D`, because
  :math:`\mu` and :math:`\sigma` mix all neurons. The symmetry tools refuse them
  (:class:`~weightspace.errors.SymmetryError`) and canonicalisation skips those groups.
* The *normalised* group is free again when the norm is affine and only layers read it:
  :math:`c_i\gamma_i, c_i\beta_i` with the readers' column :math:`i` divided by :math:`c_i` keeps
  the function for :math:`c_i > 0` (homogeneous activations) or :math:`c_i = \pm 1` (odd ones).
* A global scale of the read group, :math:`\mathrm{LN}(cx) = \mathrm{LN}(x)`, holds only up to
  :math:`\varepsilon` and is not used.
"""

from __future__ import annotations

from torch import Tensor, nn

from weightspace.errors import UnsupportedLayerError
from weightspace.spec import Op

__all__ = ["NORM_MODULES", "norm_op", "norm_weights"]

#: Module types read as a ``norm`` op.
NORM_MODULES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.RMSNorm)


def norm_op(name: str, module: nn.Module, source: str) -> Op:
    """The ``norm`` op of an ``nn.LayerNorm`` / ``nn.RMSNorm`` reading the op ``source``.

    Raises:
        UnsupportedLayerError: the norm is over more than the last dimension.
    """
    shape = tuple(module.normalized_shape)
    kind = type(module).__name__
    if len(shape) != 1:
        raise UnsupportedLayerError(
            f"{kind} {name!r} normalises over {list(shape)}; only a norm over the last dimension "
            "(one layer's neurons) is supported"
        )
    affine = bool(module.elementwise_affine)
    attrs: dict = {
        "mode": "layer" if isinstance(module, nn.LayerNorm) else "rms",
        "normalized_size": int(shape[0]),
        "eps": None if module.eps is None else float(module.eps),
        "affine": affine,
    }
    if isinstance(module, nn.LayerNorm):
        attrs["bias"] = affine and module.bias is not None
    return Op(name, "norm", (source,), attrs)


def norm_weights(name: str, module: nn.Module) -> dict[str, Tensor]:
    """The affine parameters of a norm module as state-dict entries (detached clones)."""
    out: dict[str, Tensor] = {}
    for key in ("weight", "bias"):
        value = getattr(module, key, None)
        if isinstance(value, Tensor):
            out[f"{name}.{key}"] = value.detach().clone()
    return out
