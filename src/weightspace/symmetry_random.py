"""Random function-preserving transforms (augmentations) and broken ones (negative controls).

Each draws the factors or permutations of :mod:`weightspace.symmetry_transforms` at random and
returns ``(state_dict, draws)``; :func:`random_symmetry` composes them in :data:`SYMMETRIES`
order; :func:`random_broken_permutation` is a permutation that is *not* a symmetry. Re-exported
by :mod:`weightspace.symmetry`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from weightspace.errors import SymmetryError
from weightspace.layout import ROLE_INPUT, layout_of
from weightspace.spec import NetworkSpec
from weightspace.symmetry_transforms import (
    GroupTensors,
    StateDict,
    _copy_checked,
    flip_signs,
    permute,
    permute_group,
    rescale,
)

__all__ = [
    "SYMMETRIES",
    "random_permutation",
    "random_rescale",
    "random_sign_flip",
    "random_symmetry",
    "random_broken_permutation",
]

#: Names of the random symmetry transforms, in the order :func:`random_symmetry` applies them.
SYMMETRIES: tuple[str, ...] = ("sign_flip", "rescale", "permutation")


def _generator_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _randperm(n: int, generator: torch.Generator | None) -> Tensor:
    return torch.randperm(n, generator=generator, device=_generator_device(generator)).cpu()


def random_permutation(
    spec: NetworkSpec,
    state_dict: Mapping[str, Tensor],
    generator: torch.Generator | None = None,
) -> tuple[StateDict, GroupTensors]:
    """Permute every permutable tie set by a uniformly random permutation (see :func:`permute`).

    Returns:
        ``(state_dict, perms)``; ``perms`` maps every group of every permutable tie set to its
        ``(size,)`` permutation (one tensor shared by the groups of a set). Input and output
        groups never appear.
    """
    layout = layout_of(spec)
    perms: GroupTensors = {}
    for members in layout.permutable_tie_sets():
        perm = _randperm(layout.groups[members[0]].size, generator)
        for g in members:
            perms[g] = perm
    return permute(spec, state_dict, perms), perms


def random_rescale(
    spec: NetworkSpec,
    state_dict: Mapping[str, Tensor],
    generator: torch.Generator | None = None,
    *,
    log_range: float = 1.0,
) -> tuple[StateDict, GroupTensors]:
    r"""Rescale every scalable group by :math:`c_i = e^{u_i}`, :math:`u_i \sim U[-r, r]`.

    Args:
        log_range: :math:`r`; factors lie in :math:`[e^{-r}, e^{r}]`.

    Returns:
        ``(state_dict, scales)``, scales as in :func:`rescale` (float64).
    """
    layout = layout_of(spec)
    scales: GroupTensors = {}
    for g in layout.scalable_groups():
        u = torch.rand(
            layout.groups[g].size,
            generator=generator,
            dtype=torch.float64,
            device=_generator_device(generator),
        )
        scales[g] = torch.exp((2 * u - 1) * log_range).cpu()
    return rescale(spec, state_dict, scales), scales


def random_sign_flip(
    spec: NetworkSpec,
    state_dict: Mapping[str, Tensor],
    generator: torch.Generator | None = None,
) -> tuple[StateDict, GroupTensors]:
    """Flip each neuron of every sign-flippable group with probability 1/2.

    Returns:
        ``(state_dict, signs)``, signs as in :func:`flip_signs` (float64, ±1).
    """
    layout = layout_of(spec)
    signs: GroupTensors = {}
    for g in layout.sign_flippable_groups():
        bits = torch.randint(
            0, 2, (layout.groups[g].size,), generator=generator, device=_generator_device(generator)
        )
        signs[g] = (2 * bits - 1).to(torch.float64).cpu()
    return flip_signs(spec, state_dict, signs), signs


_RANDOM: dict[str, Callable[..., tuple[StateDict, GroupTensors]]] = {
    "sign_flip": random_sign_flip,
    "rescale": random_rescale,
    "permutation": random_permutation,
}


def random_symmetry(
    spec: NetworkSpec,
    state_dict: Mapping[str, Tensor],
    generator: torch.Generator | None = None,
    *,
    transforms: Sequence[str] = SYMMETRIES,
    log_range: float = 1.0,
) -> tuple[StateDict, dict[str, GroupTensors]]:
    """Compose random sign flips, rescalings and permutations (in that order), as applicable.

    Args:
        transforms: a subset of :data:`SYMMETRIES`; always applied in :data:`SYMMETRIES` order.
        log_range: passed to :func:`random_rescale`.

    Returns:
        ``(state_dict, draws)``, ``draws[name]`` being what the named random transform returned.
    """
    unknown = [t for t in transforms if t not in _RANDOM]
    if unknown:
        raise SymmetryError(f"unknown symmetry transforms {unknown}; valid: {list(SYMMETRIES)}")
    state: Mapping[str, Tensor] = state_dict
    draws: dict[str, GroupTensors] = {}
    for name in SYMMETRIES:
        if name not in transforms:
            continue
        if name == "rescale":
            state, draws[name] = random_rescale(spec, state, generator, log_range=log_range)
        else:
            state, draws[name] = _RANDOM[name](spec, state, generator)
    return _copy_checked(spec, state), draws


def random_broken_permutation(
    spec: NetworkSpec,
    state_dict: Mapping[str, Tensor],
    generator: torch.Generator | None = None,
    *,
    kind: str = "unmatched",
) -> tuple[StateDict, GroupTensors]:
    """A permutation that is *not* a symmetry, for negative controls (never the identity).

    Args:
        kind: ``"unmatched"`` permutes the rows of the first hidden group with at least two
            neurons without the matching change to its readers; ``"input"`` permutes the input
            neurons (channels), i.e. the first layer's input columns.

    Returns:
        ``(state_dict, {group: perm})``.

    Raises:
        SymmetryError: no group of the requested kind has two or more neurons.
    """
    layout = layout_of(spec)
    if kind == "unmatched":
        candidates = [
            g.index for g in layout.groups if g.role != ROLE_INPUT and g.readers and g.size > 1
        ]
        if not candidates:
            raise SymmetryError("the network has no hidden group with two or more neurons")
        group, readers = candidates[0], False
    elif kind == "input":
        if layout.groups[0].size < 2:
            raise SymmetryError(
                f"the input has {layout.groups[0].size} neuron/channel; nothing to permute"
            )
        group, readers = 0, True
    else:
        raise SymmetryError(f"kind must be 'unmatched' or 'input', got {kind!r}")
    perm = _randperm(layout.groups[group].size, generator)
    if torch.equal(perm, torch.arange(perm.numel())):
        perm = perm.roll(1)
    state = permute_group(spec, state_dict, group, perm, rows=True, readers=readers)
    return state, {group: perm}
