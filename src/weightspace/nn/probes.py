r"""The encoder's probe branch: learned inputs, run through each model's own forward.

A model :math:`f_\theta` is a function; every function-preserving transform :math:`T` of its
weights (hidden-neuron permutations, positive rescalings around ReLU, sign flips around tanh,
joint flips of tied residual groups, and any other symmetry no canonical form covers) satisfies
:math:`f_{T\theta}(x) = f_\theta(x)` for every input :math:`x`. So for any probe inputs
:math:`X = (x_1, \dots, x_P)`

.. math::
    o(\theta) = \big(\log\operatorname{softmax} f_\theta(x_p)\big)_{p=1}^{P}
    \in \mathbb{R}^{P \times C}

is invariant to all of them *by construction*, up to floating-point rounding, and so is any
function :math:`g(o(\theta))` of it (:class:`ProbeEncoder`). What the probes cannot see —
weight norms, dead neurons, training dynamics — the graph branch of the encoder still sees.

The probes are learned, ProbeGen style (Kahana et al., ICLR 2025): per input domain :math:`D`
(an input shape), :math:`P` latent codes :math:`u_p \in \mathbb{R}^k` pass through a shared
*deep linear* generator

.. math::
    x_p = W_3 W_2 W_1 u_p + b, \qquad W_1 \in \mathbb{R}^{h\times k},\
    W_2 \in \mathbb{R}^{h\times h},\ W_3 \in \mathbb{R}^{|D|\times h}

(no nonlinearity: the product is linear in :math:`u_p`, but the factorisation shares structure
between probes and regularises them), reshaped to the domain's input shape.

:func:`probe_forward` runs a batch of models on the probes: architectures that differ only in
hidden widths are grouped into padded buckets (:mod:`weightspace.nn.padded`: zero-padding a
hidden width preserves the function exactly), each bucket's weights are read out of the graph
tensors in one vectorised gather per layer (so augmented views — permuted, noised, pruned —
work unchanged), zero-padded, stacked, and run through :func:`torch.func.functional_call` of a
:class:`~weightspace.module.SpecModule` template under :func:`torch.func.vmap`: one call per
bucket, no Python loop over models or over architectures of a bucket. Specs made of linear and
convolution layers, activations, adds and pools skip ``vmap``: :mod:`weightspace.nn.probe_ops`
runs them as one batched matrix product per layer (per kernel entry for a convolution) for all
models of the bucket, the same function without ``vmap``'s grouped convolutions.
Gradients reach the probes (the generator), never the model weights (they are detached).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from weightspace.nn.batch import GraphBank, GraphBatch
from weightspace.nn.padded import PaddedBucket, gather_padded_state, padding_plan
from weightspace.nn.probe_domains import ProbeError, _domain_shape, domain_key
from weightspace.nn.probe_encoder import ProbeEncoder
from weightspace.nn.probe_generator import ProbeGenerator
from weightspace.nn.probe_ops import stacked_forward, supports
from weightspace.spec import NetworkSpec

__all__ = [
    "ProbeError",
    "ProbeOutputs",
    "ProbeGenerator",
    "ProbeEncoder",
    "domain_key",
    "is_runnable",
    "probe_forward",
    "stacked_state_dict",
]

# ------------------------------------------------------------------------------ templates
_TEMPLATES: dict[NetworkSpec, nn.Module | None] = {}
_FAILURES: dict[NetworkSpec, str] = {}


def _template(spec: NetworkSpec) -> nn.Module | None:
    """A :class:`~weightspace.module.SpecModule` of ``spec`` whose parameters are replaced by
    ``functional_call`` (cached per spec); ``None`` when the spec cannot be run (the reason is
    in ``_FAILURES``)."""
    if spec not in _TEMPLATES:
        from weightspace.module import to_module

        try:
            with torch.device("meta"):
                module = to_module(spec)
        except Exception as exc:  # any spec the interpreter cannot build is "not runnable"
            _FAILURES[spec] = f"{type(exc).__name__}: {exc}"[:200]
            module = None
        _TEMPLATES[spec] = module
    return _TEMPLATES[spec]


def is_runnable(spec: NetworkSpec) -> bool:
    """Whether the spec has a forward this package can run: it builds as a
    :class:`~weightspace.module.SpecModule` and maps a zero input ``(1, *input_shape)`` to
    finite ``(1, C)`` outputs."""
    template = _template(spec)
    if template is None:
        return False
    from torch.func import functional_call

    params = {k: torch.zeros(s) for k, s in spec.param_shapes().items()}
    try:
        with torch.no_grad():
            out = functional_call(template, params, (torch.zeros(1, *spec.input_shape),))
    except Exception as exc:
        _FAILURES[spec] = f"{type(exc).__name__}: {exc}"[:200]
        return False
    return out.dim() == 2 and bool(torch.isfinite(out).all())


# ------------------------------------------------------------------------------ weights
def _pointers(index: Tensor, size: int) -> Tensor:
    """Start of each graph's block in a tensor grouped by graph (``index`` sorted)."""
    counts = torch.bincount(index, minlength=size)
    return torch.cumsum(counts, 0) - counts


