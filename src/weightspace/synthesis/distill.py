r"""A data-using merge baseline: distil the output ensemble of A and B into one network.

The embedding merge's decoder is trained on task data, so the fair comparison is a merge that may
use the same data. For each pair :math:`(A, B)` a *student* network of the same architecture is
trained to reproduce the ensemble's logits :math:`t(x) = (1-\alpha) f_A(x) + \alpha f_B(x)` on the
task's training inputs, with the decoder's loss (:func:`weightspace.synthesis.decoder.distillation_loss`:
KL at temperature :math:`T`, or the MSE of class-centred logits), optimiser (AdamW, gradient norm
clipped at 1 per student) and schedule (:func:`weightspace.synthesis.decoder.warmup_cosine`):

.. math::
    \min_{\theta}\; \mathbb{E}_{x \sim \text{train}}\;
        T^2\,\mathrm{KL}\big(\mathrm{softmax}(t(x)/T) \,\Vert\, \mathrm{softmax}(f_\theta(x)/T)\big).

All students of one architecture train at once: their flat parameter vectors are stacked
``(P, n_params)`` and run on each step's shared minibatch of inputs with
:func:`weightspace.synthesis.decoder.functional_logits` (``vmap`` over ``functional_call``, as
:mod:`weightspace.finetune` does for its SGD steps). The loss is the sum of the students' mean
losses, so each student's gradient is its own; AdamW acts element-wise, so the stacked run equals
``P`` separate ones. Students start from a fresh initialisation of the architecture (seeded per
student), or from given state dicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from weightspace.module import to_module
from weightspace.spec import NetworkSpec
from weightspace.synthesis.common import StateDict, SynthesisError, check_alpha
from weightspace.synthesis.decoder import (
    distillation_loss,
    flatten,
    functional_logits,
    unflatten,
    warmup_cosine,
)

__all__ = ["DistillConfig", "distill_ensembles"]


@dataclass
class DistillConfig:
    """Training of the distilled students (defaults: the decoder's)."""

    steps: int = 1500  # optimisation steps (the bench gives the decoder's)
    inputs_per_step: int = 128  # training inputs per step, shared by all students
    learning_rate: float = 2e-3  # peak AdamW learning rate (warm-up, cosine decay to 5%)
    weight_decay: float = 1e-4  # AdamW weight decay
    loss: str = "kl"  # kl | mse (of class-centred logits)
    temperature: float = 2.0  # softmax temperature of the kl loss
    seed: int = 0  # initialisations and minibatches

    def __post_init__(self) -> None:
        if self.steps < 0 or self.inputs_per_step < 1:
            raise SynthesisError("distillation steps must be >= 0 and inputs_per_step >= 1")
        if self.loss not in ("kl", "mse"):
            raise SynthesisError(f"distillation loss must be 'kl' or 'mse', got {self.loss!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fresh(spec: NetworkSpec, seed: int) -> Tensor:
    """The flat ``(n_params,)`` weights of a default-initialised network of ``spec``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = to_module(spec)
    return flatten(spec, {k: v.detach().float() for k, v in module.state_dict().items()})


def distill_ensembles(
    spec: NetworkSpec,
    pairs: Sequence[tuple[StateDict, StateDict]],
    inputs: Tensor,
    config: DistillConfig | None = None,
    *,
    alpha: float = 0.5,
    initial: Sequence[StateDict] | None = None,
    device: str | torch.device = "cpu",
) -> list[StateDict]:
    """One student per pair, trained to compute the pair's output ensemble at ``alpha``.

    Args:
        spec: the architecture of every teacher and student.
        pairs: ``P`` pairs of state dicts ``(A, B)``.
        inputs: ``(N, *input_shape)`` the task's training inputs.
        config: steps, batch, optimiser (:class:`DistillConfig`).
        alpha: the ensemble weight of B.
        initial: ``P`` starting state dicts (default: fresh initialisations).
        device: where the students train.

    Returns:
        ``P`` state dicts of ``spec`` (float32, on the CPU).

    Shapes:
        teachers' logits ``(P, N, C)``; each step's student logits ``(P, inputs_per_step, C)``.
    """
    config = config or DistillConfig()
    alpha = check_alpha(alpha)
    if not pairs:
        return []
    if initial is not None and len(initial) != len(pairs):
        raise SynthesisError(f"{len(pairs)} pairs but {len(initial)} initial students")
    if inputs.shape[0] == 0:
        raise SynthesisError("no training inputs to distil on")
    device = torch.device(device)
    x = inputs.float().to(device)
    with torch.no_grad():
        teachers = torch.stack(
            [torch.stack([flatten(spec, a), flatten(spec, b)]) for a, b in pairs]
        ).float()  # (P, 2, n_params)
        logits = functional_logits(spec, teachers.flatten(0, 1).to(device), x)  # (2P, N, C)
        logits = logits.unflatten(0, (len(pairs), 2))
        targets = torch.lerp(logits[:, 0], logits[:, 1], alpha)  # (P, N, C)
    if initial is None:
        start = torch.stack([_fresh(spec, config.seed + p) for p in range(len(pairs))])
    else:
        start = torch.stack([flatten(spec, {k: v.float() for k, v in s.items()}) for s in initial])
    students = torch.nn.Parameter(start.to(device))  # (P, n_params)
    optimizer = torch.optim.AdamW(
        [students], lr=config.learning_rate, weight_decay=config.weight_decay
    )
    generator = torch.Generator().manual_seed(config.seed)
    batch = min(config.inputs_per_step, x.shape[0])
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine(step / config.steps, config.learning_rate, config.steps)
        rows = torch.randperm(x.shape[0], generator=generator)[:batch].to(device)
        predicted = functional_logits(spec, students, x[rows])  # (P, n, C)
        # the loss is a mean over students: times P, each student's gradient is its own
        loss = len(pairs) * distillation_loss(
            predicted, targets[:, rows], config.loss, config.temperature
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():  # clip each student's gradient on its own, as the decoder's is
            gradient = students.grad
            assert gradient is not None
            gradient.mul_((1.0 / gradient.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1))
        optimizer.step()
    final = students.detach().cpu()
    return [{k: v.clone() for k, v in unflatten(spec, row).items()} for row in final]
