r"""Assertions for symmetry tests, yours and ours (in the spirit of e3nn's ``assert_equivariant``).

* :func:`assert_function_preserved` — two modules compute the same function on given inputs.
* :func:`assert_invariant` — a function of a model (an encoder's embedding, a metric, a predicted
  accuracy) does not change when the model undergoes random symmetry transforms.
* :func:`assert_sensitive` — the negative control: it *does* change when the model undergoes a
  permutation that is not a symmetry (input neurons permuted, or a layer permuted without the
  matching change to the next layer). An "invariant" that ignores the weights passes
  :func:`assert_invariant` too; this catches it.

Errors are measured as the :math:`\infty`-norm relative error (:func:`max_relative_error`) and
tolerances default by dtype (:data:`DEFAULT_TOLERANCE`).

Example::

    from weightspace.testing import assert_invariant, assert_sensitive

    def embed(graph):
        return encoder(graph)  # (d,)

    assert_invariant(embed, to_graph(spec, state_dict))
    assert_sensitive(embed, to_graph(spec, state_dict))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import numpy as np
import torch
from torch import Tensor, nn

from weightspace.graph import NeuralGraph
from weightspace.spec import NetworkSpec
from weightspace.symmetry import (
    SYMMETRIES,
    random_broken_permutation,
    random_symmetry,
    transform_graph,
    transform_module,
)

__all__ = [
    "DEFAULT_TOLERANCE",
    "Model",
    "max_relative_error",
    "tolerance_for",
    "assert_function_preserved",
    "assert_invariant",
    "assert_sensitive",
]

#: A model as the assertions accept it: a module, a graph, or a ``(spec, state_dict)`` pair.
Model: TypeAlias = nn.Module | NeuralGraph | tuple[NetworkSpec, dict[str, Tensor]]

#: Relative tolerance by dtype: rounding of a few dozen operations, with room to spare.
DEFAULT_TOLERANCE: dict[torch.dtype, float] = {
    torch.float64: 1e-10,
    torch.float32: 1e-4,
    torch.float16: 1e-2,
    torch.bfloat16: 1e-2,
}


def tolerance_for(dtype: torch.dtype) -> float:
    """The default relative tolerance for ``dtype`` (float32's for non-floating dtypes)."""
    return DEFAULT_TOLERANCE.get(dtype, DEFAULT_TOLERANCE[torch.float32])


def _as_tensor(value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, np.ndarray | np.generic):
        return torch.from_numpy(np.asarray(value))
    return torch.as_tensor(value)


def max_relative_error(actual: Any, expected: Any) -> float:
    r"""The :math:`\infty`-norm relative error :math:`\max|a - e| / \max|e|`.

    Elementwise relative errors blow up at entries near zero; this one does not. When ``expected``
    is all zeros it is :math:`\max|a|` (the absolute error). Computed in float64.

    Args:
        actual, expected: tensors, arrays or numbers of one shape.

    Raises:
        AssertionError: the shapes differ.
    """
    a = _as_tensor(actual).to(torch.float64).cpu()
    e = _as_tensor(expected).to(torch.float64).cpu()
    if a.shape != e.shape:
        raise AssertionError(f"shapes differ: {tuple(a.shape)} vs {tuple(e.shape)}")
    if a.numel() == 0:
        return 0.0
    diff = float((a - e).abs().max())
    scale = float(e.abs().max())
    return diff / scale if scale > 0 else diff


def assert_function_preserved(
    a: nn.Module,
    b: nn.Module,
    inputs: Tensor | Sequence[Tensor],
    *,
    rtol: float | None = None,
) -> float:
    """Assert that modules ``a`` and ``b`` give the same outputs on ``inputs``.

    Put both in eval mode first if they hold dropout or BatchNorm.

    Args:
        a, b: modules taking one tensor and returning one tensor.
        inputs: one input batch, or a sequence of batches.
        rtol: largest allowed :func:`max_relative_error` of ``b``'s outputs against ``a``'s
            (default: :func:`tolerance_for` the output dtype: 1e-10 for float64, 1e-4 float32).

    Returns:
        The largest relative error measured.

    Raises:
        AssertionError: an error exceeds ``rtol`` (the message gives the error and the batch).
    """
    batches = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    worst = 0.0
    with torch.no_grad():
        for i, x in enumerate(batches):
            out_a, out_b = a(x), b(x)
            tol = rtol if rtol is not None else tolerance_for(out_a.dtype)
            error = max_relative_error(out_b, out_a)
            if not error <= tol:  # also catches NaN
                raise AssertionError(
                    f"the modules compute different functions: max relative error {error:.3g} "
                    f"> rtol {tol:.1g} on input batch {i} (max |a-b| = "
                    f"{float((out_a - out_b).abs().max()):.3g}, max |a| = "
                    f"{float(out_a.abs().max()):.3g})"
                )
            worst = max(worst, error)
    return worst


def _transform(
    model: Model, fn: Callable[..., Any], example_input: Tensor | None, *args: Any, **kwargs: Any
) -> Any:
    """Apply a state-dict transform to any :data:`Model`; returns ``(model, draws)``."""
    if isinstance(model, NeuralGraph):
        return transform_graph(model, fn, *args, **kwargs)
    if isinstance(model, nn.Module):
        return transform_module(model, fn, *args, example_input=example_input, **kwargs)
    if isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], NetworkSpec):
        spec, state = model
        new_state, draws = fn(spec, state, *args, **kwargs)
        return (spec, new_state), draws
    raise TypeError(
        "model must be an nn.Module, a NeuralGraph or a (NetworkSpec, state_dict) pair; got "
        f"{type(model).__name__}"
    )


