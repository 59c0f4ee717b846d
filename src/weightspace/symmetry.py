r"""Function-preserving transforms of a network's weights, and exact canonical forms.

A transform of a neuron group is a monomial change of basis (new neuron :math:`i` is old neuron
:math:`\pi(i)` times :math:`d_i`) that rewrites the layer producing the group and every layer
reading it; it keeps the function for permutations of residual tie sets, positive rescalings of
positively homogeneous groups and sign flips of odd ones. The parts, by concept:

* :mod:`weightspace.symmetry_transforms`: the math and the deterministic transforms
  (:func:`permute`, :func:`rescale`, :func:`flip_signs`, :func:`permute_group`);
* :mod:`weightspace.symmetry_random`: random transforms (:func:`random_symmetry` and the others,
  :data:`SYMMETRIES`) and :func:`random_broken_permutation` for negative controls;
* :mod:`weightspace.symmetry_canonical`: the canonical forms (:func:`canonicalize_scale`,
  :func:`canonicalize_sign`, :func:`canonicalize`);
* :mod:`weightspace.symmetry_overflow`: :func:`canonical_overflow`, why a canonical form is not
  finite.

Their names are re-exported here. This module lifts any of them, which work on ``(spec,
state_dict)`` pairs and return new state dicts (inputs are never modified), to ``nn.Module``
(:func:`transform_module`) and :class:`~weightspace.graph.NeuralGraph` (:func:`transform_graph`).

Example::

    sd2, perms = random_permutation(spec, sd, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(to_module(spec, sd)(x), to_module(spec, sd2)(x), atol=1e-6)
    canonicalize(spec, random_rescale(spec, sd)[0])  # == canonicalize(spec, sd)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from weightspace.errors import SymmetryError
from weightspace.graph import NeuralGraph, to_graph, to_state_dict
from weightspace.module import SpecModule, to_module
from weightspace.spec import NetworkSpec
from weightspace.symmetry_canonical import (
    canonicalize,
    canonicalize_attention,  # noqa: F401  (a public name of this module, not in __all__)
    canonicalize_scale,
    canonicalize_sign,
)
from weightspace.symmetry_overflow import (
    canonical_overflow,
    first_canonical_overflow,
    overflow_named_by_file,
)
from weightspace.symmetry_random import (
    SYMMETRIES,
    random_broken_permutation,
    random_permutation,
    random_rescale,
    random_sign_flip,
    random_symmetry,
)
from weightspace.symmetry_transforms import (
    GroupTensors,
    StateDict,
    _copy_checked,  # noqa: F401  (the old private path)
    _transform_group,  # noqa: F401  (the old private path; tests import it)
    flip_signs,
    permute,
    permute_group,
    rescale,
)

__all__ = [
    "SYMMETRIES",
    "SymmetryError",
    "permute",
    "rescale",
    "flip_signs",
    "permute_group",
    "random_permutation",
    "random_rescale",
    "random_sign_flip",
    "random_symmetry",
    "random_broken_permutation",
    "canonicalize_scale",
    "canonicalize_sign",
    "canonicalize",
    "canonical_overflow",
    "first_canonical_overflow",
    "overflow_named_by_file",
    "spec_and_state_dict",
    "transform_module",
    "transform_graph",
    "permute_graph",
    "random_symmetry_graph",
    "canonicalize_graph",
]


# ---------------------------------------------------------------------------------------------
# modules and graphs
# ---------------------------------------------------------------------------------------------
def spec_and_state_dict(
    module: nn.Module, example_input: Tensor | None = None
) -> tuple[NetworkSpec, StateDict]:
    """The ``(spec, state_dict)`` of a module: read off a :class:`SpecModule`, else traced.

    Any other module goes through :func:`weightspace.ingest.from_module` (``torch.fx`` trace,
    BatchNorm folded), which needs ``example_input``.
    """
    if isinstance(module, SpecModule):
        return module.spec, {k: v.detach() for k, v in module.state_dict().items()}
    if example_input is None:
        raise SymmetryError(
            f"{type(module).__name__} is not a SpecModule; pass example_input=... so that it can "
            "be traced into a NetworkSpec"
        )
    from weightspace.ingest import from_module  # ingest imports torch.fx machinery: load lazily

    spec, state = from_module(module, example_input)
    return spec, dict(state)


def _swap_state(result: Any, wrap: Callable[[StateDict], Any]) -> Any:
    if isinstance(result, tuple):
        return (wrap(result[0]), *result[1:])
    return wrap(result)


def transform_module(
    module: nn.Module,
    fn: Callable[..., Any],
    *args: Any,
    example_input: Tensor | None = None,
    **kwargs: Any,
) -> Any:
    """Apply a state-dict transform ``fn(spec, state_dict, *args, **kwargs)`` to a module.

    Returns what ``fn`` returns with the state dict replaced by a new :class:`SpecModule` (in eval
    mode, the weights' dtype and device): ``transform_module(m, random_permutation, gen)`` gives
    ``(module, perms)``, ``transform_module(m, canonicalize)`` a module. The input module is not
    modified; a non-:class:`SpecModule` is traced first (:func:`spec_and_state_dict`), with its
    BatchNorm folded, so the result computes its eval-mode function.
    """
    spec, state = spec_and_state_dict(module, example_input)
    return _swap_state(fn(spec, state, *args, **kwargs), lambda sd: to_module(spec, sd))


def transform_graph(graph: NeuralGraph, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Apply a state-dict transform ``fn(spec, state_dict, *args, **kwargs)`` to a graph.

    ``graph → to_state_dict → fn → to_graph`` with the same spec, dtype and edge feature width.
    Returns what ``fn`` returns with the state dict replaced by the new :class:`NeuralGraph`.
    Only the attributes :func:`~weightspace.graph.to_graph` makes are kept; attach labels again.
    """
    spec = graph.spec
    state = to_state_dict(graph)

    def wrap(sd: StateDict) -> NeuralGraph:
        return to_graph(spec, sd, edge_features=graph.edge_features, check=False)

    return _swap_state(fn(spec, state, *args, **kwargs), wrap)


def permute_graph(graph: NeuralGraph, perms: Mapping[int, Tensor]) -> NeuralGraph:
    """:func:`permute` on a graph: nodes of each permuted group are reordered, edges follow."""
    return transform_graph(graph, permute, perms)


def random_symmetry_graph(
    graph: NeuralGraph,
    generator: torch.Generator | None = None,
    *,
    transforms: Sequence[str] = SYMMETRIES,
    log_range: float = 1.0,
) -> tuple[NeuralGraph, dict[str, GroupTensors]]:
    """:func:`random_symmetry` on a graph."""
    return transform_graph(
        graph, random_symmetry, generator, transforms=transforms, log_range=log_range
    )


def canonicalize_graph(graph: NeuralGraph) -> NeuralGraph:
    """:func:`canonicalize` on a graph."""
    return transform_graph(graph, canonicalize)