def stacked_state_dict(
    batch: GraphBatch,
    members: Tensor,
    spec: NetworkSpec,
    node_ptr: Tensor | None = None,
    edge_ptr: Tensor | None = None,
) -> dict[str, Tensor]:
    r"""The state dicts of the graphs ``members`` (all of architecture ``spec``) of ``batch``,
    stacked: ``{key: (G, *shape)}``; a vectorised :func:`~weightspace.graph.to_state_dict`.

    Each graph's nodes and edges are contiguous in the batch, edges in
    :func:`~weightspace.graph.to_graph` order (true of :meth:`GraphBank.select` and of every
    augmentation: they relabel nodes but never reorder edges). The edge :math:`i \to o` of layer
    :math:`l` of graph :math:`g` sits at ``edge_ptr[g] + start_l + k``; its endpoints, read from
    ``edge_index``, place its features at :math:`W_g[o, i]`, so permuted views give the
    correspondingly permuted weights, and biases are read from the (permuted) node features.
    (:func:`~weightspace.nn.padded.gather_padded_state` with a bucket of one architecture.)

    Args:
        node_ptr, edge_ptr: ``(B,)`` first node / edge of each graph (computed if not given).
    """
    b = batch.num_graphs
    device = batch.edge_attr.device
    node_ptr = _pointers(batch.batch, b) if node_ptr is None else node_ptr
    edge_ptr = _pointers(batch.edge_batch, b) if edge_ptr is None else edge_ptr
    members = members.to(device)
    rows = torch.zeros_like(members)
    bucket = padding_plan((spec,)).buckets[0]
    try:
        return gather_padded_state(
            batch, members, rows, bucket, node_ptr.to(device), edge_ptr.to(device)
        )
    except ValueError as exc:
        raise ProbeError(str(exc)) from None


# ------------------------------------------------------------------------------ forward
@dataclass
class ProbeOutputs:
    """What :func:`probe_forward` returns for ``B`` models, ``P`` probes, ``C`` classes."""

    log_probs: Tensor  # (B, P, C) log-softmax outputs (raw for one-output models); 0 on padded
    # classes and unrunnable rows
    class_mask: Tensor  # (B, C) bool: the model's real classes
    runnable: Tensor  # (B,) bool: the forward ran and every output is finite
    reasons: dict[int, str]  # why rows were not runnable: spec table index -> reason


Probes = Mapping[str, Tensor] | Callable[[str], Tensor]


def _as_graph_batch(graphs: GraphBatch | Sequence | object) -> GraphBatch:
    if isinstance(graphs, GraphBatch):
        return graphs
    if hasattr(graphs, "to_data_list"):  # a PyG Batch
        graphs = graphs.to_data_list()
    bank = GraphBank(list(graphs))
    return bank.select(torch.arange(len(bank)))


def _spec_groups(batch: GraphBatch) -> tuple[Tensor, tuple[NetworkSpec, ...]]:
    if batch.spec_ids is not None and batch.spec_table:
        return batch.spec_ids.cpu(), batch.spec_table
    if isinstance(batch.spec, NetworkSpec):
        return torch.zeros(batch.num_graphs, dtype=torch.long), (batch.spec,)
    raise ProbeError(
        "this batch does not say which architecture each graph has; build it with "
        "GraphBank.select (or pass a list of NeuralGraphs)"
    )


