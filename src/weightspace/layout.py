r"""Neuron groups: which neurons a spec has, who writes them, who reads them, what they may undergo.

A *group* is the set of neurons (features, or channels of a conv) written by one source: the
input, or one parametrised layer. Non-parametric ops (activations, pooling, flatten) keep the
group of their input. A residual ``add`` ties its inputs' groups: the result keeps the group of
its most recently created input (the *primary*), and the others are linked to it by identity
edges in the graph and must be permuted together with it.

For each parametrised layer the layout records the group it reads, the group it writes and the
*spatial factor* ``S``: a linear layer reading a flattened ``(C, *spatial)`` tensor has
``in_features = C * S``, so its weight ``(out, C * S)`` is viewed as ``(out, C, S)`` and each
(channel → neuron) pair is one edge with ``S`` features, exactly like a conv kernel.

The symmetry group acting on a spec is read off this layout:

* a *tie set* (groups joined by residual adds) may be permuted, with one permutation for all its
  groups, unless it contains input or output neurons;
* a group that is not tied may be rescaled neuron-wise by ``c > 0`` when everything applied to
  it before the next layer is positively homogeneous (ReLU, LeakyReLU, identity, pooling);
* it may be sign-flipped when everything applied to it is odd (tanh, sine, identity, average
  pooling).

A ``norm`` op (LayerNorm, RMSNorm) writes a new group of the same size: the normalised neurons,
:math:`y = \gamma \odot \mathrm{norm}(x) + \beta`. It ties that group to the group it reads for
permutations only (:math:`\mathrm{norm}(Px) = P\,\mathrm{norm}(x)`, so both must move
together), and marks the group it reads as *normalised*: per-neuron rescaling or sign flips of a
normalised group change the function (the mean and the norm mix every neuron), so it is never
scalable or flippable. The normalised group itself is: scaling neuron :math:`i` by :math:`c_i`
through :math:`\gamma_i, \beta_i` and dividing its readers' columns by :math:`c_i` keeps the
function whenever the group's activations allow it (see :meth:`Layout.scalable_groups`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from weightspace.errors import SpecError, UnsupportedLayerError
from weightspace.spec import (
    ODD_ACTIVATIONS,
    POSITIVELY_HOMOGENEOUS_ACTIVATIONS,
    NetworkSpec,
)

__all__ = ["NeuronGroup", "LayerLink", "NormLink", "Layout", "layout_of"]

_POSITIVELY_HOMOGENEOUS = POSITIVELY_HOMOGENEOUS_ACTIVATIONS
_ODD = ODD_ACTIVATIONS

ROLE_INPUT, ROLE_HIDDEN, ROLE_OUTPUT = 0, 1, 2


@dataclass
class NeuronGroup:
    """Neurons written by one source.

    Attributes:
        index: position in :attr:`Layout.groups` (creation order, which is topological).
        size: number of neurons (channels).
        producer: name of the parametrised op that writes it, ``None`` for the input.
        depth: 0 for the input, ``i + 1`` for the output of the ``i``-th layer.
        role: 0 input, 1 hidden, 2 output.
        activations: activation functions applied to the group's values.
        pools: pooling modes (``avg``/``max``) applied to the group's values.
        tie: index of the tie set (groups joined by residual adds).
        readers: names of the parametrised ops that read the group.
        normalised: whether a ``norm`` op reads the group (then no rescaling or sign flip).
    """

    index: int
    size: int
    producer: str | None
    depth: int
    role: int = ROLE_HIDDEN
    activations: set[str] = field(default_factory=set)
    pools: set[str] = field(default_factory=set)
    tie: int = -1
    readers: list[str] = field(default_factory=list)
    normalised: bool = False

    @property
    def activation(self) -> str:
        """The activation applied to the group (``identity`` if none; if several, the first by name)."""
        return sorted(self.activations)[0] if self.activations else "identity"


@dataclass(frozen=True)
class LayerLink:
    """A parametrised layer as an edge set between two groups.

    ``weight.view(out, source.size, spatial * kernel_numel)[o, i]`` is the feature vector of
    the edge from neuron ``i`` of ``source`` to neuron ``o`` of ``target``.
    """

    name: str
    index: int
    source: int
    target: int
    spatial: int
    kernel_numel: int

    @property
    def edge_features(self) -> int:
        return self.spatial * self.kernel_numel


@dataclass(frozen=True)
class NormLink:
    r"""A ``norm`` op as diagonal edges ``i → i`` from the group it reads to the group it writes.

    The edge of neuron ``i`` carries :math:`\gamma_i` (1 without an affine weight); the written
    neuron's bias is :math:`\beta_i`. ``mode`` is ``layer`` or ``rms``.
    """

    name: str
    index: int
    source: int
    target: int
    mode: str
    affine: bool


@dataclass(frozen=True)
class Layout:
    """Neuron groups, layer links, residual ties and norms of a :class:`NetworkSpec`."""

    groups: tuple[NeuronGroup, ...]
    links: tuple[LayerLink, ...]
    residuals: tuple[tuple[int, int], ...]  # (source group, primary group) identity edges
    offsets: tuple[int, ...]  # first node index of each group
    norms: tuple[NormLink, ...] = ()  # diagonal edges after the residual ones

    @property
    def num_nodes(self) -> int:
        return self.offsets[-1] + self.groups[-1].size if self.groups else 0

    @property
    def max_edge_features(self) -> int:
        return max((link.edge_features for link in self.links), default=1)

    def link(self, name: str) -> LayerLink:
        for link in self.links:
            if link.name == name:
                return link
        raise KeyError(name)

    def tie_sets(self) -> dict[int, list[int]]:
        sets: dict[int, list[int]] = {}
        for g in self.groups:
            sets.setdefault(g.tie, []).append(g.index)
        return sets

    def permutable_tie_sets(self) -> list[list[int]]:
        """Tie sets of hidden groups only: each may be permuted by one shared permutation."""
        return [
            members
            for members in self.tie_sets().values()
            if all(self.groups[g].role == ROLE_HIDDEN for g in members)
            and all(self.groups[g].producer is not None for g in members)
        ]

    def is_free(self, group: int) -> bool:
        """Hidden, written by a layer, and not tied to another group by a residual add."""
        g = self.groups[group]
        return (
            g.role == ROLE_HIDDEN
            and g.producer is not None
            and len(self.tie_sets()[g.tie]) == 1
            and bool(g.readers)
        )

    def norm_link(self, name: str) -> NormLink:
        for norm in self.norms:
            if norm.name == name:
                return norm
        raise KeyError(name)

    def is_affine_output(self, group: int) -> bool:
        r"""Written by a norm with an affine weight, hidden, read by layers only (no norm, no
        residual add): neuron ``i`` may then be rescaled through :math:`\gamma_i, \beta_i`."""
        g = self.groups[group]
        if g.role != ROLE_HIDDEN or not g.readers or g.normalised:
            return False
        if any(group in pair for pair in self.residuals):
            return False
        return any(n.target == group and n.affine for n in self.norms)

    def _transformable(self, group: int) -> bool:
        return self.is_free(group) or (bool(self.norms) and self.is_affine_output(group))

    def scalable_groups(self) -> list[int]:
        """Free (or affine-norm-written) groups whose neurons admit positive rescaling
        (in × c, out × 1/c)."""
        return [
            g.index
            for g in self.groups
            if self._transformable(g.index)
            and (g.activations or {"identity"}) <= _POSITIVELY_HOMOGENEOUS
        ]

    def sign_flippable_groups(self) -> list[int]:
        """Free (or affine-norm-written) groups whose neurons admit sign flips
        (in × −1, out × −1)."""
        return [
            g.index
            for g in self.groups
            if self._transformable(g.index)
            and (g.activations or {"identity"}) <= _ODD
            and "max" not in g.pools
        ]


@lru_cache(maxsize=256)
def layout_of(spec: NetworkSpec) -> Layout:
    """Compute the :class:`Layout` of ``spec`` (cached; specs are immutable)."""
    groups: list[NeuronGroup] = []
    links: list[LayerLink] = []
    residuals: list[tuple[int, int]] = []
    norms: list[NormLink] = []
    group_of: dict[str, int] = {}
    flat: dict[str, bool] = {}  # op name -> its output is (B, features), no spatial dims
    parent = {}  # union-find over groups for residual ties

    def find(g: int) -> int:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    def new_group(size: int, producer: str | None, depth: int) -> int:
        groups.append(NeuronGroup(index=len(groups), size=size, producer=producer, depth=depth))
        parent[len(groups) - 1] = len(groups) - 1
        return len(groups) - 1

    depth = 0
    for op in spec.ops:
        if op.kind == "input":
            g = new_group(int(spec.input_shape[0]), None, 0)
            groups[g].role = ROLE_INPUT
            group_of[op.name] = g
            flat[op.name] = len(spec.input_shape) == 1
        elif op.kind == "norm":
            source = group_of[op.inputs[0]]
            size = int(op.attrs["normalized_size"])
            if not flat[op.inputs[0]] or size != groups[source].size:
                raise UnsupportedLayerError(
                    f"norm {op.name!r} normalises {size} values, but it reads "
                    f"{groups[source].size} neurons/channels"
                    + ("" if flat[op.inputs[0]] else " with spatial dimensions")
                    + "; only a norm over the neurons of a (batch, features) tensor is supported"
                )
            depth += 1
            target = new_group(size, op.name, depth)
            groups[source].normalised = True
            affine = bool(op.attrs.get("affine", True))
            norms.append(NormLink(op.name, len(norms), source, target, op.attrs["mode"], affine))
            parent[find(source)] = find(target)
            group_of[op.name] = target
            flat[op.name] = True
        elif op.is_parametrised:
            if len(op.inputs) != 1:
                raise UnsupportedLayerError(f"layer {op.name!r} must read exactly one tensor")
            source = group_of[op.inputs[0]]
            c = groups[source].size
            if op.kind == "linear":
                if op.in_size % c != 0:
                    raise SpecError(
                        f"layer {op.name!r}: in_features={op.in_size} is not a multiple of the "
                        f"{c} neurons/channels it reads"
                    )
                spatial = op.in_size // c
            else:
                if op.in_size != c:
                    raise SpecError(
                        f"layer {op.name!r}: in_channels={op.in_size} but it reads {c} channels"
                    )
                spatial = 1
            depth += 1
            target = new_group(op.out_size, op.name, depth)
            groups[source].readers.append(op.name)
            links.append(LayerLink(op.name, len(links), source, target, spatial, op.kernel_numel))
            group_of[op.name] = target
            flat[op.name] = op.kind == "linear"
        elif op.kind == "add":
            members = sorted({group_of[name] for name in op.inputs})
            if len(members) < 2:
                raise UnsupportedLayerError(
                    f"op {op.name!r} adds a tensor to itself; only residual additions of "
                    "different tensors are supported"
                )
            sizes = {groups[m].size for m in members}
            if len(sizes) != 1:
                raise SpecError(f"op {op.name!r} adds tensors with different channel counts")
            primary = members[-1]
            for other in members[:-1]:
                residuals.append((other, primary))
                parent[find(other)] = find(primary)
            group_of[op.name] = primary
            flat[op.name] = all(flat[name] for name in op.inputs)
        else:
            g = group_of[op.inputs[0]]
            if op.kind == "activation":
                groups[g].activations.add(op.attrs["function"])
            elif op.kind in {"pool", "adaptive_pool", "global_pool"}:
                groups[g].pools.add(op.attrs["mode"])
            group_of[op.name] = g
            flat[op.name] = op.kind in {"flatten", "global_pool"} or (
                op.kind in {"activation"} and flat[op.inputs[0]]
            )

    output_group = group_of[spec.output.name]
    if groups[output_group].producer is None:
        raise SpecError("the output must be written by a layer")
    groups[output_group].role = ROLE_OUTPUT
    roots: dict[int, int] = {}
    for g in groups:
        g.tie = roots.setdefault(find(g.index), len(roots))
    offsets, total = [], 0
    for g in groups:
        offsets.append(total)
        total += g.size
    return Layout(tuple(groups), tuple(links), tuple(residuals), tuple(offsets), tuple(norms))
