r"""Brief fine-tuning of checkpoints on their own task: the "a few SGD steps" view.

A model a few small SGD steps away from a checkpoint computes nearly the same function, yet its
weights move along the directions its own training would take — unlike Gaussian noise, which
moves them isotropically. Contrastive training (:mod:`weightspace.train`) can use such a model
as a positive view of the checkpoint.

All checkpoints of one architecture are fine-tuned together: their parameters are stacked and
one step is

.. math::
    \theta_m \leftarrow \theta_m - \eta\, \nabla_{\theta_m}
    \frac{1}{B} \sum_{b=1}^{B} \operatorname{CE}\big(f(x_{m,b}; \theta_m),\ y_{m,b}\big)

for every model :math:`m` at once (``torch.func.vmap`` over ``torch.func.grad`` of
``functional_call``), each model on its own minibatch :math:`(x_{m,b}, y_{m,b})` drawn with
replacement from the task's training split by an explicit generator — so the result is a
deterministic function of the checkpoints and the seed, whatever the grouping.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, grad, vmap

from weightspace.errors import WeightspaceError
from weightspace.module import to_module
from weightspace.spec import NetworkSpec

__all__ = ["FinetuneError", "finetune_state_dicts", "task_training_data"]


class FinetuneError(WeightspaceError):
    """Fine-tuning views cannot be made (unknown task, mismatched inputs, bad settings)."""


def task_training_data(task_name: str, spec: NetworkSpec) -> tuple[Tensor, Tensor]:
    """The training inputs of the registered task ``task_name`` shaped for ``spec``, and labels.

    Raises:
        FinetuneError: the task is not a built-in one (e.g. an imported sweep's), or its inputs
            do not fit the architecture's input shape.
    """
    from weightspace.zoo.tasks import get_task

    try:
        task = get_task(task_name)
    except WeightspaceError as exc:
        raise FinetuneError(
            f"fine-tuning views need the task's data, but task {task_name!r} is not a built-in "
            f"task ({exc}); train without them (finetune_probability 0)"
        ) from None
    shape = tuple(int(s) for s in spec.ops[0].attrs["shape"])
    features = task.features["train"]
    if features[0].numel() != int(torch.tensor(shape).prod()):
        raise FinetuneError(
            f"task {task_name!r} has {features[0].numel()} input features per example but the "
            f"architecture takes inputs of shape {shape}"
        )
    return features.reshape(features.shape[0], *shape).float(), task.labels["train"].long()


def finetune_state_dicts(
    spec: NetworkSpec,
    state_dicts: Sequence[Mapping[str, Tensor]],
    inputs: Tensor,
    labels: Tensor,
    *,
    steps: int = 4,
    learning_rate: float = 0.02,
    batch_size: int = 32,
    generator: torch.Generator | None = None,
    chunk: int = 512,
) -> list[dict[str, Tensor]]:
    """``steps`` plain SGD steps of cross-entropy on ``(inputs, labels)`` for every checkpoint.

    Args:
        spec: the architecture of every state dict.
        state_dicts: ``M`` checkpoints of ``spec``.
        inputs: ``(N, *input_shape)`` training inputs; ``labels``: ``(N,)`` class indices.
        steps: SGD steps per checkpoint (0 returns copies).
        learning_rate: the step size :math:`\\eta`.
        batch_size: examples per step (at most ``N``), drawn with replacement per model.
        generator: draws the minibatches (CPU generator; default: seed 0).
        chunk: models per vectorised call (bounds memory).

    Returns:
        ``M`` state dicts with the same keys, dtypes and shapes (computed in the dtype of the
        first checkpoint's first tensor).

    Raises:
        FinetuneError: bad settings, or inputs that do not match.
    """
    if steps < 0 or learning_rate < 0 or batch_size < 1:
        raise FinetuneError("steps and learning_rate must be >= 0 and batch_size >= 1")
    if inputs.shape[0] != labels.shape[0] or inputs.shape[0] == 0:
        raise FinetuneError(
            f"inputs ({inputs.shape[0]}) and labels ({labels.shape[0]}) must be equally many, > 0"
        )
    if not state_dicts:
        return []
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    names = list(state_dicts[0])
    dtype = state_dicts[0][names[0]].dtype
    template = to_module(spec, {k: v.to(dtype) for k, v in state_dicts[0].items()})
    inputs, batch_size = inputs.to(dtype), min(batch_size, inputs.shape[0])

    def loss(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(template, params, (x,)), y)

    step_gradients = vmap(grad(loss))
    out: list[dict[str, Tensor]] = []
    for start in range(0, len(state_dicts), chunk):
        group = state_dicts[start : start + chunk]
        params = {k: torch.stack([sd[k].to(dtype) for sd in group]) for k in names}  # (M, ...)
        for _ in range(steps):
            rows = torch.randint(inputs.shape[0], (len(group), batch_size), generator=generator)
            gradients = step_gradients(params, inputs[rows], labels[rows])
            params = {k: params[k] - learning_rate * gradients[k] for k in names}
        for m, original in enumerate(group):
            out.append({k: params[k][m].to(original[k].dtype) for k in names})
    return out
