r"""Where the learned probes start: ``gauss`` (ProbeGen's random start) or ``task`` (the data).

With ``EncoderConfig.probe_init = "task"`` each input domain's :math:`P` probes start at :math:`P`
inputs the zoo's models were trained on, where the fixed-input references look:

* a domain of built-in tasks (or tasks whose data a zoo carries, ``zoo import --task-data``):
  the first :math:`P` rows of a permutation of the task's *training* split seeded by
  ``EncoderConfig.function_seed``, the rows ``probing-task`` reads with the same seed (a domain
  shared by several tasks takes their rows in turn);
* the 2-D coordinate domain of an INR zoo (``zoo generate --preset inr-digits``): the pixel
  grid the INRs were fitted on (:func:`weightspace.zoo.inr_fit.coordinate_grid`, the points
  ``probing-coords`` evaluates), in a seeded order;
* anything else: Gaussian probes, as with ``gauss`` (said once, with the domains and why).

Too few rows or grid points for :math:`P` probes: all of them, then Gaussian draws for the rest.

The choice per domain is a *source* string recorded in ``EncoderConfig.probe_sources`` (so it is
part of the encoder's config and fingerprint): ``"task:NAME[,NAME...]"``, ``"grid:SIDE"`` or
``"gauss"``. :class:`~weightspace.nn.probes.ProbeGenerator` turns a source into inputs with
:func:`source_inputs` and sets its generator so that it produces exactly those inputs (the math
is in :meth:`~weightspace.nn.probes.ProbeGenerator.start_at`). Loading a saved encoder restores
the probes from its weights: :func:`deferred_probe_init` skips recomputing the start there, so
no task data is needed to load.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from weightspace.errors import WeightspaceError

__all__ = [
    "PROBE_INITS",
    "TRAIN_PROBE_INITS",
    "ProbeInitError",
    "check_probe_init",
    "check_train_probe_init",
    "deferred_probe_init",
    "init_deferred",
    "probe_sources_for_zoo",
    "resolve_probe_sources",
    "source_inputs",
]

#: The accepted values of ``EncoderConfig.probe_init``.
PROBE_INITS = ("gauss", "task")

#: The accepted values of ``TrainConfig.probe_init`` / ``weightspace train --probe-init``:
#: ``auto`` is ``task`` where some domain's training inputs are known, silently ``gauss`` otherwise.
TRAIN_PROBE_INITS = ("auto", *PROBE_INITS)

#: Side of the pixel grid the INRs of each INR preset were fitted on.
_INR_GRIDS = {"inr-digits": 8}

_DEFERRED = [0]


class ProbeInitError(WeightspaceError):
    """A probe initialisation or source string is not one this weightspace knows."""


def check_probe_init(value: str) -> str:
    """``value`` if it is one of :data:`PROBE_INITS`, else a one-line :class:`ProbeInitError`."""
    if value not in PROBE_INITS:
        raise ProbeInitError(
            f"probe_init must be one of {list(PROBE_INITS)} (gauss: random Gaussian start; "
            f"task: start at the task's training inputs), got {value!r}"
        )
    return value


def check_train_probe_init(value: str) -> str:
    """``value`` if it is one of :data:`TRAIN_PROBE_INITS`, else a one-line
    :class:`ProbeInitError`."""
    if value not in TRAIN_PROBE_INITS:
        raise ProbeInitError(
            f"probe_init must be one of {list(TRAIN_PROBE_INITS)} (auto: task where the task's "
            f"inputs are known, else gauss; gauss: random Gaussian start; task: start at the "
            f"task's training inputs), got {value!r}"
        )
    return value


@contextlib.contextmanager
def deferred_probe_init() -> Iterator[None]:
    """Within this block, :class:`~weightspace.nn.probes.ProbeGenerator` skips computing a
    ``task`` start (the caller loads the probes' weights next: :func:`load_encoder
    <weightspace.nn.encoder_files.load_encoder>`)."""
    _DEFERRED[0] += 1
    try:
        yield
    finally:
        _DEFERRED[0] -= 1


def init_deferred() -> bool:
    """Whether a :func:`deferred_probe_init` block is active."""
    return _DEFERRED[0] > 0


# ------------------------------------------------------------------------------ sources
def _task_rows(task: str, numel: int) -> Tensor | None:
    """The task's training inputs ``(N, numel)`` or None when the task is unknown or its inputs
    have another size."""
    from weightspace.zoo.tasks import get_task

    try:
        features = get_task(task).features["train"]
    except WeightspaceError:
        return None
    features = features.reshape(features.shape[0], -1)
    return features.float() if features.shape[1] == numel else None


def resolve_probe_sources(
    domains: Sequence[str],
    tasks_by_domain: Mapping[str, Sequence[str]],
    manifest: Mapping[str, Any] | None = None,
    *,
    warn: bool = True,
) -> tuple[str, ...]:
    """The source of each domain's ``task`` start (module docstring), in ``domains`` order.

    Args:
        domains: the probe domains (:func:`~weightspace.nn.probes.domain_key`).
        tasks_by_domain: the zoo's task names per domain.
        manifest: the zoo's manifest (an INR preset's coordinate grid is read from it).
        warn: say once (``UserWarning``) which domains fall back to Gaussian probes, and why.
    """
    preset = str(((manifest or {}).get("config") or {}).get("preset", ""))
    sources, fallbacks = [], []
    for key in domains:
        shape = tuple(int(s) for s in key.split("x"))
        numel = math.prod(shape)
        tasks = sorted({str(t) for t in tasks_by_domain.get(key, ())})
        if preset in _INR_GRIDS and len(shape) == 1 and shape[0] in (1, 2, 3):
            sources.append(f"grid:{_INR_GRIDS[preset]}")
            continue
        known = [t for t in tasks if _task_rows(t, numel) is not None]
        if tasks and len(known) == len(tasks):
            sources.append("task:" + ",".join(known))
            continue
        missing = sorted(set(tasks) - set(known)) or ["(no task)"]
        fallbacks.append(f"input shape {list(shape)} (task data unknown: {', '.join(missing)})")
        sources.append("gauss")
    if fallbacks and warn:
        warnings.warn(
            "probe_init 'task': no training inputs are known for "
            + "; ".join(fallbacks)
            + "; those probes start Gaussian (probe_init 'gauss')",
            UserWarning,
            stacklevel=2,
        )
    return tuple(sources)


def probe_sources_for_zoo(
    zoo: Any, domains: Sequence[str], *, warn: bool = True
) -> tuple[str, ...]:
    """:func:`resolve_probe_sources` for a :class:`~weightspace.zoo.Zoo` (its table's ``task``
    and ``spec`` columns, and its manifest)."""
    from weightspace.nn.probes import domain_key
    from weightspace.spec import NetworkSpec

    table = zoo.table
    tasks_by_domain: dict[str, set[str]] = {}
    if "task" in table.columns and "spec" in table.columns:
        for task, spec in table[["task", "spec"]].drop_duplicates().itertuples(index=False):
            key = domain_key(NetworkSpec.from_json(spec))
            tasks_by_domain.setdefault(key, set()).add(str(task))
    return resolve_probe_sources(
        domains, {k: sorted(v) for k, v in tasks_by_domain.items()}, zoo.manifest, warn=warn
    )


def _grid(side: int, dims: int) -> Tensor:
    """``(side**dims, dims)`` points of the regular grid on ``[-1, 1]^dims``, row-major (for
    ``dims == 2`` exactly :func:`weightspace.zoo.inr_fit.coordinate_grid`)."""
    axis = torch.linspace(-1.0, 1.0, side)
    mesh = torch.meshgrid(*([axis] * dims), indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=1)


def source_inputs(source: str, key: str, probes: int, seed: int) -> Tensor | None:
    """The ``(P, *shape)`` start of domain ``key`` for ``source``; None for ``"gauss"``.

    Rows are taken in the order of a permutation seeded by ``seed`` (per task, the same
    permutation ``probing-task`` uses); several tasks contribute in turn; a shortfall is filled
    with standard normal draws from the same seed.

    Raises:
        ProbeInitError: the source string is malformed, or names a task whose inputs are no
            longer known (its data moved or changed size).
    """
    shape = tuple(int(s) for s in key.split("x"))
    numel = math.prod(shape)
    generator = torch.Generator().manual_seed(seed)
    if source == "gauss":
        return None
    kind, _, value = source.partition(":")
    if kind == "grid" and value.isdigit() and len(shape) == 1:
        pool = [_grid(int(value), shape[0])]
    elif kind == "task" and value:
        pool = []
        for task in value.split(","):
            rows = _task_rows(task, numel)
            if rows is None:
                raise ProbeInitError(
                    f"probe source {source!r}: the training inputs of task {task!r} are not "
                    f"known or do not have {numel} values; open its zoo first, or use "
                    "probe_init 'gauss'"
                )
            pool.append(rows)
    else:
        raise ProbeInitError(
            f"probe source {source!r} for input shape {list(shape)} is not 'gauss', "
            "'task:NAME[,NAME...]' or 'grid:SIDE'"
        )
    ordered = []
    for rows in pool:
        order = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(seed))
        ordered.append(rows[order])
    # Tasks in turn: row i of every task before row i + 1 of any.
    longest = min(max(r.shape[0] for r in ordered), probes)
    chosen = torch.stack(
        [r[i] for i in range(longest) for r in ordered if i < r.shape[0]][:probes]
    )  # (<= P, numel)
    if chosen.shape[0] < probes:
        extra = torch.randn(probes - chosen.shape[0], numel, generator=generator)
        chosen = torch.cat([chosen, extra])
    return chosen.reshape(probes, *shape)
