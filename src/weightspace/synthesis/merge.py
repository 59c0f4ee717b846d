r"""Merging models of one architecture: a registry of methods.

Two models merge at :math:`\alpha` (0 gives A, 1 gives B), which is the weighted merge of
:math:`K` models with weights :math:`w = (1-\alpha, \alpha)`; :func:`merge_models` takes any
:math:`K \ge 2` with weights :math:`w_m \ge 0` (normalised to sum to one unless asked not to):

================  ==========================================================================
``average``       naive weight averaging :math:`\sum_m w_m \theta_m`
                  (:math:`(1-\alpha)\theta_A + \alpha\theta_B` for two)
``rebasin``       weight matching (Git Re-Basin) of every model onto the first — signs of odd
                  neurons and scales of ReLU neurons aligned too
                  (:func:`~weightspace.synthesis.rebasin.align`) — then averaging
                  :math:`w_1 \theta_1 + \sum_{m>1} w_m \pi_m(\theta_m)`
``ensemble``      output ensembling :math:`\sum_m w_m f_m(x)`, written as one wider network of
                  an *ensemble spec* (:mod:`weightspace.synthesis.ensemble_network`) — exact
``embedding``     average the encoder's embeddings, :math:`z = \sum_m w_m z_m`, and decode
                  ``z`` into weights with the decoder saved beside the encoder
================  ==========================================================================

The default method, :data:`DEFAULT_METHOD` (``embedding``), needs an encoder directory with a
trained decoder; :func:`choose_merge_method` falls back to :data:`FALLBACK_METHOD` (``rebasin``,
data-free) when there is none, and says so.

``average`` and ``rebasin`` see only the two models' weights (*data-free*); ``embedding`` relies
on a decoder trained on task data (*data-using*, :attr:`MergeMethod.uses_data`); ``ensemble``
uses no data but is a wider network, not a model of the inputs' architecture. The bench adds a
data-using baseline outside this registry (it needs the task's data):
:mod:`weightspace.synthesis.distill`.

Every method returns a :class:`MergeResult` (spec, state dict, notes); :func:`merge` and
:func:`merge_models` check the inputs (same architecture, same task when known, ``alpha`` in
``[0, 1]``, weights finite and non-negative) before dispatching. New methods register with
:func:`register_merge_method` (:mod:`weightspace.synthesis.merge_registry`; the built-in ones
are :mod:`weightspace.synthesis.merge_methods`).

"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from torch import Tensor

from weightspace.spec import NetworkSpec
from weightspace.synthesis import merge_methods  # noqa: F401  (registers the built-in methods)
from weightspace.synthesis.common import SynthesisError, check_alpha, check_mergeable
from weightspace.synthesis.ensemble_network import ensemble, ensemble_spec
from weightspace.synthesis.merge_registry import (
    DEFAULT_METHOD,
    FALLBACK_METHOD,
    MERGE_METHODS,
    MergeMethod,
    MergeResult,
    choose_merge_method,
    get_merge_method,
    list_merge_methods,
    register_merge_method,
)

if TYPE_CHECKING:
    from weightspace.synthesis.decoder import Synthesizer

__all__ = [
    "DEFAULT_METHOD",
    "FALLBACK_METHOD",
    "MERGE_METHODS",
    "MergeMethod",
    "MergeResult",
    "check_weights",
    "choose_merge_method",
    "ensemble",
    "ensemble_spec",
    "list_merge_methods",
    "merge",
    "merge_models",
    "register_merge_method",
]


def check_weights(
    weights: Sequence[float] | None, count: int, *, normalize: bool = True
) -> list[float]:
    """``count`` merge weights: uniform when ``None``; finite, non-negative, not all zero.

    With ``normalize`` they are divided by their sum (mergekit's ``normalize: true``).

    Raises:
        SynthesisError: fewer than two models, a count mismatch, or a bad weight (named).
    """
    if count < 2:
        raise SynthesisError(f"merging needs at least two models, got {count}")
    if weights is None:
        return [1.0 / count] * count
    values = list(weights)
    if len(values) != count:
        raise SynthesisError(f"{count} models but {len(values)} weights; give one per model")
    out = []
    for i, value in enumerate(values):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise SynthesisError(f"weight {i + 1} ({value!r}) is not a number") from None
        if not math.isfinite(number) or number < 0:
            raise SynthesisError(f"weight {i + 1} must be a finite number >= 0, got {value!r}")
        out.append(number)
    total = math.fsum(out)
    if total <= 0:
        raise SynthesisError("the merge weights are all zero; at least one must be positive")
    return [w / total for w in out] if normalize else out


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
    alpha = check_alpha(alpha)
    result = _run(
        method,
        [spec_a, spec_b],
        [state_a, state_b],
        [1.0 - alpha, alpha],
        synthesizer=synthesizer,
        tasks=[task_a, task_b],
        target_spec=target_spec,
        seed=seed,
        names=("A", "B"),
    )
    result.info.setdefault("alpha", alpha)
    return result


def merge_models(
    method: str,
    models: Sequence[tuple[NetworkSpec, Mapping[str, Tensor]]],
    weights: Sequence[float] | None = None,
    *,
    normalize: bool = True,
    synthesizer: Synthesizer | None = None,
    tasks: Sequence[str | None] | None = None,
    target_spec: NetworkSpec | None = None,
    seed: int = 0,
    names: Sequence[str] | None = None,
) -> MergeResult:
    """Merge ``K >= 2`` models ``(spec, state_dict)`` with ``method`` and ``weights``.

    Args:
        models: the models; ``rebasin`` aligns every other model onto the first.
        weights: one per model (default uniform); see :func:`check_weights`.
        normalize: divide the weights by their sum.
        tasks: each model's task when known; models of different tasks are refused.
        names: how errors name the models (default ``model 1``, ``model 2``, ...).
        synthesizer, target_spec, seed: as in :func:`merge`.

    Raises:
        SynthesisError: as :func:`merge`, and for bad weights.
    """
    chosen = check_weights(weights, len(models), normalize=normalize)
    return _run(
        method,
        [spec for spec, _ in models],
        [state for _, state in models],
        chosen,
        synthesizer=synthesizer,
        tasks=list(tasks) if tasks is not None else [None] * len(models),
        target_spec=target_spec,
        seed=seed,
        names=tuple(names) if names is not None else None,
    )


def _run(
    method: str,
    specs: Sequence[NetworkSpec],
    states: Sequence[Mapping[str, Tensor]],
    weights: list[float],
    *,
    synthesizer: Synthesizer | None,
    tasks: Sequence[str | None],
    target_spec: NetworkSpec | None,
    seed: int,
    names: tuple[str, ...] | None,
) -> MergeResult:
    """Check ``K`` models against the first (architecture, task, finite tensors), dispatch."""
    chosen = get_merge_method(method)
    names = names or tuple(f"model {i + 1}" for i in range(len(specs)))
    if target_spec is not None and not chosen.needs_synthesizer:
        raise SynthesisError(
            f"a target architecture only works with --method embedding (which decodes into any "
            f"architecture the decoder knows); {method!r} keeps the inputs' architecture"
        )
    known = [(name, task) for name, task in zip(names, tasks, strict=True) if task is not None]
    for name, task in known[1:]:
        if task != known[0][1]:
            raise SynthesisError(
                f"cannot merge {known[0][0]} (task {known[0][1]!r}) and {name} (task {task!r}): "
                "models of different tasks share no function to merge"
            )
    for i in range(1, len(specs)):
        pair = (names[0], names[i])
        if target_spec is not None:  # each only has to fit its own spec
            check_mergeable(specs[0], states[0], specs[0], states[0], names=(pair[0],) * 2)
            check_mergeable(specs[i], states[i], specs[i], states[i], names=(pair[1],) * 2)
        else:
            check_mergeable(specs[0], states[0], specs[i], states[i], names=pair)
    if chosen.needs_synthesizer and synthesizer is None:
        raise SynthesisError(
            f"merge method {method!r} needs an encoder directory with a trained decoder "
            "(--encoder DIR; train one with `weightspace train-decoder`)"
        )
    result = chosen.function(
        specs[0],
        [dict(state) for state in states],
        weights,
        synthesizer=synthesizer,
        seed=seed,
        specs=list(specs),
        target_spec=target_spec,
    )
    result.info.setdefault("method", method)
    if len(specs) > 2:
        result.info.setdefault("weights", weights)
    return result
