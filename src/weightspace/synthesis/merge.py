r"""Merging two models of one architecture: a registry of methods.

================  ==========================================================================
``average``       naive weight interpolation :math:`(1-\alpha)\theta_A + \alpha\theta_B`
``rebasin``       weight matching (Git Re-Basin) of B onto A — signs of odd neurons and scales
                  of ReLU neurons aligned too (:func:`~weightspace.synthesis.rebasin.align`) —
                  then interpolation
``ensemble``      output ensembling :math:`(1-\alpha) f_A(x) + \alpha f_B(x)`, written as one
                  wider network of an *ensemble spec* (see :func:`ensemble`) — exact
``embedding``     interpolate the encoder's embeddings, :math:`z = (1-\alpha) z_A + \alpha z_B`,
                  and decode ``z`` into weights with the decoder saved beside the encoder
================  ==========================================================================

``average`` and ``rebasin`` see only the two models' weights (*data-free*); ``embedding`` relies
on a decoder trained on task data (*data-using*, :attr:`MergeMethod.uses_data`); ``ensemble``
uses no data but is a wider network, not a model of the inputs' architecture. The bench adds a
data-using baseline outside this registry (it needs the task's data):
:mod:`weightspace.synthesis.distill`.

Every method returns a :class:`MergeResult` (spec, state dict, notes); :func:`merge` checks the
inputs (same architecture, same task when known, ``alpha`` in ``[0, 1]``) before dispatching.
New methods register with :func:`register_merge_method`.

The ensemble network stacks the hidden neurons of the ``K`` members side by side: every hidden
tie set of :func:`weightspace.layout.layout_of` is widened ``K`` times, a layer between two
hidden groups becomes block diagonal, a layer reading the input stacks its rows, and a layer
writing the output concatenates its input columns scaled by the member weights :math:`w_m`:

.. math::
    W = \begin{bmatrix} W_1 & & \\ & \ddots & \\ & & W_K \end{bmatrix}, \qquad
    W_{\mathrm{out}} = \begin{bmatrix} w_1 W_{\mathrm{out},1} & \cdots & w_K W_{\mathrm{out},K}
    \end{bmatrix}, \qquad b_{\mathrm{out}} = \textstyle\sum_m w_m b_{\mathrm{out},m},

so :math:`f_{\mathrm{ens}}(x) = \sum_m w_m f_m(x)` exactly (the logits are averaged).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from weightspace.layout import ROLE_INPUT, Layout, layout_of
from weightspace.spec import NetworkSpec, Op
from weightspace.synthesis.common import StateDict, SynthesisError, check_alpha, check_mergeable
from weightspace.synthesis.rebasin import interpolate, rebasin_interpolate

if TYPE_CHECKING:
    from weightspace.synthesis.decoder import Synthesizer

__all__ = [
    "MERGE_METHODS",
    "MergeMethod",
    "MergeResult",
    "ensemble",
    "ensemble_spec",
    "list_merge_methods",
    "merge",
    "register_merge_method",
]


@dataclass
class MergeResult:
    """A merged model.

    Attributes:
        spec: its architecture (the inputs' spec, or a wider ensemble spec).
        state_dict: its tensors.
        info: method-specific notes (JSON-able), written into the checkpoint metadata.
    """

    spec: NetworkSpec
    state_dict: StateDict
    info: dict[str, Any] = field(default_factory=dict)


MergeFunction = Callable[..., MergeResult]


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method.

    Attributes:
        name: registry name (``--method``).
        description: one line for ``--help`` and error messages.
        function: ``(spec, state_a, state_b, alpha, *, synthesizer, seed) -> MergeResult``.
        needs_synthesizer: whether it needs an encoder with a trained decoder.
        same_spec: whether the result has the inputs' spec (a drop-in replacement).
        uses_data: whether the method (or a model it relies on, such as the decoder) was fitted
            on task data; the bench reports data-free and data-using methods apart.
    """

    name: str
    description: str
    function: MergeFunction
    needs_synthesizer: bool = False
    same_spec: bool = True
    uses_data: bool = False


MERGE_METHODS: dict[str, MergeMethod] = {}


def register_merge_method(
    name: str,
    description: str,
    *,
    needs_synthesizer: bool = False,
    same_spec: bool = True,
    uses_data: bool = False,
) -> Callable[[MergeFunction], MergeFunction]:
    """Decorator registering a merge function under ``name`` (see :class:`MergeMethod`)."""

    def decorator(function: MergeFunction) -> MergeFunction:
        MERGE_METHODS[name] = MergeMethod(
            name, description, function, needs_synthesizer, same_spec, uses_data
        )
        return function

    return decorator


def list_merge_methods() -> list[str]:
    """Names of the registered merge methods."""
    return list(MERGE_METHODS)


def get_merge_method(name: str) -> MergeMethod:
    """The method called ``name``; an unknown name raises listing the valid ones."""
    if name not in MERGE_METHODS:
        raise SynthesisError(
            f"unknown merge method {name!r}; valid: {', '.join(list_merge_methods())}"
        )
    return MERGE_METHODS[name]


def merge(
    method: str,
    spec_a: NetworkSpec,
    state_a: Mapping[str, Tensor],
    spec_b: NetworkSpec,
    state_b: Mapping[str, Tensor],
    alpha: float = 0.5,
    *,
    synthesizer: Synthesizer | None = None,
    task_a: str | None = None,
    task_b: str | None = None,
    target_spec: NetworkSpec | None = None,
    seed: int = 0,
) -> MergeResult:
    """Merge model A and model B with ``method`` at ``alpha`` (0 gives A, 1 gives B).

    Args:
        method: one of :func:`list_merge_methods`.
        synthesizer: encoder + decoder (:class:`weightspace.synthesis.decoder.Synthesizer`),
            needed by ``embedding``.
        task_a, task_b: the models' tasks, when known; different tasks are refused.
        target_spec: ``embedding`` only: the architecture to decode into, which lets A and B
            have different architectures (the decoder must know ``target_spec``).
        seed: seeds any randomness of the method (weight matching's sweep order).

    Raises:
        SynthesisError: unknown method (listing the valid ones), different architectures or
            tasks, ``alpha`` outside ``[0, 1]``, or a missing synthesizer.
    """
    chosen = get_merge_method(method)
    alpha = check_alpha(alpha)
    if target_spec is not None and not chosen.needs_synthesizer:
        raise SynthesisError(
            f"a target architecture only works with --method embedding (which decodes into any "
            f"architecture the decoder knows); {method!r} keeps the inputs' architecture"
        )
    if target_spec is not None:
        check_mergeable(spec_a, state_a, spec_a, state_a, task_a=task_a, task_b=task_b)
        check_mergeable(spec_b, state_b, spec_b, state_b, names=("B", "B"))
    else:
        check_mergeable(spec_a, state_a, spec_b, state_b, task_a=task_a, task_b=task_b)
    if chosen.needs_synthesizer and synthesizer is None:
        raise SynthesisError(
            f"merge method {method!r} needs an encoder directory with a trained decoder "
            "(--encoder DIR; train one with `weightspace train-decoder`)"
        )
    result = chosen.function(
        spec_a,
        dict(state_a),
        dict(state_b),
        alpha,
        synthesizer=synthesizer,
        seed=seed,
        spec_b=spec_b,
        target_spec=target_spec,
    )
    result.info.setdefault("method", method)
    result.info.setdefault("alpha", alpha)
    return result


# ---------------------------------------------------------------------------------------------
# ensemble networks
# ---------------------------------------------------------------------------------------------
def _widened_groups(layout: Layout, spec: NetworkSpec) -> set[int]:
    """Groups that the ensemble stacks ``K`` times; raise where stacking cannot be exact."""
    widened: set[int] = set()
    permutable = {g for members in layout.permutable_tie_sets() for g in members}
    for members in layout.tie_sets().values():
        if all(g in permutable for g in members):
            widened.update(members)
            continue
        if any(layout.groups[g].role == ROLE_INPUT for g in members):
            others = [g for g in members if layout.groups[g].role != ROLE_INPUT]
            if others:
                names = [layout.groups[g].producer for g in others]
                raise SynthesisError(
                    f"cannot build an ensemble network of {spec.summary()}: layers {names} are "
                    "added to the input by a residual connection, so their neurons cannot be "
                    "stacked side by side; ensemble the models' outputs outside one network"
                )
            continue
        # the output tie set: it must be an affine function of the last hidden neurons
        for g in members:
            group = layout.groups[g]
            nonlinear = (group.activations - {"identity"}) or (group.pools & {"max"})
            if nonlinear or group.readers:
                raise SynthesisError(
                    f"cannot build an ensemble network of {spec.summary()}: the output of layer "
                    f"{group.producer!r} goes through {sorted(nonlinear) or group.readers} after "
                    "its last layer, so averaging that layer's weights does not average outputs"
                )
    return widened


def ensemble_spec(spec: NetworkSpec, members: int = 2) -> NetworkSpec:
    """The spec of the ensemble network of ``members`` models of ``spec`` (see module doc).

    Hidden layers are ``members`` times wider; layer names, the input and the output stay.

    Raises:
        SynthesisError: the spec has a residual add onto the input, or a nonlinearity after
            its output layer, where stacking is not exact.
    """
    if members < 1:
        raise SynthesisError(f"an ensemble needs at least one member, got {members}")
    layout = layout_of(spec)
    widened = _widened_groups(layout, spec)
    ops: list[Op] = []
    for op in spec.ops:
        if not op.is_parametrised:
            ops.append(op)
            continue
        link = layout.link(op.name)
        attrs = dict(op.attrs)
        in_key, out_key = (
            ("in_features", "out_features")
            if op.kind == "linear"
            else ("in_channels", "out_channels")
        )
        if link.source in widened:
            attrs[in_key] = op.in_size * members
        if link.target in widened:
            attrs[out_key] = op.out_size * members
        ops.append(Op(op.name, op.kind, op.inputs, attrs))
    return NetworkSpec(tuple(ops))


def ensemble(
    spec: NetworkSpec,
    states: Sequence[Mapping[str, Tensor]],
    weights: Sequence[float] | None = None,
) -> MergeResult:
    r"""One network computing :math:`\sum_m w_m f_m(x)` for models ``states`` of ``spec``.

    Args:
        spec: the members' shared architecture.
        states: ``K`` state dicts of ``spec``.
        weights: ``K`` output weights (default: ``1/K`` each); they need not sum to one.

    Returns:
        A :class:`MergeResult` with :func:`ensemble_spec` ``(spec, K)``.
    """
    k = len(states)
    weights = [1.0 / k] * k if weights is None else [float(w) for w in weights]
    if len(weights) != k:
        raise SynthesisError(f"{k} ensemble members but {len(weights)} weights")
    layout = layout_of(spec)
    widened = _widened_groups(layout, spec)
    out: StateDict = {}
    for op in spec.layers:
        link = layout.link(op.name)
        n_in = layout.groups[link.source].size
        rest = tuple(op.weight_shape()[2:])
        blocks = [s[f"{op.name}.weight"] for s in states]
        ref = blocks[0]
        views = [b.reshape(op.out_size, n_in, -1) for b in blocks]  # (out, n_in, S * kernel)
        wide_in, wide_out = link.source in widened, link.target in widened
        if wide_in and wide_out:
            w = ref.new_zeros(k * op.out_size, k * n_in, views[0].shape[2])
            for m, view in enumerate(views):
                w[m * op.out_size : (m + 1) * op.out_size, m * n_in : (m + 1) * n_in] = view
        elif wide_out:
            w = torch.cat(views, dim=0)
        elif wide_in:
            w = torch.cat([wm * v for wm, v in zip(weights, views, strict=True)], dim=1)
        else:
            w = sum(wm * v for wm, v in zip(weights, views, strict=True))
        out_rows = w.shape[0]
        out[f"{op.name}.weight"] = (
            w.reshape(out_rows, -1, *rest) if rest else w.reshape(out_rows, -1)
        )
        if f"{op.name}.bias" in states[0]:
            biases = [s[f"{op.name}.bias"] for s in states]
            if wide_out:
                out[f"{op.name}.bias"] = torch.cat(biases)
            else:
                out[f"{op.name}.bias"] = sum(wm * b for wm, b in zip(weights, biases, strict=True))
    wide = ensemble_spec(spec, k)
    for key, shape in wide.param_shapes().items():
        if tuple(out[key].shape) != shape:  # pragma: no cover - construction invariant
            raise AssertionError(f"ensemble tensor {key} has shape {tuple(out[key].shape)}")
    return MergeResult(wide, out, {"members": k, "output_weights": weights})


# ---------------------------------------------------------------------------------------------
# registered methods
# ---------------------------------------------------------------------------------------------
@register_merge_method("average", "naive weight averaging (1-α)·θ_A + α·θ_B")
def _merge_average(
    spec: NetworkSpec, state_a: StateDict, state_b: StateDict, alpha: float, **_: Any
) -> MergeResult:
    return MergeResult(spec, interpolate(spec, state_a, state_b, alpha))


@register_merge_method(
    "rebasin",
    "weight matching (Git Re-Basin, tanh signs and ReLU scales aligned too) of B onto A, then "
    "averaging",
)
def _merge_rebasin(
    spec: NetworkSpec,
    state_a: StateDict,
    state_b: StateDict,
    alpha: float,
    *,
    seed: int = 0,
    **_: Any,
) -> MergeResult:
    return MergeResult(spec, rebasin_interpolate(spec, state_a, state_b, alpha, seed=seed))


@register_merge_method(
    "ensemble",
    "output ensembling (1-α)·f_A + α·f_B as one wider network (an ensemble spec)",
    same_spec=False,
)
def _merge_ensemble(
    spec: NetworkSpec, state_a: StateDict, state_b: StateDict, alpha: float, **_: Any
) -> MergeResult:
    return ensemble(spec, [state_a, state_b], [1.0 - alpha, alpha])


@register_merge_method(
    "embedding",
    "interpolate the encoder's embeddings of A and B and decode (needs a trained decoder)",
    needs_synthesizer=True,
    uses_data=True,  # the decoder is trained on task data
)
def _merge_embedding(
    spec: NetworkSpec,
    state_a: StateDict,
    state_b: StateDict,
    alpha: float,
    *,
    synthesizer: Synthesizer,
    spec_b: NetworkSpec | None = None,
    target_spec: NetworkSpec | None = None,
    **_: Any,
) -> MergeResult:
    target = target_spec or spec
    z = synthesizer.embed([(spec, state_a), (spec_b or spec, state_b)])  # (2, d)
    mid = torch.lerp(z[0], z[1], alpha).unsqueeze(0)
    (state,) = synthesizer.decode(mid, target)
    return MergeResult(target, state, {"decoder": synthesizer.decoder.fingerprint[:16]})
