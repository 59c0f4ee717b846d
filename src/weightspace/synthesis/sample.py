r"""Sampling new models: draw embeddings near good zoo models and decode them.

The density is a Gaussian kernel density estimate over the embeddings of a *pool* of zoo models
(each run's final checkpoint, of one task and architecture, at least as accurate as a
threshold), with a diagonal bandwidth proportional to the pool's per-dimension spread:

.. math::
    z = z_i + h\, \sigma_{\mathrm{pool}} \odot \varepsilon, \qquad
    i \sim U\{1..n\},\ \varepsilon \sim \mathcal{N}(0, I),

then :math:`\theta = \mathrm{Decoder}(z)` for the pool's architecture. ``h`` (``bandwidth``)
trades novelty for accuracy: ``h = 0`` decodes the pool's own embeddings (reconstructions).
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from weightspace.spec import NetworkSpec
from weightspace.synthesis.common import StateDict, SynthesisError
from weightspace.synthesis.decoder import Synthesizer, spec_key

__all__ = [
    "SampledModel",
    "check_sampling_options",
    "sample_pool",
    "sample_models",
    "write_samples",
]

#: Without ``min_accuracy``, the pool is the models at or above this quantile of test accuracy.
DEFAULT_POOL_QUANTILE = 0.75


@dataclass
class SampledModel:
    """A decoded sample.

    Attributes:
        spec: its architecture.
        state_dict: its weights.
        task: the task of the pool it was drawn from.
        anchor: checkpoint id of the pool model whose kernel it was drawn from.
        z: its embedding ``(d,)``.
        info: JSON-able notes (bandwidth, seed).
    """

    spec: NetworkSpec
    state_dict: StateDict
    task: str
    anchor: str
    z: Tensor
    info: dict[str, Any] = field(default_factory=dict)


def check_sampling_options(n: int, bandwidth: float, min_accuracy: float | None = None) -> None:
    """Refuse options that cannot give a finite sample, before any work.

    ``bandwidth`` must be finite and :math:`\\ge 0` (``0`` decodes the pool's own embeddings),
    ``n`` at least 1, ``min_accuracy`` (when given) a finite number in ``[0, 1]``.

    Raises:
        SynthesisError: naming the option, its value and what it must be.
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise SynthesisError(f"--n must be a whole number >= 1, got {n!r}")
    real = isinstance(bandwidth, numbers.Real) and not isinstance(bandwidth, bool)
    if not real or not math.isfinite(bandwidth) or bandwidth < 0:
        raise SynthesisError(
            f"--bandwidth must be a finite number >= 0 (the kernel width in units of the pool's "
            f"spread, e.g. 0.5), got {bandwidth!r}"
        )
    if min_accuracy is not None and not (
        isinstance(min_accuracy, numbers.Real)
        and math.isfinite(min_accuracy)
        and 0 <= min_accuracy <= 1
    ):
        raise SynthesisError(f"--min-accuracy must be a number in [0, 1], got {min_accuracy!r}")


def sample_pool(
    zoo: Any,
    *,
    task: str | None = None,
    arch: str | None = None,
    min_accuracy: float | None = None,
    runs: Iterable[str] | None = None,
) -> pd.DataFrame:
    """The zoo rows sampling draws near: each run's final checkpoint, filtered.

    Without ``min_accuracy`` the pool keeps, per (task, arch), the models at or above the
    :data:`DEFAULT_POOL_QUANTILE` quantile of test accuracy.

    Raises:
        SynthesisError: no model passes the filters (the message says which filter to relax).
    """
    table = zoo.table
    if runs is not None:
        table = table[table["run_id"].isin(set(runs))]
    if task is not None:
        if task not in set(zoo.table["task"]):
            raise SynthesisError(
                f"the zoo has no task {task!r}; it holds {sorted(set(zoo.table['task']))}"
            )
        table = table[table["task"] == task]
    if arch is not None:
        table = table[table["arch"] == arch]
    last = table.groupby("run_id")["epoch"].transform("max")
    table = table[table["epoch"] == last]
    if min_accuracy is not None:
        table = table[table["test_accuracy"] >= min_accuracy]
    else:
        threshold = table.groupby(["task", "arch"])["test_accuracy"].transform(
            lambda s: s.quantile(DEFAULT_POOL_QUANTILE)
        )
        table = table[table["test_accuracy"] >= threshold]
    if table.empty:
        raise SynthesisError(
            f"no final checkpoints pass the filters (task={task!r}, arch={arch!r}, "
            f"min_accuracy={min_accuracy}); lower --min-accuracy or pick another task"
        )
    return table.reset_index(drop=True)


def sample_models(
    synthesizer: Synthesizer,
    zoo: Any,
    n: int,
    *,
    task: str | None = None,
    arch: str | None = None,
    min_accuracy: float | None = None,
    bandwidth: float = 0.5,
    runs: Iterable[str] | None = None,
    seed: int = 0,
    embeddings: Mapping[str, Tensor] | None = None,
) -> list[SampledModel]:
    """Draw ``n`` models near the high-accuracy models of ``zoo`` (see module docstring).

    Args:
        synthesizer: encoder + decoder; only pool models whose architecture it decodes are used.
        task, arch, min_accuracy, runs: pool filters (:func:`sample_pool`).
        bandwidth: kernel width ``h`` in units of the pool's per-dimension standard deviation.
        seed: seeds the anchors and the noise.
        embeddings: checkpoint id → embedding, a cached table read instead of the encoder
            (ids missing from it are embedded).

    Raises:
        SynthesisError: an empty pool, or no pool model of an architecture the decoder knows.
    """
    check_sampling_options(n, bandwidth, min_accuracy)
    pool = sample_pool(zoo, task=task, arch=arch, min_accuracy=min_accuracy, runs=runs)
    specs = {cid: zoo.spec(cid) for cid in pool["checkpoint_id"]}
    decodable = [synthesizer.decoder.supports(specs[c]) for c in pool["checkpoint_id"]]
    if not any(decodable):
        archs = sorted(set(pool["arch"]))
        raise SynthesisError(
            f"the decoder has no head for the pool's architectures {archs}; train it on a zoo "
            "holding them (`weightspace train-decoder`)"
        )
    pool = pool[decodable].reset_index(drop=True)
    ids = list(pool["checkpoint_id"])
    z_pool = synthesizer.embed_checkpoints(zoo, ids, embeddings)  # (m, d)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, cid in enumerate(ids):
        groups.setdefault((spec_key(specs[cid]), str(pool["task"][i])), []).append(i)
    spread = torch.empty_like(z_pool)
    for members in groups.values():
        if len(members) > 1:
            spread[members] = z_pool[members].std(0)
        else:
            spread[members] = synthesizer.decoder.z_std.to(z_pool)
    generator = torch.Generator().manual_seed(seed)
    anchors = torch.randint(len(ids), (n,), generator=generator)
    noise = torch.randn(n, z_pool.shape[1], generator=generator)
    z = z_pool[anchors] + bandwidth * spread[anchors] * noise  # (n, d)
    if not torch.isfinite(z).all():
        raise SynthesisError(
            f"embeddings drawn with --bandwidth {bandwidth:g} hold Inf or NaN (the pool's largest "
            f"spread is {float(spread.abs().max()):.3g}); use a smaller --bandwidth"
        )
    samples: list[SampledModel | None] = [None] * n
    by_spec: dict[str, list[int]] = {}
    for j, i in enumerate(anchors.tolist()):
        by_spec.setdefault(spec_key(specs[ids[i]]), []).append(j)
    for members in by_spec.values():
        spec = specs[ids[int(anchors[members[0]])]]
        states = synthesizer.decode(z[members], spec)
        for j, state in zip(members, states, strict=True):
            i = int(anchors[j])
            samples[j] = SampledModel(
                spec,
                state,
                str(pool["task"][i]),
                ids[i],
                z[j],
                {"bandwidth": bandwidth, "seed": seed, "sample": j},
            )
    return [s for s in samples if s is not None]


def _finite_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_json(v) for v in value]
    return value


