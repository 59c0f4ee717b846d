r"""Controls and data-using baselines of the synthesis section, and what kind each method is.

* :func:`method_info` — every method of the merge tables is one *kind*: ``data-free`` (naive
  averaging, weight matching: only the two models' weights), ``data-using`` (the embedding merge,
  whose decoder is trained on task data; distillation), ``reference`` (the output ensemble — no
  data, but a network twice as wide; the endpoints' accuracy line) or ``control`` (the decoded
  mean code). ``uses_data`` records whether task data went into the method.
* :func:`mean_code_control` — decode the mean embedding :math:`\bar z` of the decoder's training
  models. If reconstructions and embedding midpoints predict what this one network predicts, the
  decoder's output barely depends on its code.
* :func:`distilled_midpoints` — the data-matched merge baseline: per pair, a network of the same
  architecture distilled from the pair's output ensemble at :math:`\alpha = 0.5`
  (:mod:`weightspace.synthesis.distill`), on the decoder's training inputs, for the decoder's
  number of steps and the decoder's total compute (see the function).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from weightspace.spec import NetworkSpec
from weightspace.synthesis.common import StateDict, SynthesisError
from weightspace.synthesis.decoder import Decoder, DecoderConfig, _task_inputs
from weightspace.synthesis.distill import DistillConfig, distill_ensembles
from weightspace.synthesis.merge import MERGE_METHODS

__all__ = [
    "KINDS",
    "MIN_STUDENT_INPUTS",
    "method_info",
    "method_kind",
    "mean_code_control",
    "distilled_midpoints",
    "kinds_of",
]

#: The kinds of merge-table rows, in the order the report shows them.
KINDS: tuple[str, ...] = ("data-free", "data-using", "reference", "control")

#: Fewest training inputs a distilled student sees per step (when many pairs share the budget).
MIN_STUDENT_INPUTS = 32

_EXTRA: dict[str, dict[str, Any]] = {
    "distill": {
        "kind": "data-using",
        "uses_data": True,
        "description": "a network of the architecture distilled from the pair's output ensemble "
        "on the task's training inputs (midpoint only)",
    },
    "endpoints": {
        "kind": "reference",
        "uses_data": False,
        "description": "(1 − α)·acc_A + α·acc_B, the line between the two models' accuracies",
    },
    "mean-code": {
        "kind": "control",
        "uses_data": True,
        "description": "the decoder's output for the mean code of its training models: one "
        "network, whatever the pair",
    },
}


def method_kind(name: str) -> str:
    """The kind of ``name`` (:data:`KINDS`), or ``"other"`` for a method this module does not
    know."""
    if name not in _EXTRA and name not in MERGE_METHODS:
        return "other"
    return str(method_info(name)["kind"])


def method_info(name: str) -> dict[str, Any]:
    """``{"kind", "uses_data", "description"}`` of a merge-table method.

    Registered merge methods take ``uses_data`` from :class:`~weightspace.synthesis.merge.
    MergeMethod`; one whose result is not a model of the inputs' architecture (the ensemble) is
    a ``reference``.
    """
    if name in _EXTRA:
        return dict(_EXTRA[name])
    if name not in MERGE_METHODS:
        raise SynthesisError(f"no merge-table method {name!r}")
    method = MERGE_METHODS[name]
    kind = "data-using" if method.uses_data else ("data-free" if method.same_spec else "reference")
    return {"kind": kind, "uses_data": method.uses_data, "description": method.description}


@torch.no_grad()
def mean_code_control(
    decoder: Decoder,
    spec: NetworkSpec,
    task: str,
    train_codes: Tensor,
    *,
    held_codes: Tensor | None = None,
    pair_codes: Tensor | None = None,
    split: str = "test",
) -> tuple[StateDict, dict[str, float]]:
    r"""Decode :math:`\bar z`, the mean of ``train_codes``, and compare it with real decodes.

    Args:
        decoder: the fitted decoder.
        spec, task: the group.
        train_codes: ``(M, d)`` the decoder's training models' codes.
        held_codes: ``(H, d)`` held-out models' codes (their reconstructions are compared).
        pair_codes: ``(P, 2, d)`` the merge pairs' codes (their decoded midpoints are compared).

    Returns:
        The decoded state dict, and ``accuracy`` (test accuracy), ``agreement_reconstructions``
        (mean share of test predictions a held-out reconstruction shares with the mean-code
        network), ``agreement_midpoints`` (the same for the embedding midpoints) and
        ``code_spread`` (mean distance of held-out codes from :math:`\bar z`, in units of the
        training codes' mean distance from it: about 1 when held-out codes lie as far out).
    """
    from weightspace.synthesis.evaluate import predict, task_split

    if train_codes.dim() != 2 or len(train_codes) == 0:
        raise SynthesisError("the mean-code control needs the decoder's training codes (M, d)")
    mean = train_codes.float().mean(0, keepdim=True)  # (1, d)
    (state,) = decoder.decode(mean, spec)
    x, y = task_split(task, spec, split)
    pred = predict(spec, state, x)
    out = {"accuracy": float((pred == y).float().mean()), "train_codes": float(len(train_codes))}

    def agreement(codes: Tensor) -> float:
        decoded = decoder.decode(codes.float(), spec)
        return float(
            np.mean([float((predict(spec, s, x) == pred).float().mean()) for s in decoded])
        )

    if held_codes is not None and len(held_codes):
        out["agreement_reconstructions"] = agreement(held_codes)
        train_spread = (train_codes.float() - mean).norm(dim=1).mean().clamp_min(1e-12)
        out["code_spread"] = float((held_codes.float() - mean).norm(dim=1).mean() / train_spread)
    if pair_codes is not None and len(pair_codes):
        out["agreement_midpoints"] = agreement(pair_codes.float().mean(1))
    return state, out


def distilled_midpoints(
    zoo: Any,
    pairs: pd.DataFrame,
    task: str,
    decoder_config: DecoderConfig,
    steps: int,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[list[StateDict], dict[str, Any]]:
    """Distil each pair's output ensemble at α = 0.5 under the decoder's budget.

    The budget: the decoder's ``steps`` (the steps it ran) and learning-rate schedule, loss and
    optimiser; the same data (the task's training inputs); and the decoder's total compute,
    ``steps × batch_size × inputs_per_step`` network-example passes, shared by the ``P`` students:
    each sees :math:`\\max(\\lceil B\\,N / P \\rceil, 32)` inputs per step (at most the training
    set). The returned budget dict states the figures (``example_passes`` against
    ``decoder_example_passes``) and the seconds the students took.

    Returns:
        One state dict per row of ``pairs`` (in order), and the budget.
    """
    if pairs.empty:
        return [], {}
    specs = {str(zoo.spec(a).to_json()) for a in pairs["id_a"]}
    if len(specs) != 1:
        raise SynthesisError("distilled_midpoints takes pairs of one architecture")
    spec = zoo.spec(pairs["id_a"].iloc[0])
    inputs = _task_inputs(task, spec, "train")
    students = len(pairs)
    decoder_passes = steps * decoder_config.batch_size * decoder_config.inputs_per_step
    per_step = max(
        math.ceil(decoder_config.batch_size * decoder_config.inputs_per_step / students),
        MIN_STUDENT_INPUTS,
    )
    per_step = min(per_step, inputs.shape[0])
    config = DistillConfig(
        steps=steps,
        inputs_per_step=per_step,
        learning_rate=decoder_config.learning_rate,
        weight_decay=decoder_config.weight_decay,
        loss=decoder_config.loss,
        temperature=decoder_config.temperature,
        seed=seed,
    )
    started = time.perf_counter()
    states = distill_ensembles(
        spec,
        [
            (zoo.state_dict(a), zoo.state_dict(b))
            for a, b in zip(pairs["id_a"], pairs["id_b"], strict=True)
        ],
        inputs,
        config,
        device=device,
    )
    budget = {
        "alpha": 0.5,
        "init": "fresh",
        "students": students,
        "steps": steps,
        "inputs_per_step": per_step,
        "training_inputs": int(inputs.shape[0]),
        "example_passes": steps * students * per_step,
        "decoder_example_passes": decoder_passes,
        "seconds": time.perf_counter() - started,
        "config": config.to_dict(),
    }
    return states, budget


def _kind_order(methods: Sequence[str]) -> list[str]:
    """``methods`` ordered by kind (:data:`KINDS`), keeping their order within a kind."""
    rank = {kind: i for i, kind in enumerate(KINDS)}
    return sorted(methods, key=lambda m: rank.get(method_info(m)["kind"], len(KINDS)))


def kinds_of(methods: Sequence[str]) -> Mapping[str, list[str]]:
    """Kind → its methods among ``methods`` (kinds in :data:`KINDS` order, empty ones left out)."""
    out: dict[str, list[str]] = {}
    for method in _kind_order(methods):
        out.setdefault(method_info(method)["kind"], []).append(method)
    return out
