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

**Tokens and attention** (a spec whose input has ``layout: "tokens"``). Ops act on the last
dimension of ``(B, T, features)`` tensors, so a group is one set of features shared by all
tokens. An ``embedding`` op is a link from its *index* group to a new group of ``embedding_dim``
stream neurons: the vocabulary (the token-id input's neurons) or a group of ``num_embeddings``
position neurons (input role, one per position); its weight ``(V, E)`` is stored transposed
against a Linear's (``LayerLink.transposed``). An ``attention`` op reading stream group ``s``
(``E`` neurons, ``H`` heads of ``d``) writes four groups: the head dimensions of the queries,
keys and values (``E`` neurons each, ``H`` blocks of ``d``; :attr:`NeuronGroup.head_dim` = d) and
its output (``E``). Its links: ``s → Q``, ``s → K``, ``s → V`` (rows of ``in_proj_weight``, biases
from ``in_proj_bias``) and ``V → output`` (``out_proj``); query dimension ``i`` is joined to key
dimension ``i`` by a parameter-free pairing edge (:attr:`Layout.pairings`), since the scores
are :math:`\sum_i q_i k_i`. Head-dimension groups are never permuted, rescaled or flipped
neuron-wise here (their true symmetries, head permutations and within-head :math:`GL(d)`, are
fixed by :func:`weightspace.attention.canonical_attention`); the stream they read and write is
permuted as one tie set with the residual adds and norms around it.
"""

from __future__ import annotations

from functools import lru_cache

from weightspace.errors import SpecError, UnsupportedLayerError
from weightspace.layout_types import (  # noqa: F401 (re-exported: weightspace.layout)
    _ODD,
    _POSITIVELY_HOMOGENEOUS,
    ROLE_HIDDEN,
    ROLE_INPUT,
    ROLE_OUTPUT,
    LayerLink,
    Layout,
    NeuronGroup,
    NormLink,
)
from weightspace.spec import (
    PARAMETRISED_KINDS,
    NetworkSpec,
    Op,
)

__all__ = ["NeuronGroup", "LayerLink", "NormLink", "Layout", "layout_of"]

# Edge kinds of attention and embedding links (weight, residual, LayerNorm, RMSNorm are 0-3, in
# weightspace.graph): the encoder's edge-kind table has a row for each.
EDGE_QUERY, EDGE_KEY, EDGE_VALUE, EDGE_ATTENTION_OUTPUT = 4, 5, 6, 7
EDGE_QUERY_KEY, EDGE_TOKEN_EMBEDDING, EDGE_POSITION_EMBEDDING = 8, 9, 10


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

    pairings: list[tuple[int, int]] = []
    tokens: dict[str, bool] = {}  # op name -> its output is (B, T, features)

    def add_link(op_name: str, source: int, target: int, **kwargs: object) -> None:
        links.append(LayerLink(op_name, len(links), source, target, 1, 1, **kwargs))  # type: ignore[arg-type]

    depth = 0
    for op in spec.ops:
        if op.kind != "input" and any(tokens.get(name, False) for name in op.inputs):
            _check_token_reader(op)
        if op.kind == "input":
            if spec.is_tokens:
                shape = spec.input_shape
                size = int(op.attrs["vocab_size"]) if len(shape) == 1 else int(shape[1])
            else:
                size = int(spec.input_shape[0])
            g = new_group(size, None, 0)
            groups[g].role = ROLE_INPUT
            group_of[op.name] = g
            flat[op.name] = len(spec.input_shape) == 1 or spec.is_tokens
            tokens[op.name] = spec.is_tokens
        elif op.kind == "embedding":
            width = int(op.attrs["embedding_dim"])
            if op.attrs["index"] == "token":
                source, kind = group_of[op.inputs[0]], EDGE_TOKEN_EMBEDDING
            else:
                source = new_group(int(op.attrs["num_embeddings"]), None, 0)
                groups[source].role = ROLE_INPUT
                kind = EDGE_POSITION_EMBEDDING
            depth += 1
            target = new_group(width, op.name, depth)
            add_link(op.name, source, target, transposed=True, edge_kind=kind)
            group_of[op.name], flat[op.name], tokens[op.name] = target, True, True
        elif op.kind == "attention":
            stream = group_of[op.inputs[0]]
            e, h = int(op.attrs["embed_dim"]), int(op.attrs["num_heads"])
            if groups[stream].size != e or not tokens.get(op.inputs[0], False):
                raise UnsupportedLayerError(
                    f"attention {op.name!r} has embed_dim={e} but reads "
                    f"{groups[stream].size} features"
                    + ("" if tokens.get(op.inputs[0], False) else " of a tensor without tokens")
                )
            depth += 1
            heads = []
            for i, kind in enumerate((EDGE_QUERY, EDGE_KEY, EDGE_VALUE)):
                g = new_group(e, op.name, depth)
                groups[g].head_dim = e // h
                groups[g].bias_key, groups[g].bias_start = f"{op.name}.in_proj_bias", i * e
                key = f"{op.name}.in_proj_weight"
                add_link(op.name, stream, g, weight_key=key, row_start=i * e, edge_kind=kind)
                heads.append(g)
            pairings.append((heads[0], heads[1]))
            depth += 1
            out = new_group(e, op.name, depth)
            groups[out].bias_key = f"{op.name}.out_proj.bias"
            key = f"{op.name}.out_proj.weight"
            add_link(op.name, heads[2], out, weight_key=key, edge_kind=EDGE_ATTENTION_OUTPUT)
            group_of[op.name], flat[op.name], tokens[op.name] = out, True, True
        elif op.kind == "token_pool":
            group_of[op.name], flat[op.name] = group_of[op.inputs[0]], True
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
            tokens[op.name] = all(tokens.get(name, False) for name in op.inputs)
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
        if op.kind in {"norm", "activation"} or op.kind in PARAMETRISED_KINDS:
            tokens[op.name] = tokens.get(op.inputs[0], False) if op.inputs else False

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
    return Layout(
        tuple(groups),
        tuple(links),
        tuple(residuals),
        tuple(offsets),
        tuple(norms),
        tuple(pairings),
    )


def _check_token_reader(op: Op) -> None:
    """Ops that may read a ``(B, T, features)`` tensor: those acting on the last dim."""
    if op.kind in {"conv1d", "conv2d", "pool", "adaptive_pool", "global_pool", "flatten"}:
        raise UnsupportedLayerError(
            f"op {op.name!r} ({op.kind}) reads a token tensor (batch, tokens, features); only "
            "linear, norm, activation, add, attention and token_pool ops may (pool the tokens "
            "with a token_pool op first)"
        )
