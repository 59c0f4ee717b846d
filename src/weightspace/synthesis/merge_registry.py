"""The registry of merge methods: what each is, what it needs, and which one runs by default.

A method registers with :func:`register_merge_method` (the built-in ones in
:mod:`weightspace.synthesis.merge_methods`); :func:`choose_merge_method` picks the default,
:data:`DEFAULT_METHOD`, or falls back to :data:`FALLBACK_METHOD` without a decoder, saying so.
:mod:`weightspace.synthesis.merge` runs them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from weightspace.spec import NetworkSpec
from weightspace.synthesis.common import StateDict, SynthesisError

__all__ = [
    "DEFAULT_METHOD",
    "FALLBACK_METHOD",
    "MERGE_METHODS",
    "MergeFunction",
    "MergeMethod",
    "MergeResult",
    "choose_merge_method",
    "get_merge_method",
    "list_merge_methods",
    "register_merge_method",
]

#: The method ``weightspace merge`` uses when none is named.
DEFAULT_METHOD = "embedding"
#: What the default falls back to without a decoder: data-free and needs nothing but weights.
FALLBACK_METHOD = "rebasin"


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
        function: ``(spec, states, weights, *, synthesizer, seed, specs, target_spec) ->
            MergeResult`` for ``K >= 2`` state dicts of ``spec`` (``specs``: each model's own
            spec, which differ only with ``target_spec``) and ``K`` weights; with two models,
            ``weights == (1 - alpha, alpha)`` exactly.
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


def choose_merge_method(method: str | None, has_decoder: bool) -> tuple[str, str | None]:
    """The method to run, and a note to show once when the default had to fall back.

    Args:
        method: the method asked for, or ``None`` for :data:`DEFAULT_METHOD`.
        has_decoder: whether an encoder directory with a trained decoder was given.

    Returns:
        ``(name, note)``: ``note`` is ``None`` unless no method was named and the default needs
        a decoder that is missing; then ``name`` is :data:`FALLBACK_METHOD`.

    Raises:
        SynthesisError: an unknown method (listing the valid ones), or a method that was named
            explicitly and needs the missing decoder (saying what it needs), before any work.
    """
    if method is None:
        if get_merge_method(DEFAULT_METHOD).needs_synthesizer and not has_decoder:
            return FALLBACK_METHOD, (
                f"no encoder with a trained decoder given: merging by weight matching "
                f"(--method {FALLBACK_METHOD}); for embedding merges pass --encoder DIR with a "
                "decoder (`weightspace train-decoder`)"
            )
        return DEFAULT_METHOD, None
    chosen = get_merge_method(method)
    if chosen.needs_synthesizer and not has_decoder:
        raise SynthesisError(
            f"merge method {method!r} needs an encoder directory with a trained decoder "
            "(--encoder DIR; train one with `weightspace train-decoder`); without one use "
            f"--method {FALLBACK_METHOD}, average or ensemble"
        )
    return method, None