def probe_forward(
    graphs: GraphBatch | Sequence,
    probes: Probes,
    classes: int,
    *,
    domains: Sequence[str] | None = None,
) -> ProbeOutputs:
    r"""Run every model of a batch on the probes of its input domain.

    Args:
        graphs: a :class:`~weightspace.nn.batch.GraphBatch` from :meth:`GraphBank.select`
            (augmented views included), a list of :class:`~weightspace.graph.NeuralGraph` or a
            PyG ``Batch``.
        probes: domain key (:func:`domain_key`) → probes ``(P, *input_shape)``, as a mapping or
            a callable (e.g. a :class:`ProbeGenerator`).
        classes: pad the outputs to this many classes.
        domains: the accepted domain keys (default: any).

    Returns:
        :class:`ProbeOutputs`. Per padded bucket one ``vmap`` of ``functional_call`` over
        the stacked (detached) weights; a bucket whose forward raises is retried architecture
        by architecture; an architecture whose forward raises, or whose spec cannot be run,
        is marked not runnable, as is each model with a non-finite output. Those rows are zero
        and never send a gradient to the probes.

    Raises:
        ProbeError: a model's input domain is not in ``domains``, or it has more than
            ``classes`` outputs.
    """
    from weightspace.input_domains import resolve_domain  # free input sizes (global pooling)

    batch = _as_graph_batch(graphs)
    spec_ids, table = _spec_groups(batch)
    b = batch.num_graphs
    dtype, device = batch.edge_attr.dtype, batch.edge_attr.device
    get = probes if callable(probes) else probes.__getitem__
    present = torch.unique(spec_ids).tolist()
    outputs_count = torch.zeros(len(table), dtype=torch.long)
    keys: dict[int, str] = {}
    for spec_id in present:  # checks per architecture: Python on a few integers, no tensors
        spec = table[spec_id]
        keys[spec_id] = key = resolve_domain(spec, domains)
        if domains is not None and key not in domains:
            raise ProbeError(
                f"a model ({spec.summary()}) takes inputs of shape {list(spec.input_shape)}, but "
                f"this encoder's probes are for input shapes "
                f"{[list(_domain_shape(d)) for d in domains]}; embed it with an encoder trained "
                "on models of its input shape"
            )
        if spec.num_outputs > classes:
            raise ProbeError(
                f"a model ({spec.summary()}) has {spec.num_outputs} outputs, more than the "
                f"{classes} classes this encoder's probe branch reads; retrain the encoder on "
                "a zoo that includes such models"
            )
        outputs_count[spec_id] = spec.num_outputs
    class_mask = torch.arange(classes) < outputs_count[spec_ids].unsqueeze(-1)  # (B, C)

    run = _GroupRunner(batch, get, classes, spec_ids)
    plan = padding_plan(tuple(table))
    bucket_ids = plan.bucket_of[spec_ids]  # (B,)
    for bucket_id in torch.unique(bucket_ids).tolist():
        bucket = plan.buckets[bucket_id]
        graphs_in = torch.nonzero(bucket_ids == bucket_id).flatten()
        # A member the interpreter cannot build is not runnable, whatever its padded form does.
        for spec_id in bucket.members:
            if spec_id in keys and _template(table[spec_id]) is None:
                run.reasons[spec_id] = _FAILURES.get(table[spec_id], "its spec cannot be run")
                graphs_in = graphs_in[spec_ids[graphs_in] != spec_id]
        if not graphs_in.numel():
            continue
        key = keys[int(spec_ids[graphs_in[0]])]  # one skeleton, one input shape, one domain
        if not run(bucket, graphs_in, plan.row_of[spec_ids[graphs_in]], key):
            # The padded forward failed as a whole: retry architecture by architecture, so
            # one member that cannot run does not take the others with it.
            for spec_id in torch.unique(spec_ids[graphs_in]).tolist():
                alone = padding_plan((table[spec_id],)).buckets[0]
                members = graphs_in[spec_ids[graphs_in] == spec_id]
                if not run(alone, members, torch.zeros_like(members), key):
                    run.reasons.setdefault(spec_id, run.failure)
    p = next(iter(run.cache.values())).shape[0] if run.cache else 0
    if not p:
        p = _probe_count(get, table, spec_ids)
    log_probs = torch.zeros(b, p, classes, dtype=dtype, device=device)
    if run.rows_out:
        index = torch.cat(run.rows_index).to(device)
        log_probs = log_probs.index_put((index,), torch.cat(run.rows_out))
    return ProbeOutputs(
        log_probs=log_probs,
        class_mask=class_mask.to(device),
        runnable=run.runnable.to(device),
        reasons=run.reasons,
    )


