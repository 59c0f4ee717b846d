"""The data of a :class:`Layout`: neuron groups, the layer and norm links between them, and the
symmetries read off them (:meth:`Layout.permutable_tie_sets`, :meth:`Layout.scalable_groups`,
:meth:`Layout.sign_flippable_groups`). The module docstring of :mod:`weightspace.layout` defines
groups, ties and these symmetries; :func:`weightspace.layout.layout_of` builds a layout."""

from __future__ import annotations

from dataclasses import dataclass, field

from weightspace.spec import ODD_ACTIVATIONS, POSITIVELY_HOMOGENEOUS_ACTIVATIONS

__all__ = ["NeuronGroup", "LayerLink", "NormLink", "Layout"]

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
        head_dim: for the query/key/value dimensions of an attention, the head width ``d``
            (neurons ``h*d : (h+1)*d`` are head ``h``); 0 otherwise.
        bias_key: the state-dict key of the group's bias when it is not ``{producer}.bias``,
            with ``bias_start``: the group's bias is ``state[bias_key][bias_start:][:size]``.
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
    head_dim: int = 0
    bias_key: str | None = None
    bias_start: int = 0

    def bias_name(self) -> str | None:
        """The state-dict key holding this group's bias (it may be absent from a state dict)."""
        if self.bias_key is not None:
            return self.bias_key
        return None if self.producer is None else f"{self.producer}.bias"

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
    weight_key: str | None = None  # default f"{name}.weight"
    row_start: int = 0  # the link's weight is rows row_start:row_start + target.size of it
    transposed: bool = False  # stored (in, out), as nn.Embedding's table
    edge_kind: int = 0

    @property
    def edge_features(self) -> int:
        return self.spatial * self.kernel_numel

    @property
    def key(self) -> str:
        """The state-dict key of the tensor holding this link's weight."""
        return self.weight_key or f"{self.name}.weight"

    @property
    def is_plain(self) -> bool:
        """A layer's own ``{name}.weight`` of shape ``(out, in, ...)`` (linear, conv)."""
        return self.weight_key is None and not self.transposed and self.row_start == 0


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
    pairings: tuple[tuple[int, int], ...] = ()  # (query, key) groups: diagonal edges, last

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
            and not any(self.groups[g].head_dim for g in members)
        ]

    def writer(self, group: int) -> LayerLink | None:
        """The link that writes ``group`` (``None`` for inputs and norm outputs)."""
        for link in self.links:
            if link.target == group:
                return link
        return None

    def is_free(self, group: int) -> bool:
        """Hidden, written by a layer, and not tied to another group by a residual add."""
        g = self.groups[group]
        return (
            g.role == ROLE_HIDDEN
            and g.producer is not None
            and not g.head_dim
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