def _within(value: Tensor, reference: Tensor, atol: float, rtol: float) -> tuple[bool, float]:
    """``max|v - r| <= atol + rtol * max|r|``, and ``max|v - r|``."""
    if value.shape != reference.shape:
        raise AssertionError(f"shapes differ: {tuple(value.shape)} vs {tuple(reference.shape)}")
    if value.numel() == 0:
        return True, 0.0
    diff = float((value.to(torch.float64) - reference.to(torch.float64)).abs().max())
    scale = float(reference.to(torch.float64).abs().max())
    return diff <= atol + rtol * scale, diff


def assert_invariant(
    fn: Callable[[Any], Any],
    model: Model,
    *,
    transforms: Sequence[str] = SYMMETRIES,
    n_trials: int = 3,
    example_input: Tensor | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    seed: int = 0,
    log_range: float = 1.0,
) -> float:
    r"""Assert that ``fn(model)`` is unchanged by random symmetry transforms of ``model``.

    Each trial draws :func:`~weightspace.symmetry.random_symmetry` (seeded ``seed + trial``) and
    checks :math:`\max|f(T m) - f(m)| \le \mathrm{atol} + \mathrm{rtol} \max|f(m)|`.

    Args:
        fn: maps a model of the same kind as ``model`` to a tensor, array or number.
        model: a :class:`~weightspace.graph.NeuralGraph` (``fn`` gets graphs), a
            ``(spec, state_dict)`` pair (``fn`` gets pairs), or an ``nn.Module`` (``fn`` gets the
            module, then :class:`~weightspace.module.SpecModule` s computing the transformed
            weights; a module that is not a ``SpecModule`` is traced with ``example_input`` and
            should be in eval mode).
        transforms: subset of :data:`~weightspace.symmetry.SYMMETRIES` to draw.
        n_trials: number of random transforms.
        atol, rtol: tolerances (default both :func:`tolerance_for` the dtype of ``fn(model)``).
        seed: seed of the first trial's generator.
        log_range: passed to :func:`~weightspace.symmetry.random_rescale`.

    Returns:
        The largest absolute difference measured.

    Raises:
        AssertionError: a trial changed ``fn(model)`` beyond the tolerance.
    """
    reference = _as_tensor(fn(model))
    tol = tolerance_for(reference.dtype)
    atol = tol if atol is None else atol
    rtol = tol if rtol is None else rtol
    worst = 0.0
    for trial in range(n_trials):
        generator = torch.Generator().manual_seed(seed + trial)
        transformed, _ = _transform(
            model,
            random_symmetry,
            example_input,
            generator,
            transforms=transforms,
            log_range=log_range,
        )
        ok, diff = _within(_as_tensor(fn(transformed)), reference, atol, rtol)
        if not ok:
            raise AssertionError(
                f"fn is not invariant: trial {trial} (seed {seed + trial}, transforms "
                f"{list(transforms)}) changed it by max |diff| = {diff:.3g} > atol {atol:.1g} + "
                f"rtol {rtol:.1g} * max |fn(model)| ({float(reference.abs().max()):.3g})"
            )
        worst = max(worst, diff)
    return worst


def assert_sensitive(
    fn: Callable[[Any], Any],
    model: Model,
    *,
    kinds: Sequence[str] = ("unmatched", "input"),
    example_input: Tensor | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    seed: int = 0,
) -> float:
    """Assert that ``fn(model)`` changes under permutations that are *not* symmetries.

    The negative control to :func:`assert_invariant`: for each kind of
    :func:`~weightspace.symmetry.random_broken_permutation` (``"unmatched"``: a hidden layer's
    rows permuted without its readers; ``"input"``: input neurons permuted) the change must exceed
    the tolerance :func:`assert_invariant` would accept.

    Args:
        fn, model, example_input, atol, rtol, seed: as in :func:`assert_invariant`.
        kinds: the broken permutations to try.

    Returns:
        The smallest absolute difference measured.

    Raises:
        AssertionError: some broken permutation left ``fn(model)`` unchanged within tolerance.
        weightspace.symmetry.SymmetryError: the model has no group to break for a kind (e.g. an
            input with a single channel for ``"input"``).
    """
    reference = _as_tensor(fn(model))
    tol = tolerance_for(reference.dtype)
    atol = tol if atol is None else atol
    rtol = tol if rtol is None else rtol
    smallest = float("inf")
    for kind in kinds:
        generator = torch.Generator().manual_seed(seed)
        broken, perms = _transform(
            model, random_broken_permutation, example_input, generator, kind=kind
        )
        unchanged, diff = _within(_as_tensor(fn(broken)), reference, atol, rtol)
        if unchanged:
            raise AssertionError(
                f"fn did not notice a {kind!r} permutation that changes the network (groups "
                f"{sorted(perms)}): max |diff| = {diff:.3g} <= atol {atol:.1g} + rtol {rtol:.1g} "
                "* max |fn(model)|; it may ignore the weights or the neuron order"
            )
        smallest = min(smallest, diff)
    return smallest