def _strict_json(value: Any, **kwargs: Any) -> str:
    return json.dumps(_finite_json(value), allow_nan=False, default=str, **kwargs)


def write_samples(
    samples: Sequence[SampledModel], out: str | os.PathLike[str], *, prefix: str = "sample"
) -> list[Path]:
    """Write each sample as ``OUT/{prefix}-{i:04d}.safetensors`` (spec in the metadata) and a
    ``OUT/samples.json`` index (file, task, anchor, bandwidth), both strict JSON.

    A sample whose weights hold NaN or Inf is never written: its ``samples.json`` entry has
    ``"file": null`` and a ``"refused"`` reason. Returns the written paths.

    Raises:
        SynthesisError: every sample holds NaN or Inf (then nothing is written).
    """
    from weightspace.atomic import atomic_write
    from weightspace.ingest import save_checkpoint

    finite = [all(bool(torch.isfinite(v).all()) for v in s.state_dict.values()) for s in samples]
    if samples and not any(finite):
        raise SynthesisError(
            f"all {len(samples)} decoded samples hold NaN or Inf weights; nothing was written "
            f"to {out} (lower --bandwidth, or retrain the decoder)"
        )
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    paths, index = [], []
    for i, (sample, ok) in enumerate(zip(samples, finite, strict=True)):
        entry = {"task": sample.task, "anchor": sample.anchor, **sample.info}
        if not ok:
            index.append({"file": None, "refused": "decoded weights hold NaN or Inf", **entry})
            continue
        path = root / f"{prefix}-{i:04d}.safetensors"
        meta = {
            "weightspace_synthesis": _strict_json({"kind": "sample", **entry}),
            "task": sample.task,
        }
        save_checkpoint(path, sample.spec, sample.state_dict, meta)
        paths.append(path)
        index.append({"file": path.name, **entry})
    text = _strict_json(index, indent=2) + "\n"
    atomic_write(root / "samples.json", lambda tmp: tmp.write_text(text))
    return paths
