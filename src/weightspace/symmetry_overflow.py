"""Why a model with finite weights has no finite canonical form: a one-line diagnosis.

Used after a batch fails to embed (index build, ``embed``, ``--ray``) to name the file whose
canonical form (:func:`weightspace.symmetry_canonical.canonicalize`) overflows. Re-exported by
:mod:`weightspace.symmetry`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import Tensor

from weightspace.errors import NonFiniteWeightsError, WeightspaceError
from weightspace.spec import NetworkSpec
from weightspace.symmetry_canonical import canonicalize

__all__ = ["canonical_overflow", "first_canonical_overflow", "overflow_named_by_file"]


def canonical_overflow(spec: NetworkSpec, state_dict: Mapping[str, Tensor]) -> str | None:
    r"""Why the canonical form of a model with finite weights is not finite, or ``None``.

    :func:`canonicalize_scale` moves each hidden neuron's scale :math:`c` into the next layer
    (:math:`W_{l+1} \leftarrow W_{l+1}\,\mathrm{diag}(c)`), so weights near the float32 limit
    (about :math:`3.4 \times 10^{38}`) can overflow to Inf there, although every weight of the
    file is finite; no graph (and no embedding) can be built from such a model. Weights that
    are not finite already are left to the callers' own checks (``None`` here).
    """
    tensors = {name: torch.as_tensor(value) for name, value in state_dict.items()}
    floating = [t for t in tensors.values() if t.is_floating_point() and t.numel()]
    if not all(bool(torch.isfinite(t).all()) for t in floating):
        return None
    try:
        canonical = canonicalize(spec, tensors)
    except (WeightspaceError, RuntimeError):  # not canonicalisable: another problem
        return None
    for name, tensor in canonical.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            largest = max(float(t.abs().max()) for t in floating)
            return (
                f"its canonical form is not finite: rescaling to it overflows "
                f"{str(tensor.dtype).removeprefix('torch.')} "
                f"in tensor {name!r} (the largest weight is {largest:.3g}); such a model cannot "
                "be embedded"
            )
    return None


def first_canonical_overflow(
    models: Iterable[tuple[str, NetworkSpec, Mapping[str, Tensor]]],
) -> NonFiniteWeightsError | None:
    """For a batch that failed to embed: the one-line error of its first model (``(source,
    spec, state_dict)``) whose canonical form overflows (:func:`canonical_overflow`), naming
    its source, or ``None`` when no model of the batch overflows."""
    for source, spec, state_dict in models:
        problem = canonical_overflow(spec, state_dict)
        if problem is not None:
            return NonFiniteWeightsError(f"{source}: {problem}")
    return None


@contextlib.contextmanager
def overflow_named_by_file(
    models: Iterable[tuple[str, NetworkSpec, Mapping[str, Tensor]]],
) -> Iterator[None]:
    """Turn a :class:`~weightspace.errors.WeightspaceError` raised inside the block (embedding a
    batch) into the error of :func:`first_canonical_overflow` of ``models``, which names the
    file, when a model's canonical form overflows; any other error passes unchanged. ``models``
    (a lazy iterable) is read only on failure, so a batch that embeds costs nothing more."""
    try:
        yield
    except WeightspaceError:
        named = first_canonical_overflow(models)
        if named is None:
            raise
        raise named from None