class _GroupRunner:
    """Runs buckets of a batch's models on their probes (:func:`probe_forward`'s loop body)
    and collects the outputs, the runnable flags and the reasons for failures."""

    def __init__(
        self, batch: GraphBatch, get: Callable[[str], Tensor], classes: int, spec_ids: Tensor
    ) -> None:
        self.batch, self.get, self.classes, self.spec_ids = batch, get, classes, spec_ids
        device = batch.edge_attr.device
        self.node_ptr = _pointers(batch.batch, batch.num_graphs).to(device)
        self.edge_ptr = _pointers(batch.edge_batch, batch.num_graphs).to(device)
        self.cache: dict[str, Tensor] = {}
        self.rows_out: list[Tensor] = []
        self.rows_index: list[Tensor] = []
        self.runnable = torch.zeros(batch.num_graphs, dtype=torch.bool)
        self.reasons: dict[int, str] = {}
        self.failure = ""  # why the last call returned False

    def __call__(self, bucket: PaddedBucket, graphs: Tensor, rows: Tensor, key: str) -> bool:
        """Run ``graphs`` (bucket rows ``rows``) through the bucket's padded architecture on
        the probes of domain ``key``; ``False`` (and :attr:`failure` says why) if the forward
        could not be built or raised."""
        from torch.func import functional_call, vmap

        batch, spec = self.batch, bucket.spec
        template = _template(spec)
        if template is None:
            self.failure = _FAILURES.get(spec, "its spec cannot be run")
            return False
        if key not in self.cache:
            device, dtype = batch.edge_attr.device, batch.edge_attr.dtype
            self.cache[key] = self.get(key).to(device=device, dtype=dtype)
        x = self.cache[key]
        try:
            state = gather_padded_state(batch, graphs, rows, bucket, self.node_ptr, self.edge_ptr)
        except ValueError as exc:
            raise ProbeError(str(exc)) from None
        state = {k: v.detach() for k, v in state.items()}
        # One output (a regressor, an INR's intensity): its log-softmax is identically 0, so the
        # raw output is what carries the function there.
        single = spec.num_outputs == 1

        def forward(params: dict[str, Tensor]) -> Tensor:
            y = functional_call(template, params, (x,))
            return y if single else y.log_softmax(-1)

        def forward_all(params: dict[str, Tensor]) -> Tensor:  # (G, P, c)
            if supports(spec):  # one batched product per layer (weightspace.nn.probe_ops)
                y = stacked_forward(spec, params, x)
                return y if single else y.log_softmax(-1)
            return vmap(forward)(params)

        try:
            out = forward_all(state)  # (G, P, c)
        except Exception as exc:  # a forward that raises falls back to the graph branch
            self.failure = f"its forward raised {type(exc).__name__}: {exc}"[:200]
            return False
        finite = torch.isfinite(out.detach()).flatten(1).all(1)
        if not bool(finite.all()):
            bad = graphs[~finite.cpu()]
            for spec_id in torch.unique(self.spec_ids[bad]).tolist():
                self.reasons[spec_id] = "non-finite outputs on the probes"
            # Rerun the finite models only: a NaN anywhere in the graph would poison the
            # probes' gradient (0 * NaN = NaN).
            keep = torch.nonzero(finite).flatten()
            graphs = graphs[keep.cpu()]
            if not graphs.numel():
                return True
            out = forward_all({k: v[keep] for k, v in state.items()})
        self.runnable[graphs] = True
        if out.shape[-1] < self.classes:
            out = nn.functional.pad(out, (0, self.classes - out.shape[-1]))
        self.rows_out.append(out)
        self.rows_index.append(graphs)
        return True


def _probe_count(get: Callable[[str], Tensor], table: Sequence[NetworkSpec], ids: Tensor) -> int:
    """The probe count when no group ran (read from the first model's domain, if it has one)."""
    try:
        return int(get(domain_key(table[int(ids[0])])).shape[0]) if ids.numel() else 0
    except KeyError:
        return 0
